//! Sinks, one module per system.

pub mod blackhole;
pub mod file;
pub mod http;
#[cfg(feature = "kafka")]
pub mod kafka;
pub mod log;
#[cfg(feature = "mqtt")]
pub mod mqtt;
#[cfg(feature = "mysql")]
pub mod mysql;
#[cfg(feature = "nats")]
pub mod nats;
#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(feature = "rabbitmq")]
pub mod rabbitmq;
#[cfg(feature = "redis")]
pub mod redis;
pub mod stdout;

mod encode;

/// The columns a database sink writes — each input column (but the
/// changelog's `_op`) with its column type, `column_type(type, is_key)` —
/// and whether the input is a changelog, checked against `mode` and `key`;
/// every problem reported at once, at `ctx`'s paths.
#[cfg(any(feature = "postgres", feature = "mysql"))]
pub(crate) fn table_columns<T>(
    ctx: &crate::registry::SinkContext<'_>,
    mode: WriteMode,
    key: &[String],
    system: &str,
    column_type: impl Fn(&arrow::datatypes::DataType, bool) -> Option<T>,
) -> Result<(Vec<(String, T)>, bool), streamflow_core::Diagnostics> {
    const OP: &str = "_op";
    let mut d = streamflow_core::Diagnostics::new();
    let changelog = ctx.input.field_with_name(OP).is_ok();
    let mut columns = Vec::new();
    for f in ctx.input.fields() {
        if f.name() == OP {
            continue;
        }
        match column_type(f.data_type(), key.contains(f.name())) {
            Some(t) => columns.push((f.name().clone(), t)),
            None => d.push(
                ctx.at("table"),
                format!(
                    "column '{}' has type {}, which has no {system} column type here",
                    f.name(),
                    f.data_type()
                ),
            ),
        }
    }
    match mode {
        WriteMode::Upsert if key.is_empty() => d.push(ctx.at("key"), "upsert needs key columns"),
        WriteMode::Append if changelog => d.push(
            ctx.at("mode"),
            "the input is a changelog (_op): use mode: upsert with a key",
        ),
        _ => {}
    }
    for k in key {
        if !columns.iter().any(|(name, _)| name == k) {
            d.push(
                ctx.at("key"),
                format!("key column '{k}' is not in the input"),
            );
        }
    }
    d.into_result((columns, changelog))
}

/// How rows reach a database table (`mode: append|upsert`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum WriteMode {
    /// Every row is inserted.
    #[default]
    Append,
    /// A row replaces the row with the same key.
    Upsert,
}
mod replay_ids;
pub mod retry;

/// Column `index` of `batch` as text, one value per row: where each row
/// goes (a log segment, an MQTT topic) when a column names it. Fails when
/// a row has no value, saying it names the `what`.
pub(crate) fn destinations(
    batch: &arrow::record_batch::RecordBatch,
    index: usize,
    what: &str,
) -> Result<arrow::array::StringArray, String> {
    use arrow::array::Array;
    let name = batch.schema().field(index).name().clone();
    let column = arrow::compute::cast(batch.column(index), &arrow::datatypes::DataType::Utf8)
        .map_err(|e| format!("reading column '{name}' as {what} names: {e}"))?;
    let names = column
        .as_any()
        .downcast_ref::<arrow::array::StringArray>()
        .ok_or_else(|| format!("column '{name}' does not hold {what} names"))?
        .clone();
    if names.null_count() > 0 {
        return Err(format!(
            "column '{name}' is null in a row: it names the {what}"
        ));
    }
    Ok(names)
}
