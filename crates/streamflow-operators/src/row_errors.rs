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
    let (result, failed) = isolate(batch, f)?;
    for (row, error) in failed {
        out.dead_letter(DeadLetter {
            file: None,
            line: None,
            payload: Some(row_as_json(&batch.slice(row, 1))),
            error,
        });
    }
    Ok(result)
}

/// The result for the rows that survived (`None` when none did) and the
/// failed rows (by index, ascending) with their errors.
pub(crate) type Isolated = (Option<RecordBatch>, Vec<(usize, String)>);

/// Applies `f` to `batch`; on failure, finds the rows on which `f` fails
/// alone and applies `f` to the remaining rows. Returns the result for the
/// surviving rows (`None` when none survives) and the failed rows (by
/// index, ascending) with their errors.
///
/// # Errors
/// When `f` still fails on rows that each succeed alone (a batch-level fault).
pub(crate) fn isolate(
    batch: &RecordBatch,
    f: impl Fn(&RecordBatch) -> Result<RecordBatch, String>,
) -> Result<Isolated, Error> {
    if let Ok(result) = f(batch) {
        return Ok((Some(result), Vec::new()));
    }
    let mut keep = Vec::with_capacity(batch.num_rows());
    let mut failed = Vec::new();
    for i in 0..batch.num_rows() {
        match f(&batch.slice(i, 1)) {
            Ok(_) => keep.push(true),
            Err(error) => {
                keep.push(false);
                failed.push((i, error));
            }
        }
    }
    if !keep.contains(&true) {
        return Ok((None, failed));
    }
    let good = filter_record_batch(batch, &BooleanArray::from(keep))
        .map_err(|e| Error::arrow("filtering failed rows", e))?;
    let result = f(&good).map_err(Error::Other)?;
    Ok((Some(result), failed))
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

/// Each row of `batch` as a JSON object.
pub(crate) fn rows_as_json(batch: &RecordBatch) -> Vec<String> {
    let mut buf = Vec::new();
    {
        let mut w = LineDelimitedWriter::new(&mut buf);
        if w.write(batch).and_then(|_| w.finish()).is_err() {
            return (0..batch.num_rows())
                .map(|r| row_as_json(&batch.slice(r, 1)))
                .collect();
        }
    }
    String::from_utf8_lossy(&buf)
        .lines()
        .map(str::to_string)
        .collect()
}
