//! Event time: how a declaration turns a batch's values into an event-time
//! column ([`EventTimeAssigner`]), and how time-based stages find and read
//! the event time of their input.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, TimestampMillisecondArray};
use arrow::compute::cast;
use arrow::datatypes::{
    DataType, Field, Float64Type, Int64Type, Schema, SchemaRef, TimeUnit, TimestampMillisecondType,
};
use arrow::record_batch::{RecordBatch, RecordBatchOptions};
use streamflow_core::{DeadLetter, Diagnostic, Diagnostics, Error, Output, Result};
use streamflow_dsl::{EpochUnit, EventTimeSpec};
use streamflow_expr::{CompiledExpr, UsedColumns};

use crate::row_errors::row_as_json;

use crate::stage::StageContext;

/// The index of the event-time column: `time_column` if set, else the
/// source's `event_time` column. Reports at `needed_by` when there is none
/// and at `time_column` when the column is missing or not a timestamp.
pub(crate) fn time_column_index(
    ctx: &StageContext<'_>,
    time_column: Option<&str>,
    needed_by: &str,
    d: &mut Diagnostics,
) -> Option<usize> {
    let input = ctx.input_schema();
    let Some(col) = time_column.or(ctx.event_time) else {
        d.0.push(Diagnostic::new(
            ctx.at(needed_by),
            "no event time: declare event_time on the source or set time_column",
        ));
        return None;
    };
    timestamp_index(&input, col)
        .map_err(|m| d.push(ctx.at("time_column"), m))
        .ok()
}

/// The index of timestamp column `col` of `schema`, or why it cannot be
/// the event time (missing, or not a timestamp).
pub(crate) fn timestamp_index(schema: &Schema, col: &str) -> Result<usize, String> {
    match schema.index_of(col) {
        Ok(i) if matches!(schema.field(i).data_type(), DataType::Timestamp(_, _)) => Ok(i),
        Ok(i) => Err(format!(
            "column '{col}' is {}, not a timestamp",
            schema.field(i).data_type()
        )),
        Err(_) => Err(format!("column '{col}' not found")),
    }
}

/// Event times of a timestamp column, in milliseconds.
pub(crate) fn millis(array: &ArrayRef) -> Result<TimestampMillisecondArray> {
    let ms = arrow::compute::cast(array, &DataType::Timestamp(TimeUnit::Millisecond, None))
        .map_err(|e| Error::arrow("reading event time", e))?;
    ms.as_any()
        .downcast_ref::<TimestampMillisecondArray>()
        .cloned()
        .ok_or_else(|| Error::Other("event time is not a timestamp".into()))
}

/// A record without event time cannot be placed in time: dead letter.
pub(crate) fn null_event_time(batch: &RecordBatch, row: usize, out: &mut Output) {
    out.dead_letter(DeadLetter {
        file: None,
        line: None,
        payload: Some(row_as_json(&batch.slice(row, 1))),
        error: "null event time".into(),
    });
}

/// Default name of a computed event-time column.
pub const DEFAULT_TIME_COLUMN: &str = "event_time";

/// Where the event time of a row is read from.
#[derive(Debug, Clone)]
enum TimeInput {
    /// A top-level column, by index.
    Column(usize),
    /// A SQL expression (nested fields, `COALESCE`, arithmetic …).
    Expr(CompiledExpr),
}

/// Where the assigned event time goes in the output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TimeSlot {
    /// The input column at this index already is the timestamp: batches
    /// pass unchanged.
    Keep(usize),
    /// Replaces the column at this index.
    Replace(usize),
    /// Appended as the last column.
    Append,
}

/// Makes a batch's event time a timestamp column, as an `event_time`
/// declaration says: a top-level timestamp column is used as it is, other
/// values (integers in a `unit`, floats, strings, nested fields, any SQL
/// expression) are converted to a millisecond timestamp column. Planned once
/// per schema; the per-batch work is one vectorised conversion.
#[derive(Debug, Clone)]
pub struct EventTimeAssigner {
    input: TimeInput,
    unit: EpochUnit,
    slot: TimeSlot,
    schema: SchemaRef,
    column: String,
    /// Index of `column` in `schema`.
    index: usize,
    spec: EventTimeSpec,
}

impl EventTimeAssigner {
    /// Plans `spec` against `input`; `path` is where the declaration stands
    /// (`sources[0].event_time`) for error messages.
    ///
    /// # Errors
    /// Neither or both of `column`/`expr`, an unknown column, an expression
    /// that does not compile, or a value type that cannot be a time.
    pub fn plan(input: &SchemaRef, spec: &EventTimeSpec, path: &str) -> Result<Self, Diagnostics> {
        let at = |k: &str| format!("{path}.{k}");
        let fail = |k: &str, m: String| Diagnostics::from(Diagnostic::new(at(k), m));
        let (time_input, key, data_type) = match (&spec.column, &spec.expr) {
            (Some(_), Some(_)) => {
                return Err(fail("expr", "give either column or expr, not both".into()));
            }
            (None, None) => {
                return Err(fail(
                    "column",
                    "name the event-time column (column: …) or compute it (expr: …)".into(),
                ));
            }
            (Some(column), None) => match input.index_of(column) {
                Ok(i) => (
                    TimeInput::Column(i),
                    "column",
                    input.field(i).data_type().clone(),
                ),
                Err(_) if column.contains('.') => match streamflow_expr::compile(column, input) {
                    Ok(e) => {
                        let t = e.data_type().clone();
                        (TimeInput::Expr(e), "column", t)
                    }
                    Err(e) => return Err(fail("column", e.message)),
                },
                Err(_) => {
                    let names: Vec<&str> =
                        input.fields().iter().map(|f| f.name().as_str()).collect();
                    let hint = streamflow_dsl::suggest(column, &names)
                        .map(|s| format!(" (did you mean '{s}'?)"))
                        .unwrap_or_default();
                    return Err(fail("column", format!("column '{column}' not found{hint}")));
                }
            },
            (None, Some(sql)) => match streamflow_expr::compile(sql, input) {
                Ok(e) => {
                    let t = e.data_type().clone();
                    (TimeInput::Expr(e), "expr", t)
                }
                Err(e) => return Err(fail("expr", e.message)),
            },
        };
        let convertible = data_type.is_integer()
            || data_type.is_floating()
            || matches!(
                data_type,
                DataType::Timestamp(..)
                    | DataType::Utf8
                    | DataType::LargeUtf8
                    | DataType::Utf8View
                    | DataType::Date32
                    | DataType::Date64
                    | DataType::Null
            );
        if !convertible {
            return Err(fail(
                key,
                format!(
                    "{data_type} is not a time: use a timestamp, epoch number or date-time string"
                ),
            ));
        }
        let is_timestamp = matches!(data_type, DataType::Timestamp(..));
        if is_timestamp && spec.unit.is_some() {
            return Err(fail("unit", "the event time already is a timestamp".into()));
        }
        let (slot, column) = match (&time_input, &spec.name) {
            (TimeInput::Column(i), None) if is_timestamp => {
                (TimeSlot::Keep(*i), input.field(*i).name().clone())
            }
            (TimeInput::Column(i), None) => (TimeSlot::Replace(*i), input.field(*i).name().clone()),
            (_, Some(name)) => match input.index_of(name) {
                Ok(i) => (TimeSlot::Replace(i), name.clone()),
                Err(_) => (TimeSlot::Append, name.clone()),
            },
            (TimeInput::Expr(_), None) => {
                if input.index_of(DEFAULT_TIME_COLUMN).is_ok() {
                    return Err(fail(
                        "as",
                        format!(
                            "the input already has a column '{DEFAULT_TIME_COLUMN}': name the computed event time with `as`"
                        ),
                    ));
                }
                (TimeSlot::Append, DEFAULT_TIME_COLUMN.to_string())
            }
        };
        let time_field = |nullable: bool| {
            Field::new(
                &column,
                DataType::Timestamp(TimeUnit::Millisecond, None),
                nullable,
            )
        };
        let nullable = match &time_input {
            TimeInput::Column(i) => input.field(*i).is_nullable(),
            TimeInput::Expr(e) => e.nullable(),
        };
        let mut fields: Vec<Field> = input.fields().iter().map(|f| f.as_ref().clone()).collect();
        let index = match slot {
            TimeSlot::Keep(i) => i,
            TimeSlot::Replace(i) => {
                fields[i] = time_field(nullable);
                i
            }
            TimeSlot::Append => {
                fields.push(time_field(nullable));
                fields.len() - 1
            }
        };
        Ok(Self {
            index,
            input: time_input,
            unit: spec.unit.unwrap_or_default(),
            slot,
            schema: Arc::new(Schema::new_with_metadata(fields, input.metadata().clone())),
            column,
            spec: spec.clone(),
        })
    }

    /// What is read of the input when `output` is read of the output: the
    /// event time's own inputs included.
    pub fn input_columns(&self, output: &UsedColumns) -> UsedColumns {
        let mut used = output.clone();
        match &self.input {
            TimeInput::Column(i) => used.add(vec![self.schema.field(*i).name().clone()]),
            TimeInput::Expr(e) => used.extend(e.columns()),
        }
        used
    }

    /// The output schema: the input's, with the event-time column in place.
    pub fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    /// Name of the event-time column of the output.
    pub fn column(&self) -> &str {
        &self.column
    }

    /// The declaration this was planned from (watermark strategy included).
    pub fn spec(&self) -> &EventTimeSpec {
        &self.spec
    }

    /// A watermark generator for the output, as the declaration's strategy says.
    pub fn watermarks(&self) -> crate::watermark::WatermarkGenerator {
        let lag = self
            .spec
            .watermark
            .max_out_of_orderness
            .unwrap_or_default()
            .as_millis() as i64;
        crate::watermark::WatermarkGenerator::new(self.index, lag)
            .with_idle_timeout(self.spec.watermark.idle_timeout)
    }

    /// The batch with its event-time column in place.
    ///
    /// # Errors
    /// When the expression fails on the batch or a value cannot be converted.
    pub fn assign(&self, batch: RecordBatch) -> Result<RecordBatch> {
        if let TimeSlot::Keep(_) = self.slot {
            return Ok(batch);
        }
        let values = match &self.input {
            TimeInput::Column(i) => Arc::clone(batch.column(*i)),
            TimeInput::Expr(e) => e.evaluate(&batch).map_err(|err| Error::Expression {
                expr: e.sql().into(),
                message: err.message,
            })?,
        };
        let time: ArrayRef = Arc::new(epoch_millis(&values, self.unit)?);
        let mut columns = batch.columns().to_vec();
        match self.slot {
            TimeSlot::Keep(_) => {}
            TimeSlot::Replace(i) => columns[i] = time,
            TimeSlot::Append => columns.push(time),
        }
        RecordBatch::try_new_with_options(
            Arc::clone(&self.schema),
            columns,
            &RecordBatchOptions::new().with_row_count(Some(batch.num_rows())),
        )
        .map_err(|e| Error::arrow("assigning event time", e))
    }
}

/// Converts epoch numbers (in `unit`), date-time strings, dates or
/// timestamps to a millisecond timestamp array.
fn epoch_millis(values: &ArrayRef, unit: EpochUnit) -> Result<TimestampMillisecondArray> {
    let err = |e| Error::arrow("converting the event time", e);
    let t = values.data_type();
    if t.is_integer() {
        let ints = cast(values, &DataType::Int64).map_err(err)?;
        let ints = ints.as_primitive::<Int64Type>();
        return Ok(match unit {
            EpochUnit::Ms => ints.reinterpret_cast::<TimestampMillisecondType>(),
            EpochUnit::S => ints.unary(|v| v.saturating_mul(1000)),
            EpochUnit::Us => ints.unary(|v| v.div_euclid(1000)),
            EpochUnit::Ns => ints.unary(|v| v.div_euclid(1_000_000)),
        });
    }
    if t.is_floating() {
        let floats = cast(values, &DataType::Float64).map_err(err)?;
        let scale = match unit {
            EpochUnit::S => 1000.0,
            EpochUnit::Ms => 1.0,
            EpochUnit::Us => 1e-3,
            EpochUnit::Ns => 1e-6,
        };
        return Ok(floats
            .as_primitive::<Float64Type>()
            .unary(|v| (v * scale).floor() as i64));
    }
    let ms = cast(values, &DataType::Timestamp(TimeUnit::Millisecond, None)).map_err(err)?;
    Ok(ms.as_primitive::<TimestampMillisecondType>().clone())
}
