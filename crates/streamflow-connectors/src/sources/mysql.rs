//! `mysql`: reads a MySQL or MariaDB table or query, then (with
//! `incremental_column`) the rows added since, by a column that only grows.
//!
//! The schema comes from the server's description of the query (a
//! prepared statement). Rows are read in order of `incremental_column`,
//! `batch_size` at a time; the last value read is the source's position in
//! checkpoints, so a restart goes on after it (rows sharing the last value
//! read must all have arrived by then, as with any incremental read). Once
//! caught up the source polls every `poll`, or ends when `bounded`. Without
//! an incremental column the query is read once (a snapshot). `DECIMAL` is
//! read as a float; one instance reads the query. The session runs in UTC.
//!
//! ```yaml
//! - name: orders
//!   type: mysql
//!   config: {url: "mysql://root@127.0.0.1:3306/shop", table: orders, incremental_column: id, poll: 1s}
//! ```

use std::sync::Arc;
use std::time::Duration;

use arrow::array::{
    ArrayRef, Date32Builder, Float32Builder, Float64Builder, Int32Builder, Int64Builder,
    StringBuilder, TimestampMicrosecondBuilder,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use mysql_async::consts::ColumnType;
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Row, Value as Sql};
use serde::Deserialize;
use streamflow_core::{Diagnostic, Diagnostics, Error, Result, Source};
use streamflow_dsl::HumanDuration;

use super::incremental::{IncrementalSource, Query};
use crate::registry::{SourceContext, SourceFactory};
use crate::sinks::mysql::{MysqlEndpoint, ident, mysql_error};

/// Settings of a `mysql` source.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MysqlSourceConfig {
    /// The server.
    #[serde(flatten)]
    pub endpoint: MysqlEndpoint,
    /// A query (`SELECT …`); or `table`.
    pub query: Option<String>,
    /// A table to read whole; or `query`.
    pub table: Option<String>,
    /// A column whose values only grow (an id, an insertion time): rows
    /// are read in its order and new rows after the last one read.
    pub incremental_column: Option<String>,
    /// How often to look for new rows once caught up.
    pub poll: Option<HumanDuration>,
    /// End once caught up (job mode).
    #[serde(default)]
    pub bounded: bool,
    /// Rows per query.
    #[serde(default = "default_batch")]
    pub batch_size: usize,
}

fn default_batch() -> usize {
    10_000
}

/// How a column is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Int64,
    Int32,
    Float64,
    Float32,
    Text,
    Date,
    Timestamp,
}

impl Kind {
    fn of(t: ColumnType) -> Option<Self> {
        use ColumnType as T;
        Some(match t {
            T::MYSQL_TYPE_LONGLONG => Self::Int64,
            T::MYSQL_TYPE_LONG
            | T::MYSQL_TYPE_INT24
            | T::MYSQL_TYPE_SHORT
            | T::MYSQL_TYPE_TINY
            | T::MYSQL_TYPE_YEAR => Self::Int32,
            T::MYSQL_TYPE_DOUBLE | T::MYSQL_TYPE_DECIMAL | T::MYSQL_TYPE_NEWDECIMAL => {
                Self::Float64
            }
            T::MYSQL_TYPE_FLOAT => Self::Float32,
            T::MYSQL_TYPE_VARCHAR
            | T::MYSQL_TYPE_VAR_STRING
            | T::MYSQL_TYPE_STRING
            | T::MYSQL_TYPE_TINY_BLOB
            | T::MYSQL_TYPE_BLOB
            | T::MYSQL_TYPE_MEDIUM_BLOB
            | T::MYSQL_TYPE_LONG_BLOB
            | T::MYSQL_TYPE_JSON
            | T::MYSQL_TYPE_ENUM
            | T::MYSQL_TYPE_SET => Self::Text,
            T::MYSQL_TYPE_DATE | T::MYSQL_TYPE_NEWDATE => Self::Date,
            T::MYSQL_TYPE_DATETIME
            | T::MYSQL_TYPE_DATETIME2
            | T::MYSQL_TYPE_TIMESTAMP
            | T::MYSQL_TYPE_TIMESTAMP2 => Self::Timestamp,
            _ => return None,
        })
    }

    fn arrow(self) -> DataType {
        match self {
            Self::Int64 => DataType::Int64,
            Self::Int32 => DataType::Int32,
            Self::Float64 => DataType::Float64,
            Self::Float32 => DataType::Float32,
            Self::Text => DataType::Utf8,
            Self::Date => DataType::Date32,
            Self::Timestamp => DataType::Timestamp(TimeUnit::Microsecond, None),
        }
    }
}

pub(crate) fn plan(ctx: &SourceContext<'_>) -> Result<Arc<dyn SourceFactory>, Diagnostics> {
    let config: MysqlSourceConfig = ctx.config()?;
    let fail = |k: &str, m: String| Diagnostics::from(Diagnostic::new(ctx.at(k), m));
    let query = match (&config.query, &config.table) {
        (Some(q), None) => q.trim().trim_end_matches(';').to_string(),
        (None, Some(t)) => format!("SELECT * FROM {}", ident(t)),
        _ => return Err(fail("query", "set one of query or table".into())),
    };
    if config.batch_size == 0 {
        return Err(fail("batch_size", "must be positive".into()));
    }
    config.endpoint.check(|k| ctx.at(k))?;
    let bounded = config.bounded || config.incremental_column.is_none();
    let columns = describe(&config, &query).map_err(|m| fail("query", m))?;
    let mut fields = Vec::new();
    let mut kinds = Vec::new();
    let mut d = Diagnostics::new();
    for (name, t) in &columns {
        match Kind::of(*t) {
            Some(k) => {
                fields.push(Field::new(name, k.arrow(), true));
                kinds.push(k);
            }
            None => d.push(
                ctx.at("query"),
                format!("column '{name}' has type {t:?}; cast it in the query (e.g. CAST({name} AS CHAR))"),
            ),
        }
    }
    let cursor = match &config.incremental_column {
        None => None,
        Some(c) => match columns.iter().position(|(n, _)| n == c) {
            Some(i)
                if matches!(
                    kinds.get(i),
                    Some(Kind::Int64 | Kind::Int32 | Kind::Timestamp)
                ) =>
            {
                Some(i)
            }
            Some(_) => {
                d.push(
                    ctx.at("incremental_column"),
                    format!("'{c}' must be an integer or a date-time column"),
                );
                None
            }
            None => {
                d.push(
                    ctx.at("incremental_column"),
                    format!("'{c}' is not a column of the query"),
                );
                None
            }
        },
    };
    d.into_result(())?;
    Ok(Arc::new(MysqlSourceFactory {
        schema: Arc::new(Schema::new(fields)),
        kinds,
        query,
        cursor,
        bounded,
        config: Arc::new(config),
    }))
}

/// The names and types of the query's columns, asked of the server.
fn describe(
    config: &MysqlSourceConfig,
    query: &str,
) -> std::result::Result<Vec<(String, ColumnType)>, String> {
    let (endpoint, query) = (config.endpoint.clone(), query.to_string());
    crate::server::at_plan_time(move || async move {
        let mut conn = endpoint.connect().await.map_err(|e| e.to_string())?;
        let statement = conn.prep(&query).await.map_err(|e| e.to_string())?;
        let columns = statement
            .columns()
            .iter()
            .map(|c| (c.name_str().into_owned(), c.column_type()))
            .collect();
        let _ = conn.disconnect().await;
        Ok(columns)
    })
}

struct MysqlSourceFactory {
    config: Arc<MysqlSourceConfig>,
    query: String,
    schema: SchemaRef,
    kinds: Vec<Kind>,
    /// Index of the incremental column.
    cursor: Option<usize>,
    bounded: bool,
}

impl SourceFactory for MysqlSourceFactory {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn bounded(&self) -> bool {
        self.bounded
    }

    fn create(&self, instance: usize, _parallelism: usize) -> Result<Box<dyn Source>> {
        let query = MysqlQuery {
            config: Arc::clone(&self.config),
            query: self.query.clone(),
            schema: Arc::clone(&self.schema),
            kinds: self.kinds.clone(),
            cursor: self.cursor,
            conn: None,
        };
        let poll = self.config.poll.map_or(Duration::from_secs(1), |p| p.0);
        Ok(Box::new(IncrementalSource::new(
            query,
            poll,
            self.bounded,
            instance == 0,
            "mysql",
        )))
    }
}

struct MysqlQuery {
    config: Arc<MysqlSourceConfig>,
    query: String,
    schema: SchemaRef,
    kinds: Vec<Kind>,
    cursor: Option<usize>,
    conn: Option<Conn>,
}

/// A date and time value as microseconds since the epoch (UTC).
fn micros(v: &Sql) -> Option<i64> {
    match v {
        Sql::Date(y, mo, d, h, mi, s, us) => {
            let date =
                chrono::NaiveDate::from_ymd_opt(i32::from(*y), u32::from(*mo), u32::from(*d))?;
            let time = chrono::NaiveTime::from_hms_micro_opt(
                u32::from(*h),
                u32::from(*mi),
                u32::from(*s),
                *us,
            )?;
            Some(date.and_time(time).and_utc().timestamp_micros())
        }
        _ => None,
    }
}

/// Microseconds since the epoch as a date and time parameter.
fn datetime(micros: i64) -> Sql {
    use chrono::{Datelike, Timelike};
    match chrono::DateTime::from_timestamp_micros(micros) {
        Some(t) => Sql::Date(
            t.year() as u16,
            t.month() as u8,
            t.day() as u8,
            t.hour() as u8,
            t.minute() as u8,
            t.second() as u8,
            t.timestamp_subsec_micros(),
        ),
        None => Sql::NULL,
    }
}

/// An integer value (binary protocol, or text).
fn integer(v: &Sql) -> Option<i64> {
    match v {
        Sql::Int(i) => Some(*i),
        Sql::UInt(u) => i64::try_from(*u).ok(),
        Sql::Bytes(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        _ => None,
    }
}

/// A floating-point value (`DECIMAL` arrives as text).
fn float(v: &Sql) -> Option<f64> {
    match v {
        Sql::Double(d) => Some(*d),
        Sql::Float(f) => Some(f64::from(*f)),
        Sql::Int(i) => Some(*i as f64),
        Sql::UInt(u) => Some(*u as f64),
        Sql::Bytes(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        _ => None,
    }
}

impl MysqlQuery {
    fn err(&self, what: &str, e: mysql_async::Error) -> Error {
        mysql_error(&format!("source: {what}"), e)
    }

    /// The next rows of the query.
    async fn fetch(&mut self, last: Option<i64>, read: u64) -> Result<Vec<Row>> {
        if self.conn.is_none() {
            self.conn = Some(self.config.endpoint.connect().await?);
        }
        let n = self.config.batch_size as u64;
        let (sql, params): (String, Vec<Sql>) = match (self.cursor, last) {
            (None, _) => (
                format!("SELECT * FROM ({}) s LIMIT ? OFFSET ?", self.query),
                vec![Sql::UInt(n), Sql::UInt(read)],
            ),
            (Some(c), last) => {
                let col = ident(self.schema.field(c).name());
                match last {
                    None => (
                        format!("SELECT * FROM ({}) s ORDER BY {col} LIMIT ?", self.query),
                        vec![Sql::UInt(n)],
                    ),
                    Some(v) => {
                        let after = if self.kinds[c] == Kind::Timestamp {
                            datetime(v)
                        } else {
                            Sql::Int(v)
                        };
                        (
                            format!(
                                "SELECT * FROM ({}) s WHERE {col} > ? ORDER BY {col} LIMIT ?",
                                self.query
                            ),
                            vec![after, Sql::UInt(n)],
                        )
                    }
                }
            }
        };
        let conn = self
            .conn
            .as_mut()
            .ok_or_else(|| Error::Other("no connection".into()))?;
        let rows = conn.exec::<Row, _, _>(sql, params).await;
        rows.map_err(|e| self.err("reading", e))
    }

    fn to_batch(&self, rows: &[Row]) -> Result<RecordBatch> {
        let n = rows.len();
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(self.kinds.len());
        for (i, kind) in self.kinds.iter().enumerate() {
            let values = rows
                .iter()
                .map(|r| r.as_ref(i).filter(|v| **v != Sql::NULL));
            let array: ArrayRef = match kind {
                Kind::Int64 => {
                    let mut b = Int64Builder::with_capacity(n);
                    values.for_each(|v| b.append_option(v.and_then(integer)));
                    Arc::new(b.finish())
                }
                Kind::Int32 => {
                    let mut b = Int32Builder::with_capacity(n);
                    values.for_each(|v| {
                        b.append_option(v.and_then(integer).and_then(|i| i32::try_from(i).ok()))
                    });
                    Arc::new(b.finish())
                }
                Kind::Float64 => {
                    let mut b = Float64Builder::with_capacity(n);
                    values.for_each(|v| b.append_option(v.and_then(float)));
                    Arc::new(b.finish())
                }
                Kind::Float32 => {
                    let mut b = Float32Builder::with_capacity(n);
                    values.for_each(|v| b.append_option(v.and_then(float).map(|f| f as f32)));
                    Arc::new(b.finish())
                }
                Kind::Text => {
                    let mut b = StringBuilder::with_capacity(n, n * 16);
                    for v in values {
                        match v {
                            Some(Sql::Bytes(bytes)) => {
                                b.append_value(String::from_utf8_lossy(bytes));
                            }
                            _ => b.append_null(),
                        }
                    }
                    Arc::new(b.finish())
                }
                Kind::Date => {
                    let mut b = Date32Builder::with_capacity(n);
                    values.for_each(|v| {
                        b.append_option(
                            v.and_then(micros)
                                .map(|us| us.div_euclid(86_400_000_000) as i32),
                        )
                    });
                    Arc::new(b.finish())
                }
                Kind::Timestamp => {
                    let mut b = TimestampMicrosecondBuilder::with_capacity(n);
                    values.for_each(|v| b.append_option(v.and_then(micros)));
                    Arc::new(b.finish())
                }
            };
            columns.push(array);
        }
        RecordBatch::try_new(Arc::clone(&self.schema), columns)
            .map_err(|e| Error::arrow("building rows read from MySQL", e))
    }

    /// The incremental column's value in the last of `rows` (an integer,
    /// or microseconds for date-times).
    fn last_of(&self, rows: &[Row]) -> Option<i64> {
        let c = self.cursor?;
        let v = rows.last()?.as_ref(c)?;
        if self.kinds[c] == Kind::Timestamp {
            micros(v)
        } else {
            integer(v)
        }
    }
}

#[async_trait]
impl Query for MysqlQuery {
    async fn next_rows(
        &mut self,
        last: Option<i64>,
        read: u64,
    ) -> Result<Option<(RecordBatch, Option<i64>)>> {
        let rows = self.fetch(last, read).await?;
        if rows.is_empty() {
            return Ok(None);
        }
        let data = self.to_batch(&rows)?;
        let last = self.last_of(&rows);
        Ok(Some((data, last)))
    }
}
