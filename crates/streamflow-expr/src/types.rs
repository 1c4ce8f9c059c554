//! Column types and literal values as written in flow files.

use std::str::FromStr;

use arrow::datatypes::{DataType, TimeUnit};
use datafusion_common::ScalarValue;

/// Parses a type name: SQL-style (`bigint`, `double`, `varchar`, `boolean`,
/// `timestamp`), short forms (`int64`, `f64`, `string`, `timestamp(ms)`), or
/// any Arrow type display form (`Timestamp(Millisecond, None)`).
pub fn parse_data_type(name: &str) -> Result<DataType, String> {
    let lower = name.trim().to_lowercase();
    let dt = match lower.as_str() {
        "bool" | "boolean" => DataType::Boolean,
        "int8" | "tinyint" => DataType::Int8,
        "int16" | "smallint" => DataType::Int16,
        "int32" | "int" | "integer" => DataType::Int32,
        "int64" | "bigint" | "long" => DataType::Int64,
        "uint8" => DataType::UInt8,
        "uint16" => DataType::UInt16,
        "uint32" => DataType::UInt32,
        "uint64" => DataType::UInt64,
        "float32" | "f32" | "float" | "real" => DataType::Float32,
        "float64" | "f64" | "double" => DataType::Float64,
        "string" | "utf8" | "text" | "varchar" => DataType::Utf8,
        "binary" | "bytes" => DataType::Binary,
        "date" | "date32" => DataType::Date32,
        "timestamp" | "timestamp(ms)" => DataType::Timestamp(TimeUnit::Millisecond, None),
        "timestamp(s)" => DataType::Timestamp(TimeUnit::Second, None),
        "timestamp(us)" => DataType::Timestamp(TimeUnit::Microsecond, None),
        "timestamp(ns)" => DataType::Timestamp(TimeUnit::Nanosecond, None),
        _ => {
            return DataType::from_str(name.trim()).map_err(|_| {
                format!(
                    "unknown type '{name}' (use bool, int32, int64, float64, string, timestamp(ms), date, ... or an Arrow type)"
                )
            });
        }
    };
    Ok(dt)
}

/// Converts a literal from a flow file into a typed value: integers →
/// Int64, other numbers → Float64, booleans, strings and null.
pub fn scalar_from_json(value: &serde_json::Value) -> Result<ScalarValue, String> {
    use serde_json::Value;
    Ok(match value {
        Value::Null => ScalarValue::Null,
        Value::Bool(b) => ScalarValue::Boolean(Some(*b)),
        Value::Number(n) => match n.as_i64() {
            Some(i) => ScalarValue::Int64(Some(i)),
            None => ScalarValue::Float64(n.as_f64()),
        },
        Value::String(s) => ScalarValue::Utf8(Some(s.clone())),
        other => {
            return Err(format!(
                "expected a scalar value (string, number, boolean or null), found {other}"
            ));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_common_names() {
        assert_eq!(parse_data_type("BIGINT"), Ok(DataType::Int64));
        assert_eq!(
            parse_data_type("timestamp(ms)"),
            Ok(DataType::Timestamp(TimeUnit::Millisecond, None))
        );
        assert_eq!(parse_data_type("Utf8"), Ok(DataType::Utf8));
        assert!(parse_data_type("nope").is_err());
    }
}
