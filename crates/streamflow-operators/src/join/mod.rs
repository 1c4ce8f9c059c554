//! `join`: joins two inputs (`input: [left, right]`) on equal keys.
//!
//! ```yaml
//! - name: q8
//!   type: join
//!   input: [persons, auctions]
//!   kind: window
//!   on: "l.id = r.seller"            # or {left: [id], right: [seller]}
//!   join: inner                      # inner | left | right | full
//!   window: {kind: tumbling, size: 10s}
//!   prefix: {left: "p_", right: "a_"}  # needed when column names clash
//! ```
//!
//! `kind: interval` (`between: {lower: -5s, upper: 10s}`): a right row
//! joins a left row when its event time lies in `[left + lower, left +
//! upper]`; output `<left columns>, <right columns>` as matches are found,
//! and for outer joins unmatched rows once the watermark rules out a match.
//! A row already behind the watermark when it arrives is late (counted).
//!
//! `kind: table` (`buffer: {ttl, max_rows}`): the right input is a table;
//! see [`table`].
//!
//! `kind: regular` (`state_ttl: 1h`): a join at any distance in time, each
//! row kept for matches until the watermark passes its time plus
//! `state_ttl` (for the whole run without it) — Nexmark q3. Outer regular
//! joins emit a changelog (`_op` first): an unmatched row at once as `+I`
//! with the other side null, retracted (`-D`) when its first match arrives.
//! Rows that expire emit nothing.
//!
//! `kind: window`: rows of both sides fall into event-time tumbling or
//! sliding windows (each side by its own event time); when a window fires,
//! its rows are joined and emitted as `window_start, window_end, <left
//! columns>, <right columns>`; outer joins add unmatched rows with the other
//! side null. Null keys never match. Rows arriving after their windows fired
//! are counted as late.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, Int64Array, RecordBatch, TimestampMillisecondArray, UInt32Array,
    new_null_array,
};
use arrow::compute::{concat_batches, take, take_record_batch};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::row::{RowConverter, Rows, SortField};
use async_trait::async_trait;
use serde::Deserialize;
use serde_json::Value;
use streamflow_core::changelog::OP_COLUMN;
use streamflow_core::{
    CheckpointBarrier, Diagnostics, Error, Operator, OperatorSnapshot, Output, Result, Watermark,
};
use streamflow_dsl::HumanDuration;
use streamflow_expr::CompiledExpr;

use crate::event_time::{millis, null_event_time, timestamp_index};
use crate::snapshot;
use crate::stage::{StageContext, StageFactory};
use crate::window::{Assigner, check_assigner};

mod interval;
mod table;

/// Settings of a `join` stage.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JoinConfig {
    /// How rows are paired in time.
    kind: JoinKind,
    /// Equal keys: `"l.a = r.b AND l.c = r.d"` or `{left: [a, c], right: [b, d]}`.
    on: Value,
    /// Which unmatched rows are kept.
    #[serde(default)]
    join: JoinType,
    /// Window of a `window` join.
    window: Option<JoinWindow>,
    /// Time bounds of an `interval` join.
    between: Option<Between>,
    /// How long (event time) a `regular` join keeps a row for matches.
    state_ttl: Option<HumanDuration>,
    /// How a `table` join holds stream rows whose table row has not arrived.
    buffer: Option<BufferSpec>,
    /// Prefixes for the output columns of each side.
    prefix: Option<Prefix>,
    /// The event-time column of both sides (one name) or of each side
    /// (`{left, right}`), instead of the inputs' event time.
    time_column: Option<TimeColumns>,
}

/// `time_column: t` or `time_column: {left: a, right: b}`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum TimeColumns {
    Both(String),
    Sides {
        left: Option<String>,
        right: Option<String>,
    },
}

impl TimeColumns {
    fn side(&self, side: usize) -> Option<&str> {
        match self {
            TimeColumns::Both(c) => Some(c),
            TimeColumns::Sides { left, right } => [left, right][side].as_deref(),
        }
    }
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum JoinKind {
    /// Both sides in the same tumbling or sliding window.
    Window,
    /// Right time within bounds around the left time.
    Interval,
    /// Any time; rows are kept `state_ttl` of event time (or for the whole run).
    Regular,
    /// The right input is a table (latest row per key, or a changelog).
    Table,
}

/// `buffer: {ttl: 1m, max_rows: 100000}` of a table join.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct BufferSpec {
    /// How long (stream event time) a row waits for its table row.
    ttl: Option<HumanDuration>,
    /// At most this many waiting rows per instance (oldest go first).
    max_rows: Option<usize>,
}

/// `between: {lower: -5s, upper: 10s}` (right time − left time).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Between {
    lower: String,
    upper: String,
}

/// A signed duration in ms: `10s`, `-5s`, `0s`.
fn signed_ms(text: &str) -> std::result::Result<i64, String> {
    let t = text.trim();
    let (sign, body) = match t.strip_prefix('-') {
        Some(rest) => (-1, rest),
        None => (1, t.strip_prefix('+').unwrap_or(t)),
    };
    streamflow_dsl::parse_duration(body).map(|d| sign * d.as_millis() as i64)
}

/// How rows of the two sides are paired in time.
#[derive(Debug, Clone, Copy)]
enum Pairing {
    /// Same window.
    Window(Assigner),
    /// `left + lower <= right <= left + upper` (ms). `regular`: a regular
    /// join (bounds ±state_ttl): a row is late only once it has expired, and
    /// outer rows are emitted at once as a changelog, retracted on a match.
    Interval {
        lower: i64,
        upper: i64,
        regular: bool,
    },
    /// Stream rows look up the table; early ones wait in a bounded buffer.
    Table { ttl: Option<i64>, max_rows: usize },
}

/// Which rows without a match are emitted.
#[derive(Debug, Default, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum JoinType {
    /// Matches only.
    #[default]
    Inner,
    /// Matches and unmatched left rows.
    Left,
    /// Matches and unmatched right rows.
    Right,
    /// Matches and unmatched rows of both sides.
    Full,
}

impl JoinType {
    fn keeps_left(self) -> bool {
        matches!(self, JoinType::Left | JoinType::Full)
    }
    fn keeps_right(self) -> bool {
        matches!(self, JoinType::Right | JoinType::Full)
    }
}

#[derive(Debug, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
enum JoinWindow {
    Tumbling {
        size: HumanDuration,
    },
    Sliding {
        size: HumanDuration,
        slide: HumanDuration,
    },
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Prefix {
    #[serde(default)]
    left: String,
    #[serde(default)]
    right: String,
}

/// The key expressions of each side, as written.
fn parse_on(on: &Value) -> std::result::Result<(Vec<String>, Vec<String>), String> {
    let strings = |v: Option<&Value>| -> Option<Vec<String>> {
        v?.as_array()?
            .iter()
            .map(|x| x.as_str().map(str::to_string))
            .collect()
    };
    match on {
        Value::Object(m) => {
            let left = strings(m.get("left")).ok_or("`on.left` must be a list of expressions")?;
            let right =
                strings(m.get("right")).ok_or("`on.right` must be a list of expressions")?;
            if left.len() != right.len() || left.is_empty() {
                return Err(
                    "`on.left` and `on.right` need the same number of keys (at least one)".into(),
                );
            }
            Ok((left, right))
        }
        Value::String(text) => {
            let (mut left, mut right) = (Vec::new(), Vec::new());
            let upper = text.to_ascii_uppercase();
            let mut rest = text.as_str();
            let mut rest_upper = upper.as_str();
            loop {
                let (part, more) = match rest_upper.find(" AND ") {
                    Some(i) => (&rest[..i], Some(i + 5)),
                    None => (rest, None),
                };
                let (a, b) = part
                    .split_once('=')
                    .ok_or_else(|| format!("`{}` is not an equality (l.x = r.y)", part.trim()))?;
                let side = |e: &str| -> std::result::Result<(bool, String), String> {
                    let e = e.trim();
                    if let Some(x) = e.strip_prefix("l.") {
                        Ok((true, x.to_string()))
                    } else if let Some(x) = e.strip_prefix("r.") {
                        Ok((false, x.to_string()))
                    } else {
                        Err(format!("`{e}`: prefix each side with l. or r."))
                    }
                };
                match (side(a)?, side(b)?) {
                    ((true, l), (false, r)) | ((false, r), (true, l)) => {
                        left.push(l);
                        right.push(r);
                    }
                    _ => {
                        return Err(format!(
                            "`{}` must compare a left and a right column",
                            part.trim()
                        ));
                    }
                }
                match more {
                    Some(i) => {
                        rest = &rest[i..];
                        rest_upper = &rest_upper[i..];
                    }
                    None => break,
                }
            }
            Ok((left, right))
        }
        _ => Err("expected \"l.a = r.b\" or {left: [..], right: [..]}".into()),
    }
}

#[derive(Clone)]
struct JoinFactory {
    schema: SchemaRef,
    inputs: [SchemaRef; 2],
    keys: [Vec<CompiledExpr>; 2],
    times: [Option<usize>; 2],
    how: JoinType,
    pairing: Pairing,
}

pub(crate) fn plan(ctx: &StageContext<'_>) -> Result<Arc<dyn StageFactory>, Diagnostics> {
    let config: JoinConfig = ctx.config()?;
    let mut d = Diagnostics::new();
    let [left, right] = [0, 1].map(|i| {
        ctx.inputs
            .get(i)
            .cloned()
            .unwrap_or_else(|| Arc::new(Schema::empty()))
    });
    let (left_sql, right_sql) = match parse_on(&config.on) {
        Ok(k) => k,
        Err(e) => {
            d.push(ctx.at("on"), e);
            (Vec::new(), Vec::new())
        }
    };
    let compile = |sqls: &[String], schema: &SchemaRef, side: &str, d: &mut Diagnostics| {
        sqls.iter()
            .enumerate()
            .filter_map(|(i, sql)| match streamflow_expr::compile(sql, schema) {
                Ok(e) => Some(e),
                Err(e) => {
                    d.push(ctx.at(&format!("on.{side}[{i}]")), e.message);
                    None
                }
            })
            .collect::<Vec<_>>()
    };
    let lk = compile(&left_sql, &left, "left", &mut d);
    let rk = compile(&right_sql, &right, "right", &mut d);
    for (i, (a, b)) in lk.iter().zip(&rk).enumerate() {
        if a.data_type() != b.data_type() {
            d.push(
                ctx.at(&format!("on[{i}]")),
                format!(
                    "keys of different types: {} is {}, {} is {} (cast one side)",
                    a.sql(),
                    a.data_type(),
                    b.sql(),
                    b.data_type()
                ),
            );
        }
    }
    let ms = |d: HumanDuration| d.0.as_millis() as i64;
    let pairing = match (config.kind, &config.window) {
        (JoinKind::Window, Some(JoinWindow::Tumbling { size })) => {
            Some(Pairing::Window(Assigner {
                size: ms(*size),
                slide: ms(*size),
            }))
        }
        (JoinKind::Window, Some(JoinWindow::Sliding { size, slide })) => {
            Some(Pairing::Window(Assigner {
                size: ms(*size),
                slide: ms(*slide),
            }))
        }
        (JoinKind::Window, None) => {
            d.push(ctx.at("window"), "a window join needs a window");
            None
        }
        (JoinKind::Table, Some(_)) => {
            d.push(ctx.at("window"), "only window joins take a window");
            None
        }
        (JoinKind::Table, None) => {
            if matches!(config.join, JoinType::Right | JoinType::Full) {
                d.push(
                    ctx.at("join"),
                    "a table join is inner or left (table rows alone produce nothing)",
                );
            }
            let buffer = config.buffer.as_ref();
            let max_rows = buffer.and_then(|b| b.max_rows).unwrap_or(100_000);
            if max_rows == 0 {
                d.push(ctx.at("buffer.max_rows"), "must be at least 1");
            }
            Some(Pairing::Table {
                ttl: buffer.and_then(|b| b.ttl).map(ms),
                max_rows,
            })
        }
        (JoinKind::Interval | JoinKind::Regular, Some(_)) => {
            d.push(ctx.at("window"), "only window joins take a window");
            None
        }
        (JoinKind::Regular, None) => {
            if config.between.is_some() {
                d.push(
                    ctx.at("between"),
                    "a regular join takes state_ttl, not `between`",
                );
            }
            // Rows match at any distance in time while they are kept.
            let ttl = config.state_ttl.map_or(i64::MAX, ms);
            Some(Pairing::Interval {
                lower: ttl.saturating_neg(),
                upper: ttl,
                regular: true,
            })
        }
        (JoinKind::Interval, None) => match &config.between {
            None => {
                d.push(
                    ctx.at("between"),
                    "an interval join needs between: {lower, upper}",
                );
                None
            }
            Some(b) => match (signed_ms(&b.lower), signed_ms(&b.upper)) {
                (Ok(lower), Ok(upper)) if lower <= upper => Some(Pairing::Interval {
                    lower,
                    upper,
                    regular: false,
                }),
                (Ok(_), Ok(_)) => {
                    d.push(ctx.at("between"), "lower must not exceed upper");
                    None
                }
                (Err(e), _) => {
                    d.push(ctx.at("between.lower"), e);
                    None
                }
                (_, Err(e)) => {
                    d.push(ctx.at("between.upper"), e);
                    None
                }
            },
        },
    };
    if config.kind != JoinKind::Table && config.buffer.is_some() {
        d.push(ctx.at("buffer"), "only table joins buffer rows");
    }
    if config.kind != JoinKind::Regular && config.state_ttl.is_some() {
        d.push(
            ctx.at("state_ttl"),
            "window and interval joins free their state by the watermark; state_ttl is for regular joins",
        );
    }
    if config.kind == JoinKind::Window && config.between.is_some() {
        d.push(
            ctx.at("between"),
            "a window join takes a window, not `between`",
        );
    }
    if let Some(Pairing::Window(a)) = pairing {
        check_assigner(ctx, a, &mut d);
    }
    let mut times = [None; 2];
    for (i, schema) in [&left, &right].into_iter().enumerate() {
        let side = if i == 0 { "left" } else { "right" };
        let declared = config.time_column.as_ref().and_then(|t| t.side(i));
        let time = match declared {
            Some(c) => match timestamp_index(schema, c) {
                Ok(t) => Some(t),
                Err(m) => {
                    d.push(ctx.at("time_column"), format!("{side} input: {m}"));
                    continue;
                }
            },
            None => ctx
                .input_event_times
                .get(i)
                .copied()
                .flatten()
                .and_then(|c| schema.index_of(c).ok()),
        };
        match time {
            Some(t) => times[i] = Some(t),
            // A table is not in time; its stream needs event time only for a buffer ttl.
            None if config.kind == JoinKind::Table
                && (i == 1 || config.buffer.as_ref().is_none_or(|b| b.ttl.is_none())) => {}
            None => d.push(
                ctx.at("input"),
                format!(
                    "the {side} input has no event time (declare event_time on its source, add a watermark stage, or set time_column)"
                ),
            ),
        }
    }
    let prefix = config.prefix.unwrap_or_default();
    let mut fields = Vec::new();
    if config.kind == JoinKind::Regular && config.join != JoinType::Inner {
        // Outer rows are retracted when a match arrives: a changelog.
        fields.push(Field::new(OP_COLUMN, DataType::Utf8, false));
    }
    if config.kind == JoinKind::Window {
        for bound in ["window_start", "window_end"] {
            fields.push(Field::new(
                bound,
                DataType::Timestamp(TimeUnit::Millisecond, None),
                false,
            ));
        }
    }
    // A table's changelog column describes the table, not the joined rows.
    let right_out = if config.kind == JoinKind::Table {
        without_op(&right)
    } else {
        Arc::clone(&right)
    };
    for (schema, p, nullable, side) in [
        (&left, &prefix.left, config.join.keeps_right(), "left"),
        (&right_out, &prefix.right, config.join.keeps_left(), "right"),
    ] {
        for f in schema.fields() {
            let name = format!("{p}{}", f.name());
            if fields.iter().any(|g| g.name() == &name) {
                d.push(
                    ctx.at("prefix"),
                    format!(
                        "output column '{name}' (from the {side} input) already exists: set prefix: {{left: .., right: ..}}"
                    ),
                );
            }
            fields.push(
                Field::new(name, f.data_type().clone(), f.is_nullable() || nullable)
                    .with_metadata(f.metadata().clone()),
            );
        }
    }
    d.into_result(())?;
    let pairing = pairing.ok_or_else(Diagnostics::new)?;
    Ok(Arc::new(JoinFactory {
        schema: Arc::new(Schema::new(fields)),
        inputs: [left, right],
        keys: [lk, rk],
        times,
        how: config.join,
        pairing,
    }))
}

/// The columns of `fields` from rows encoded by `conv`, null where a row
/// is `None` (the missing side of an outer join row).
fn decode_optional(
    conv: &RowConverter,
    fields: &arrow::datatypes::Fields,
    rows: &[Option<&[u8]>],
) -> Result<Vec<ArrayRef>> {
    let parser = conv.parser();
    let decoded = conv
        .convert_rows(rows.iter().flatten().map(|r| parser.parse(r)))
        .map_err(|e| Error::arrow("join output", e))?;
    if rows.iter().all(Option::is_some) {
        return Ok(decoded);
    }
    let mut next = 0u32;
    let idx: UInt32Array = rows
        .iter()
        .map(|r| {
            r.map(|_| {
                next += 1;
                next - 1
            })
        })
        .collect();
    decoded
        .iter()
        .zip(fields.iter())
        .map(|(c, field)| {
            if c.is_empty() {
                Ok(new_null_array(field.data_type(), rows.len()))
            } else {
                take(c.as_ref(), &idx, None).map_err(|e| Error::arrow("join output", e))
            }
        })
        .collect()
}

/// `schema` without the changelog column.
fn without_op(schema: &SchemaRef) -> SchemaRef {
    Arc::new(Schema::new(
        schema
            .fields()
            .iter()
            .filter(|f| f.name() != OP_COLUMN)
            .cloned()
            .collect::<Vec<_>>(),
    ))
}

impl JoinFactory {
    /// Key rows of one side (Arrow row format) and whether each key is
    /// non-null (null keys never match).
    fn keys(&self, side: usize, batch: &RecordBatch) -> Result<(Rows, Vec<bool>)> {
        let arrays = self.key_arrays(side, batch)?;
        let valid = (0..batch.num_rows())
            .map(|r| arrays.iter().all(|a| a.is_valid(r)))
            .collect();
        let conv = RowConverter::new(
            arrays
                .iter()
                .map(|a| SortField::new(a.data_type().clone()))
                .collect(),
        )
        .map_err(|e| Error::arrow("join keys", e))?;
        let rows = conv
            .convert_columns(&arrays)
            .map_err(|e| Error::arrow("join keys", e))?;
        Ok((rows, valid))
    }

    /// The event-time column of one side (checked at planning where needed).
    fn time_column(&self, side: usize) -> Result<usize> {
        self.times[side].ok_or_else(|| Error::Other("join input without event time".into()))
    }

    /// The join key columns of one side.
    fn key_arrays(&self, side: usize, batch: &RecordBatch) -> Result<Vec<ArrayRef>> {
        self.keys[side]
            .iter()
            .map(|k| {
                k.evaluate(batch).map_err(|e| Error::Expression {
                    expr: k.sql().into(),
                    message: e.message,
                })
            })
            .collect()
    }

    /// The key group of each encoded key (as made by [`keys`](Self::keys)).
    fn key_groups_of_keys(&self, side: usize, keys: &[&[u8]]) -> Result<Vec<u32>> {
        let conv = RowConverter::new(
            self.keys[side]
                .iter()
                .map(|k| SortField::new(k.data_type().clone()))
                .collect(),
        )
        .map_err(|e| Error::arrow("join keys", e))?;
        let parser = conv.parser();
        let columns = conv
            .convert_rows(keys.iter().map(|k| parser.parse(k)))
            .map_err(|e| Error::arrow("join keys", e))?;
        streamflow_state::key_groups(&columns)
    }

    /// The key group of each row of one side (where its state is kept).
    fn key_groups(&self, side: usize, batch: &RecordBatch) -> Result<Vec<u32>> {
        streamflow_state::key_groups(&self.key_arrays(side, batch)?)
    }
}

impl StageFactory for JoinFactory {
    fn output_schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }
    fn create(&self) -> Box<dyn Operator> {
        let factory = Arc::new(self.clone());
        match self.pairing {
            Pairing::Window(assigner) => Box::new(WindowJoin {
                factory,
                assigner,
                windows: BTreeMap::new(),
                watermark: i64::MIN,
            }),
            Pairing::Interval {
                lower,
                upper,
                regular,
            } => Box::new(interval::IntervalJoin::new(factory, lower, upper, regular)),
            Pairing::Table { ttl, max_rows } => {
                Box::new(table::TableJoin::new(factory, ttl, max_rows))
            }
        }
    }
    fn partition_keys(&self) -> Option<Vec<Vec<CompiledExpr>>> {
        Some(self.keys.to_vec())
    }
    fn late_schema(&self) -> Option<SchemaRef> {
        Some(late_schema())
    }
}

/// Late records of a join (its two inputs differ): `input` (`left` or
/// `right`), the row's `event_time`, and the row itself as JSON (`row`).
fn late_schema() -> SchemaRef {
    static SCHEMA: std::sync::OnceLock<SchemaRef> = std::sync::OnceLock::new();
    Arc::clone(SCHEMA.get_or_init(|| {
        Arc::new(Schema::new(vec![
            Field::new("input", DataType::Utf8, false),
            Field::new(
                "event_time",
                DataType::Timestamp(TimeUnit::Millisecond, None),
                true,
            ),
            Field::new("row", DataType::Utf8, false),
        ]))
    }))
}

impl JoinFactory {
    /// Sends rows `rows` of `batch` (from input `side`) to the late output.
    fn emit_late(
        &self,
        side: usize,
        batch: &RecordBatch,
        rows: Vec<u32>,
        out: &mut Output,
    ) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let late = take_record_batch(batch, &UInt32Array::from(rows))
            .map_err(|e| Error::arrow("late rows", e))?;
        let n = late.num_rows();
        let time: ArrayRef = match self.times[side] {
            Some(t) => Arc::new(millis(late.column(t))?.clone()),
            None => new_null_array(&DataType::Timestamp(TimeUnit::Millisecond, None), n),
        };
        let json = crate::row_errors::rows_as_json(&late);
        let columns: Vec<ArrayRef> = vec![
            Arc::new(arrow::array::StringArray::from(vec![
                if side == 0 {
                    "left"
                } else {
                    "right"
                };
                n
            ])),
            time,
            Arc::new(arrow::array::StringArray::from(json)),
        ];
        out.emit_late(
            RecordBatch::try_new(late_schema(), columns)
                .map_err(|e| Error::arrow("late rows", e))?,
        );
        Ok(())
    }
}

/// The rows of both sides that fell into one window.
#[derive(Default)]
struct Sides {
    rows: [Vec<RecordBatch>; 2],
}

struct WindowJoin {
    factory: Arc<JoinFactory>,
    assigner: Assigner,
    windows: BTreeMap<i64, Sides>,
    watermark: i64,
}

impl WindowJoin {
    /// Joins the rows of one window and emits the result.
    fn join(&self, start: i64, sides: Sides, out: &mut Output) -> Result<()> {
        let f = &self.factory;
        let [l, r] = [0, 1].map(|i| {
            concat_batches(&f.inputs[i], &sides.rows[i]).map_err(|e| Error::arrow("join rows", e))
        });
        let (l, r) = (l?, r?);
        let (lkeys, lvalid) = f.keys(0, &l)?;
        let (rkeys, rvalid) = f.keys(1, &r)?;
        let mut table: HashMap<&[u8], Vec<u32>> = HashMap::new();
        for (i, valid) in rvalid.iter().enumerate() {
            if *valid {
                table.entry(rkeys.row(i).data()).or_default().push(i as u32);
            }
        }
        let mut li: Vec<Option<u32>> = Vec::new();
        let mut ri: Vec<Option<u32>> = Vec::new();
        let mut right_matched = vec![false; r.num_rows()];
        for (i, valid) in lvalid.iter().enumerate() {
            let matches = if *valid {
                table.get(lkeys.row(i).data())
            } else {
                None
            };
            match matches {
                Some(rows) => {
                    for &j in rows {
                        li.push(Some(i as u32));
                        ri.push(Some(j));
                        right_matched[j as usize] = true;
                    }
                }
                None if f.how.keeps_left() => {
                    li.push(Some(i as u32));
                    ri.push(None);
                }
                None => {}
            }
        }
        if f.how.keeps_right() {
            for (j, matched) in right_matched.iter().enumerate() {
                if !matched {
                    li.push(None);
                    ri.push(Some(j as u32));
                }
            }
        }
        let n = li.len();
        if n == 0 {
            return Ok(());
        }
        let mut columns: Vec<ArrayRef> = vec![
            Arc::new(TimestampMillisecondArray::from_value(start, n)),
            Arc::new(TimestampMillisecondArray::from_value(
                start + self.assigner.size,
                n,
            )),
        ];
        for (batch, idx) in [(&l, li), (&r, ri)] {
            let idx = UInt32Array::from(idx);
            for c in batch.columns() {
                columns.push(if c.is_empty() {
                    new_null_array(c.data_type(), n)
                } else {
                    take(c.as_ref(), &idx, None).map_err(|e| Error::arrow("join output", e))?
                });
            }
        }
        out.emit(
            RecordBatch::try_new(Arc::clone(&f.schema), columns)
                .map_err(|e| Error::arrow("join output", e))?,
        );
        Ok(())
    }
}

#[async_trait]
impl Operator for WindowJoin {
    async fn process_batch(
        &mut self,
        input: usize,
        batch: RecordBatch,
        out: &mut Output,
    ) -> Result<()> {
        let side = input.min(1);
        let a = self.assigner;
        let times = millis(batch.column(self.factory.time_column(side)?))?;
        let mut rows_of: BTreeMap<i64, Vec<u32>> = BTreeMap::new();
        let mut late = Vec::new();
        for row in 0..batch.num_rows() {
            if times.is_null(row) {
                null_event_time(&batch, row, out);
                continue;
            }
            let mut placed = false;
            for start in a.windows(times.value(row)) {
                if !a.fired(start, self.watermark) {
                    rows_of.entry(start).or_default().push(row as u32);
                    placed = true;
                }
            }
            if !placed {
                late.push(row as u32);
            }
        }
        for (start, rows) in rows_of {
            let part = if rows.len() == batch.num_rows() {
                batch.clone()
            } else {
                take_record_batch(&batch, &UInt32Array::from(rows))
                    .map_err(|e| Error::arrow("join rows", e))?
            };
            self.windows.entry(start).or_default().rows[side].push(part);
        }
        self.factory.emit_late(side, &batch, late, out)?;
        Ok(())
    }

    async fn process_watermark(&mut self, watermark: Watermark, out: &mut Output) -> Result<()> {
        self.watermark = self.watermark.max(watermark.0);
        tracing::trace!(
            windows = self.windows.len(),
            rows = self
                .windows
                .values()
                .flat_map(|s| s.rows.iter().flatten())
                .map(RecordBatch::num_rows)
                .sum::<usize>(),
            "join state"
        );
        while let Some(entry) = self.windows.first_entry() {
            if !self.assigner.fired(*entry.key(), self.watermark) {
                break;
            }
            let (start, sides) = entry.remove_entry();
            self.join(start, sides, out)?;
        }
        Ok(())
    }

    async fn finish(&mut self, out: &mut Output) -> Result<()> {
        self.process_watermark(Watermark::MAX, out).await
    }

    async fn open(&mut self, restored: Option<OperatorSnapshot>) -> Result<()> {
        let Some(snap) = restored else {
            return Ok(());
        };
        self.watermark = snapshot::watermark(&snap)?;
        for side in 0..2 {
            let Some(b) = snapshot::entries(&snap, &format!("side{side}"))? else {
                continue;
            };
            let starts = snapshot::int64(&b, "_start")?.clone();
            let data = b
                .project(&(1..b.num_columns()).collect::<Vec<_>>())
                .map_err(|e| Error::arrow("join state", e))?;
            let data = RecordBatch::try_new(
                Arc::clone(&self.factory.inputs[side]),
                data.columns().to_vec(),
            )
            .map_err(|e| Error::arrow("join state", e))?;
            let mut by_start: BTreeMap<i64, Vec<u32>> = BTreeMap::new();
            for r in 0..starts.len() {
                by_start.entry(starts.value(r)).or_default().push(r as u32);
            }
            for (start, rows) in by_start {
                let part = take_record_batch(&data, &UInt32Array::from(rows))
                    .map_err(|e| Error::arrow("join state", e))?;
                self.windows.entry(start).or_default().rows[side].push(part);
            }
        }
        Ok(())
    }

    /// Per side: the buffered rows with their window start (`_start`),
    /// tagged with the key group of their join key.
    async fn snapshot(&mut self, _barrier: &CheckpointBarrier) -> Result<OperatorSnapshot> {
        let mut snap = OperatorSnapshot::default();
        snapshot::put_watermark(&mut snap, self.watermark)?;
        for side in 0..2 {
            let mut parts = Vec::new();
            let mut starts = Vec::new();
            for (start, sides) in &self.windows {
                for b in &sides.rows[side] {
                    starts.extend(std::iter::repeat_n(*start, b.num_rows()));
                    parts.push(b.clone());
                }
            }
            if parts.is_empty() {
                continue;
            }
            let data = concat_batches(&self.factory.inputs[side], &parts)
                .map_err(|e| Error::arrow("join state", e))?;
            let groups = self.factory.key_groups(side, &data)?;
            let mut cols: Vec<(String, ArrayRef)> =
                vec![("_start".into(), Arc::new(Int64Array::from(starts)))];
            for (field, column) in data.schema().fields().iter().zip(data.columns()) {
                cols.push((field.name().clone(), Arc::clone(column)));
            }
            streamflow_state::put_keyed(
                &mut snap,
                &format!("side{side}"),
                snapshot::batch(cols)?,
                Some(&groups),
            )?;
        }
        Ok(snap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::harness::{Step, assert_restores_exactly};
    use proptest::prelude::*;

    fn side_schema(value: &str) -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("t", DataType::Timestamp(TimeUnit::Millisecond, None), false),
            Field::new("k", DataType::Int64, true),
            Field::new(value, DataType::Int64, false),
        ]))
    }

    fn stage(how: &str) -> Arc<dyn StageFactory> {
        stage_with(serde_json::json!({
            "kind": "window",
            "on": "l.k = r.k",
            "join": how,
            "window": {"kind": "sliding", "size": "200ms", "slide": "100ms"},
            "prefix": {"left": "l_", "right": "r_"},
        }))
    }

    fn interval_stage(how: &str) -> Arc<dyn StageFactory> {
        stage_with(serde_json::json!({
            "kind": "interval",
            "on": {"left": ["k"], "right": ["k"]},
            "join": how,
            "between": {"lower": "-50ms", "upper": "120ms"},
            "prefix": {"left": "l_", "right": "r_"},
        }))
    }

    fn stage_with(settings: Value) -> Arc<dyn StageFactory> {
        let settings = settings.as_object().cloned().unwrap_or_default();
        plan(&StageContext {
            name: "j",
            path: "stages[0]",
            settings: &settings,
            inputs: &[side_schema("v"), side_schema("w")],
            key_by: &[],
            event_time: Some("t"),
            input_event_times: &[Some("t"), Some("t")],
            components: crate::process::Components::builtin(),
        })
        .map_err(|d| format!("{d:?}"))
        .expect("plans")
    }

    type Event = (i64, Option<i64>, i64);

    fn batch(schema: SchemaRef, rows: &[Event]) -> RecordBatch {
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(TimestampMillisecondArray::from(
                    rows.iter().map(|e| e.0).collect::<Vec<_>>(),
                )),
                Arc::new(Int64Array::from(
                    rows.iter().map(|e| e.1).collect::<Vec<_>>(),
                )),
                Arc::new(Int64Array::from(
                    rows.iter().map(|e| e.2).collect::<Vec<_>>(),
                )),
            ],
        )
        .expect("batch")
    }

    /// Both sides in chunks, alternating, each followed by a watermark that
    /// trails the newest time seen by `lag`.
    fn steps(left: &[Event], right: &[Event], chunk: usize, lag: i64) -> Vec<Step> {
        let mut out = Vec::new();
        let mut max = i64::MIN;
        let (mut l, mut r) = (left.chunks(chunk), right.chunks(chunk));
        loop {
            let (a, b) = (l.next(), r.next());
            if a.is_none() && b.is_none() {
                break;
            }
            for (i, part) in [(0, a), (1, b)] {
                if let Some(part) = part {
                    let schema = side_schema(if i == 0 { "v" } else { "w" });
                    out.push(Step::Input(i, batch(schema, part)));
                    max = max.max(part.iter().map(|e| e.0).max().unwrap_or(i64::MIN));
                }
            }
            out.push(Step::Watermark(max - lag - 1));
        }
        out
    }

    /// The output rows as text, sorted.
    fn run(how: &str, steps: &[Step]) -> (Vec<String>, usize) {
        run_stage(&stage(how), steps, true)
    }

    fn run_stage(
        stage: &Arc<dyn StageFactory>,
        steps: &[Step],
        windowed: bool,
    ) -> (Vec<String>, usize) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let mut op = stage.create();
            let mut out = Output::new();
            for s in steps {
                match s {
                    Step::Input(i, b) => op.process_batch(*i, b.clone(), &mut out).await,
                    Step::Batch(b) => op.process_batch(0, b.clone(), &mut out).await,
                    Step::Watermark(w) => op.process_watermark(Watermark(*w), &mut out).await,
                }
                .expect("step");
            }
            op.finish(&mut out).await.expect("finish");
            let late: usize = out.take_late().iter().map(|b| b.num_rows()).sum();
            let mut rows = Vec::new();
            for b in out.take_batches() {
                for r in 0..b.num_rows() {
                    let cell = |c: usize| {
                        arrow::util::display::array_value_to_string(b.column(c), r).expect("format")
                    };
                    let ms = |c: usize| {
                        b.column(c)
                            .as_any()
                            .downcast_ref::<TimestampMillisecondArray>()
                            .map(|a| {
                                if a.is_null(r) {
                                    "-".to_string()
                                } else {
                                    a.value(r).to_string()
                                }
                            })
                            .expect("ts")
                    };
                    rows.push(if windowed {
                        format!(
                            "{}|{}|{}|{}|{}|{}",
                            ms(0),
                            ms(2),
                            cell(4),
                            ms(5),
                            cell(6),
                            cell(7)
                        )
                    } else {
                        format!("{}|{}|{}|{}|{}", ms(0), cell(2), ms(3), cell(4), cell(5))
                    });
                }
            }
            rows.sort();
            (rows, late)
        })
    }

    /// Nested-loop join per window over the rows that were on time.
    fn expected(how: &str, left: &[Event], right: &[Event], chunk: usize, lag: i64) -> Vec<String> {
        let a = Assigner {
            size: 200,
            slide: 100,
        };
        // Which rows were on time for which windows, replaying the watermark.
        let mut placed: [BTreeMap<i64, Vec<Event>>; 2] = [BTreeMap::new(), BTreeMap::new()];
        let mut wm = i64::MIN;
        let mut max = i64::MIN;
        let (mut l, mut r) = (left.chunks(chunk), right.chunks(chunk));
        loop {
            let (x, y) = (l.next(), r.next());
            if x.is_none() && y.is_none() {
                break;
            }
            for (i, part) in [(0, x), (1, y)] {
                for e in part.unwrap_or_default() {
                    for s in a.windows(e.0) {
                        if !a.fired(s, wm) {
                            placed[i].entry(s).or_default().push(*e);
                        }
                    }
                }
                if let Some(p) = part {
                    max = max.max(p.iter().map(|e| e.0).max().unwrap_or(i64::MIN));
                }
            }
            wm = wm.max(max - lag - 1);
        }
        let starts: std::collections::BTreeSet<i64> =
            placed.iter().flat_map(|m| m.keys().copied()).collect();
        let mut rows = Vec::new();
        let opt = |k: Option<i64>| k.map_or(String::new(), |k| k.to_string());
        for s in starts {
            let ls = placed[0].get(&s).cloned().unwrap_or_default();
            let rs = placed[1].get(&s).cloned().unwrap_or_default();
            let mut rmatched = vec![false; rs.len()];
            for le in &ls {
                let mut any = false;
                for (j, re) in rs.iter().enumerate() {
                    if le.1.is_some() && le.1 == re.1 {
                        any = true;
                        rmatched[j] = true;
                        rows.push(format!(
                            "{s}|{}|{}|{}|{}|{}",
                            le.0,
                            le.2,
                            re.0,
                            opt(re.1),
                            re.2
                        ));
                    }
                }
                if !any && (how == "left" || how == "full") {
                    rows.push(format!("{s}|{}|{}|-||", le.0, le.2));
                }
            }
            if how == "right" || how == "full" {
                for (j, re) in rs.iter().enumerate() {
                    if !rmatched[j] {
                        rows.push(format!("{s}|-||{}|{}|{}", re.0, opt(re.1), re.2));
                    }
                }
            }
        }
        rows.sort();
        rows
    }

    /// Nested-loop interval join over the rows that were on time.
    fn expected_interval(
        how: &str,
        left: &[Event],
        right: &[Event],
        chunk: usize,
        lag: i64,
    ) -> Vec<String> {
        let (lower, upper) = (-50, 120);
        let mut on_time: [Vec<Event>; 2] = [Vec::new(), Vec::new()];
        let mut wm = i64::MIN;
        let mut max = i64::MIN;
        let (mut l, mut r) = (left.chunks(chunk), right.chunks(chunk));
        loop {
            let (x, y) = (l.next(), r.next());
            if x.is_none() && y.is_none() {
                break;
            }
            for (i, part) in [(0, x), (1, y)] {
                for e in part.unwrap_or_default() {
                    if e.0 > wm {
                        on_time[i].push(*e);
                    }
                }
                if let Some(p) = part {
                    max = max.max(p.iter().map(|e| e.0).max().unwrap_or(i64::MIN));
                }
            }
            wm = wm.max(max - lag - 1);
        }
        let [ls, rs] = on_time;
        nested_loop(how, &ls, &rs, |l, r| {
            l.0 + lower <= r.0 && r.0 <= l.0 + upper
        })
    }

    /// Output rows (as the runners format them) of a nested-loop `how`
    /// join on equal non-null keys where `in_time(left, right)` holds.
    fn nested_loop(
        how: &str,
        left: &[Event],
        right: &[Event],
        in_time: impl Fn(&Event, &Event) -> bool,
    ) -> Vec<String> {
        let opt = |k: Option<i64>| k.map_or(String::new(), |k| k.to_string());
        let mut rows = Vec::new();
        let mut rmatched = vec![false; right.len()];
        for le in left {
            let mut any = false;
            for (j, re) in right.iter().enumerate() {
                if le.1.is_some() && le.1 == re.1 && in_time(le, re) {
                    any = true;
                    rmatched[j] = true;
                    rows.push(format!("{}|{}|{}|{}|{}", le.0, le.2, re.0, opt(re.1), re.2));
                }
            }
            if !any && (how == "left" || how == "full") {
                rows.push(format!("{}|{}|-||", le.0, le.2));
            }
        }
        if how == "right" || how == "full" {
            for (j, re) in right.iter().enumerate() {
                if !rmatched[j] {
                    rows.push(format!("-||{}|{}|{}", re.0, opt(re.1), re.2));
                }
            }
        }
        rows.sort();
        rows
    }

    fn regular_stage(how: &str, ttl: Option<&str>) -> Arc<dyn StageFactory> {
        let mut settings = serde_json::json!({
            "kind": "regular",
            "on": "l.k = r.k",
            "join": how,
            "prefix": {"left": "l_", "right": "r_"},
        });
        if let Some(ttl) = ttl {
            settings["state_ttl"] = ttl.into();
        }
        stage_with(settings)
    }

    /// Runs a stage whose output is a changelog and applies it: the rows
    /// present at the end, as text, sorted. Every `-D` must retract a row
    /// that is present and has a null side.
    fn run_changelog(stage: &Arc<dyn StageFactory>, steps: &[Step]) -> Vec<String> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let mut op = stage.create();
            let mut out = Output::new();
            let mut present: Vec<String> = Vec::new();
            let mut apply = |out: &mut Output| {
                for b in out.take_batches() {
                    assert_eq!(b.schema().field(0).name(), OP_COLUMN);
                    let cell = |c: usize, r: usize| {
                        arrow::util::display::array_value_to_string(b.column(c), r).expect("format")
                    };
                    for r in 0..b.num_rows() {
                        let ms = |c: usize| {
                            if b.column(c).is_null(r) {
                                "-".to_string()
                            } else {
                                millis(b.column(c)).expect("ts").value(r).to_string()
                            }
                        };
                        let row = format!(
                            "{}|{}|{}|{}|{}",
                            ms(1),
                            cell(3, r),
                            ms(4),
                            cell(5, r),
                            cell(6, r)
                        );
                        match cell(0, r).as_str() {
                            "+I" => present.push(row),
                            "-D" => {
                                assert!(row.contains("-||") || row.starts_with("-|"), "{row}");
                                let at = present.iter().position(|p| *p == row);
                                present.swap_remove(
                                    at.unwrap_or_else(|| panic!("-D of absent {row}")),
                                );
                            }
                            other => panic!("unexpected {other}"),
                        }
                    }
                }
            };
            for s in steps {
                match s {
                    Step::Input(i, b) => op.process_batch(*i, b.clone(), &mut out).await,
                    Step::Batch(b) => op.process_batch(0, b.clone(), &mut out).await,
                    Step::Watermark(w) => op.process_watermark(Watermark(*w), &mut out).await,
                }
                .expect("step");
                apply(&mut out);
            }
            op.finish(&mut out).await.expect("finish");
            apply(&mut out);
            present.sort();
            present
        })
    }

    /// Nested-loop join of all rows, at any distance in time.
    fn expected_regular(how: &str, left: &[Event], right: &[Event]) -> Vec<String> {
        nested_loop(how, left, right, |_, _| true)
    }

    #[test]
    fn outer_regular_joins_retract_and_expire_by_ttl() {
        let l = |rows: &[Event]| Step::Input(0, batch(side_schema("v"), rows));
        let r = |rows: &[Event]| Step::Input(1, batch(side_schema("w"), rows));
        let stage = regular_stage("left", Some("50ms"));
        assert_eq!(stage.output_schema().field(0).name(), OP_COLUMN);
        let steps = [
            l(&[(0, Some(1), 10), (5, Some(2), 20)]),
            // Matches the first left row: its null row is retracted.
            r(&[(30, Some(1), 7)]),
            // The second left row expires (5 + 50 <= 60) unmatched: nothing.
            Step::Watermark(60),
            r(&[(70, Some(2), 8)]),
            // Arrives expired (0 + 50 <= 60): late, no output.
            l(&[(0, Some(2), 30)]),
        ];
        assert_eq!(
            run_changelog(&stage, &steps),
            vec!["0|10|30|1|7".to_string(), "5|20|-||".to_string()]
        );
        let (_, late) = run_stage(&regular_stage("inner", Some("50ms")), &steps, false);
        assert_eq!(late, 1);
    }

    fn events() -> impl Strategy<Value = Vec<Event>> {
        proptest::collection::vec(
            (
                0i64..1_500,
                proptest::option::weighted(0.9, 0i64..5),
                -20i64..20,
            ),
            0..60,
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn window_joins_equal_a_nested_loop_join(
            left in events(),
            right in events(),
            chunk in 1usize..15,
            lag in 0i64..400,
            how in 0usize..4,
        ) {
            let how = ["inner", "left", "right", "full"][how];
            let steps = steps(&left, &right, chunk, lag);
            let (got, _) = run(how, &steps);
            prop_assert_eq!(got, expected(how, &left, &right, chunk, lag));
        }

        #[test]
        fn interval_joins_equal_a_nested_loop_join(
            left in events(),
            right in events(),
            chunk in 1usize..15,
            lag in 0i64..400,
            how in 0usize..4,
        ) {
            let how = ["inner", "left", "right", "full"][how];
            let steps = steps(&left, &right, chunk, lag);
            let (got, _) = run_stage(&interval_stage(how), &steps, false);
            prop_assert_eq!(got, expected_interval(how, &left, &right, chunk, lag));
        }

        #[test]
        fn outer_regular_joins_applied_equal_a_nested_loop_join(
            left in events(),
            right in events(),
            chunk in 1usize..15,
            lag in 0i64..400,
            how in 1usize..4,
        ) {
            let how = ["inner", "left", "right", "full"][how];
            let steps = steps(&left, &right, chunk, lag);
            let got = run_changelog(&regular_stage(how, None), &steps);
            prop_assert_eq!(got, expected_regular(how, &left, &right));
        }

        #[test]
        fn joins_restored_from_a_snapshot_continue_exactly(
            left in events(),
            right in events(),
            chunk in 1usize..15,
            lag in 0i64..400,
            cut in 0usize..100,
        ) {
            let steps = steps(&left, &right, chunk, lag);
            let cut = cut % (steps.len() + 1);
            // Window, interval and (outer, changelog) regular joins.
            for stage in [stage("full"), interval_stage("full"), regular_stage("full", Some("300ms"))] {
                assert_restores_exactly(|| stage.create(), &steps, cut);
            }
        }
    }

    #[test]
    fn on_conditions_parse_in_either_order() {
        let (l, r) =
            parse_on(&Value::String("l.id = r.seller AND r.c = l.cat".into())).expect("parses");
        assert_eq!(l, vec!["id", "cat"]);
        assert_eq!(r, vec!["seller", "c"]);
        assert!(parse_on(&Value::String("id = seller".into())).is_err());
        assert!(parse_on(&Value::String("l.a = l.b".into())).is_err());
        let (l, r) = parse_on(&serde_json::json!({"left": ["a"], "right": ["b"]})).expect("list");
        assert_eq!((l, r), (vec!["a".to_string()], vec!["b".to_string()]));
    }
}
