//! `postgres`: writes rows to a PostgreSQL table, appending or upserting by
//! key, exactly-once with checkpoints.
//!
//! Rows are copied (binary `COPY`) into a staging table, tagged with the
//! instance and checkpoint; when the checkpoint completes one transaction
//! moves them into the table (`INSERT … SELECT`, `ON CONFLICT (key) DO
//! UPDATE` in upsert mode, the last row of a key winning), records the
//! checkpoint in the ledger table `streamflow_ledger` and empties the staged
//! rows. A checkpoint replayed after a crash finds itself in the ledger and
//! writes nothing. Changelog input (`_op`) applies `-D` rows as deletes in
//! upsert mode. Without checkpoints each batch is moved as it comes.
//!
//! ```yaml
//! - name: totals
//!   type: postgres
//!   input: per_auction
//!   config: {url: "postgres://postgres@127.0.0.1/test", table: bids_per_auction, mode: upsert, key: [auction, window_start]}
//! ```

use std::sync::Arc;

use arrow::array::{
    Array, BooleanArray, Date32Array, Float32Array, Float64Array, Int32Array, Int64Array,
    LargeStringArray, StringArray, TimestampMicrosecondArray, TimestampMillisecondArray,
    TimestampNanosecondArray, TimestampSecondArray,
};
use arrow::datatypes::{DataType, TimeUnit};
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use serde::Deserialize;
use streamflow_core::{Diagnostics, Error, Result, Sink};
use streamflow_tls::TlsOptions;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, NoTls};

use crate::registry::{SinkContext, SinkFactory};

pub use super::WriteMode;

/// Settings of a `postgres` sink.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresSinkConfig {
    /// The server.
    #[serde(flatten)]
    pub endpoint: PostgresEndpoint,
    /// The table (`schema.table` allowed).
    pub table: String,
    /// Append or upsert.
    #[serde(default)]
    pub mode: WriteMode,
    /// Key columns (upsert).
    #[serde(default)]
    pub key: Vec<String>,
    /// Create the table if it does not exist.
    #[serde(default = "yes")]
    pub create: bool,
}

/// How to reach a PostgreSQL server (shared by the source and the sink).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresEndpoint {
    /// `postgres://user@host:port/db` (or a `key=value` connection
    /// string); `sslmode=require` asks for TLS.
    pub url: String,
    /// Environment variable holding the password (never printed).
    pub password_env: Option<String>,
    /// TLS settings; present, the connection must use TLS.
    pub tls: Option<TlsOptions>,
}

impl PostgresEndpoint {
    fn config(&self) -> std::result::Result<tokio_postgres::Config, String> {
        self.url
            .parse()
            .map_err(|e| format!("invalid PostgreSQL url: {e}"))
    }

    /// The TLS of the connection, if any.
    fn tls(&self) -> Option<TlsOptions> {
        let required = self
            .config()
            .is_ok_and(|c| c.get_ssl_mode() == tokio_postgres::config::SslMode::Require);
        crate::server::tls(self.tls.as_ref(), required)
    }

    /// Validation of the url and TLS settings, at `at(key)`.
    pub(crate) fn check(
        &self,
        at: impl Fn(&str) -> String,
    ) -> std::result::Result<(), Diagnostics> {
        self.config()
            .map_err(|m| Diagnostics::from(streamflow_core::Diagnostic::new(at("url"), m)))?;
        crate::server::check_tls(at, self.tls().as_ref())
    }

    /// A connected client; the connection runs on its own task.
    pub(crate) async fn connect(&self) -> Result<Client> {
        let mut config = self.config().map_err(Error::Other)?;
        if let Some(var) = &self.password_env {
            let password = std::env::var(var)
                .map_err(|_| Error::Other(format!("environment variable {var} is not set")))?;
            config.password(password);
        }
        config.connect_timeout(std::time::Duration::from_secs(5));
        let address = config
            .get_hosts()
            .iter()
            .zip(config.get_ports().iter().chain(std::iter::repeat(&5432)))
            .map(|(h, p)| match h {
                tokio_postgres::config::Host::Tcp(h) => format!("{h}:{p}"),
                tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
            })
            .collect::<Vec<_>>()
            .join(",");
        let tls = self.tls();
        let client = match tls {
            None => {
                let (client, connection) =
                    crate::server::connect_with_backoff("PostgreSQL", &address, || {
                        config.connect(NoTls)
                    })
                    .await?;
                spawn_connection(connection);
                client
            }
            Some(tls) => connect_tls(&mut config, &address, &tls).await?,
        };
        Ok(client)
    }
}

/// Drives a connection on its own task until it closes.
fn spawn_connection<F>(connection: F)
where
    F: std::future::Future<Output = std::result::Result<(), tokio_postgres::Error>>
        + Send
        + 'static,
{
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!(error = %e, "postgres connection closed");
        }
    });
}

#[cfg(feature = "tls")]
async fn connect_tls(
    config: &mut tokio_postgres::Config,
    address: &str,
    tls: &TlsOptions,
) -> Result<Client> {
    config.ssl_mode(tokio_postgres::config::SslMode::Require);
    let connector =
        tokio_postgres_rustls::MakeRustlsConnect::new(crate::server::tls_client_config(tls)?);
    let (client, connection) = crate::server::connect_with_backoff("PostgreSQL", address, || {
        config.connect(connector.clone())
    })
    .await?;
    spawn_connection(connection);
    Ok(client)
}

#[cfg(not(feature = "tls"))]
async fn connect_tls(_: &mut tokio_postgres::Config, _: &str, _: &TlsOptions) -> Result<Client> {
    Err(Error::Other(
        "postgres: this build has no TLS (cargo feature `tls`)".into(),
    ))
}

fn yes() -> bool {
    true
}

/// The changelog column of upsert input.
const OP: &str = "_op";

pub(crate) fn plan(ctx: &SinkContext<'_>) -> Result<Arc<dyn SinkFactory>, Diagnostics> {
    let config: PostgresSinkConfig = ctx.config()?;
    config.endpoint.check(|k| ctx.at(k))?;
    let (columns, changelog) =
        super::table_columns(ctx, config.mode, &config.key, "PostgreSQL", |t, _| {
            pg_type(t)
        })?;
    let columns = columns
        .into_iter()
        .map(|(name, pg)| Column { name, pg })
        .collect();
    Ok(Arc::new(PostgresSinkFactory {
        sink_id: format!("{}/{}", config.table, ctx.name),
        stage: format!("{}_streamflow_stage", config.table.replace('.', "_")),
        changelog,
        columns,
        config: Arc::new(config),
    }))
}

/// A column written: its name and PostgreSQL type.
#[derive(Debug, Clone)]
struct Column {
    name: String,
    pg: Type,
}

fn pg_type(t: &DataType) -> Option<Type> {
    Some(match t {
        DataType::Int64 => Type::INT8,
        DataType::Int32 => Type::INT4,
        DataType::Float64 => Type::FLOAT8,
        DataType::Float32 => Type::FLOAT4,
        DataType::Boolean => Type::BOOL,
        DataType::Utf8 | DataType::LargeUtf8 => Type::TEXT,
        DataType::Date32 => Type::DATE,
        DataType::Timestamp(_, None) => Type::TIMESTAMP,
        DataType::Timestamp(_, Some(_)) => Type::TIMESTAMPTZ,
        _ => return None,
    })
}

fn sql_type(t: &Type) -> &'static str {
    match *t {
        Type::INT8 => "BIGINT",
        Type::INT4 => "INTEGER",
        Type::FLOAT8 => "DOUBLE PRECISION",
        Type::FLOAT4 => "REAL",
        Type::BOOL => "BOOLEAN",
        Type::DATE => "DATE",
        Type::TIMESTAMP => "TIMESTAMP",
        Type::TIMESTAMPTZ => "TIMESTAMPTZ",
        _ => "TEXT",
    }
}

/// A quoted identifier (`a.b` → `"a"."b"`).
pub(crate) fn ident(name: &str) -> String {
    name.split('.')
        .map(|p| format!("\"{}\"", p.replace('"', "\"\"")))
        .collect::<Vec<_>>()
        .join(".")
}

struct PostgresSinkFactory {
    config: Arc<PostgresSinkConfig>,
    sink_id: String,
    stage: String,
    changelog: bool,
    columns: Vec<Column>,
}

impl SinkFactory for PostgresSinkFactory {
    fn create(&self, instance: usize) -> Result<Box<dyn Sink>> {
        Ok(Box::new(PostgresSink {
            config: Arc::clone(&self.config),
            sink_id: self.sink_id.clone(),
            stage: self.stage.clone(),
            changelog: self.changelog,
            columns: self.columns.clone(),
            instance: instance as i32,
            client: None,
            checkpointing: false,
            buffered: Vec::new(),
            row: 0,
        }))
    }
}

struct PostgresSink {
    config: Arc<PostgresSinkConfig>,
    sink_id: String,
    stage: String,
    changelog: bool,
    columns: Vec<Column>,
    instance: i32,
    client: Option<Client>,
    checkpointing: bool,
    /// Rows since the last checkpoint.
    buffered: Vec<RecordBatch>,
    /// Sequence number of the next staged row (the last row of a key wins).
    row: i64,
}

/// Where a run of the sink stands in the ledger before a checkpoint's rows
/// move; `-1` stages rows written without checkpoints.
const UNCHECKPOINTED: i64 = -1;

impl PostgresSink {
    fn err(&self, what: &str, e: tokio_postgres::Error) -> Error {
        let detail = e
            .as_db_error()
            .map_or_else(|| e.to_string(), |d| d.message().to_string());
        Error::Other(format!(
            "postgres sink ({}): {what}: {detail}",
            self.config.table
        ))
    }

    async fn client(&mut self) -> Result<&Client> {
        if self.client.is_none() {
            let client = self.config.endpoint.connect().await?;
            self.client = Some(client);
        }
        self.client
            .as_ref()
            .ok_or_else(|| Error::Other("postgres connection lost".into()))
    }

    async fn create_tables(&mut self) -> Result<()> {
        let cols: Vec<String> = self
            .columns
            .iter()
            .map(|c| format!("{} {}", ident(&c.name), sql_type(&c.pg)))
            .collect();
        let mut ddl = Vec::new();
        if self.config.create {
            let key = if self.config.mode == WriteMode::Upsert {
                format!(
                    ", PRIMARY KEY ({})",
                    self.config
                        .key
                        .iter()
                        .map(|k| ident(k))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            } else {
                String::new()
            };
            ddl.push(format!(
                "CREATE TABLE IF NOT EXISTS {} ({}{key})",
                ident(&self.config.table),
                cols.join(", ")
            ));
        }
        let op = if self.changelog { ", \"_op\" TEXT" } else { "" };
        ddl.push(format!(
            "CREATE TABLE IF NOT EXISTS {} ({}{op}, \"_instance\" INTEGER, \"_checkpoint\" BIGINT, \"_row\" BIGINT)",
            ident(&self.stage),
            cols.join(", ")
        ));
        ddl.push(
            "CREATE TABLE IF NOT EXISTS streamflow_ledger (sink TEXT, instance INTEGER, checkpoint BIGINT, PRIMARY KEY (sink, instance))".into(),
        );
        for sql in ddl {
            let client = self.client().await?;
            if let Err(e) = client.batch_execute(&sql).await {
                // Two instances creating one table at once: one of them loses.
                if e.code() != Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) {
                    return Err(self.err("creating tables", e));
                }
            }
        }
        Ok(())
    }

    /// Copies `batches` into the staging table under `checkpoint`.
    async fn stage_rows(&mut self, batches: &[RecordBatch], checkpoint: i64) -> Result<()> {
        if batches.iter().all(|b| b.num_rows() == 0) {
            return Ok(());
        }
        let mut names: Vec<String> = self.columns.iter().map(|c| ident(&c.name)).collect();
        let mut types: Vec<Type> = self.columns.iter().map(|c| c.pg.clone()).collect();
        if self.changelog {
            names.push(ident(OP));
            types.push(Type::TEXT);
        }
        names.extend([
            "\"_instance\"".into(),
            "\"_checkpoint\"".into(),
            "\"_row\"".into(),
        ]);
        types.extend([Type::INT4, Type::INT8, Type::INT8]);
        let sql = format!(
            "COPY {} ({}) FROM STDIN (FORMAT binary)",
            ident(&self.stage),
            names.join(", ")
        );
        let instance = self.instance;
        let mut row = self.row;
        let client = self.client().await?;
        let sink = client.copy_in(&sql).await.map_err(|e| copy_err(&e))?;
        let writer = BinaryCopyInWriter::new(sink, &types);
        let mut writer = std::pin::pin!(writer);
        let mut source_columns = Vec::new();
        for batch in batches {
            source_columns.clear();
            for c in &self.columns {
                let array = batch
                    .column_by_name(&c.name)
                    .ok_or_else(|| Error::Other(format!("no column {}", c.name)))?;
                source_columns.push(Values::of(array.as_ref())?);
            }
            if self.changelog {
                let op = batch
                    .column_by_name(OP)
                    .ok_or_else(|| Error::Other("no _op column".into()))?;
                source_columns.push(Values::of(op.as_ref())?);
            }
            let mut cells: Vec<Cell<'_>> = Vec::with_capacity(source_columns.len() + 3);
            for r in 0..batch.num_rows() {
                cells.clear();
                cells.extend(source_columns.iter().map(|c| c.cell(r)));
                cells.push(Cell::I32(Some(instance)));
                cells.push(Cell::I64(Some(checkpoint)));
                cells.push(Cell::I64(Some(row)));
                // The row's cells as they are: no vector of references per row.
                writer
                    .as_mut()
                    .write_raw(cells.iter())
                    .await
                    .map_err(|e| copy_err(&e))?;
                row += 1;
            }
        }
        writer.finish().await.map_err(|e| copy_err(&e))?;
        self.row = row;
        Ok(())
    }

    /// Moves the rows staged under `checkpoint` into the table, once.
    async fn publish(&mut self, checkpoint: i64) -> Result<()> {
        let cols: Vec<String> = self.columns.iter().map(|c| ident(&c.name)).collect();
        let list = cols.join(", ");
        let stage = ident(&self.stage);
        let table = ident(&self.config.table);
        let here = "\"_instance\" = $1 AND \"_checkpoint\" = $2";
        let mut statements = Vec::new();
        match self.config.mode {
            WriteMode::Append => statements.push(format!(
                "INSERT INTO {table} ({list}) SELECT {list} FROM {stage} WHERE {here} ORDER BY \"_row\""
            )),
            WriteMode::Upsert => {
                let key: Vec<String> = self.config.key.iter().map(|k| ident(k)).collect();
                let keys = key.join(", ");
                let op = if self.changelog { ", \"_op\"" } else { "" };
                let last = format!(
                    "SELECT DISTINCT ON ({keys}) {list}{op} FROM {stage} WHERE {here} ORDER BY {keys}, \"_row\" DESC"
                );
                if self.changelog {
                    let matches = key
                        .iter()
                        .map(|k| format!("t.{k} = s.{k}"))
                        .collect::<Vec<_>>()
                        .join(" AND ");
                    statements.push(format!(
                        "DELETE FROM {table} t USING ({last}) s WHERE s.\"_op\" = '-D' AND {matches}"
                    ));
                }
                let keep = if self.changelog {
                    "WHERE \"_op\" IN ('+I', '+U')"
                } else {
                    ""
                };
                let updates: Vec<String> = cols
                    .iter()
                    .filter(|c| !key.contains(c))
                    .map(|c| format!("{c} = EXCLUDED.{c}"))
                    .collect();
                let action = if updates.is_empty() {
                    "DO NOTHING".to_string()
                } else {
                    format!("DO UPDATE SET {}", updates.join(", "))
                };
                statements.push(format!(
                    "INSERT INTO {table} ({list}) SELECT {list} FROM ({last}) s {keep} ON CONFLICT ({keys}) {action}"
                ));
            }
        }
        statements.push(format!("DELETE FROM {stage} WHERE {here}"));
        let (sink_id, instance) = (self.sink_id.clone(), self.instance);
        let ledgered = checkpoint != UNCHECKPOINTED;
        let client = self
            .client
            .as_mut()
            .ok_or_else(|| Error::Other("postgres connection lost".into()))?;
        let result: std::result::Result<bool, tokio_postgres::Error> = async {
            let tx = client.transaction().await?;
            if ledgered {
                let done = tx
                    .query_opt(
                        "SELECT checkpoint FROM streamflow_ledger WHERE sink = $1 AND instance = $2 FOR UPDATE",
                        &[&sink_id, &instance],
                    )
                    .await?
                    .map(|r| r.get::<_, i64>(0));
                if done.is_some_and(|d| d >= checkpoint) {
                    let last = statements.len() - 1;
                    tx.execute(&statements[last], &[&instance, &checkpoint]).await?;
                    tx.commit().await?;
                    return Ok(false);
                }
            }
            for sql in &statements {
                tx.execute(sql.as_str(), &[&instance, &checkpoint]).await?;
            }
            if ledgered {
                tx.execute(
                    "INSERT INTO streamflow_ledger (sink, instance, checkpoint) VALUES ($1, $2, $3) ON CONFLICT (sink, instance) DO UPDATE SET checkpoint = EXCLUDED.checkpoint",
                    &[&sink_id, &instance, &checkpoint],
                )
                .await?;
            }
            tx.commit().await?;
            Ok(true)
        }
        .await;
        match result {
            Ok(true) => Ok(()),
            Ok(false) => {
                tracing::info!(checkpoint, table = %self.config.table, "checkpoint already written: skipped");
                Ok(())
            }
            Err(e) => Err(self.err("writing a checkpoint's rows", e)),
        }
    }
}

fn copy_err(e: &tokio_postgres::Error) -> Error {
    let detail = e
        .as_db_error()
        .map_or_else(|| e.to_string(), |d| d.message().to_string());
    Error::Other(format!("postgres COPY: {detail}"))
}

/// One column's values, read row by row for `COPY`.
enum Values<'a> {
    I64(&'a Int64Array),
    I32(&'a Int32Array),
    F64(&'a Float64Array),
    F32(&'a Float32Array),
    Bool(&'a BooleanArray),
    Str(&'a StringArray),
    LargeStr(&'a LargeStringArray),
    Date(&'a Date32Array),
    /// Timestamps as microseconds.
    Micros(Vec<Option<i64>>, bool),
}

impl<'a> Values<'a> {
    fn of(array: &'a dyn Array) -> Result<Self> {
        let any = array.as_any();
        let cast = || Error::Other(format!("unexpected column type {}", array.data_type()));
        Ok(match array.data_type() {
            DataType::Int64 => Self::I64(any.downcast_ref().ok_or_else(cast)?),
            DataType::Int32 => Self::I32(any.downcast_ref().ok_or_else(cast)?),
            DataType::Float64 => Self::F64(any.downcast_ref().ok_or_else(cast)?),
            DataType::Float32 => Self::F32(any.downcast_ref().ok_or_else(cast)?),
            DataType::Boolean => Self::Bool(any.downcast_ref().ok_or_else(cast)?),
            DataType::Utf8 => Self::Str(any.downcast_ref().ok_or_else(cast)?),
            DataType::LargeUtf8 => Self::LargeStr(any.downcast_ref().ok_or_else(cast)?),
            DataType::Date32 => Self::Date(any.downcast_ref().ok_or_else(cast)?),
            DataType::Timestamp(unit, tz) => {
                let micros: Vec<Option<i64>> = match unit {
                    TimeUnit::Second => any
                        .downcast_ref::<TimestampSecondArray>()
                        .ok_or_else(cast)?
                        .iter()
                        .map(|v| v.map(|s| s * 1_000_000))
                        .collect(),
                    TimeUnit::Millisecond => any
                        .downcast_ref::<TimestampMillisecondArray>()
                        .ok_or_else(cast)?
                        .iter()
                        .map(|v| v.map(|s| s * 1_000))
                        .collect(),
                    TimeUnit::Microsecond => any
                        .downcast_ref::<TimestampMicrosecondArray>()
                        .ok_or_else(cast)?
                        .iter()
                        .collect(),
                    TimeUnit::Nanosecond => any
                        .downcast_ref::<TimestampNanosecondArray>()
                        .ok_or_else(cast)?
                        .iter()
                        .map(|v| v.map(|s| s / 1_000))
                        .collect(),
                };
                Self::Micros(micros, tz.is_some())
            }
            other => return Err(Error::Other(format!("cannot write {other} to PostgreSQL"))),
        })
    }

    /// Row `r` as a value `COPY` encodes.
    fn cell(&self, r: usize) -> Cell<'a> {
        fn opt<T>(valid: bool, v: impl FnOnce() -> T) -> Option<T> {
            valid.then(v)
        }
        match self {
            Self::I64(a) => Cell::I64(opt(a.is_valid(r), || a.value(r))),
            Self::I32(a) => Cell::I32(opt(a.is_valid(r), || a.value(r))),
            Self::F64(a) => Cell::F64(opt(a.is_valid(r), || a.value(r))),
            Self::F32(a) => Cell::F32(opt(a.is_valid(r), || a.value(r))),
            Self::Bool(a) => Cell::Bool(opt(a.is_valid(r), || a.value(r))),
            Self::Str(a) => Cell::Str(opt(a.is_valid(r), || a.value(r))),
            Self::LargeStr(a) => Cell::Str(opt(a.is_valid(r), || a.value(r))),
            Self::Date(a) => Cell::Date(
                opt(a.is_valid(r), || a.value(r))
                    .and_then(arrow::temporal_conversions::date32_to_datetime)
                    .map(|d| d.date()),
            ),
            Self::Micros(v, tz) => {
                let t = v[r].and_then(arrow::temporal_conversions::timestamp_us_to_datetime);
                if *tz {
                    Cell::TsTz(t.map(|t| t.and_utc()))
                } else {
                    Cell::Ts(t)
                }
            }
        }
    }
}

/// One value of a row being copied (no allocation per value).
#[derive(Debug)]
enum Cell<'a> {
    I64(Option<i64>),
    I32(Option<i32>),
    F64(Option<f64>),
    F32(Option<f32>),
    Bool(Option<bool>),
    Str(Option<&'a str>),
    Date(Option<chrono::NaiveDate>),
    Ts(Option<chrono::NaiveDateTime>),
    TsTz(Option<chrono::DateTime<chrono::Utc>>),
}

impl ToSql for Cell<'_> {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut bytes::BytesMut,
    ) -> std::result::Result<tokio_postgres::types::IsNull, Box<dyn std::error::Error + Sync + Send>>
    {
        match self {
            Cell::I64(v) => v.to_sql(ty, out),
            Cell::I32(v) => v.to_sql(ty, out),
            Cell::F64(v) => v.to_sql(ty, out),
            Cell::F32(v) => v.to_sql(ty, out),
            Cell::Bool(v) => v.to_sql(ty, out),
            Cell::Str(v) => v.to_sql(ty, out),
            Cell::Date(v) => v.to_sql(ty, out),
            Cell::Ts(v) => v.to_sql(ty, out),
            Cell::TsTz(v) => v.to_sql(ty, out),
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    tokio_postgres::types::to_sql_checked!();
}

#[async_trait]
impl Sink for PostgresSink {
    async fn open(&mut self, checkpointing: Option<Vec<serde_json::Value>>) -> Result<()> {
        self.create_tables().await?;
        let (sink_id, instance) = (self.sink_id.clone(), self.instance);
        let fresh = checkpointing.as_ref().is_some_and(Vec::is_empty);
        if let Some(staged) = &checkpointing {
            self.checkpointing = true;
            for s in staged {
                if let Some(id) = s.get("checkpoint").and_then(serde_json::Value::as_i64) {
                    self.publish(id).await?;
                }
            }
        }
        // Rows staged after the restored checkpoint (or by an earlier run)
        // are discarded; a fresh start owes nothing to an earlier ledger.
        let stage = ident(&self.stage);
        let client = self.client().await?;
        let cleared = client
            .execute(
                &format!("DELETE FROM {stage} WHERE \"_instance\" = $1"),
                &[&instance],
            )
            .await;
        let ledger = if fresh {
            client
                .execute(
                    "DELETE FROM streamflow_ledger WHERE sink = $1 AND instance = $2",
                    &[&sink_id, &instance],
                )
                .await
                .map(drop)
        } else {
            Ok(())
        };
        cleared
            .map(drop)
            .and(ledger)
            .map_err(|e| self.err("clearing staged rows", e))
    }

    async fn write(&mut self, batch: RecordBatch) -> Result<()> {
        if self.checkpointing {
            self.buffered.push(batch);
            return Ok(());
        }
        self.stage_rows(std::slice::from_ref(&batch), UNCHECKPOINTED)
            .await?;
        self.publish(UNCHECKPOINTED).await
    }

    async fn pre_commit(&mut self, checkpoint: u64) -> Result<Vec<serde_json::Value>> {
        let batches = std::mem::take(&mut self.buffered);
        let id = checkpoint as i64;
        self.stage_rows(&batches, id).await?;
        Ok(vec![serde_json::json!({ "checkpoint": id })])
    }

    async fn commit(&mut self, checkpoint: u64) -> Result<()> {
        self.publish(checkpoint as i64).await
    }

    async fn abort(&mut self, checkpoint: u64) -> Result<()> {
        let (stage, instance, id) = (ident(&self.stage), self.instance, checkpoint as i64);
        let client = self.client().await?;
        client
            .execute(
                &format!("DELETE FROM {stage} WHERE \"_instance\" = $1 AND \"_checkpoint\" = $2"),
                &[&instance, &id],
            )
            .await
            .map(drop)
            .map_err(|e| self.err("discarding a checkpoint", e))
    }

    async fn finish(&mut self) -> Result<()> {
        Ok(())
    }
}
