//! How time-based stages find and read the event time of their input.

use arrow::array::{Array, ArrayRef, TimestampMillisecondArray};
use arrow::datatypes::{DataType, TimeUnit};
use arrow::record_batch::RecordBatch;
use streamflow_core::{DeadLetter, Diagnostic, Diagnostics, Error, Output, Result};

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
    match input.index_of(col) {
        Ok(i) if matches!(input.field(i).data_type(), DataType::Timestamp(_, _)) => Some(i),
        Ok(i) => {
            d.push(
                ctx.at("time_column"),
                format!(
                    "column '{col}' is {}, not a timestamp",
                    input.field(i).data_type()
                ),
            );
            None
        }
        Err(_) => {
            d.push(ctx.at("time_column"), format!("column '{col}' not found"));
            None
        }
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
