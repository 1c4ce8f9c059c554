//! Assignments: which worker runs which operator instances of a flow, at
//! which epoch.
//!
//! Instances are placed in slot groups as Flink shares slots: group `i`
//! holds instance `i` of every node whose parallelism exceeds `i`, so a
//! pipeline of forward edges stays in one process and only keyed and
//! rebalancing edges cross workers. Groups go to workers in proportion to
//! their slots (largest remainder, workers ordered by name), never more
//! groups than a worker has slots: the same flow and members always give
//! the same assignment. A keyed instance carries its key-group range, the
//! unit its state moves in when the assignment changes.

use std::collections::BTreeMap;
use std::ops::Range;

use serde::{Deserialize, Serialize};
use streamflow_dsl::FlowSpec;
use streamflow_state::{CheckpointMeta, key_group_range};

use crate::{ClusterError, Member, Result};

/// One node of a flow to place: its name and parallelism.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSpec {
    /// The node's name.
    pub name: String,
    /// Its instances.
    pub parallelism: usize,
}

/// One operator instance to run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Task {
    /// The node.
    pub node: String,
    /// The instance.
    pub instance: usize,
    /// The node's parallelism.
    pub parallelism: usize,
    /// The key groups the instance owns (its share of keyed state).
    pub key_groups: Range<u32>,
}

/// The tasks of each worker for one flow, valid at one epoch: a worker
/// acts on an assignment only while its epoch is the coordinator's current
/// lease epoch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Assignment {
    /// The flow.
    pub flow: String,
    /// The coordinator's lease epoch it was made at.
    pub epoch: u64,
    /// Worker name → its tasks (by slot group, then node order).
    pub workers: BTreeMap<String, Vec<Task>>,
    /// The flow itself, for the workers to plan (every worker plans the
    /// same flow and runs its tasks of it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<FlowSpec>,
    /// The coordinator asks the sources to stop (the run drains and ends).
    #[serde(default)]
    pub stopping: bool,
    /// The checkpoint every instance restores (chosen by the coordinator).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore: Option<CheckpointMeta>,
}

impl Assignment {
    /// Places the instances of `nodes` on `members` at `epoch`.
    ///
    /// # Errors
    /// No workers, a node without instances, or fewer slots in all than
    /// the largest parallelism (slot groups).
    pub fn new(flow: &str, epoch: u64, nodes: &[NodeSpec], members: &[Member]) -> Result<Self> {
        if let Some(n) = nodes.iter().find(|n| n.parallelism == 0) {
            return Err(ClusterError::Invalid(format!(
                "node '{}' has no instances",
                n.name
            )));
        }
        let groups = nodes.iter().map(|n| n.parallelism).max().unwrap_or(0);
        let mut members: Vec<&Member> = members.iter().filter(|m| m.slots > 0).collect();
        members.sort_by(|a, b| a.name.cmp(&b.name));
        let slots: usize = members.iter().map(|m| m.slots).sum();
        if groups > 0 && slots < groups {
            return Err(ClusterError::Invalid(format!(
                "flow '{flow}' needs {groups} slots (its largest parallelism) and the cluster has {slots} on {} workers",
                members.len()
            )));
        }
        let shares = shares(groups, &members);
        let mut workers = BTreeMap::new();
        let mut group = 0;
        for (member, share) in members.iter().zip(shares) {
            let mut tasks = Vec::new();
            for g in group..group + share {
                for n in nodes.iter().filter(|n| n.parallelism > g) {
                    tasks.push(Task {
                        node: n.name.clone(),
                        instance: g,
                        parallelism: n.parallelism,
                        key_groups: key_group_range(g, n.parallelism),
                    });
                }
            }
            group += share;
            workers.insert(member.name.clone(), tasks);
        }
        Ok(Assignment {
            flow: flow.to_string(),
            epoch,
            workers,
            spec: None,
            stopping: false,
            restore: None,
        })
    }

    /// The worker running instance `instance` of `node`.
    pub fn worker_of(&self, node: &str, instance: usize) -> Option<&str> {
        self.workers.iter().find_map(|(w, tasks)| {
            tasks
                .iter()
                .any(|t| t.node == node && t.instance == instance)
                .then_some(w.as_str())
        })
    }
}

/// How many of `groups` slot groups each member takes: proportional to its
/// slots by largest remainder (ties to the earlier name), capped by them.
fn shares(groups: usize, members: &[&Member]) -> Vec<usize> {
    let slots: usize = members.iter().map(|m| m.slots).sum();
    if slots == 0 {
        return vec![0; members.len()];
    }
    let mut shares: Vec<usize> = members.iter().map(|m| groups * m.slots / slots).collect();
    let mut left = groups - shares.iter().sum::<usize>();
    let mut by_remainder: Vec<usize> = (0..members.len()).collect();
    by_remainder.sort_by_key(|&i| std::cmp::Reverse(groups * members[i].slots % slots));
    while left > 0 {
        let mut placed = false;
        for &i in &by_remainder {
            if left > 0 && shares[i] < members[i].slots {
                shares[i] += 1;
                left -= 1;
                placed = true;
            }
        }
        if !placed {
            break;
        }
    }
    shares
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use streamflow_state::{MAX_KEY_GROUPS, instance_for_key_group};

    fn member(name: &str, slots: usize) -> Member {
        Member {
            name: name.into(),
            slots,
            host: "h".into(),
            pid: 1,
            joined_ms: 0,
            exchange: None,
        }
    }

    #[test]
    fn slot_groups_keep_pipelines_together_and_follow_slots() {
        let nodes = [
            NodeSpec {
                name: "source".into(),
                parallelism: 2,
            },
            NodeSpec {
                name: "window".into(),
                parallelism: 4,
            },
            NodeSpec {
                name: "sink".into(),
                parallelism: 1,
            },
        ];
        let members = [member("b", 1), member("a", 3)];
        let a = Assignment::new("q5", 7, &nodes, &members).expect("fits");
        assert_eq!(a.epoch, 7);
        // `a` has 3 of the 4 slots: groups 0..3; `b` group 3.
        let of = |w: &str| -> Vec<(String, usize)> {
            a.workers[w]
                .iter()
                .map(|t| (t.node.clone(), t.instance))
                .collect()
        };
        assert_eq!(
            of("a"),
            [
                ("source", 0),
                ("window", 0),
                ("sink", 0),
                ("source", 1),
                ("window", 1),
                ("window", 2)
            ]
            .map(|(n, i)| (n.to_string(), i))
        );
        assert_eq!(of("b"), vec![("window".to_string(), 3)]);
        assert_eq!(a.worker_of("window", 3), Some("b"));
        let w3 = &a.workers["b"][0];
        assert_eq!(w3.key_groups, 96..128);
    }

    #[test]
    fn too_few_slots_is_an_error() {
        let nodes = [NodeSpec {
            name: "w".into(),
            parallelism: 5,
        }];
        let e =
            Assignment::new("f", 1, &nodes, &[member("a", 2), member("b", 2)]).expect_err("4 < 5");
        assert!(
            e.to_string().contains("needs 5 slots") && e.to_string().contains("has 4 on 2 workers"),
            "{e}"
        );
        let e = Assignment::new("f", 1, &nodes, &[]).expect_err("no workers");
        assert!(e.to_string().contains("has 0 on 0 workers"), "{e}");
    }

    proptest! {
        #[test]
        fn every_instance_runs_once_within_the_slots(
            parallelisms in prop::collection::vec(1usize..=16, 1..5),
            slots in prop::collection::vec(0usize..=8, 1..6),
        ) {
            let nodes: Vec<NodeSpec> = parallelisms
                .iter()
                .enumerate()
                .map(|(i, &p)| NodeSpec { name: format!("n{i}"), parallelism: p })
                .collect();
            let members: Vec<Member> =
                slots.iter().enumerate().map(|(i, &s)| member(&format!("w{i}"), s)).collect();
            let groups = parallelisms.iter().copied().max().unwrap_or(0);
            let total: usize = slots.iter().sum();
            match Assignment::new("f", 3, &nodes, &members) {
                Err(_) => prop_assert!(total < groups),
                Ok(a) => {
                    prop_assert!(total >= groups);
                    // Every instance of every node exactly once.
                    for n in &nodes {
                        for i in 0..n.parallelism {
                            let count = a.workers.values().flatten()
                                .filter(|t| t.node == n.name && t.instance == i).count();
                            prop_assert_eq!(count, 1);
                        }
                        // Its key-group ranges agree with the owner function.
                        for g in 0..MAX_KEY_GROUPS {
                            let owner = instance_for_key_group(g, n.parallelism);
                            let t = a.workers.values().flatten()
                                .find(|t| t.node == n.name && t.key_groups.contains(&g));
                            prop_assert_eq!(t.map(|t| t.instance), Some(owner));
                        }
                    }
                    // No worker holds more slot groups than it has slots.
                    for m in &members {
                        let held: std::collections::BTreeSet<usize> = a.workers.get(&m.name)
                            .map(|ts| ts.iter().map(|t| t.instance).collect())
                            .unwrap_or_default();
                        prop_assert!(held.len() <= m.slots);
                    }
                    // The members' order does not matter.
                    let mut reversed = members.clone();
                    reversed.reverse();
                    prop_assert_eq!(&Assignment::new("f", 3, &nodes, &reversed).expect("same"), &a);
                }
            }
        }
    }
}
