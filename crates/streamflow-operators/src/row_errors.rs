//! Isolating the rows that make a vectorised computation fail.
//!
//! Operators evaluate whole batches. When a batch fails (a division by zero,
//! a cast that cannot succeed), the failing rows are found one by one and
//! sent to the dead-letter output with the error, and the computation is
//! redone on the rest — so one bad row never stops the pipeline.

use arrow::array::BooleanArray;
use arrow::compute::filter_record_batch;
use arrow::json::LineDelimitedWriter;
use arrow::record_batch::RecordBatch;
use streamflow_core::{DeadLetter, Error, Output};

/// Applies `f` to `batch`; on failure, dead-letters the rows on which `f`
/// fails alone and applies `f` to the remaining rows. Returns `None` when no
/// row survives.
///
/// # Errors
/// When `f` still fails on rows that each succeed alone (a batch-level fault).
pub(crate) fn apply_isolating(
    batch: &RecordBatch,
    out: &mut Output,
    f: impl Fn(&RecordBatch) -> Result<RecordBatch, String>,
) -> Result<Option<RecordBatch>, Error> {
    match f(batch) {
        Ok(result) => return Ok(Some(result)),
        Err(_) if batch.num_rows() == 1 => {}
        Err(_) => {}
    }
    let mut keep = Vec::with_capacity(batch.num_rows());
    for i in 0..batch.num_rows() {
        let row = batch.slice(i, 1);
        match f(&row) {
            Ok(_) => keep.push(true),
            Err(error) => {
                keep.push(false);
                out.dead_letter(DeadLetter {
                    file: None,
                    line: None,
                    payload: Some(row_as_json(&row)),
                    error,
                });
            }
        }
    }
    if !keep.contains(&true) {
        return Ok(None);
    }
    let good = filter_record_batch(batch, &BooleanArray::from(keep))
        .map_err(|e| Error::arrow("filtering failed rows", e))?;
    f(&good).map(Some).map_err(Error::Other)
}

/// A one-row batch as a JSON object, for dead-letter payloads.
pub(crate) fn row_as_json(row: &RecordBatch) -> String {
    let mut buf = Vec::new();
    {
        let mut w = LineDelimitedWriter::new(&mut buf);
        if w.write(row).and_then(|_| w.finish()).is_err() {
            return String::new();
        }
    }
    String::from_utf8_lossy(&buf).trim_end().to_string()
}
