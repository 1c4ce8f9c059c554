//! `postgres`: reads a table or query, then (with `incremental_column`)
//! the rows added since, by a column that only grows.
//!
//! The schema comes from the query's own description. Rows are read in
//! order of `incremental_column`, `batch_size` at a time; the last value
//! read is the source's position in checkpoints, so a restart goes on after
//! it. Once caught up the source polls every `poll`, or ends when `bounded`.
//! Without an incremental column the query is read once (a snapshot). A
//! query is read by one instance; the others end at once.
//!
//! ```yaml
//! - name: orders
//!   type: postgres
//!   config: {url: "postgres://postgres@127.0.0.1/shop", table: orders, incremental_column: id, poll: 1s}
//! ```

use std::sync::Arc;
use std::time::Duration;

use arrow::array::{
    Array, ArrayRef, BooleanArray, Date32Array, Float32Array, Float64Array, Int32Array, Int64Array,
    StringArray, TimestampMicrosecondArray,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use serde::Deserialize;
use streamflow_core::{Diagnostic, Diagnostics, Error, Result, Source};
use streamflow_dsl::HumanDuration;
use tokio_postgres::Client;
use tokio_postgres::types::Type;

use super::incremental::{IncrementalSource, Query};
use crate::registry::{SourceContext, SourceFactory};
use crate::sinks::postgres::PostgresEndpoint;

/// Settings of a `postgres` source.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresSourceConfig {
    /// The server.
    #[serde(flatten)]
    pub endpoint: PostgresEndpoint,
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

pub(crate) fn plan(ctx: &SourceContext<'_>) -> Result<Arc<dyn SourceFactory>, Diagnostics> {
    let config: PostgresSourceConfig = ctx.config()?;
    config.endpoint.check(|k| ctx.at(k))?;
    let fail = |k: &str, m: String| Diagnostics::from(Diagnostic::new(ctx.at(k), m));
    let query = match (&config.query, &config.table) {
        (Some(q), None) => q.trim().trim_end_matches(';').to_string(),
        (None, Some(t)) => format!("SELECT * FROM {}", crate::sinks::postgres::ident(t)),
        _ => return Err(fail("query", "set one of query or table".into())),
    };
    if config.batch_size == 0 {
        return Err(fail("batch_size", "must be positive".into()));
    }
    let bounded = config.bounded || config.incremental_column.is_none();
    let columns = describe(&config, &query).map_err(|m| fail("query", m))?;
    let mut fields = Vec::new();
    let mut d = Diagnostics::new();
    for (name, t) in &columns {
        match arrow_type(t) {
            Some(a) => fields.push(Field::new(name, a, true)),
            None => d.push(
                ctx.at("query"),
                format!("column '{name}' has type {t}; cast it in the query (e.g. {name}::text or {name}::float8)"),
            ),
        }
    }
    let cursor = match &config.incremental_column {
        None => None,
        Some(c) => match columns.iter().position(|(n, _)| n == c) {
            Some(i)
                if matches!(
                    columns[i].1,
                    Type::INT8 | Type::INT4 | Type::INT2 | Type::TIMESTAMP | Type::TIMESTAMPTZ
                ) =>
            {
                Some(i)
            }
            Some(_) => {
                d.push(
                    ctx.at("incremental_column"),
                    format!("'{c}' must be an integer or a timestamp column"),
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
    Ok(Arc::new(PostgresSourceFactory {
        schema: Arc::new(Schema::new(fields)),
        types: columns.into_iter().map(|(_, t)| t).collect(),
        query,
        cursor,
        bounded,
        config: Arc::new(config),
    }))
}

/// The names and types of the query's columns, asked of the server.
fn describe(
    config: &PostgresSourceConfig,
    query: &str,
) -> std::result::Result<Vec<(String, Type)>, String> {
    let (endpoint, query) = (config.endpoint.clone(), query.to_string());
    crate::server::at_plan_time(move || async move {
        let client = endpoint.connect().await.map_err(|e| e.to_string())?;
        let statement = client.prepare(&query).await.map_err(|e| {
            e.as_db_error()
                .map_or_else(|| e.to_string(), |d| d.message().to_string())
        })?;
        Ok(statement
            .columns()
            .iter()
            .map(|c| (c.name().to_string(), c.type_().clone()))
            .collect())
    })
}

fn arrow_type(t: &Type) -> Option<DataType> {
    Some(match *t {
        Type::INT8 => DataType::Int64,
        Type::INT4 | Type::INT2 => DataType::Int32,
        Type::FLOAT8 => DataType::Float64,
        Type::FLOAT4 => DataType::Float32,
        Type::BOOL => DataType::Boolean,
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME => DataType::Utf8,
        Type::DATE => DataType::Date32,
        Type::TIMESTAMP => DataType::Timestamp(TimeUnit::Microsecond, None),
        Type::TIMESTAMPTZ => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
        _ => return None,
    })
}

struct PostgresSourceFactory {
    config: Arc<PostgresSourceConfig>,
    query: String,
    schema: SchemaRef,
    types: Vec<Type>,
    /// Index of the incremental column.
    cursor: Option<usize>,
    bounded: bool,
}

impl SourceFactory for PostgresSourceFactory {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn bounded(&self) -> bool {
        self.bounded
    }

    fn create(&self, instance: usize, _parallelism: usize) -> Result<Box<dyn Source>> {
        let query = PostgresQuery {
            config: Arc::clone(&self.config),
            query: self.query.clone(),
            schema: Arc::clone(&self.schema),
            types: self.types.clone(),
            cursor: self.cursor,
            client: None,
        };
        let poll = self.config.poll.map_or(Duration::from_secs(1), |p| p.0);
        Ok(Box::new(IncrementalSource::new(
            query,
            poll,
            self.bounded,
            instance == 0,
            "postgres",
        )))
    }
}

struct PostgresQuery {
    config: Arc<PostgresSourceConfig>,
    query: String,
    schema: SchemaRef,
    types: Vec<Type>,
    cursor: Option<usize>,
    client: Option<Client>,
}

/// Microseconds since the epoch of a `TIMESTAMP`/`TIMESTAMPTZ` value.
fn micros(t: chrono::NaiveDateTime) -> i64 {
    t.and_utc().timestamp_micros()
}

impl PostgresQuery {
    fn err(&self, e: tokio_postgres::Error) -> Error {
        let detail = e
            .as_db_error()
            .map_or_else(|| e.to_string(), |d| d.message().to_string());
        Error::Other(format!("postgres source: {detail}"))
    }

    /// The next rows of the query.
    async fn fetch(&mut self, last: Option<i64>, read: u64) -> Result<Vec<tokio_postgres::Row>> {
        if self.client.is_none() {
            self.client = Some(self.config.endpoint.connect().await?);
        }
        let client = self
            .client
            .as_ref()
            .ok_or_else(|| Error::Other("no connection".into()))?;
        let n = self.config.batch_size as i64;
        let result = match (self.cursor, last) {
            (None, _) => {
                client
                    .query(
                        &format!("SELECT * FROM ({}) s OFFSET $1 LIMIT $2", self.query),
                        &[&(read as i64), &n],
                    )
                    .await
            }
            (Some(c), last) => {
                let name = self.schema.field(c).name();
                let col = crate::sinks::postgres::ident(name);
                let is_time = matches!(self.types[c], Type::TIMESTAMP | Type::TIMESTAMPTZ);
                match (last, is_time) {
                    (None, _) => {
                        client
                            .query(
                                &format!(
                                    "SELECT * FROM ({}) s ORDER BY {col} LIMIT $1",
                                    self.query
                                ),
                                &[&n],
                            )
                            .await
                    }
                    (Some(v), true) => {
                        let t = chrono::DateTime::from_timestamp_micros(v).map(|t| t.naive_utc());
                        let sql = format!(
                            "SELECT * FROM ({}) s WHERE {col} > $1::timestamp ORDER BY {col} LIMIT $2",
                            self.query
                        );
                        client.query(&sql, &[&t, &n]).await
                    }
                    (Some(v), _) => {
                        let sql = format!(
                            "SELECT * FROM ({}) s WHERE {col} > $1::int8 ORDER BY {col} LIMIT $2",
                            self.query
                        );
                        client.query(&sql, &[&v, &n]).await
                    }
                }
            }
        };
        result.map_err(|e| self.err(e))
    }

    fn to_batch(&self, rows: &[tokio_postgres::Row]) -> Result<RecordBatch> {
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(self.types.len());
        for (i, t) in self.types.iter().enumerate() {
            let array: ArrayRef = match *t {
                Type::INT8 => Arc::new(Int64Array::from(column::<i64>(rows, i)?)),
                Type::INT4 => Arc::new(Int32Array::from(column::<i32>(rows, i)?)),
                Type::INT2 => Arc::new(Int32Array::from_iter(
                    column::<i16>(rows, i)?
                        .into_iter()
                        .map(|v| v.map(i32::from)),
                )),
                Type::FLOAT8 => Arc::new(Float64Array::from(column::<f64>(rows, i)?)),
                Type::FLOAT4 => Arc::new(Float32Array::from(column::<f32>(rows, i)?)),
                Type::BOOL => Arc::new(BooleanArray::from(column::<bool>(rows, i)?)),
                Type::DATE => Arc::new(Date32Array::from_iter(
                    column::<chrono::NaiveDate>(rows, i)?
                        .into_iter()
                        .map(|d| d.map(|d| (d - chrono::NaiveDate::default()).num_days() as i32)),
                )),
                Type::TIMESTAMP => Arc::new(TimestampMicrosecondArray::from_iter(
                    column::<chrono::NaiveDateTime>(rows, i)?
                        .into_iter()
                        .map(|t| t.map(micros)),
                )),
                Type::TIMESTAMPTZ => Arc::new(
                    TimestampMicrosecondArray::from_iter(
                        column::<chrono::DateTime<chrono::Utc>>(rows, i)?
                            .into_iter()
                            .map(|t| t.map(|t| t.timestamp_micros())),
                    )
                    .with_timezone("UTC"),
                ),
                _ => Arc::new(StringArray::from(column::<&str>(rows, i)?)),
            };
            columns.push(array);
        }
        RecordBatch::try_new(Arc::clone(&self.schema), columns)
            .map_err(|e| Error::arrow("building rows read from PostgreSQL", e))
    }

    /// The incremental column's value in the last row of `batch` (an
    /// integer, or microseconds for timestamps).
    fn last_of(&self, batch: &RecordBatch) -> Option<i64> {
        let c = self.cursor?;
        let column = batch.column(c);
        let last = column.len().checked_sub(1)?;
        if column.is_null(last) {
            return None;
        }
        let any = column.as_any();
        if let Some(a) = any.downcast_ref::<Int64Array>() {
            Some(a.value(last))
        } else if let Some(a) = any.downcast_ref::<Int32Array>() {
            Some(i64::from(a.value(last)))
        } else {
            any.downcast_ref::<TimestampMicrosecondArray>()
                .map(|a| a.value(last))
        }
    }
}

/// Column `i` of `rows`, as `T`.
fn column<'r, T: tokio_postgres::types::FromSql<'r>>(
    rows: &'r [tokio_postgres::Row],
    i: usize,
) -> Result<Vec<Option<T>>> {
    rows.iter()
        .map(|r| r.try_get::<_, Option<T>>(i))
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| Error::Other(format!("postgres source: reading a value: {e}")))
}

#[async_trait]
impl Query for PostgresQuery {
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
        let last = self.last_of(&data);
        Ok(Some((data, last)))
    }
}
