//! Moving batches from one instance to the instances of a consumer.
//!
//! An [`Exchange`] is the output side of one edge for one producing
//! instance. Today it is a set of in-process bounded channels; the same
//! interface will front a network exchange when pipelines span processes.
//! Keyed edges route by key group (`hash(key) mod MAX_KEY_GROUPS`) so that
//! keyed state can be redistributed when parallelism changes.

use std::sync::Arc;

use arrow::array::{ArrayRef, UInt32Array};
use arrow::compute::take_record_batch;
use arrow::record_batch::RecordBatch;
use streamflow_core::{Error, Message, Result};
use streamflow_expr::CompiledExpr;
use tokio::sync::mpsc::Sender;

pub use streamflow_state::{MAX_KEY_GROUPS, instance_for_key_group, key_group};

/// How rows are spread over the consumer's instances.
#[derive(Debug, Clone)]
pub enum Partitioning {
    /// Producer instance `i` feeds consumer instance `i` (equal parallelism).
    Forward(usize),
    /// Whole batches in turn to each instance.
    RoundRobin,
    /// Rows by the hash of these expressions.
    Hash(Arc<Vec<CompiledExpr>>),
}

/// The sending side of one edge for one producer instance.
#[derive(Debug)]
pub struct Exchange {
    senders: Vec<Sender<Message>>,
    partitioning: Partitioning,
    next: usize,
    hashes: Vec<u64>,
}

impl Exchange {
    /// An exchange over one channel per consumer instance.
    pub fn new(senders: Vec<Sender<Message>>, partitioning: Partitioning) -> Self {
        Self {
            senders,
            partitioning,
            next: 0,
            hashes: Vec::new(),
        }
    }

    /// Sends a batch, waiting while the receiving queue is full (backpressure).
    ///
    /// # Errors
    /// When a consumer has gone away or the key expressions fail.
    pub async fn send(&mut self, batch: RecordBatch) -> Result<()> {
        match &self.partitioning {
            Partitioning::Forward(i) => {
                let i = *i;
                self.send_to(i, Message::Data(batch)).await
            }
            Partitioning::RoundRobin => {
                let i = self.next % self.senders.len();
                self.next = self.next.wrapping_add(1);
                self.send_to(i, Message::Data(batch)).await
            }
            Partitioning::Hash(keys) if self.senders.len() == 1 => {
                let _ = keys;
                self.send_to(0, Message::Data(batch)).await
            }
            Partitioning::Hash(keys) => {
                let keys = Arc::clone(keys);
                let parts = self.split_by_key(&batch, &keys)?;
                for (i, part) in parts.into_iter().enumerate() {
                    if let Some(part) = part {
                        self.send_to(i, Message::Data(part)).await?;
                    }
                }
                Ok(())
            }
        }
    }

    /// Sends a control message (watermark, barrier, end) to every consumer instance.
    ///
    /// # Errors
    /// When a consumer has gone away.
    pub async fn broadcast(&mut self, message: Message) -> Result<()> {
        for i in 0..self.senders.len() {
            self.send_to(i, message.clone()).await?;
        }
        Ok(())
    }

    async fn send_to(&self, i: usize, message: Message) -> Result<()> {
        self.senders[i]
            .send(message)
            .await
            .map_err(|_| Error::ChannelClosed("downstream stopped".into()))
    }

    /// Splits rows by owning instance; `None` where an instance gets no rows.
    fn split_by_key(
        &mut self,
        batch: &RecordBatch,
        keys: &[CompiledExpr],
    ) -> Result<Vec<Option<RecordBatch>>> {
        let n = self.senders.len();
        let arrays = keys
            .iter()
            .map(|k| {
                k.evaluate(batch).map_err(|e| Error::Expression {
                    expr: k.sql().to_string(),
                    message: e.message,
                })
            })
            .collect::<Result<Vec<ArrayRef>>>()?;
        streamflow_state::key_group::key_hashes(&arrays, &mut self.hashes)?;
        let mut indices: Vec<Vec<u32>> = vec![Vec::new(); n];
        for (row, h) in self.hashes.iter().enumerate() {
            indices[instance_for_key_group(key_group(*h), n)].push(row as u32);
        }
        indices
            .into_iter()
            .map(|idx| {
                if idx.is_empty() {
                    Ok(None)
                } else if idx.len() == batch.num_rows() {
                    Ok(Some(batch.clone()))
                } else {
                    take_record_batch(batch, &UInt32Array::from(idx))
                        .map(Some)
                        .map_err(|e| Error::arrow("partitioning", e))
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::Int64Array;
    use arrow::datatypes::{DataType, Field, Schema};
    use std::collections::HashMap;

    #[test]
    fn key_groups_cover_instances_contiguously() {
        for p in 1..=8 {
            let owners: Vec<usize> = (0..MAX_KEY_GROUPS)
                .map(|g| instance_for_key_group(g, p))
                .collect();
            assert!(owners.windows(2).all(|w| w[0] <= w[1]));
            assert_eq!(owners.first(), Some(&0));
            assert_eq!(owners.last(), Some(&(p - 1)));
        }
    }

    #[tokio::test]
    async fn hash_partitioning_sends_each_key_to_one_instance() {
        let schema = Arc::new(Schema::new(vec![Field::new("k", DataType::Int64, false)]));
        let keys = Arc::new(vec![streamflow_expr::compile("k", &schema).expect("key")]);
        let (mut txs, mut rxs) = (Vec::new(), Vec::new());
        for _ in 0..3 {
            let (tx, rx) = tokio::sync::mpsc::channel(16);
            txs.push(tx);
            rxs.push(rx);
        }
        let mut ex = Exchange::new(txs, Partitioning::Hash(keys));
        for _ in 0..2 {
            let b = RecordBatch::try_new(
                Arc::clone(&schema),
                vec![Arc::new(Int64Array::from_iter_values(0..100))],
            )
            .expect("batch");
            ex.send(b).await.expect("send");
        }
        drop(ex);
        let mut owner: HashMap<i64, usize> = HashMap::new();
        let mut total = 0;
        for (i, rx) in rxs.iter_mut().enumerate() {
            while let Some(Message::Data(b)) = rx.recv().await {
                let k = b
                    .column(0)
                    .as_any()
                    .downcast_ref::<Int64Array>()
                    .expect("i64");
                for v in k.values() {
                    total += 1;
                    assert_eq!(
                        *owner.entry(*v).or_insert(i),
                        i,
                        "key {v} went to two instances"
                    );
                }
            }
        }
        assert_eq!(total, 200);
        assert!(
            owner
                .values()
                .collect::<std::collections::HashSet<_>>()
                .len()
                > 1,
            "all keys on one instance"
        );
    }
}
