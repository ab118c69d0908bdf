//! What a job's page shows beyond the job record: its operator graph, as
//! planned, and live figures per node of that graph, read from the metrics
//! registry (`GET /v1/jobs/{name}/graph` and `.../figures`).
//!
//! Both are derived, never stored: the graph from the job's spec and the
//! plan that runs it ([`crate::graph::plan`]), the figures from the series of
//! the tasks that plan makes. Figures are totals since the process started
//! (counters) or current values (gauges); a client that wants rates takes the
//! difference of two readings over the difference of their `at_ms`.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::graph::spec::{MAIN_SOURCE, SinkSpec, SourceSpec, WindowKind};
use crate::graph::{JobSpec, Node, Partitioning, group_of, plan};
use crate::metrics::JobValues;

/// Node ids of the source and the main sink; operators are
/// `operator:<name>`, side-output sinks `side:<operator>.<output>` (names
/// are `[A-Za-z0-9_-]`, so these never collide).
pub const SOURCE: &str = "source";
pub const SINK: &str = "sink";

fn operator_id(name: &str) -> String {
    format!("operator:{name}")
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeKind {
    Source,
    Operator,
    Sink,
}

#[derive(Clone, Debug, Serialize)]
pub struct GraphNode {
    pub id: String,
    pub kind: NodeKind,
    /// The operator's name, or the source's or sink's type.
    pub name: String,
    /// The operator's module (`name@version`, `native:<name>`); a Kafka
    /// topic; a sink's path.
    pub detail: Option<String>,
    pub parallelism: u32,
    /// Nodes of one task group run chained in one task.
    pub task_group: usize,
    /// A window operator's windows, e.g. `tumbling 1s`.
    pub window: Option<String>,
}

/// How records cross an edge.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EdgeKind {
    /// In memory, inside one task.
    Chained,
    /// Through channels, by key group.
    Key,
    /// Through channels, round robin.
    Rebalance,
    /// Through channels, to every instance.
    Broadcast,
    /// Through channels, instance `i` to instance `i` (a stream several
    /// operators read).
    Forward,
}

#[derive(Clone, Debug, Serialize)]
pub struct GraphEdge {
    pub from: String,
    pub to: String,
    pub kind: EdgeKind,
    /// Set on the edge from an operator to a side output's sink.
    pub side_output: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct JobGraph {
    /// Sources first (`source`, then `source:<name>` for named ones), then
    /// the operators in order, the main sink, then side-output sinks.
    pub nodes: Vec<GraphNode>,
    pub edges: Vec<GraphEdge>,
}

fn source_name(source: &SourceSpec) -> (&'static str, Option<String>) {
    match source {
        SourceSpec::Generator(_) => ("generator", None),
        SourceSpec::File(f) => ("file", Some(f.path.display().to_string())),
        SourceSpec::Embedded(_) => ("embedded", None),
        SourceSpec::Kafka(k) => ("kafka", Some(k.topic.clone())),
        SourceSpec::Nexmark(_) => ("nexmark", None),
    }
}

fn sink_name(sink: &SinkSpec) -> (&'static str, Option<String>) {
    match sink {
        SinkSpec::Stdout { .. } => ("stdout", None),
        SinkSpec::File { path, .. } => ("file", Some(path.display().to_string())),
        SinkSpec::Directory { path, .. } => ("directory", Some(path.display().to_string())),
        SinkSpec::Discard { .. } => ("discard", None),
        SinkSpec::Kafka(k) => ("kafka", Some(k.topic.clone())),
    }
}

fn window_text(kind: &WindowKind) -> String {
    match kind {
        WindowKind::Tumbling { size } => format!("tumbling {size:?}"),
        WindowKind::Sliding { size, slide } => format!("sliding {size:?} every {slide:?}"),
        WindowKind::Session { gap } => format!("session gap {gap:?}"),
    }
}

/// The graph node id of a stream.
fn node_id(spec: &JobSpec, node: &Node) -> String {
    match node {
        Node::Source(name) if name == MAIN_SOURCE => SOURCE.to_owned(),
        Node::Source(name) => format!("source:{name}"),
        Node::Operator(i) => operator_id(&spec.operators[*i].name),
    }
}

/// The graph of `spec` as planned; `modules` maps operators to the module
/// versions they run.
pub fn graph(spec: &JobSpec, modules: &BTreeMap<String, String>) -> JobGraph {
    let groups = plan(spec);
    let mut nodes = Vec::new();
    for (name, source) in spec.all_sources() {
        let (kind, detail) = source_name(source);
        let node = Node::Source(name.to_owned());
        nodes.push(GraphNode {
            id: node_id(spec, &node),
            kind: NodeKind::Source,
            name: if name == MAIN_SOURCE {
                kind.to_owned()
            } else {
                format!("{name} ({kind})")
            },
            detail,
            parallelism: spec.parallelism_of(source),
            task_group: groups
                .iter()
                .position(|g| g.source.as_deref() == Some(name))
                .unwrap_or(0),
            window: None,
        });
    }
    let mut edges = Vec::new();
    for (i, op) in spec.operators.iter().enumerate() {
        let group = group_of(&groups, i);
        let id = operator_id(&op.name);
        let first_of_group = groups[group].operators.first() == Some(&i);
        for (k, input) in spec.inputs_of(i).iter().enumerate() {
            let kind = match groups[group].inputs.get(k) {
                Some(input) if first_of_group => match input.partitioning {
                    Partitioning::Key => EdgeKind::Key,
                    Partitioning::Broadcast => EdgeKind::Broadcast,
                    Partitioning::Rebalance => EdgeKind::Rebalance,
                    Partitioning::Forward => EdgeKind::Forward,
                },
                _ => EdgeKind::Chained,
            };
            edges.push(GraphEdge {
                from: node_id(spec, input),
                to: id.clone(),
                kind,
                side_output: None,
            });
        }
        nodes.push(GraphNode {
            id: id.clone(),
            kind: NodeKind::Operator,
            name: op.name.clone(),
            detail: modules.get(&op.name).cloned().or_else(|| {
                op.native
                    .as_ref()
                    .map(|n| format!("native:{n}"))
                    .or_else(|| op.module.clone())
            }),
            parallelism: spec.operator_parallelism(i),
            task_group: group,
            window: op.window.as_ref().map(|w| window_text(&w.kind)),
        });
    }
    let last_group = match spec.operators.len() {
        0 => 0,
        n => group_of(&groups, n - 1),
    };
    let previous = match spec.operators.len() {
        0 => SOURCE.to_owned(),
        n => operator_id(&spec.operators[n - 1].name),
    };
    let (sink, sink_detail) = sink_name(&spec.sink);
    nodes.push(GraphNode {
        id: SINK.into(),
        kind: NodeKind::Sink,
        name: sink.into(),
        detail: sink_detail,
        parallelism: groups[last_group].parallelism,
        task_group: last_group,
        window: None,
    });
    edges.push(GraphEdge {
        from: previous,
        to: SINK.into(),
        kind: EdgeKind::Chained,
        side_output: None,
    });
    for (i, op) in spec.operators.iter().enumerate() {
        for (output, sink) in &op.side_outputs {
            let id = format!("side:{}.{output}", op.name);
            let (name, detail) = sink_name(sink);
            nodes.push(GraphNode {
                id: id.clone(),
                kind: NodeKind::Sink,
                name: name.into(),
                detail,
                parallelism: spec.operator_parallelism(i),
                task_group: group_of(&groups, i),
                window: None,
            });
            edges.push(GraphEdge {
                from: operator_id(&op.name),
                to: id,
                kind: EdgeKind::Chained,
                side_output: Some(output.clone()),
            });
        }
    }
    JobGraph { nodes, edges }
}

/// Live figures of one node, summed (counters) or taken at the minimum
/// (watermarks) over its parallel instances.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct NodeFigures {
    pub records_in: u64,
    pub records_out: u64,
    /// The lowest watermark of its instances that have one, as Unix
    /// milliseconds (event time); `None` before any instance has one.
    pub watermark_ms: Option<i64>,
    /// Seconds its tasks spent blocked on a full output channel (summed
    /// over instances): its downstream could not keep up.
    pub backpressure_seconds: f64,
    /// Inputs currently left out of its watermark as idle.
    pub idle_inputs: i64,
    pub parallelism: u32,
}

#[derive(Clone, Debug, Serialize)]
pub struct JobFigures {
    /// When the figures were read, Unix milliseconds.
    pub at_ms: i64,
    /// By node id of the [`JobGraph`]; side-output sinks are left out.
    pub nodes: BTreeMap<String, NodeFigures>,
}

/// The figures of `spec`'s nodes from `values`; `source_records` is what
/// the sources have taken in (the sources have no series of their own, so
/// it is shown on the job's `source`).
pub fn figures(spec: &JobSpec, values: &JobValues, source_records: u64, at_ms: i64) -> JobFigures {
    let groups = plan(spec);
    // Task-level values are per task group, shared by what it chains.
    let group_figures: Vec<NodeFigures> = groups
        .iter()
        .map(|group| {
            let name = crate::runtime::job::group_name(spec, group);
            let mut f = NodeFigures {
                parallelism: group.parallelism,
                ..NodeFigures::default()
            };
            for instance in 0..group.parallelism {
                let task = format!("{name}#{instance}");
                // A gauge reads 0 until its task first sets it.
                if let Some(&w) = values.watermark_seconds.get(&task)
                    && w != 0.0
                {
                    let ms = (w * 1e3).round() as i64;
                    f.watermark_ms = Some(f.watermark_ms.map_or(ms, |m| m.min(ms)));
                }
                f.backpressure_seconds += values
                    .backpressure_seconds
                    .get(&task)
                    .copied()
                    .unwrap_or(0.0);
                f.idle_inputs += values.idle_inputs.get(&task).copied().unwrap_or(0);
            }
            f
        })
        .collect();
    let mut nodes = BTreeMap::new();
    for (g, group) in groups.iter().enumerate() {
        let Some(name) = &group.source else { continue };
        // Sources have no series of their own: the total goes to the job's
        // `source`.
        let records_out = if name == MAIN_SOURCE {
            source_records
        } else {
            0
        };
        nodes.insert(
            node_id(spec, &Node::Source(name.clone())),
            NodeFigures {
                records_out,
                parallelism: group.parallelism,
                ..group_figures[g].clone()
            },
        );
    }
    let mut last_out = source_records;
    for (i, op) in spec.operators.iter().enumerate() {
        let (records_in, records_out) = values
            .records
            .iter()
            .filter(|((operator, _), _)| *operator == op.name)
            .fold((0, 0), |(a, b), (_, (i, o))| (a + i, b + o));
        last_out = records_out;
        nodes.insert(
            operator_id(&op.name),
            NodeFigures {
                records_in,
                records_out,
                parallelism: spec.operator_parallelism(i),
                ..group_figures[group_of(&groups, i)].clone()
            },
        );
    }
    let last = &group_figures[match spec.operators.len() {
        0 => 0,
        n => group_of(&groups, n - 1),
    }];
    nodes.insert(
        SINK.to_owned(),
        NodeFigures {
            records_in: last_out,
            records_out: 0,
            ..last.clone()
        },
    );
    JobFigures { at_ms, nodes }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC: &str = "
name: j
parallelism: 2
source: {type: generator, events: 10}
operators:
  - {name: split, module: ws}
  - {name: count, module: wc, input: key, side_outputs: {odd: {type: discard}}}
  - {name: last, native: passthrough, parallelism: 1}
sink: {type: discard}
";

    #[test]
    fn the_graph_follows_the_plan() {
        let spec = JobSpec::parse(SPEC).unwrap();
        let modules = BTreeMap::from([("split".to_owned(), "ws@3".to_owned())]);
        let g = graph(&spec, &modules);
        let ids: Vec<&str> = g.nodes.iter().map(|n| n.id.as_str()).collect();
        assert_eq!(
            ids,
            [
                "source",
                "operator:split",
                "operator:count",
                "operator:last",
                "sink",
                "side:count.odd"
            ]
        );
        assert_eq!(g.nodes[1].detail.as_deref(), Some("ws@3"));
        assert_eq!(g.nodes[2].detail.as_deref(), Some("wc"));
        assert_eq!(g.nodes[3].detail.as_deref(), Some("native:passthrough"));
        assert_eq!(g.nodes[1].task_group, 0, "split is chained to the source");
        assert_eq!(g.nodes[4].parallelism, 1);
        let kinds: Vec<EdgeKind> = g.edges.iter().map(|e| e.kind).collect();
        assert_eq!(
            kinds,
            [
                EdgeKind::Chained,
                EdgeKind::Key,
                EdgeKind::Rebalance,
                EdgeKind::Chained,
                EdgeKind::Chained
            ]
        );
        assert_eq!(g.edges[4].side_output.as_deref(), Some("odd"));
    }

    #[test]
    fn figures_add_up_instances_and_take_the_lowest_watermark() {
        let spec = JobSpec::parse(SPEC).unwrap();
        let mut values = JobValues::default();
        values.records.insert(("count".into(), 0), (10, 7));
        values.records.insert(("count".into(), 1), (5, 4));
        values.records.insert(("last".into(), 0), (11, 11));
        values.watermark_seconds.insert("last#0".into(), 0.0);
        values.watermark_seconds.insert("count#0".into(), 2.5);
        values.watermark_seconds.insert("count#1".into(), 1.5);
        values.backpressure_seconds.insert("count#0".into(), 0.25);
        values.backpressure_seconds.insert("count#1".into(), 0.5);
        let f = figures(&spec, &values, 20, 1000);
        let count = &f.nodes["operator:count"];
        assert_eq!((count.records_in, count.records_out), (15, 11));
        assert_eq!(count.watermark_ms, Some(1500));
        assert_eq!(count.backpressure_seconds, 0.75);
        assert_eq!(count.parallelism, 2);
        assert_eq!(f.nodes["source"].records_out, 20);
        assert_eq!(f.nodes["operator:last"].watermark_ms, None);
        assert_eq!(f.nodes["sink"].records_in, 11);
    }
}
