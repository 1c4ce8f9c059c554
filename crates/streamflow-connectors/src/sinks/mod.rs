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
