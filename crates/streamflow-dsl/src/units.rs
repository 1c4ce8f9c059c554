//! Human-readable quantities in flow files: durations (`500ms`, `1h30m`)
//! and byte sizes (`64MB`, `512KiB`).

use std::time::Duration;

/// Parses a duration made of one or more `<integer><unit>` parts, with units
/// `us`, `ms`, `s`, `m`, `h`, `d`.
///
/// # Errors
/// A message naming the problem, e.g. `invalid duration '10x': unknown unit 'x'`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let bad =
        |why: &str| format!("invalid duration '{text}': {why} (expected e.g. 500ms, 10s, 1h30m)");
    if t.is_empty() {
        return Err(bad("empty"));
    }
    let mut total = Duration::ZERO;
    let mut rest = t;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(bad("expected a number"));
        }
        let n: u64 = rest[..digits]
            .parse()
            .map_err(|_| bad("number too large"))?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let part = match unit {
            "us" => Duration::from_micros(n),
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n.saturating_mul(60)),
            "h" => Duration::from_secs(n.saturating_mul(3600)),
            "d" => Duration::from_secs(n.saturating_mul(86_400)),
            "" => return Err(bad("missing unit")),
            other => return Err(bad(&format!("unknown unit '{other}'"))),
        };
        total = total.saturating_add(part);
    }
    Ok(total)
}

/// Parses a byte size: a plain integer, or a number with `B`, `KB`, `MB`,
/// `GB` (powers of 1000) or `KiB`, `MiB`, `GiB` (powers of 1024).
///
/// # Errors
/// A message naming the problem.
pub fn parse_byte_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let bad =
        |why: &str| format!("invalid size '{text}': {why} (expected e.g. 1048576, 64MB, 512KiB)");
    let n: u64 = num.parse().map_err(|_| bad("expected a number"))?;
    let factor: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        other => return Err(bad(&format!("unknown unit '{other}'"))),
    };
    n.checked_mul(factor).ok_or_else(|| bad("too large"))
}

/// A byte size in a config: an integer or a string such as `64MB`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl<'de> serde::Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match serde_json::Value::deserialize(d)? {
            serde_json::Value::Number(n) => n
                .as_u64()
                .map(ByteSize)
                .ok_or_else(|| serde::de::Error::custom("expected a positive size")),
            serde_json::Value::String(s) => parse_byte_size(&s)
                .map(ByteSize)
                .map_err(serde::de::Error::custom),
            other => Err(serde::de::Error::custom(format!(
                "expected a size, found {other}"
            ))),
        }
    }
}

/// A duration in a config, written as text such as `500ms` or `1h30m`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl<'de> serde::Deserialize<'de> for HumanDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match serde_json::Value::deserialize(d)? {
            serde_json::Value::String(s) => parse_duration(&s)
                .map(HumanDuration)
                .map_err(serde::de::Error::custom),
            other => Err(serde::de::Error::custom(format!(
                "invalid duration '{other}': missing unit (expected e.g. 500ms, 10s, 1h30m)"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_byte_sizes() {
        assert_eq!(parse_byte_size("1024"), Ok(1024));
        assert_eq!(parse_byte_size("64MB"), Ok(64_000_000));
        assert_eq!(parse_byte_size("2KiB"), Ok(2048));
        assert!(parse_byte_size("3XB").is_err());
    }

    #[test]
    fn parses_compound_durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(
            parse_duration("1m30s500ms"),
            Ok(Duration::from_millis(90_500))
        );
    }

    #[test]
    fn rejects_malformed_durations() {
        assert!(parse_duration("").is_err());
        assert!(parse_duration("10").unwrap_err().contains("missing unit"));
        assert!(
            parse_duration("10x")
                .unwrap_err()
                .contains("unknown unit 'x'")
        );
        assert!(
            parse_duration("s10")
                .unwrap_err()
                .contains("expected a number")
        );
        assert!(parse_duration("-5s").is_err());
    }
}
