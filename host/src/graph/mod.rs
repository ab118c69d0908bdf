//! Job specs, the logical graph and its split into tasks, key groups.
//!
//! A job is a source, a pipeline of operators and a sink. Planning cuts the
//! pipeline into *task groups*: consecutive steps joined by a forward edge
//! with equal parallelism run chained in one task (records pass between them
//! in memory, never through a channel); every other edge (key, rebalance,
//! broadcast, or forward between different parallelisms, which becomes a
//! rebalance) starts a new group fed through bounded channels.

pub mod keygroups;
pub mod spec;

pub use keygroups::{DEFAULT_MAX_PARALLELISM, instance_for_key_group, key_group, key_group_range};
pub use spec::{JobSpec, Partitioning, SpecError};

/// A run of steps that execute chained in one task, `parallelism` times.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskGroup {
    /// `None` for the group that starts with the source; otherwise how the
    /// previous group's output reaches this one.
    pub input: Option<Partitioning>,
    /// Indices into `JobSpec::operators`, in order.
    pub operators: Vec<usize>,
    pub parallelism: u32,
}

/// The task groups of a job, source first; the sink is chained to the last.
pub fn plan(spec: &JobSpec) -> Vec<TaskGroup> {
    let mut groups = vec![TaskGroup {
        input: None,
        operators: Vec::new(),
        parallelism: spec.source_parallelism(),
    }];
    for (i, op) in spec.operators.iter().enumerate() {
        let parallelism = spec.operator_parallelism(i);
        let current = groups.last_mut().expect("the source group exists");
        if op.input == Partitioning::Forward && parallelism == current.parallelism {
            current.operators.push(i);
            continue;
        }
        let input = match op.input {
            Partitioning::Forward => Partitioning::Rebalance,
            other => other,
        };
        groups.push(TaskGroup {
            input: Some(input),
            operators: vec![i],
            parallelism,
        });
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forward_edges_chain_and_keyed_edges_cut() {
        let spec = JobSpec::parse(
            "
name: j
parallelism: 2
source: {type: generator, events: 10}
operators:
  - {name: a, native: passthrough}
  - {name: b, native: keyed-count, input: key}
  - {name: c, native: passthrough}
  - {name: d, native: passthrough, parallelism: 1}
sink: {type: discard}
",
        )
        .unwrap();
        let groups = plan(&spec);
        assert_eq!(groups.len(), 3);
        assert_eq!(groups[0].operators, vec![0]);
        assert_eq!(groups[1].input, Some(Partitioning::Key));
        assert_eq!(groups[1].operators, vec![1, 2]);
        assert_eq!(groups[2].input, Some(Partitioning::Rebalance));
        assert_eq!(groups[2].parallelism, 1);
    }
}
