//! Ids for what a sink sends that a receiver can use to drop what a replay
//! after a crash sends again: `run:instance:number`, where the run token is
//! kept across restores and the number counts the rows the instance sent
//! since the run began, resuming from the count the restored checkpoint
//! recorded. A replay that reproduces the rows after a checkpoint in the
//! same order therefore reproduces their ids, wherever later barriers fell.

/// `name` with a token telling this run from any other (the clock and the
/// process id).
pub(crate) fn run_token(name: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{name}-{:x}", nanos ^ u128::from(std::process::id()))
}

/// The ids of one sink instance.
#[derive(Debug)]
pub(crate) struct ReplayIds {
    run: String,
    instance: usize,
    number: u64,
}

impl ReplayIds {
    /// A fresh run of instance `instance` of sink `name`.
    pub(crate) fn new(name: &str, instance: usize) -> Self {
        Self {
            run: run_token(name),
            instance,
            number: 0,
        }
    }

    /// Continues the run a restored checkpoint recorded (see
    /// [`checkpoint`](Self::checkpoint)); a fresh start keeps the new run.
    pub(crate) fn restore(&mut self, staged: Option<&[serde_json::Value]>) {
        let restored = staged.into_iter().flatten().find_map(|s| {
            Some((
                s.get("run")?.as_str()?.to_string(),
                s.get("rows")?.as_u64()?,
            ))
        });
        if let Some((run, rows)) = restored {
            self.run = run;
            self.number = rows;
        }
    }

    /// The id of the first of the next `n` rows: a row's own id for
    /// `n = 1`, a batch named by its first row otherwise.
    pub(crate) fn next_range(&mut self, n: u64) -> String {
        let id = format!("{}:{}:{}", self.run, self.instance, self.number);
        self.number += n;
        id
    }

    /// What a checkpoint taken now records, for [`restore`](Self::restore).
    pub(crate) fn checkpoint(&self) -> serde_json::Value {
        serde_json::json!({ "run": self.run, "rows": self.number })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_restore_repeats_the_ids_after_the_checkpoint() {
        let mut first = ReplayIds::new("out", 1);
        first.next_range(1);
        let staged = first.checkpoint();
        let after: Vec<String> = (0..3).map(|_| first.next_range(1)).collect();
        // A later checkpoint the crash came before does not matter.
        let _ = first.checkpoint();
        let later = first.next_range(2);
        let mut again = ReplayIds::new("out", 1);
        again.restore(Some(&[staged]));
        let replayed: Vec<String> = (0..3).map(|_| again.next_range(1)).collect();
        assert_eq!(after, replayed);
        assert_eq!(again.next_range(1), later);
        let mut fresh = ReplayIds::new("out", 1);
        fresh.restore(Some(&[]));
        assert_ne!(fresh.next_range(1), after[0]);
    }
}
