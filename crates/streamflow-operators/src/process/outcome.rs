//! What a node tree does to a batch: each input record either comes
//! through (transformed) or fails with the path of the failing node.
//!
//! Records keep their order. Nodes that send some records one way and
//! others another (filter, switch, fallback, retry, race) put the pieces
//! back together in input order with [`Assembly`].

use std::sync::Arc;

use arrow::array::UInt32Array;
use arrow::compute::{interleave, take_record_batch};
use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;

/// Why a record failed: the path of the failing node in its tree
/// (`lookup -> retry -> timeout`) and what went wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeError {
    /// Node names from the root to the failing node, joined by ` -> `.
    pub path: Arc<str>,
    /// What went wrong there.
    pub message: String,
}

impl std::fmt::Display for NodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// What a [`Processor`](super::Processor) made of a batch: the output rows
/// of the input rows it did not fail on (in input order), and the failed
/// input rows with the reason.
#[derive(Debug, Clone)]
pub struct Processed {
    /// One row per input row not in `failed`, in order.
    pub output: RecordBatch,
    /// Failed input rows (by index) and why.
    pub failed: Vec<(usize, String)>,
}

impl Processed {
    /// Every row succeeded.
    pub fn ok(output: RecordBatch) -> Self {
        Self {
            output,
            failed: Vec::new(),
        }
    }
}

/// What a node made of a batch: output rows for the input rows that came
/// through (in input order) and the failed input rows, ascending, with
/// their errors.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// One row per input row not in `failed`, in order.
    pub output: RecordBatch,
    /// Failed input rows (by index, ascending) and why.
    pub failed: Vec<(usize, Arc<NodeError>)>,
}

impl Outcome {
    /// Every row came through.
    pub fn ok(output: RecordBatch) -> Self {
        Self {
            output,
            failed: Vec::new(),
        }
    }

    /// Every one of `rows` input rows failed with `error`.
    pub fn fail_all(rows: usize, schema: SchemaRef, error: NodeError) -> Self {
        let error = Arc::new(error);
        Self {
            output: RecordBatch::new_empty(schema),
            failed: (0..rows).map(|r| (r, Arc::clone(&error))).collect(),
        }
    }

    /// For each of the `rows` input rows: its output row, or its error.
    pub fn fates(&self, rows: usize) -> Vec<Result<usize, Arc<NodeError>>> {
        let mut out = Vec::with_capacity(rows);
        let mut failed = self.failed.iter().peekable();
        let mut next = 0;
        for r in 0..rows {
            match failed.peek() {
                Some((f, e)) if *f == r => {
                    out.push(Err(Arc::clone(e)));
                    failed.next();
                }
                _ => {
                    out.push(Ok(next));
                    next += 1;
                }
            }
        }
        out
    }
}

/// The input rows `rows` of `batch` (the batch itself when that is all of it).
pub(crate) fn subset(batch: &RecordBatch, rows: &[usize]) -> Result<RecordBatch, String> {
    if rows.len() == batch.num_rows() && rows.iter().enumerate().all(|(i, r)| i == *r) {
        return Ok(batch.clone());
    }
    let idx = UInt32Array::from_iter_values(rows.iter().map(|&r| r as u32));
    take_record_batch(batch, &idx).map_err(|e| e.to_string())
}

/// `batch` under `schema` (the same columns, perhaps other nullability).
pub(crate) fn conform(batch: &RecordBatch, schema: &SchemaRef) -> Result<RecordBatch, String> {
    if batch.schema_ref() == schema {
        return Ok(batch.clone());
    }
    RecordBatch::try_new(Arc::clone(schema), batch.columns().to_vec()).map_err(|e| e.to_string())
}

/// Where an input row's result is.
#[derive(Clone)]
enum Slot {
    Pending,
    Done { part: usize, row: usize },
    Failed(Arc<NodeError>),
}

/// Puts the results of calls on parts of a batch back in input order.
pub(crate) struct Assembly {
    parts: Vec<RecordBatch>,
    slots: Vec<Slot>,
}

impl Assembly {
    /// Nothing resolved yet for `rows` input rows.
    pub(crate) fn new(rows: usize) -> Self {
        Self {
            parts: Vec::new(),
            slots: vec![Slot::Pending; rows],
        }
    }

    /// The input rows without a result yet.
    pub(crate) fn pending(&self) -> Vec<usize> {
        (0..self.slots.len())
            .filter(|&r| matches!(self.slots[r], Slot::Pending))
            .collect()
    }

    /// Takes the successes of `outcome`, a call on input rows `rows`, for
    /// rows still pending; returns its failures (as input rows).
    pub(crate) fn add(&mut self, rows: &[usize], outcome: Outcome) -> Vec<(usize, Arc<NodeError>)> {
        let part = self.parts.len();
        let mut failures = Vec::new();
        for (k, fate) in outcome.fates(rows.len()).into_iter().enumerate() {
            let input = rows[k];
            match fate {
                Ok(row) => {
                    if matches!(self.slots[input], Slot::Pending) {
                        self.slots[input] = Slot::Done { part, row };
                    }
                }
                Err(e) => failures.push((input, e)),
            }
        }
        self.parts.push(outcome.output);
        failures
    }

    /// Input rows `rows` come through unchanged from `input`.
    pub(crate) fn pass(&mut self, input: &RecordBatch, rows: &[usize]) {
        let part = self.parts.len();
        for &r in rows {
            self.slots[r] = Slot::Done { part, row: r };
        }
        self.parts.push(input.clone());
    }

    /// Input row `row` failed with `error`.
    pub(crate) fn fail(&mut self, row: usize, error: Arc<NodeError>) {
        self.slots[row] = Slot::Failed(error);
    }

    /// The assembled outcome in `schema`; rows still pending fail with `unresolved`.
    pub(crate) fn finish(self, schema: &SchemaRef, unresolved: impl Fn() -> NodeError) -> Outcome {
        let mut failed = Vec::new();
        let mut picks: Vec<(usize, usize)> = Vec::with_capacity(self.slots.len());
        let mut missing: Option<Arc<NodeError>> = None;
        for (r, slot) in self.slots.into_iter().enumerate() {
            match slot {
                Slot::Done { part, row } => picks.push((part, row)),
                Slot::Failed(e) => failed.push((r, e)),
                Slot::Pending => {
                    let e = missing.get_or_insert_with(|| Arc::new(unresolved()));
                    failed.push((r, Arc::clone(e)));
                }
            }
        }
        // One part taken whole and in order: no copy.
        let whole = picks.first().is_some_and(|(p, _)| {
            self.parts[*p].num_rows() == picks.len()
                && picks
                    .iter()
                    .enumerate()
                    .all(|(i, (q, row))| q == p && *row == i)
        });
        let output = if picks.is_empty() {
            Ok(RecordBatch::new_empty(Arc::clone(schema)))
        } else if whole {
            conform(&self.parts[picks[0].0], schema)
        } else {
            // Branches agree on columns; nullability may differ, so the
            // columns are put together under the node's schema.
            (0..schema.fields().len())
                .map(|c| {
                    let columns: Vec<&dyn arrow::array::Array> =
                        self.parts.iter().map(|p| p.column(c).as_ref()).collect();
                    interleave(&columns, &picks)
                })
                .collect::<Result<Vec<_>, _>>()
                .and_then(|cols| RecordBatch::try_new(Arc::clone(schema), cols))
                .map_err(|e| e.to_string())
        };
        let output = match output {
            Ok(b) => b,
            Err(e) => {
                let e = Arc::new(NodeError {
                    path: "".into(),
                    message: format!("assembling results: {e}"),
                });
                return Outcome {
                    output: RecordBatch::new_empty(Arc::clone(schema)),
                    failed: (0..picks.len() + failed.len())
                        .map(|r| (r, Arc::clone(&e)))
                        .collect(),
                };
            }
        };
        Outcome { output, failed }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Array, Int64Array};
    use arrow::datatypes::{DataType, Field, Schema};

    fn batch(values: &[i64]) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![Field::new("v", DataType::Int64, false)]));
        RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from(values.to_vec()))])
            .expect("batch")
    }

    fn err(m: &str) -> Arc<NodeError> {
        Arc::new(NodeError {
            path: "n".into(),
            message: m.into(),
        })
    }

    #[test]
    fn pieces_are_put_back_in_input_order() {
        let input = batch(&[10, 11, 12, 13, 14]);
        let mut a = Assembly::new(5);
        // Rows 1 and 3 went one way (row 3 failed), the rest another.
        let failures = a.add(
            &[1, 3],
            Outcome {
                output: batch(&[101]),
                failed: vec![(1, err("bad"))],
            },
        );
        assert_eq!(failures.len(), 1);
        assert_eq!(failures[0].0, 3);
        a.fail(3, Arc::clone(&failures[0].1));
        a.pass(&input, &[0, 2]);
        assert_eq!(a.pending(), vec![4]);
        let out = a.finish(&input.schema(), || NodeError {
            path: "n".into(),
            message: "unresolved".into(),
        });
        let v = out
            .output
            .column(0)
            .as_any()
            .downcast_ref::<Int64Array>()
            .expect("i64");
        assert_eq!(v.values().to_vec(), vec![10, 101, 12]);
        let failed: Vec<(usize, String)> = out
            .failed
            .iter()
            .map(|(r, e)| (*r, e.message.clone()))
            .collect();
        assert_eq!(
            failed,
            vec![(3, "bad".to_string()), (4, "unresolved".to_string())]
        );
        assert_eq!(v.len(), 3);
    }

    #[test]
    fn fates_map_outputs_to_inputs() {
        let o = Outcome {
            output: batch(&[1, 2]),
            failed: vec![(0, err("x")), (2, err("y"))],
        };
        let f: Vec<_> = o
            .fates(4)
            .into_iter()
            .map(|f| f.map_err(|e| e.message.clone()))
            .collect();
        assert_eq!(f, vec![Err("x".into()), Ok(0), Err("y".into()), Ok(1)]);
    }
}
