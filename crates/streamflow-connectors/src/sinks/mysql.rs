//! `mysql`: writes rows to a MySQL or MariaDB table, appending or upserting
//! by key, exactly-once with checkpoints.
//!
//! Rows are inserted (multi-row `INSERT`s) into a staging table, tagged with
//! the instance and checkpoint; when the checkpoint completes one InnoDB
//! transaction moves them into the table (`INSERT … SELECT`, with `ON
//! DUPLICATE KEY UPDATE` in upsert mode, the last row of a key winning),
//! records the checkpoint in the ledger table `streamflow_ledger` and
//! deletes the staged rows. A checkpoint replayed after a crash finds
//! itself in the ledger and writes nothing. Changelog input (`_op`) applies
//! `-D` rows as deletes in upsert mode. Without checkpoints each batch is
//! moved as it comes. The session runs in UTC.
//!
//! ```yaml
//! - name: totals
//!   type: mysql
//!   input: per_customer
//!   config: {url: "mysql://root@127.0.0.1:3306/test", table: totals, mode: upsert, key: [customer, window_start]}
//! ```

use std::fmt::Write as _;
use std::sync::Arc;

use arrow::array::{
    Array, BooleanArray, Date32Array, Float32Array, Float64Array, Int32Array, Int64Array,
    LargeStringArray, StringArray, TimestampMicrosecondArray, TimestampMillisecondArray,
    TimestampNanosecondArray, TimestampSecondArray,
};
use arrow::datatypes::{DataType, TimeUnit};
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Opts, OptsBuilder, TxOpts};
use serde::Deserialize;
use streamflow_core::{Diagnostics, Error, Result, Sink};
use streamflow_tls::TlsOptions;

use super::WriteMode;
use crate::registry::{SinkContext, SinkFactory};

/// Settings of a `mysql` sink.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MysqlSinkConfig {
    /// The server.
    #[serde(flatten)]
    pub endpoint: MysqlEndpoint,
    /// The table.
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

fn yes() -> bool {
    true
}

/// The changelog column of upsert input.
const OP: &str = "_op";

/// How to reach a MySQL or MariaDB server (shared by the source and the
/// sink).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MysqlEndpoint {
    /// `mysql://user[:password]@host:port/database` (`?require_ssl=true`
    /// asks for TLS).
    pub url: String,
    /// Environment variable holding the password (never printed).
    pub password_env: Option<String>,
    /// TLS settings; present, the connection must use TLS.
    pub tls: Option<TlsOptions>,
}

impl MysqlEndpoint {
    fn opts(&self) -> std::result::Result<Opts, String> {
        Opts::from_url(&self.url).map_err(|e| format!("invalid MySQL url '{}': {e}", self.url))
    }

    /// Validation of the url and TLS settings, at `at(key)`.
    pub(crate) fn check(
        &self,
        at: impl Fn(&str) -> String,
    ) -> std::result::Result<(), Diagnostics> {
        self.opts()
            .map_err(|m| Diagnostics::from(streamflow_core::Diagnostic::new(at("url"), m)))?;
        crate::server::check_tls(at, self.tls.as_ref())
    }

    /// A connection (the password from `password_env` if set), its session
    /// in UTC with `NO_BACKSLASH_ESCAPES` (so quotes are the only thing
    /// literals escape); retried with backoff for about 10 s.
    pub(crate) async fn connect(&self) -> Result<Conn> {
        let opts = self.opts().map_err(Error::Other)?;
        let mut builder = OptsBuilder::from_opts(opts.clone());
        if let Some(var) = &self.password_env {
            let password = std::env::var(var)
                .map_err(|_| Error::Other(format!("environment variable {var} is not set")))?;
            builder = builder.pass(Some(password));
        }
        if let Some(tls) = &self.tls {
            builder = builder.ssl_opts(Some(ssl_opts(tls)?));
        }
        let builder = builder.init(vec![
            "SET time_zone = '+00:00'",
            "SET SESSION sql_mode = CONCAT(@@sql_mode, ',NO_BACKSLASH_ESCAPES')",
        ]);
        let address = format!("{}:{}", opts.ip_or_hostname(), opts.tcp_port());
        crate::server::connect_with_backoff("MySQL", &address, || Conn::new(builder.clone())).await
    }
}

/// The client's TLS settings: `ca_file`'s authorities (besides the
/// built-in ones), a client identity, or no verification at all.
#[cfg(feature = "tls")]
fn ssl_opts(tls: &TlsOptions) -> Result<mysql_async::SslOpts> {
    streamflow_tls::install_default_provider();
    let mut ssl = mysql_async::SslOpts::default()
        .with_danger_accept_invalid_certs(tls.insecure_skip_verify)
        .with_danger_skip_domain_validation(tls.insecure_skip_verify);
    if let Some(ca) = &tls.ca_file {
        ssl = ssl.with_root_certs(vec![ca.clone().into()]);
    }
    if let (Some(cert), Some(key)) = (&tls.cert_file, &tls.key_file) {
        ssl = ssl.with_client_identity(Some(mysql_async::ClientIdentity::new(
            cert.clone().into(),
            key.clone().into(),
        )));
    }
    Ok(ssl)
}

#[cfg(not(feature = "tls"))]
fn ssl_opts(_: &TlsOptions) -> Result<mysql_async::SslOpts> {
    Err(Error::Other(
        "mysql: this build has no TLS (cargo feature `tls`)".into(),
    ))
}

/// A quoted identifier.
pub(crate) fn ident(name: &str) -> String {
    format!("`{}`", name.replace('`', "``"))
}

/// A MySQL error as a pipeline error saying what was being done.
pub(crate) fn mysql_error(what: &str, e: mysql_async::Error) -> Error {
    Error::Other(format!("mysql: {what}: {e}"))
}

/// The column type a table gets for an Arrow type (`key`: part of the
/// primary key, so text is bounded).
fn sql_type(t: &DataType, key: bool) -> Option<&'static str> {
    Some(match t {
        DataType::Int64 => "BIGINT",
        DataType::Int32 => "INT",
        DataType::Float64 => "DOUBLE",
        DataType::Float32 => "FLOAT",
        DataType::Boolean => "BOOLEAN",
        DataType::Utf8 | DataType::LargeUtf8 if key => "VARCHAR(255)",
        DataType::Utf8 | DataType::LargeUtf8 => "TEXT",
        DataType::Date32 => "DATE",
        DataType::Timestamp(_, _) => "DATETIME(6)",
        _ => return None,
    })
}

/// A column written: its name and column type.
#[derive(Debug, Clone)]
struct Column {
    name: String,
    sql: &'static str,
}

pub(crate) fn plan(ctx: &SinkContext<'_>) -> Result<Arc<dyn SinkFactory>, Diagnostics> {
    let config: MysqlSinkConfig = ctx.config()?;
    let mut d = Diagnostics::new();
    if let Err(more) = config.endpoint.check(|k| ctx.at(k)) {
        d.extend(more);
    }
    let planned = super::table_columns(ctx, config.mode, &config.key, "MySQL", sql_type);
    let (columns, changelog) = match planned {
        Ok(planned) => d.into_result(planned)?,
        Err(more) => {
            d.extend(more);
            return Err(d);
        }
    };
    let columns = columns
        .into_iter()
        .map(|(name, sql)| Column { name, sql })
        .collect();
    Ok(Arc::new(MysqlSinkFactory {
        sink_id: format!("{}/{}", config.table, ctx.name),
        stage: format!("{}_streamflow_stage", config.table),
        changelog,
        columns,
        config: Arc::new(config),
    }))
}

struct MysqlSinkFactory {
    config: Arc<MysqlSinkConfig>,
    sink_id: String,
    stage: String,
    changelog: bool,
    columns: Vec<Column>,
}

impl SinkFactory for MysqlSinkFactory {
    fn create(&self, instance: usize) -> Result<Box<dyn Sink>> {
        Ok(Box::new(MysqlSink {
            config: Arc::clone(&self.config),
            sink_id: self.sink_id.clone(),
            stage: self.stage.clone(),
            changelog: self.changelog,
            columns: self.columns.clone(),
            instance: instance as i64,
            conn: None,
            checkpointing: false,
            buffered: Vec::new(),
            row: 0,
        }))
    }
}

struct MysqlSink {
    config: Arc<MysqlSinkConfig>,
    sink_id: String,
    stage: String,
    changelog: bool,
    columns: Vec<Column>,
    instance: i64,
    conn: Option<Conn>,
    checkpointing: bool,
    /// Rows since the last checkpoint.
    buffered: Vec<RecordBatch>,
    /// Sequence number of the next staged row (the last row of a key wins).
    row: i64,
}

/// The checkpoint rows written without checkpoints are staged under.
const UNCHECKPOINTED: i64 = -1;

/// Staging statements are cut at about this many bytes of SQL (MySQL's
/// `max_allowed_packet` is 16 MiB or more by default).
const STATEMENT_BYTES: usize = 4 << 20;

impl MysqlSink {
    fn err(&self, what: &str, e: mysql_async::Error) -> Error {
        mysql_error(&format!("{} sink: {what}", self.config.table), e)
    }

    async fn conn(&mut self) -> Result<&mut Conn> {
        if self.conn.is_none() {
            self.conn = Some(self.config.endpoint.connect().await?);
        }
        self.conn
            .as_mut()
            .ok_or_else(|| Error::Other("mysql connection lost".into()))
    }

    async fn create_tables(&mut self) -> Result<()> {
        let cols: Vec<String> = self
            .columns
            .iter()
            .map(|c| format!("{} {}", ident(&c.name), c.sql))
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
                "CREATE TABLE IF NOT EXISTS {} ({}{key}) ENGINE=InnoDB",
                ident(&self.config.table),
                cols.join(", ")
            ));
        }
        let op = if self.changelog {
            ", `_op` VARCHAR(2)"
        } else {
            ""
        };
        ddl.push(format!(
            "CREATE TABLE IF NOT EXISTS {} ({}{op}, `_instance` INT, `_checkpoint` BIGINT, `_row` BIGINT, KEY (`_instance`, `_checkpoint`)) ENGINE=InnoDB",
            ident(&self.stage),
            cols.join(", ")
        ));
        ddl.push(
            "CREATE TABLE IF NOT EXISTS streamflow_ledger (sink VARCHAR(255), instance INT, checkpoint BIGINT, PRIMARY KEY (sink, instance)) ENGINE=InnoDB".into(),
        );
        for sql in ddl {
            let result = self.conn().await?.query_drop(sql).await;
            result.map_err(|e| self.err("creating tables", e))?;
        }
        Ok(())
    }

    /// Inserts `batches` into the staging table under `checkpoint`.
    async fn stage_rows(&mut self, batches: &[RecordBatch], checkpoint: i64) -> Result<()> {
        let mut names: Vec<String> = self.columns.iter().map(|c| ident(&c.name)).collect();
        if self.changelog {
            names.push(ident(OP));
        }
        names.extend([
            "`_instance`".into(),
            "`_checkpoint`".into(),
            "`_row`".into(),
        ]);
        let head = format!(
            "INSERT INTO {} ({}) VALUES ",
            ident(&self.stage),
            names.join(", ")
        );
        let mut statements = Vec::new();
        let mut sql = String::new();
        let mut row = self.row;
        for batch in batches {
            let mut literals = Vec::with_capacity(self.columns.len() + 1);
            for c in &self.columns {
                let array = batch
                    .column_by_name(&c.name)
                    .ok_or_else(|| Error::Other(format!("no column {}", c.name)))?;
                literals.push(Literals::of(array.as_ref())?);
            }
            if self.changelog {
                let op = batch
                    .column_by_name(OP)
                    .ok_or_else(|| Error::Other("no _op column".into()))?;
                literals.push(Literals::of(op.as_ref())?);
            }
            for r in 0..batch.num_rows() {
                if sql.is_empty() {
                    sql.push_str(&head);
                } else {
                    sql.push(',');
                }
                sql.push('(');
                for l in &literals {
                    l.write(r, &mut sql);
                    sql.push(',');
                }
                let _ = write!(sql, "{},{checkpoint},{row})", self.instance);
                row += 1;
                if sql.len() >= STATEMENT_BYTES {
                    statements.push(std::mem::take(&mut sql));
                }
            }
        }
        if !sql.is_empty() {
            statements.push(sql);
        }
        for sql in statements {
            let result = self.conn().await?.query_drop(sql).await;
            result.map_err(|e| self.err("staging rows", e))?;
        }
        self.row = row;
        Ok(())
    }

    /// The statements that move the rows staged under a checkpoint into
    /// the table (parameters: instance, checkpoint).
    fn moves(&self) -> Vec<String> {
        let cols: Vec<String> = self.columns.iter().map(|c| ident(&c.name)).collect();
        let list = cols.join(", ");
        let stage = ident(&self.stage);
        let table = ident(&self.config.table);
        let here = "`_instance` = ? AND `_checkpoint` = ?";
        match self.config.mode {
            WriteMode::Append => vec![format!(
                "INSERT INTO {table} ({list}) SELECT {list} FROM {stage} WHERE {here} ORDER BY `_row`"
            )],
            WriteMode::Upsert => {
                let key: Vec<String> = self.config.key.iter().map(|k| ident(k)).collect();
                let keys = key.join(", ");
                let op = if self.changelog { ", `_op`" } else { "" };
                // The last staged row of each key.
                let last = format!(
                    "SELECT {list}{op} FROM (SELECT {list}{op}, ROW_NUMBER() OVER (PARTITION BY {keys} ORDER BY `_row` DESC) AS `_rank` FROM {stage} WHERE {here}) r WHERE `_rank` = 1"
                );
                let mut statements = Vec::new();
                if self.changelog {
                    let matches = key
                        .iter()
                        .map(|k| format!("t.{k} = s.{k}"))
                        .collect::<Vec<_>>()
                        .join(" AND ");
                    statements.push(format!(
                        "DELETE t FROM {table} t JOIN ({last}) s ON {matches} WHERE s.`_op` = '-D'"
                    ));
                }
                let keep = if self.changelog {
                    "WHERE `_op` IN ('+I', '+U')"
                } else {
                    ""
                };
                let updates: Vec<String> = cols
                    .iter()
                    .filter(|c| !key.contains(c))
                    .map(|c| format!("{c} = VALUES({c})"))
                    .collect();
                let action = if updates.is_empty() {
                    // Nothing but the key: a repeat changes nothing.
                    format!("{k} = {k}", k = key[0])
                } else {
                    updates.join(", ")
                };
                statements.push(format!(
                    "INSERT INTO {table} ({list}) SELECT {list} FROM ({last}) s {keep} ON DUPLICATE KEY UPDATE {action}"
                ));
                statements
            }
        }
    }

    /// Moves the rows staged under `checkpoint` into the table, once.
    async fn publish(&mut self, checkpoint: i64) -> Result<()> {
        let moves = self.moves();
        let clear = format!(
            "DELETE FROM {} WHERE `_instance` = ? AND `_checkpoint` = ?",
            ident(&self.stage)
        );
        let (sink_id, instance) = (self.sink_id.clone(), self.instance);
        let ledgered = checkpoint != UNCHECKPOINTED;
        let conn = self.conn().await?;
        let result: std::result::Result<bool, mysql_async::Error> = async {
            let mut tx = conn.start_transaction(TxOpts::default()).await?;
            if ledgered {
                let done: Option<i64> = tx
                    .exec_first(
                        "SELECT checkpoint FROM streamflow_ledger WHERE sink = ? AND instance = ? FOR UPDATE",
                        (&sink_id, instance),
                    )
                    .await?;
                if done.is_some_and(|d| d >= checkpoint) {
                    tx.exec_drop(&clear, (instance, checkpoint)).await?;
                    tx.commit().await?;
                    return Ok(false);
                }
            }
            for sql in &moves {
                tx.exec_drop(sql.as_str(), (instance, checkpoint)).await?;
            }
            tx.exec_drop(&clear, (instance, checkpoint)).await?;
            if ledgered {
                tx.exec_drop(
                    "INSERT INTO streamflow_ledger (sink, instance, checkpoint) VALUES (?, ?, ?) ON DUPLICATE KEY UPDATE checkpoint = VALUES(checkpoint)",
                    (&sink_id, instance, checkpoint),
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

/// One column's values, written as SQL literals row by row.
enum Literals<'a> {
    I64(&'a Int64Array),
    I32(&'a Int32Array),
    F64(&'a Float64Array),
    F32(&'a Float32Array),
    Bool(&'a BooleanArray),
    Str(&'a StringArray),
    LargeStr(&'a LargeStringArray),
    Date(&'a Date32Array),
    /// Timestamps in `unit`s since the epoch.
    Time(&'a dyn Array, TimeUnit),
}

impl<'a> Literals<'a> {
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
            DataType::Timestamp(unit, _) => Self::Time(array, *unit),
            other => return Err(Error::Other(format!("cannot write {other} to MySQL"))),
        })
    }

    /// Appends row `r` as a literal to `sql`.
    fn write(&self, r: usize, sql: &mut String) {
        let valid = match self {
            Self::I64(a) => a.is_valid(r),
            Self::I32(a) => a.is_valid(r),
            Self::F64(a) => a.is_valid(r) && a.value(r).is_finite(),
            Self::F32(a) => a.is_valid(r) && a.value(r).is_finite(),
            Self::Bool(a) => a.is_valid(r),
            Self::Str(a) => a.is_valid(r),
            Self::LargeStr(a) => a.is_valid(r),
            Self::Date(a) => a.is_valid(r),
            Self::Time(a, _) => a.is_valid(r),
        };
        if !valid {
            sql.push_str("NULL");
            return;
        }
        let _ = match self {
            Self::I64(a) => write!(sql, "{}", a.value(r)),
            Self::I32(a) => write!(sql, "{}", a.value(r)),
            Self::F64(a) => write!(sql, "{:e}", a.value(r)),
            Self::F32(a) => write!(sql, "{:e}", a.value(r)),
            Self::Bool(a) => write!(sql, "{}", if a.value(r) { "TRUE" } else { "FALSE" }),
            Self::Str(a) => {
                quoted(a.value(r), sql);
                Ok(())
            }
            Self::LargeStr(a) => {
                quoted(a.value(r), sql);
                Ok(())
            }
            Self::Date(a) => match arrow::temporal_conversions::date32_to_datetime(a.value(r)) {
                Some(d) => write!(sql, "'{}'", d.date().format("%Y-%m-%d")),
                None => write!(sql, "NULL"),
            },
            Self::Time(a, unit) => match timestamp(*a, *unit, r) {
                Some(t) => write!(sql, "'{}'", t.format("%Y-%m-%d %H:%M:%S%.6f")),
                None => write!(sql, "NULL"),
            },
        };
    }
}

/// `text` as a quoted literal (the session has `NO_BACKSLASH_ESCAPES`, so
/// only quotes are doubled).
fn quoted(text: &str, sql: &mut String) {
    sql.push('\'');
    for (i, part) in text.split('\'').enumerate() {
        if i > 0 {
            sql.push_str("''");
        }
        sql.push_str(part);
    }
    sql.push('\'');
}

/// Row `r` of a timestamp column as a date and time (UTC).
fn timestamp(array: &dyn Array, unit: TimeUnit, r: usize) -> Option<chrono::NaiveDateTime> {
    use arrow::temporal_conversions as tc;
    let any = array.as_any();
    match unit {
        TimeUnit::Second => {
            tc::timestamp_s_to_datetime(any.downcast_ref::<TimestampSecondArray>()?.value(r))
        }
        TimeUnit::Millisecond => {
            tc::timestamp_ms_to_datetime(any.downcast_ref::<TimestampMillisecondArray>()?.value(r))
        }
        TimeUnit::Microsecond => {
            tc::timestamp_us_to_datetime(any.downcast_ref::<TimestampMicrosecondArray>()?.value(r))
        }
        TimeUnit::Nanosecond => {
            tc::timestamp_ns_to_datetime(any.downcast_ref::<TimestampNanosecondArray>()?.value(r))
        }
    }
}

#[async_trait]
impl Sink for MysqlSink {
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
        let clear = format!("DELETE FROM {} WHERE `_instance` = ?", ident(&self.stage));
        let conn = self.conn().await?;
        let mut result = conn.exec_drop(clear, (instance,)).await;
        if fresh && result.is_ok() {
            result = conn
                .exec_drop(
                    "DELETE FROM streamflow_ledger WHERE sink = ? AND instance = ?",
                    (&sink_id, instance),
                )
                .await;
        }
        result.map_err(|e| self.err("clearing staged rows", e))
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
        let sql = format!(
            "DELETE FROM {} WHERE `_instance` = ? AND `_checkpoint` = ?",
            ident(&self.stage)
        );
        let instance = self.instance;
        let result = self
            .conn()
            .await?
            .exec_drop(sql, (instance, checkpoint as i64))
            .await;
        result.map_err(|e| self.err("discarding a checkpoint", e))
    }

    async fn finish(&mut self) -> Result<()> {
        if let Some(conn) = self.conn.take() {
            let _ = conn.disconnect().await;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_are_doubled_and_nothing_else_changes() {
        let mut sql = String::new();
        quoted(r"it's a \ test''", &mut sql);
        assert_eq!(sql, r"'it''s a \ test'''''");
    }

    #[test]
    fn literals_cover_nulls_floats_and_times() {
        let mut sql = String::new();
        let floats = Float64Array::from(vec![Some(1.5), None, Some(f64::NAN)]);
        let l = Literals::of(&floats).expect("floats");
        for r in 0..3 {
            l.write(r, &mut sql);
            sql.push(' ');
        }
        assert_eq!(sql, "1.5e0 NULL NULL ");
        let times = TimestampMillisecondArray::from(vec![1_767_225_600_123]);
        let mut sql = String::new();
        Literals::of(&times).expect("times").write(0, &mut sql);
        assert_eq!(sql, "'2026-01-01 00:00:00.123000'");
    }
}
