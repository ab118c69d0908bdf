//! The job spec: what a user writes (YAML or JSON) to describe a job.
//!
//! Parsing rejects unknown fields; [`JobSpec::validate`] then checks every
//! value and names the field that is wrong (`operators[1].parallelism: must be
//! at least 1`), so a bad spec never reaches the runtime.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use super::keygroups::DEFAULT_MAX_PARALLELISM;

/// A bad job spec: which field and what is wrong with it.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("cannot read job spec {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("job spec does not parse: {0}")]
    Parse(String),
    #[error("job spec field `{field}`: {problem}")]
    Invalid { field: String, problem: String },
}

fn invalid(field: impl Into<String>, problem: impl Into<String>) -> SpecError {
    SpecError::Invalid {
        field: field.into(),
        problem: problem.into(),
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    pub name: String,
    /// Default parallelism of sources, operators and sinks.
    #[serde(default = "one")]
    pub parallelism: u32,
    /// Number of key groups; the upper bound of any operator's parallelism.
    #[serde(default = "default_max_parallelism")]
    pub max_parallelism: u32,
    #[serde(default)]
    pub state: StateBackendKind,
    /// Folder and memory budget of `state: rocksdb`.
    #[serde(default)]
    pub rocksdb: Option<RocksDbSpec>,
    #[serde(default)]
    pub batch: BatchSpec,
    pub source: SourceSpec,
    /// More sources, by name, for operators that read several streams
    /// (`from:`); the `source` above is named `source`.
    #[serde(default)]
    pub sources: BTreeMap<String, SourceSpec>,
    pub operators: Vec<OperatorSpec>,
    pub sink: SinkSpec,
    /// Periodic checkpoints; none when absent.
    #[serde(default)]
    pub checkpoint: Option<CheckpointSpec>,
    /// What happens when a task fails. Default: with checkpoints, restart
    /// up to 3 times 1 s apart; without, fail the job.
    #[serde(default)]
    pub restart: Option<RestartSpec>,
    /// What happens to a record the source cannot decode or an operator
    /// fails on (a poison record).
    #[serde(default)]
    pub on_error: OnError,
    /// Where rejected records go with `on_error: dead-letter`.
    #[serde(default)]
    pub dead_letter: Option<SinkSpec>,
}

/// The policy for poison records.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnError {
    /// The task fails and the job restarts by its restart strategy (the
    /// record fails again after every restart unless the code changes).
    #[default]
    Fail,
    /// The record is dropped and counted.
    Skip,
    /// The record, with the error and where it happened, goes to the
    /// `dead_letter` sink, and is counted.
    DeadLetter,
}

/// `checkpoint: {interval: 1s, dir: ./weir-data/checkpoints, retain: 3, timeout: 10m}`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointSpec {
    #[serde(deserialize_with = "duration")]
    pub interval: Duration,
    /// Where checkpoints go: a folder, or `s3://bucket/prefix` (credentials
    /// and endpoint from the `AWS_*` environment). Each job writes below
    /// `<dir>/<job name>/`.
    #[serde(default = "default_checkpoint_dir")]
    pub dir: PathBuf,
    /// Local staging copy of checkpoints kept in object storage (also used
    /// for local recovery).
    #[serde(default = "default_checkpoint_cache")]
    pub local_dir: PathBuf,
    /// Complete checkpoints kept; older ones are deleted.
    #[serde(default = "default_retain")]
    pub retain: usize,
    /// A checkpoint not complete after this long is aborted.
    #[serde(default = "default_checkpoint_timeout", deserialize_with = "duration")]
    pub timeout: Duration,
}

/// `rocksdb: {dir: weir-data/state, block_cache: 64MiB, write_buffer: 16MiB, value_cache: 16MiB, incremental: true}`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RocksDbSpec {
    /// Working files (not durable: checkpoints are); each job below
    /// `<dir>/<job name>/`.
    #[serde(default = "default_state_dir")]
    pub dir: PathBuf,
    /// LRU cache of blocks shared by all instances of the job; memtables are
    /// charged to it too.
    #[serde(default = "default_block_cache", deserialize_with = "byte_size")]
    pub block_cache: u64,
    /// One memtable of one instance.
    #[serde(default = "default_write_buffer", deserialize_with = "byte_size")]
    pub write_buffer: u64,
    /// Per instance: recently used value state kept in memory in front of
    /// RocksDB (written back in batches).
    #[serde(default = "default_value_cache", deserialize_with = "byte_size")]
    pub value_cache: u64,
    /// Checkpoints keep RocksDB's own files and upload only the ones that
    /// are new since the previous checkpoint (savepoints are always full).
    #[serde(default = "default_incremental")]
    pub incremental: bool,
}

impl Default for RocksDbSpec {
    fn default() -> Self {
        RocksDbSpec {
            dir: default_state_dir(),
            block_cache: default_block_cache(),
            write_buffer: default_write_buffer(),
            value_cache: default_value_cache(),
            incremental: default_incremental(),
        }
    }
}

fn default_incremental() -> bool {
    true
}

fn default_state_dir() -> PathBuf {
    PathBuf::from("weir-data/state")
}

fn default_block_cache() -> u64 {
    64 << 20
}

fn default_write_buffer() -> u64 {
    16 << 20
}

fn default_value_cache() -> u64 {
    16 << 20
}

fn default_checkpoint_dir() -> PathBuf {
    PathBuf::from("weir-data/checkpoints")
}

fn default_checkpoint_cache() -> PathBuf {
    PathBuf::from("weir-data/checkpoint-cache")
}

fn default_retain() -> usize {
    3
}

fn default_checkpoint_timeout() -> Duration {
    Duration::from_secs(600)
}

/// `restart: {strategy: fixed-delay, attempts: 3, delay: 1s}`, or
/// `{strategy: exponential-delay, attempts: 10, delay: 1s, max_delay: 1m}`,
/// or `{strategy: none}`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestartSpec {
    pub strategy: RestartStrategy,
    #[serde(default = "default_attempts")]
    pub attempts: u32,
    #[serde(default = "default_restart_delay", deserialize_with = "duration")]
    pub delay: Duration,
    #[serde(default = "default_max_delay", deserialize_with = "duration")]
    pub max_delay: Duration,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum RestartStrategy {
    None,
    FixedDelay,
    ExponentialDelay,
}

fn default_attempts() -> u32 {
    3
}

fn default_restart_delay() -> Duration {
    Duration::from_secs(1)
}

fn default_max_delay() -> Duration {
    Duration::from_secs(60)
}

impl RestartSpec {
    pub fn none() -> Self {
        RestartSpec {
            strategy: RestartStrategy::None,
            attempts: 0,
            delay: Duration::ZERO,
            max_delay: Duration::ZERO,
        }
    }

    /// The pause before restart number `attempt` (1-based), or `None` when
    /// no more restarts are allowed.
    pub fn delay_before(&self, attempt: u32) -> Option<Duration> {
        if self.strategy == RestartStrategy::None || attempt > self.attempts {
            return None;
        }
        Some(match self.strategy {
            RestartStrategy::ExponentialDelay => self
                .delay
                .saturating_mul(1u32 << (attempt - 1).min(20))
                .min(self.max_delay),
            _ => self.delay,
        })
    }
}

fn one() -> u32 {
    1
}

fn default_max_parallelism() -> u32 {
    DEFAULT_MAX_PARALLELISM
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum StateBackendKind {
    #[default]
    Memory,
    Rocksdb,
}

/// How records are grouped on the way between tasks.
#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchSpec {
    /// A batch is sent when it holds this many records...
    #[serde(default = "default_batch_size")]
    pub size: usize,
    /// ...or when its oldest record has waited this long.
    #[serde(default = "default_linger", deserialize_with = "duration")]
    pub linger: Duration,
}

/// About Flink's 32 KiB network buffer for records of a few dozen bytes.
/// Against 256, the bench's keyed-count ran 6% faster at parallelism 1 and
/// 10% at 2, window-count 2% and 5%; p99 latency stayed below 0.7 ms.
fn default_batch_size() -> usize {
    1024
}

fn default_linger() -> Duration {
    Duration::from_millis(5)
}

impl Default for BatchSpec {
    fn default() -> Self {
        BatchSpec {
            size: default_batch_size(),
            linger: default_linger(),
        }
    }
}

/// The name of the job's `source` in `from` lists.
pub const MAIN_SOURCE: &str = "source";

/// A stream of the job's graph: a source (by name) or an operator (by index).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Node {
    Source(String),
    Operator(usize),
}

/// A source, chosen by its `type` field.
#[derive(Clone, Debug)]
pub enum SourceSpec {
    Generator(GeneratorSource),
    File(FileSource),
    /// Records from a source the embedding program supplies in code
    /// ([`crate::runtime::JobEnv::embedded_source`]).
    Embedded(EmbeddedSource),
    /// A Kafka topic, its partitions split across the instances.
    Kafka(KafkaSourceSpec),
    /// The Nexmark benchmark's persons, auctions and bids.
    Nexmark(NexmarkSource),
}

/// `{type: nexmark, events: N, events_per_ms: 1}`: event `n` of `0..events`
/// is a person, auction or bid (1 : 3 : 46) at event time `n /
/// events_per_ms` ms (see `connectors::nexmark`). Instance `k` of `p` emits
/// `n = k, k + p, k + 2p, ...`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NexmarkSource {
    pub events: u64,
    #[serde(default = "one_u64")]
    pub events_per_ms: u64,
    /// Events per second per instance, at most (none: as fast as possible).
    #[serde(default)]
    pub rate: Option<u64>,
    pub parallelism: Option<u32>,
    #[serde(default)]
    pub watermark: WatermarkSpec,
}

/// `{type: kafka, brokers: host:9092, topic: clicks, start: earliest}`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSourceSpec {
    pub brokers: String,
    pub topic: String,
    /// Consumer group that the offsets of each complete checkpoint are
    /// committed to, for lag monitoring only: a job resumes from its
    /// checkpoints, never from the group. Default `weir-<topic>`.
    pub group: Option<String>,
    /// Where a fresh start begins: `earliest`, `latest` or `{timestamp: ms}`.
    #[serde(default)]
    pub start: KafkaStart,
    /// Stop each partition at the end it first reaches (a finite data set).
    #[serde(default)]
    pub bounded: bool,
    /// JSON field of the value that becomes the key (default: the Kafka key).
    pub key_field: Option<String>,
    /// JSON field of the value holding the event time in milliseconds
    /// (default: the record's Kafka timestamp).
    pub timestamp_field: Option<String>,
    pub parallelism: Option<u32>,
    /// Records per second per instance, at most.
    pub rate: Option<u64>,
    #[serde(default)]
    pub watermark: WatermarkSpec,
    /// librdkafka consumer properties, passed through.
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum KafkaStart {
    #[default]
    Earliest,
    Latest,
    Timestamp(i64),
}

impl<'de> Deserialize<'de> for KafkaStart {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Name(String),
            At { timestamp: i64 },
        }
        match Raw::deserialize(d)? {
            Raw::Name(n) if n == "earliest" => Ok(KafkaStart::Earliest),
            Raw::Name(n) if n == "latest" => Ok(KafkaStart::Latest),
            Raw::Name(n) => Err(serde::de::Error::custom(format!(
                "unknown start `{n}`, expected `earliest`, `latest` or `{{timestamp: MS}}`"
            ))),
            Raw::At { timestamp } => Ok(KafkaStart::Timestamp(timestamp)),
        }
    }
}

/// `{type: kafka, brokers: host:9092, topic: out, delivery: exactly-once}`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSinkSpec {
    pub brokers: String,
    pub topic: String,
    #[serde(default)]
    pub delivery: KafkaDelivery,
    /// Transactional ids are `<prefix>-<n>` (a small pool shared by the
    /// sink's instances); default `weir-<job>`, `weir-<job>-<sink>` for a
    /// side output's or the dead-letter sink. Two jobs writing with the same
    /// prefix fence each other.
    pub transactional_id_prefix: Option<String>,
    /// librdkafka producer properties, passed through.
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum KafkaDelivery {
    #[default]
    AtLeastOnce,
    /// Kafka transactions committed by checkpoints (needs `checkpoint`).
    ExactlyOnce,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbeddedSource {
    pub parallelism: Option<u32>,
    #[serde(default)]
    pub watermark: WatermarkSpec,
}

/// Event `i` of `0..events`: key `i % keys`, event time `i / events_per_ms`
/// ms, value `i`. Instance `k` of `p` emits `i = k, k + p, k + 2p, ...`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GeneratorSource {
    pub events: u64,
    #[serde(default = "default_keys")]
    pub keys: u64,
    #[serde(default = "one_u64")]
    pub events_per_ms: u64,
    #[serde(default)]
    pub format: GeneratorFormat,
    /// Events per second per instance, at most (none: as fast as possible).
    #[serde(default)]
    pub rate: Option<u64>,
    pub parallelism: Option<u32>,
    #[serde(default)]
    pub watermark: WatermarkSpec,
}

/// A file of lines, read once from the start.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSource {
    pub path: PathBuf,
    #[serde(default)]
    pub format: FileFormat,
    /// JSON field whose value becomes the record key.
    pub key_field: Option<String>,
    /// JSON field holding the event time in milliseconds.
    pub timestamp_field: Option<String>,
    #[serde(default)]
    pub watermark: WatermarkSpec,
}

impl<'de> Deserialize<'de> for SourceSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let (kind, body) = split_tag(d)?;
        match kind.as_str() {
            "generator" => tagged_body(body).map(SourceSpec::Generator),
            "file" => tagged_body(body).map(SourceSpec::File),
            "embedded" => tagged_body(body).map(SourceSpec::Embedded),
            "kafka" => tagged_body(body).map(SourceSpec::Kafka),
            "nexmark" => tagged_body(body).map(SourceSpec::Nexmark),
            other => Err(serde::de::Error::custom(format!(
                "unknown source type `{other}`, expected `generator`, `file`, `kafka`, `nexmark` or `embedded`"
            ))),
        }
    }
}

/// Takes the `type` field off a mapping.
fn split_tag<'de, D: Deserializer<'de>>(d: D) -> Result<(String, serde_yaml::Value), D::Error> {
    use serde::de::Error;
    let mut map = serde_yaml::Mapping::deserialize(d)?;
    let kind = map
        .remove("type")
        .ok_or_else(|| D::Error::custom("missing field `type`"))?;
    let kind = kind
        .as_str()
        .ok_or_else(|| D::Error::custom("field `type` must be a string"))?
        .to_owned();
    Ok((kind, serde_yaml::Value::Mapping(map)))
}

/// Deserializes the rest of a tagged mapping, keeping the path of a bad field
/// (serde's own internally tagged enums lose it).
fn tagged_body<T: serde::de::DeserializeOwned, E: serde::de::Error>(
    body: serde_yaml::Value,
) -> Result<T, E> {
    serde_path_to_error::deserialize(body).map_err(|e| {
        let path = e.path().to_string();
        if path == "." {
            E::custom(e.inner())
        } else {
            E::custom(format!("{path}: {}", e.inner()))
        }
    })
}

/// `from: a` or `from: [a, b]`.
fn one_or_many<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        One(String),
        Many(Vec<String>),
    }
    Ok(match Raw::deserialize(d)? {
        Raw::One(name) => vec![name],
        Raw::Many(names) => names,
    })
}

fn default_keys() -> u64 {
    10_000
}

fn one_u64() -> u64 {
    1
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum GeneratorFormat {
    /// Key and value as little-endian u64s (8 bytes each).
    #[default]
    Binary,
    /// Key and value as decimal text.
    Text,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum FileFormat {
    /// Each line is a JSON object, the record's value is the line.
    #[default]
    Json,
    /// Each line is the record's value; no key, event time = line number.
    Lines,
}

#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WatermarkSpec {
    /// Watermark = highest event time seen - this - 1 ms.
    #[serde(default, deserialize_with = "duration")]
    pub max_out_of_orderness: Duration,
    /// How often a source instance publishes its watermark. Default `0ms`:
    /// after every batch it reads (with `batch.size: 1`, after every
    /// record). Watermarks travel on the record batches, so publishing often
    /// costs little and keeps windows' state small.
    #[serde(default = "default_watermark_interval", deserialize_with = "duration")]
    pub interval: Duration,
    /// A source instance that has produced nothing for this long declares
    /// itself idle: downstream operators leave it out of their minimum until
    /// it produces again. None: never idle.
    #[serde(default, deserialize_with = "optional_duration")]
    pub idle_timeout: Option<Duration>,
    /// A record more than this far ahead of the wall clock does not move the
    /// watermark (one bad timestamp must not close every window for years);
    /// it is counted and still processed. Default one day.
    #[serde(default = "default_future_horizon", deserialize_with = "duration")]
    pub future_horizon: Duration,
    /// Watermark alignment: an instance of this source whose watermark runs
    /// more than this ahead of the slowest instance's pauses until it
    /// catches up, so downstream windows do not pile up behind the slowest.
    /// Off by default, as an instance that has no records and no
    /// `idle_timeout` would hold the others back for good; except for the
    /// generated sources, which default to [`GENERATED_MAX_DRIFT`].
    #[serde(default, deserialize_with = "optional_duration")]
    pub max_drift: Option<Duration>,
}

/// Watermark alignment of the generated sources (`generator`, `nexmark`)
/// when their spec sets no `max_drift`. Their instances always have a next
/// event until they end (and an ended instance holds nobody back), so
/// alignment cannot stall them, while without it the thread scheduler
/// decides how far apart they drift, and every window between the slowest
/// and the fastest instance stays open downstream.
pub const GENERATED_MAX_DRIFT: Duration = Duration::from_secs(10);

fn default_future_horizon() -> Duration {
    Duration::from_secs(24 * 3600)
}

fn optional_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    duration(d).map(Some)
}

fn default_watermark_interval() -> Duration {
    Duration::ZERO
}

impl Default for WatermarkSpec {
    fn default() -> Self {
        WatermarkSpec {
            max_out_of_orderness: Duration::ZERO,
            interval: default_watermark_interval(),
            idle_timeout: None,
            future_horizon: default_future_horizon(),
            max_drift: None,
        }
    }
}

/// How records reach an operator from the step before it.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Partitioning {
    /// Same instance index; chained into one task when parallelism matches.
    #[default]
    Forward,
    /// By key group of the record key: required for keyed state.
    Key,
    /// Round robin over the next step's instances.
    Rebalance,
    /// Every record to every instance.
    Broadcast,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OperatorSpec {
    pub name: String,
    /// A Wasm module: a path ending in `.wasm` (relative to the spec file)
    /// or a module name looked up in the module directories.
    pub module: Option<String>,
    /// A built-in native operator (`keyed-count`, `passthrough`), for
    /// comparison with the Wasm versions.
    pub native: Option<String>,
    /// What the operator reads, by name: earlier operators, `source`, or
    /// keys of `sources`. Default: the operator before it (the source for
    /// the first). With several, their records meet in this operator: a
    /// union, or (for a guest that tells them apart by `Record::input`, the
    /// index in this list) a co-process function such as a join.
    #[serde(default, deserialize_with = "one_or_many")]
    pub from: Vec<String>,
    /// How records reach the operator from each of its inputs.
    #[serde(default)]
    pub input: Partitioning,
    pub parallelism: Option<u32>,
    /// Handed to the operator's `init` as JSON.
    pub config: Option<serde_json::Value>,
    /// Where each declared side output goes.
    #[serde(default)]
    pub side_outputs: BTreeMap<String, SinkSpec>,
    /// Makes the operator a keyed window: the module is a window aggregate.
    pub window: Option<WindowSpec>,
}

/// Keyed event-time windows, assigned and fired by the host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WindowSpec {
    pub kind: WindowKind,
    /// How long after a window's end (by the watermark) records still update
    /// it; each such record fires the window again with the updated result.
    pub allowed_lateness: Duration,
    /// The side output that gets records later than that.
    pub late_output: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WindowKind {
    /// Fixed, non-overlapping windows `[k * size, (k + 1) * size)`.
    Tumbling { size: Duration },
    /// Windows of `size` starting every `slide`; a record is in each window
    /// that covers it.
    Sliding { size: Duration, slide: Duration },
    /// Per key, records closer than `gap` to each other share a window.
    Session { gap: Duration },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TumblingWindow {
    #[serde(deserialize_with = "duration")]
    size: Duration,
    #[serde(default, deserialize_with = "duration")]
    allowed_lateness: Duration,
    #[serde(default = "default_late_output")]
    late_output: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SlidingWindow {
    #[serde(deserialize_with = "duration")]
    size: Duration,
    #[serde(deserialize_with = "duration")]
    slide: Duration,
    #[serde(default, deserialize_with = "duration")]
    allowed_lateness: Duration,
    #[serde(default = "default_late_output")]
    late_output: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SessionWindow {
    #[serde(deserialize_with = "duration")]
    gap: Duration,
    #[serde(default, deserialize_with = "duration")]
    allowed_lateness: Duration,
    #[serde(default = "default_late_output")]
    late_output: String,
}

fn default_late_output() -> String {
    "late".into()
}

impl<'de> Deserialize<'de> for WindowSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let (kind, body) = split_tag(d)?;
        match kind.as_str() {
            "tumbling" => tagged_body(body).map(|w: TumblingWindow| WindowSpec {
                kind: WindowKind::Tumbling { size: w.size },
                allowed_lateness: w.allowed_lateness,
                late_output: w.late_output,
            }),
            "sliding" => tagged_body(body).map(|w: SlidingWindow| WindowSpec {
                kind: WindowKind::Sliding {
                    size: w.size,
                    slide: w.slide,
                },
                allowed_lateness: w.allowed_lateness,
                late_output: w.late_output,
            }),
            "session" => tagged_body(body).map(|w: SessionWindow| WindowSpec {
                kind: WindowKind::Session { gap: w.gap },
                allowed_lateness: w.allowed_lateness,
                late_output: w.late_output,
            }),
            other => Err(serde::de::Error::custom(format!(
                "unknown window type `{other}`, expected `tumbling`, `sliding` or `session`"
            ))),
        }
    }
}

/// A sink, chosen by its `type` field.
#[derive(Clone, Debug)]
pub enum SinkSpec {
    Stdout {
        format: SinkFormat,
    },
    File {
        path: PathBuf,
        format: SinkFormat,
    },
    /// Part files in a folder, committed by checkpoints: exactly once.
    Directory {
        path: PathBuf,
        format: SinkFormat,
    },
    /// Counts records and drops them (benchmarks); with `rate`, takes at
    /// most that many records per second per instance (a slow consumer).
    Discard {
        rate: Option<u64>,
    },
    Kafka(KafkaSinkSpec),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StdoutSink {
    #[serde(default)]
    format: SinkFormat,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSink {
    path: PathBuf,
    #[serde(default)]
    format: SinkFormat,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DiscardSink {
    #[serde(default)]
    rate: Option<u64>,
}

impl<'de> Deserialize<'de> for SinkSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let (kind, body) = split_tag(d)?;
        match kind.as_str() {
            "stdout" => {
                tagged_body(body).map(|s: StdoutSink| SinkSpec::Stdout { format: s.format })
            }
            "file" => tagged_body(body).map(|s: FileSink| SinkSpec::File {
                path: s.path,
                format: s.format,
            }),
            "directory" => tagged_body(body).map(|s: FileSink| SinkSpec::Directory {
                path: s.path,
                format: s.format,
            }),
            "discard" => tagged_body(body).map(|d: DiscardSink| SinkSpec::Discard { rate: d.rate }),
            "kafka" => tagged_body(body).map(SinkSpec::Kafka),
            other => Err(serde::de::Error::custom(format!(
                "unknown sink type `{other}`, expected `stdout`, `file`, `directory`, `kafka` or `discard`"
            ))),
        }
    }
}

/// How a sink renders records as lines.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SinkFormat {
    #[serde(default)]
    pub key: BytesFormat,
    #[serde(default)]
    pub value: BytesFormat,
}

impl Default for SinkFormat {
    fn default() -> Self {
        SinkFormat {
            key: BytesFormat::Text,
            value: BytesFormat::Text,
        }
    }
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum BytesFormat {
    /// UTF-8 text; a JSON value is embedded as JSON.
    #[default]
    Text,
    /// A little-endian u64, printed as a number.
    U64,
    /// Hexadecimal.
    Hex,
}

/// Accepts `250ms`, `5s`, `2m`, `1h` or a number of milliseconds.
fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Millis(u64),
        Text(String),
    }
    match Raw::deserialize(d)? {
        Raw::Millis(ms) => Ok(Duration::from_millis(ms)),
        Raw::Text(t) => parse_duration(&t).map_err(serde::de::Error::custom),
    }
}

fn byte_size<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Bytes(u64),
        Text(String),
    }
    match Raw::deserialize(d)? {
        Raw::Bytes(n) => Ok(n),
        Raw::Text(t) => parse_byte_size(&t).map_err(serde::de::Error::custom),
    }
}

/// `4096`, `512KiB`, `64MiB`, `2GiB` (also `KB`, `MB`, `GB`, taken as
/// powers of 1024 as RocksDB users expect).
pub fn parse_byte_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a size like 4096, 512KiB, 64MiB or 2GiB"))?;
    let shift = match unit.trim() {
        "" | "B" => 0,
        "KiB" | "KB" | "k" => 10,
        "MiB" | "MB" | "m" => 20,
        "GiB" | "GB" | "g" => 30,
        other => return Err(format!("unknown size unit `{other}` in `{text}`")),
    };
    n.checked_mul(1 << shift)
        .ok_or_else(|| format!("`{text}` is too large"))
}

/// The longest duration a spec may give.
const MAX_DURATION_MS: u64 = 100 * 365 * 24 * 3_600_000;

pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration like 250ms, 5s, 2m, 1h or 1d"))?;
    let unit_ms: u64 = match unit.trim() {
        "" | "ms" => 1,
        "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        other => return Err(format!("unknown duration unit `{other}` in `{text}`")),
    };
    // Event-time arithmetic is in i64 milliseconds; a century keeps every
    // sum of a timestamp and a duration far from overflowing.
    n.checked_mul(unit_ms)
        .filter(|&ms| ms <= MAX_DURATION_MS)
        .map(Duration::from_millis)
        .ok_or_else(|| format!("`{text}` is longer than 100 years"))
}

impl JobSpec {
    /// Parses YAML (JSON is YAML too) and validates.
    pub fn parse(text: &str) -> Result<JobSpec, SpecError> {
        let spec: JobSpec = serde_path_to_error::deserialize(serde_yaml::Deserializer::from_str(
            text,
        ))
        .map_err(|e| {
            let path = e.path().to_string();
            if path == "." {
                SpecError::Parse(e.inner().to_string())
            } else {
                SpecError::Parse(format!("{path}: {}", e.inner()))
            }
        })?;
        spec.validate()?;
        Ok(spec)
    }

    /// Reads a spec file; relative paths inside it are resolved against its folder.
    pub fn load(path: &Path) -> Result<JobSpec, SpecError> {
        let text = std::fs::read_to_string(path).map_err(|source| SpecError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut spec = JobSpec::parse(&text)?;
        spec.resolve_paths(path.parent().unwrap_or(Path::new(".")));
        Ok(spec)
    }

    /// Makes relative file paths (sources, sinks, checkpoints, .wasm modules)
    /// relative to `base`.
    pub fn resolve_paths(&mut self, base: &Path) {
        let resolve = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        if let SourceSpec::File(f) = &mut self.source {
            resolve(&mut f.path);
        }
        let sinks = std::iter::once(&mut self.sink)
            .chain(self.dead_letter.as_mut())
            .chain(
                self.operators
                    .iter_mut()
                    .flat_map(|o| o.side_outputs.values_mut()),
            );
        for sink in sinks {
            if let SinkSpec::File { path, .. } | SinkSpec::Directory { path, .. } = sink {
                resolve(path);
            }
        }
        if self.state == StateBackendKind::Rocksdb && self.rocksdb.is_none() {
            self.rocksdb = Some(RocksDbSpec::default());
        }
        if let Some(r) = &mut self.rocksdb {
            resolve(&mut r.dir);
        }
        if let Some(c) = &mut self.checkpoint {
            if !crate::checkpoint::storage::is_remote(&c.dir) {
                resolve(&mut c.dir);
            }
            resolve(&mut c.local_dir);
        }
        for op in &mut self.operators {
            if let Some(m) = &mut op.module
                && m.ends_with(".wasm")
                && Path::new(m.as_str()).is_relative()
            {
                *m = base.join(&*m).to_string_lossy().into_owned();
            }
        }
    }

    pub fn validate(&self) -> Result<(), SpecError> {
        check_name("name", &self.name)?;
        if self.max_parallelism == 0 || self.max_parallelism > 32_768 {
            return Err(invalid("max_parallelism", "must be between 1 and 32768"));
        }
        check_parallelism("parallelism", self.parallelism, self.max_parallelism)?;
        if self.batch.size == 0 || self.batch.size > 1 << 20 {
            return Err(invalid("batch.size", "must be between 1 and 1048576"));
        }
        if let Some(r) = &self.rocksdb {
            if self.state != StateBackendKind::Rocksdb {
                return Err(invalid("rocksdb", "is only used with `state: rocksdb`"));
            }
            if r.block_cache < 1 << 20 {
                return Err(invalid("rocksdb.block_cache", "must be at least 1MiB"));
            }
            if r.write_buffer < 64 << 10 {
                return Err(invalid("rocksdb.write_buffer", "must be at least 64KiB"));
            }
        }
        if let Some(c) = &self.checkpoint {
            if c.interval < Duration::from_millis(10) {
                return Err(invalid("checkpoint.interval", "must be at least 10ms"));
            }
            if c.retain == 0 {
                return Err(invalid("checkpoint.retain", "must be at least 1"));
            }
            if c.timeout.is_zero() {
                return Err(invalid("checkpoint.timeout", "must be more than 0"));
            }
        }
        if let Some(r) = &self.restart
            && r.strategy != RestartStrategy::None
            && r.delay > r.max_delay
            && r.strategy == RestartStrategy::ExponentialDelay
        {
            return Err(invalid("restart.max_delay", "must be at least `delay`"));
        }
        self.validate_source("source", &self.source)?;
        for (name, source) in &self.sources {
            let field = format!("sources.{name}");
            check_name(&field, name)?;
            if name == MAIN_SOURCE {
                return Err(invalid(
                    field,
                    "`source` names the job's `source`; give this one another name",
                ));
            }
            if ["generator", "file", "embedded", "kafka"].contains(&name.as_str()) {
                // Task names start with the job's `source`'s type.
                return Err(invalid(
                    field,
                    "a source type cannot name a source; give this one another name",
                ));
            }
            if matches!(source, SourceSpec::Embedded(_)) {
                return Err(invalid(field, "only the job's `source` can be `embedded`"));
            }
            self.validate_source(&field, source)?;
        }
        match (self.on_error, &self.dead_letter) {
            (OnError::DeadLetter, None) => {
                return Err(invalid(
                    "dead_letter",
                    "`on_error: dead-letter` needs a `dead_letter` sink for the rejected records",
                ));
            }
            (OnError::Fail | OnError::Skip, Some(_)) => {
                return Err(invalid(
                    "dead_letter",
                    "is only used with `on_error: dead-letter`",
                ));
            }
            _ => {}
        }
        let sinks = std::iter::once(("sink".to_owned(), &self.sink))
            .chain(
                self.dead_letter
                    .iter()
                    .map(|s| ("dead_letter".to_owned(), s)),
            )
            .chain(self.operators.iter().enumerate().flat_map(|(i, o)| {
                o.side_outputs
                    .iter()
                    .map(move |(name, s)| (format!("operators[{i}].side_outputs.{name}"), s))
            }));
        for (field, sink) in sinks {
            if let SinkSpec::Kafka(k) = sink {
                if k.brokers.trim().is_empty() || k.topic.trim().is_empty() {
                    return Err(invalid(field, "a kafka sink needs `brokers` and `topic`"));
                }
                if k.delivery == KafkaDelivery::ExactlyOnce && self.checkpoint.is_none() {
                    return Err(invalid(
                        format!("{field}.delivery"),
                        "exactly-once commits Kafka transactions at checkpoints: add `checkpoint`",
                    ));
                }
            }
        }
        if self.operators.is_empty() {
            return Err(invalid("operators", "a job needs at least one operator"));
        }
        let mut names = std::collections::HashSet::new();
        for (i, op) in self.operators.iter().enumerate() {
            let field = |f: &str| format!("operators[{i}].{f}");
            check_name(&field("name"), &op.name)?;
            if !names.insert(op.name.as_str()) {
                return Err(invalid(
                    field("name"),
                    format!("`{}` is used by two operators", op.name),
                ));
            }
            if op.name == MAIN_SOURCE || self.sources.contains_key(&op.name) {
                return Err(invalid(
                    field("name"),
                    format!("`{}` names a source", op.name),
                ));
            }
            match (&op.module, &op.native) {
                (Some(_), Some(_)) => {
                    return Err(invalid(
                        field("module"),
                        "give `module` or `native`, not both",
                    ));
                }
                (None, None) => {
                    return Err(invalid(
                        field("module"),
                        "missing: name the operator's Wasm module",
                    ));
                }
                (None, Some(n)) if !crate::operators::NATIVE.contains(&n.as_str()) => {
                    return Err(invalid(
                        field("native"),
                        format!(
                            "unknown native operator `{n}`; known: {}",
                            crate::operators::NATIVE.join(", ")
                        ),
                    ));
                }
                _ => {}
            }
            if let Some(p) = op.parallelism {
                check_parallelism(&field("parallelism"), p, self.max_parallelism)?;
            }
            for name in op.side_outputs.keys() {
                check_name(&field(&format!("side_outputs.{name}")), name)?;
            }
            if let Some(w) = &op.window {
                if op.module.is_none() {
                    return Err(invalid(
                        field("window"),
                        "a window needs a Wasm aggregate module (`module:`)",
                    ));
                }
                if op.input != Partitioning::Key {
                    return Err(invalid(
                        field("input"),
                        "a window is per key: set `input: key`",
                    ));
                }
                let positive = |f: &str, d: Duration| {
                    if d.as_millis() == 0 {
                        Err(invalid(
                            field(&format!("window.{f}")),
                            "must be at least 1ms",
                        ))
                    } else {
                        Ok(())
                    }
                };
                match w.kind {
                    WindowKind::Tumbling { size } => positive("size", size)?,
                    WindowKind::Sliding { size, slide } => {
                        positive("size", size)?;
                        positive("slide", slide)?;
                        if size.as_millis() / slide.as_millis() > 1000 {
                            return Err(invalid(
                                field("window.slide"),
                                "a record would fall in more than 1000 windows; make the slide longer",
                            ));
                        }
                    }
                    WindowKind::Session { gap } => positive("gap", gap)?,
                }
                check_name(&field("window.late_output"), &w.late_output)?;
            }
            let mut seen = Vec::new();
            for name in &op.from {
                let node = self.node_named(name).ok_or_else(|| {
                    invalid(
                        field("from"),
                        format!("no operator or source is named `{name}`"),
                    )
                })?;
                if let Node::Operator(j) = node
                    && j >= i
                {
                    return Err(invalid(
                        field("from"),
                        format!("`{name}` must come before `{}` in `operators`", op.name),
                    ));
                }
                if seen.contains(&node) {
                    return Err(invalid(field("from"), format!("`{name}` is named twice")));
                }
                seen.push(node);
            }
            if op.from.len() > usize::from(u16::MAX) {
                return Err(invalid(field("from"), "too many inputs"));
            }
        }
        // Every stream goes somewhere: the last operator's to the sink,
        // every other one into an operator.
        let mut read = std::collections::HashSet::new();
        for i in 0..self.operators.len() {
            read.extend(self.inputs_of(i));
        }
        for (name, _) in self.all_sources() {
            if !read.contains(&Node::Source(name.to_owned())) {
                let field = if name == MAIN_SOURCE {
                    "source".to_owned()
                } else {
                    format!("sources.{name}")
                };
                return Err(invalid(
                    field,
                    format!("no operator reads `{name}`: name it in an operator's `from`"),
                ));
            }
        }
        let last = self.operators.len() - 1;
        for (i, op) in self.operators.iter().enumerate().take(last) {
            if !read.contains(&Node::Operator(i)) {
                return Err(invalid(
                    format!("operators[{i}]"),
                    format!(
                        "the output of `{}` goes nowhere: only the last operator feeds the sink; name `{}` in a later operator's `from`",
                        op.name, op.name
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The source or operator called `name`.
    pub fn node_named(&self, name: &str) -> Option<Node> {
        if name == MAIN_SOURCE || self.sources.contains_key(name) {
            return Some(Node::Source(name.to_owned()));
        }
        self.operators
            .iter()
            .position(|o| o.name == name)
            .map(Node::Operator)
    }

    /// What operator `i` reads, in order (its `from`, or the step before it).
    pub fn inputs_of(&self, i: usize) -> Vec<Node> {
        let op = &self.operators[i];
        if op.from.is_empty() {
            return vec![match i {
                0 => Node::Source(MAIN_SOURCE.to_owned()),
                _ => Node::Operator(i - 1),
            }];
        }
        op.from
            .iter()
            .filter_map(|name| self.node_named(name))
            .collect()
    }

    /// Every source with its name: `source` first, then `sources` by name.
    pub fn all_sources(&self) -> Vec<(&str, &SourceSpec)> {
        std::iter::once((MAIN_SOURCE, &self.source))
            .chain(self.sources.iter().map(|(n, s)| (n.as_str(), s)))
            .collect()
    }

    /// The source called `name`.
    pub fn source_named(&self, name: &str) -> Option<&SourceSpec> {
        if name == MAIN_SOURCE {
            Some(&self.source)
        } else {
            self.sources.get(name)
        }
    }

    fn validate_source(&self, field: &str, source: &SourceSpec) -> Result<(), SpecError> {
        match source {
            SourceSpec::Generator(GeneratorSource {
                keys,
                events_per_ms,
                rate,
                parallelism,
                ..
            }) => {
                if *keys == 0 {
                    return Err(invalid(format!("{field}.keys"), "must be at least 1"));
                }
                if *events_per_ms == 0 {
                    return Err(invalid(
                        format!("{field}.events_per_ms"),
                        "must be at least 1",
                    ));
                }
                if rate.is_some_and(|r| r == 0) {
                    return Err(invalid(
                        format!("{field}.rate"),
                        "must be at least 1 event per second",
                    ));
                }
                if let Some(p) = parallelism {
                    check_parallelism(&format!("{field}.parallelism"), *p, self.max_parallelism)?;
                }
            }
            SourceSpec::File(FileSource {
                format,
                key_field,
                timestamp_field,
                ..
            }) => {
                if *format == FileFormat::Lines
                    && (key_field.is_some() || timestamp_field.is_some())
                {
                    return Err(invalid(
                        format!("{field}.key_field"),
                        "key_field and timestamp_field need format: json",
                    ));
                }
            }
            SourceSpec::Embedded(EmbeddedSource { parallelism, .. }) => {
                if let Some(p) = parallelism {
                    check_parallelism(&format!("{field}.parallelism"), *p, self.max_parallelism)?;
                }
            }
            SourceSpec::Kafka(k) => {
                if k.brokers.trim().is_empty() {
                    return Err(invalid(
                        format!("{field}.brokers"),
                        "must name at least one broker",
                    ));
                }
                if k.topic.trim().is_empty() {
                    return Err(invalid(format!("{field}.topic"), "must not be empty"));
                }
                if k.rate.is_some_and(|r| r == 0) {
                    return Err(invalid(
                        format!("{field}.rate"),
                        "must be at least 1 record per second",
                    ));
                }
                if let Some(p) = k.parallelism {
                    check_parallelism(&format!("{field}.parallelism"), p, self.max_parallelism)?;
                }
            }
            SourceSpec::Nexmark(n) => {
                if n.events_per_ms == 0 {
                    return Err(invalid(
                        format!("{field}.events_per_ms"),
                        "must be at least 1",
                    ));
                }
                if n.rate.is_some_and(|r| r == 0) {
                    return Err(invalid(
                        format!("{field}.rate"),
                        "must be at least 1 event per second",
                    ));
                }
                if let Some(p) = n.parallelism {
                    check_parallelism(&format!("{field}.parallelism"), p, self.max_parallelism)?;
                }
            }
        }
        Ok(())
    }

    /// Parallelism of operator `i`.
    pub fn operator_parallelism(&self, i: usize) -> u32 {
        self.operators[i].parallelism.unwrap_or(self.parallelism)
    }

    /// The restart strategy in force (see [`JobSpec::restart`]).
    pub fn restart_strategy(&self) -> RestartSpec {
        match (&self.restart, &self.checkpoint) {
            (Some(r), _) => r.clone(),
            (None, Some(_)) => RestartSpec {
                strategy: RestartStrategy::FixedDelay,
                attempts: default_attempts(),
                delay: default_restart_delay(),
                max_delay: default_max_delay(),
            },
            (None, None) => RestartSpec::none(),
        }
    }

    /// Parallelism of the job's `source`.
    pub fn source_parallelism(&self) -> u32 {
        self.parallelism_of(&self.source)
    }

    pub fn parallelism_of(&self, source: &SourceSpec) -> u32 {
        match source {
            SourceSpec::Generator(g) => g.parallelism.unwrap_or(self.parallelism),
            SourceSpec::File(_) => 1,
            SourceSpec::Embedded(e) => e.parallelism.unwrap_or(self.parallelism),
            SourceSpec::Kafka(k) => k.parallelism.unwrap_or(self.parallelism),
            SourceSpec::Nexmark(n) => n.parallelism.unwrap_or(self.parallelism),
        }
    }
}

impl SourceSpec {
    /// The source's watermark settings, defaults filled in: the generated
    /// sources align their instances unless told otherwise (see
    /// [`GENERATED_MAX_DRIFT`]).
    pub fn watermark(&self) -> WatermarkSpec {
        let mut spec = match self {
            SourceSpec::Generator(g) => g.watermark,
            SourceSpec::File(f) => f.watermark,
            SourceSpec::Embedded(e) => e.watermark,
            SourceSpec::Kafka(k) => k.watermark,
            SourceSpec::Nexmark(n) => n.watermark,
        };
        if matches!(self, SourceSpec::Generator(_) | SourceSpec::Nexmark(_)) {
            spec.max_drift = spec.max_drift.or(Some(GENERATED_MAX_DRIFT));
        }
        spec
    }

    /// Whether a poll returns at once, never waiting for records or for a
    /// rate limit: such a source can share its thread with the task it
    /// feeds without holding it up.
    pub fn polls_without_waiting(&self) -> bool {
        match self {
            SourceSpec::Generator(g) => g.rate.is_none(),
            SourceSpec::Nexmark(n) => n.rate.is_none(),
            SourceSpec::File(_) => true,
            SourceSpec::Embedded(_) | SourceSpec::Kafka(_) => false,
        }
    }

    /// The source's type, as written in the spec.
    pub fn kind(&self) -> &'static str {
        match self {
            SourceSpec::Generator(_) => "generator",
            SourceSpec::File(_) => "file",
            SourceSpec::Embedded(_) => "embedded",
            SourceSpec::Kafka(_) => "kafka",
            SourceSpec::Nexmark(_) => "nexmark",
        }
    }
}

fn check_parallelism(field: &str, p: u32, max: u32) -> Result<(), SpecError> {
    if p == 0 {
        return Err(invalid(field, "must be at least 1"));
    }
    if p > max {
        return Err(invalid(
            field,
            format!("{p} is above max_parallelism ({max})"),
        ));
    }
    Ok(())
}

/// Names become file and metric names: keep them to a safe alphabet.
pub fn check_name(field: &str, name: &str) -> Result<(), SpecError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        && !name.starts_with('-');
    if ok {
        Ok(())
    } else {
        Err(invalid(
            field,
            format!("`{name}` must be 1-64 characters of a-z, A-Z, 0-9, '-' or '_'"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "
name: j
source: {type: generator, events: 10}
operators: [{name: a, native: passthrough}]
sink: {type: discard}
";

    #[test]
    fn minimal_spec_parses_with_defaults() {
        let spec = JobSpec::parse(MINIMAL).unwrap();
        assert_eq!(spec.max_parallelism, 128);
        assert_eq!(spec.batch.size, 1024);
        assert_eq!(spec.state, StateBackendKind::Memory);
    }

    #[test]
    fn generated_sources_align_their_instances_unless_told_otherwise() {
        let drift = |source: &str| {
            let spec = JobSpec::parse(&MINIMAL.replace("{type: generator, events: 10}", source));
            spec.unwrap().source.watermark().max_drift
        };
        assert_eq!(
            drift("{type: generator, events: 10}"),
            Some(GENERATED_MAX_DRIFT)
        );
        assert_eq!(
            drift("{type: nexmark, events: 10}"),
            Some(GENERATED_MAX_DRIFT)
        );
        assert_eq!(
            drift("{type: generator, events: 10, watermark: {max_drift: 1s}}"),
            Some(Duration::from_secs(1))
        );
        assert_eq!(drift("{type: embedded}"), None);
        assert_eq!(drift("{type: kafka, brokers: 'b:9092', topic: t}"), None);
    }

    #[test]
    fn errors_name_the_field() {
        let bad = MINIMAL.replace("name: a,", "name: a, parallelism: 0,");
        let err = JobSpec::parse(&bad).unwrap_err().to_string();
        assert!(err.contains("operators[0].parallelism"), "{err}");
        let bad = MINIMAL.replace("events: 10", "events: 10, colour: red");
        let err = JobSpec::parse(&bad).unwrap_err().to_string();
        assert!(err.contains("colour"), "{err}");
    }

    #[test]
    fn kafka_and_rocksdb_settings_are_checked() {
        let kafka = MINIMAL
            .replace(
                "{type: generator, events: 10}",
                "{type: kafka, brokers: 'b:9092', topic: t, start: {timestamp: 5}}",
            )
            .replace(
                "{type: discard}",
                "{type: kafka, brokers: 'b:9092', topic: o, delivery: exactly-once}",
            );
        let err = JobSpec::parse(&kafka).unwrap_err().to_string();
        assert!(
            err.contains("sink.delivery") && err.contains("checkpoint"),
            "{err}"
        );
        let spec = JobSpec::parse(&format!("{kafka}checkpoint: {{interval: 1s}}\n")).unwrap();
        assert!(
            matches!(&spec.source, SourceSpec::Kafka(k) if k.start == KafkaStart::Timestamp(5))
        );
        let err = JobSpec::parse(&kafka.replace("start: {timestamp: 5}", "start: newest"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("newest"), "{err}");
        let rocks = format!(
            "{MINIMAL}state: rocksdb\nrocksdb: {{block_cache: 64MiB, value_cache: 1GiB}}\n"
        );
        let spec = JobSpec::parse(&rocks).unwrap();
        assert_eq!(spec.rocksdb.unwrap().value_cache, 1 << 30);
        let err = JobSpec::parse(&rocks.replace("64MiB", "64 furlongs"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("furlongs"), "{err}");
        let err = JobSpec::parse(&format!("{MINIMAL}rocksdb: {{block_cache: 64MiB}}\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("state: rocksdb"), "{err}");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("5s").unwrap(), Duration::from_secs(5));
        assert_eq!(
            parse_duration("1d").unwrap(),
            Duration::from_secs(24 * 3600),
            "the README's future_horizon default"
        );
        assert!(parse_duration("5 parsecs").is_err());
    }
}
