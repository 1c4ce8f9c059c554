//! Dead letters: records that failed decoding, validation or evaluation.
//!
//! They are rare, so they are described row by row here and turned into one
//! Arrow batch (see [`dead_letter_schema`]) by the runtime, which adds the stage name.

use std::sync::{Arc, OnceLock};

use arrow::array::{StringBuilder, UInt64Builder};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::error::ArrowError;
use arrow::record_batch::RecordBatch;

/// One rejected record and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// File the record came from, if any.
    pub file: Option<String>,
    /// 1-based line number in that file, if any.
    pub line: Option<u64>,
    /// The original payload (raw line, or the row as JSON).
    pub payload: Option<String>,
    /// The reason it was rejected.
    pub error: String,
}

/// Schema of every dead-letter output: `stage, file, line, payload, error`.
pub fn dead_letter_schema() -> SchemaRef {
    static SCHEMA: OnceLock<SchemaRef> = OnceLock::new();
    SCHEMA
        .get_or_init(|| {
            Arc::new(Schema::new(vec![
                Field::new("stage", DataType::Utf8, false),
                Field::new("file", DataType::Utf8, true),
                Field::new("line", DataType::UInt64, true),
                Field::new("payload", DataType::Utf8, true),
                Field::new("error", DataType::Utf8, false),
            ]))
        })
        .clone()
}

/// Builds the dead-letter batch for `letters` rejected by `stage`.
pub fn dead_letter_batch(stage: &str, letters: &[DeadLetter]) -> Result<RecordBatch, ArrowError> {
    let mut stage_b = StringBuilder::new();
    let mut file_b = StringBuilder::new();
    let mut line_b = UInt64Builder::new();
    let mut payload_b = StringBuilder::new();
    let mut error_b = StringBuilder::new();
    for l in letters {
        stage_b.append_value(stage);
        file_b.append_option(l.file.as_deref());
        line_b.append_option(l.line);
        payload_b.append_option(l.payload.as_deref());
        error_b.append_value(&l.error);
    }
    RecordBatch::try_new(
        dead_letter_schema(),
        vec![
            Arc::new(stage_b.finish()),
            Arc::new(file_b.finish()),
            Arc::new(line_b.finish()),
            Arc::new(payload_b.finish()),
            Arc::new(error_b.finish()),
        ],
    )
}
