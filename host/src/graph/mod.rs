//! Job specs, the logical graph and its split into tasks, key groups.
//!
//! A job is a graph: sources, operators that each read one or more earlier
//! streams (`from`), and the sink behind the last operator. Planning cuts it
//! into *task groups*: an operator whose one input is a forward edge from a
//! stream of equal parallelism that nothing else reads runs chained in the
//! task of that stream (records pass in memory, never through a channel).
//! So does an operator of parallelism 1 reading a stream of parallelism 1
//! by any partitioning: with one instance on each side every partitioning
//! sends every record to that instance, in order, so the edge is a forward
//! one (a keyed operator computes the key groups the router would have).
//! Keeping such a pipeline on one thread costs a third less CPU per event
//! than handing batches across a channel, at the same throughput: the
//! channel's hand-off, not the source, was what the second thread spent its
//! time on. Every other edge starts a new group fed through bounded
//! channels: keyed, rebalance, broadcast, a forward edge between different
//! parallelisms (planned as a rebalance), an edge from a stream read by
//! several operators (each reader gets every record), and every edge into
//! an operator with several inputs.
//!
//! Invariants: groups are in topological order, sources first; only the last
//! member of a group (or its source) is read by other groups; the sink is
//! chained to the group of the last operator.

pub mod keygroups;
pub mod spec;

pub use keygroups::{DEFAULT_MAX_PARALLELISM, instance_for_key_group, key_group, key_group_range};
pub use spec::{JobSpec, Node, Partitioning, SpecError};

/// A run of steps that execute chained in one task, `parallelism` times.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskGroup {
    /// For a group that starts with a source: the source's name.
    pub source: Option<String>,
    /// The groups feeding this one, in the order of its first operator's
    /// inputs (empty for a source group).
    pub inputs: Vec<GroupInput>,
    /// Indices into `JobSpec::operators`, in order.
    pub operators: Vec<usize>,
    pub parallelism: u32,
}

/// One edge into a task group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GroupInput {
    pub group: usize,
    /// `Forward` only between equal parallelisms (instance `i` to `i`).
    pub partitioning: Partitioning,
}

impl TaskGroup {
    /// How records reach this group: `None` for a source group; otherwise
    /// the first input's partitioning.
    pub fn input(&self) -> Option<Partitioning> {
        self.inputs.first().map(|i| i.partitioning)
    }
}

/// The task groups of a job, in topological order, sources first.
pub fn plan(spec: &JobSpec) -> Vec<TaskGroup> {
    let mut groups: Vec<TaskGroup> = Vec::new();
    // The group whose output is each stream.
    let mut producer: std::collections::HashMap<Node, usize> = std::collections::HashMap::new();
    let mut readers: std::collections::HashMap<Node, usize> = std::collections::HashMap::new();
    for i in 0..spec.operators.len() {
        for node in spec.inputs_of(i) {
            *readers.entry(node).or_default() += 1;
        }
    }
    for (name, source) in spec.all_sources() {
        let node = Node::Source(name.to_owned());
        // Without operators the job's source feeds the sink.
        if readers.contains_key(&node) || spec.operators.is_empty() {
            producer.insert(node, groups.len());
            groups.push(TaskGroup {
                source: Some(name.to_owned()),
                inputs: Vec::new(),
                operators: Vec::new(),
                parallelism: spec.parallelism_of(source),
            });
        }
    }
    for (i, op) in spec.operators.iter().enumerate() {
        let parallelism = spec.operator_parallelism(i);
        let inputs = spec.inputs_of(i);
        if let [only] = inputs.as_slice()
            && (op.input == Partitioning::Forward || parallelism == 1)
            && readers.get(only) == Some(&1)
        {
            let g = producer[only];
            if groups[g].parallelism == parallelism {
                groups[g].operators.push(i);
                producer.insert(Node::Operator(i), g);
                continue;
            }
        }
        let inputs = inputs
            .iter()
            .map(|node| {
                let group = producer[node];
                let partitioning = match op.input {
                    Partitioning::Forward if groups[group].parallelism != parallelism => {
                        Partitioning::Rebalance
                    }
                    other => other,
                };
                GroupInput {
                    group,
                    partitioning,
                }
            })
            .collect();
        producer.insert(Node::Operator(i), groups.len());
        groups.push(TaskGroup {
            source: None,
            inputs,
            operators: vec![i],
            parallelism,
        });
    }
    groups
}

/// The groups that read group `g`'s output, each with the index of the
/// input it is among that group's inputs.
pub fn readers_of(groups: &[TaskGroup], g: usize) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    for (r, group) in groups.iter().enumerate() {
        for (k, input) in group.inputs.iter().enumerate() {
            if input.group == g {
                out.push((r, k));
            }
        }
    }
    out
}

/// For source group `g`: the group whose instance `k` can share a thread
/// with the source's instance `k` (see [`crate::runtime::pair`]). That is the
/// group's only reader, reading nothing else, at the same parallelism, above
/// one (at one they are chained instead).
pub fn thread_sharing_reader(groups: &[TaskGroup], g: usize) -> Option<usize> {
    if groups[g].source.is_none() || groups[g].parallelism < 2 {
        return None;
    }
    match readers_of(groups, g)[..] {
        [(reader, _)]
            if groups[reader].inputs.len() == 1
                && groups[reader].parallelism == groups[g].parallelism =>
        {
            Some(reader)
        }
        _ => None,
    }
}

/// The index of the group that runs operator `op`.
pub fn group_of(groups: &[TaskGroup], op: usize) -> usize {
    groups
        .iter()
        .position(|g| g.operators.contains(&op))
        .expect("every operator is in a group")
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
        assert_eq!(groups[1].input(), Some(Partitioning::Key));
        assert_eq!(groups[1].operators, vec![1, 2]);
        assert_eq!(groups[2].input(), Some(Partitioning::Rebalance));
        assert_eq!(groups[2].parallelism, 1);
    }

    #[test]
    fn any_edge_between_single_instances_chains() {
        let spec = |parallelism| {
            JobSpec::parse(&format!(
                "
name: j
parallelism: {parallelism}
source: {{type: generator, events: 10}}
operators:
  - {{name: a, native: keyed-count, input: key}}
  - {{name: b, native: passthrough, input: rebalance}}
  - {{name: c, native: passthrough, input: broadcast, parallelism: 2}}
sink: {{type: discard}}
"
            ))
            .unwrap()
        };
        let groups = plan(&spec(1));
        assert_eq!(groups.len(), 2);
        assert_eq!(groups[0].operators, vec![0, 1]);
        assert_eq!(groups[1].input(), Some(Partitioning::Broadcast));
        let groups = plan(&spec(2));
        assert_eq!(groups.len(), 4);
        assert_eq!(groups[1].input(), Some(Partitioning::Key));
    }

    #[test]
    fn a_source_shares_threads_only_with_its_single_reader_of_equal_parallelism() {
        let spec = |operators: &str| {
            JobSpec::parse(&format!(
                "
name: j
parallelism: 2
source: {{type: generator, events: 10}}
operators:
{operators}
sink: {{type: discard}}
"
            ))
            .unwrap()
        };
        let keyed = plan(&spec("  - {name: a, native: keyed-count, input: key}"));
        assert_eq!(thread_sharing_reader(&keyed, 0), Some(1));
        assert_eq!(thread_sharing_reader(&keyed, 1), None, "not a source");
        let narrower = plan(&spec(
            "  - {name: a, native: keyed-count, input: key, parallelism: 1}",
        ));
        assert_eq!(thread_sharing_reader(&narrower, 0), None);
        let read_twice = plan(&spec(
            "  - {name: a, native: keyed-count, input: key}\n  \
             - {name: b, native: passthrough, input: key, from: [a, source]}",
        ));
        assert_eq!(thread_sharing_reader(&read_twice, 0), None);
    }

    #[test]
    fn a_stream_read_twice_and_a_two_input_operator_start_groups() {
        let spec = JobSpec::parse(
            "
name: j
parallelism: 2
source: {type: generator, events: 10}
sources:
  other: {type: generator, events: 10, parallelism: 1}
operators:
  - {name: a, native: passthrough}
  - {name: b, native: passthrough, from: a}
  - {name: c, native: passthrough, from: a}
  - {name: d, native: passthrough, from: [b, c, other], input: key}
  - {name: e, native: passthrough}
sink: {type: discard}
",
        )
        .unwrap();
        let groups = plan(&spec);
        let summary: Vec<_> = groups
            .iter()
            .map(|g| {
                (
                    g.source.as_deref(),
                    g.operators.clone(),
                    g.inputs
                        .iter()
                        .map(|i| (i.group, i.partitioning))
                        .collect::<Vec<_>>(),
                    g.parallelism,
                )
            })
            .collect();
        use Partitioning::*;
        assert_eq!(
            summary,
            vec![
                (Some("source"), vec![0], vec![], 2),
                (Some("other"), vec![], vec![], 1),
                // `a` is read twice: both readers get their own group,
                // forward (instance to instance) at equal parallelism.
                (None, vec![1], vec![(0, Forward)], 2),
                (None, vec![2], vec![(0, Forward)], 2),
                (None, vec![3, 4], vec![(2, Key), (3, Key), (1, Key)], 2),
            ]
        );
        assert_eq!(readers_of(&groups, 0), vec![(2, 0), (3, 0)]);
        assert_eq!(readers_of(&groups, 1), vec![(4, 2)]);
    }

    #[test]
    fn the_graph_is_checked() {
        let with = |operators: &str, sources: &str| {
            JobSpec::parse(&format!(
                "
name: j
source: {{type: generator, events: 10}}
{sources}
operators:
{operators}
sink: {{type: discard}}
"
            ))
            .unwrap_err()
            .to_string()
        };
        let e = with("  - {name: a, native: passthrough, from: nope}", "");
        assert!(
            e.contains("operators[0].from") && e.contains("`nope`"),
            "{e}"
        );
        let e = with(
            "  - {name: a, native: passthrough, from: b}\n  - {name: b, native: passthrough}",
            "",
        );
        assert!(e.contains("must come before"), "{e}");
        let e = with(
            "  - {name: a, native: passthrough, from: [source, source]}",
            "",
        );
        assert!(e.contains("named twice"), "{e}");
        let e = with(
            "  - {name: a, native: passthrough}",
            "sources: {b: {type: generator, events: 1}}",
        );
        assert!(
            e.contains("sources.b") && e.contains("no operator reads"),
            "{e}"
        );
        let e = with(
            "  - {name: a, native: passthrough}\n  - {name: b, native: passthrough, from: source}",
            "",
        );
        assert!(
            e.contains("operators[0]") && e.contains("goes nowhere"),
            "{e}"
        );
        let e = with(
            "  - {name: other, native: passthrough}",
            "sources: {other: {type: generator, events: 1}}",
        );
        assert!(e.contains("names a source"), "{e}");
    }
}
