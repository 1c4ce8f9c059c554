//! The changelog convention: a stage whose results change over time (a
//! continuously updated aggregate, an outer join) emits rows with an `_op`
//! column saying what each row does to the result, as Flink's row kinds:
//! `+I` insert, `-U` retract the previous value of a key, `+U` its new
//! value, `-D` delete. Consumers that understand it (aggregates) apply
//! retractions; sinks write the column like any other.

/// Name of the operation column.
pub const OP_COLUMN: &str = "_op";

/// What a changelog row does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowKind {
    /// A new row.
    Insert,
    /// The old value of an updated row (to retract).
    UpdateBefore,
    /// The new value of an updated row.
    UpdateAfter,
    /// A removed row (to retract).
    Delete,
}

impl RowKind {
    /// The `_op` text.
    pub fn as_str(self) -> &'static str {
        match self {
            RowKind::Insert => "+I",
            RowKind::UpdateBefore => "-U",
            RowKind::UpdateAfter => "+U",
            RowKind::Delete => "-D",
        }
    }
    /// Parses the `_op` text.
    pub fn parse(text: &str) -> Option<RowKind> {
        match text {
            "+I" => Some(RowKind::Insert),
            "-U" => Some(RowKind::UpdateBefore),
            "+U" => Some(RowKind::UpdateAfter),
            "-D" => Some(RowKind::Delete),
            _ => None,
        }
    }
    /// Whether the row adds to (true) or retracts from (false) a result.
    pub fn is_addition(self) -> bool {
        matches!(self, RowKind::Insert | RowKind::UpdateAfter)
    }
}
