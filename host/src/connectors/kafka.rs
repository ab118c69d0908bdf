//! Kafka: a source reading a topic's partitions, and a sink writing a topic
//! at least once or exactly once through transactions (librdkafka through
//! `rdkafka`).
//!
//! Source. Partitions are the source's splits: partition `p` goes to
//! instance `p % parallelism`, and a resumed job deals them out anew from
//! the checkpoint's offsets. Offsets in checkpoints are the next offset to
//! read; the consumer belongs to no group (the job assigns partitions) and
//! commits nothing, so the checkpoint is the only position that counts. Start offsets (`earliest`, `latest`, a timestamp) are resolved
//! when the instance starts, so even a partition that has produced nothing
//! yet has a concrete offset in the next checkpoint. Event time is the
//! record's Kafka timestamp or a JSON field of its value. Each partition's
//! highest timestamp is tracked; the instance's watermark follows the
//! slowest partition ([`Source::slowest_split_timestamp`]), leaving out a
//! partition that has produced nothing for `idle_timeout` until it produces
//! again. With `bounded: true` a partition ends at the first end of
//! partition the consumer reaches (from the fetch's high watermark), so a
//! job over a finished data set ends.
//!
//! Sink, exactly once (`delivery: exactly-once`, which needs checkpoints).
//! All instances of a sink share one transaction per epoch, an epoch being
//! what the sink receives between two barriers ([`SinkTransactions`]); its
//! transactional id is `<prefix>-<epoch % TRANSACTION_POOL>`, whatever the
//! parallelism, so every run fences every id earlier runs used. At a
//! barrier an instance flushes (every record it sent is on the broker,
//! inside the epoch's transaction), names the transaction in the checkpoint
//! and moves to the next epoch. When every task has acknowledged, the
//! coordinator writes the checkpoint's prepared manifest, commits the
//! transaction with the checkpoint's id as the offset of a witness consumer
//! group inside it (both visible exactly when the transaction commits),
//! and only then writes the manifest. A crash between the two leaves the
//! checkpoint in doubt; the next start fences the old producers (which
//! completes a commit they had asked for and aborts anything else), reads
//! the witness, and completes the checkpoint if its transaction committed
//! or drops it if not, so the restore replays its output
//! ([`crate::checkpoint::CheckpointStore::settle_prepared`]). One commit per
//! checkpoint keeps this exact: an aborted checkpoint therefore restarts
//! the job from the last complete one (its open transaction is aborted by
//! the fencing) rather than leaving its records for a later commit.
//! A producer error whose outcome is unknown fails the task, and recovery
//! aborts what it left open.
//!
//! Limits: with several exactly-once Kafka sinks, their commits are not
//! atomic together (a checkpoint counts as committed only if all did, so a
//! crash between them can duplicate the output of the ones that had);
//! savepoints commit transactions too but are not settled by a restart,
//! which resumes from checkpoints.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use rdkafka::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Message, Timestamp};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};

use super::{ConnectorError, Poll, Source, SourceAssignment, SplitPosition};
use crate::graph::spec::{KafkaDelivery, KafkaSinkSpec, KafkaSourceSpec, KafkaStart};
use crate::runtime::batch::RecordBatch;
use crate::runtime::operator::RejectedRecord;

/// Transactional ids per sink instance: one open transaction, and room for
/// pre-committed ones whose checkpoints have not completed yet.
pub const TRANSACTION_POOL: usize = 4;

/// How long a broker call may take before its outcome counts as unknown.
const BROKER_TIMEOUT: Duration = Duration::from_secs(30);

fn kafka_error(what: impl std::fmt::Display, e: KafkaError) -> ConnectorError {
    ConnectorError::Kafka(format!("{what}: {e}"))
}

fn client_config(
    brokers: &str,
    properties: &std::collections::BTreeMap<String, String>,
) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", brokers);
    for (k, v) in properties {
        config.set(k, v);
    }
    config
}

struct PartitionState {
    partition: i32,
    /// The offset of the next record to read.
    next: i64,
    max_timestamp: Option<i64>,
    last_record: Instant,
    ended: bool,
}

pub struct KafkaSource {
    /// Always `Some` until dropped.
    consumer: Option<BaseConsumer>,
    topic: String,
    partitions: Vec<PartitionState>,
    /// Index into `partitions` by partition number.
    index: HashMap<i32, usize>,
    key_field: Option<String>,
    timestamp_field: Option<String>,
    bounded: bool,
    idle_timeout: Option<Duration>,
    split_count: u32,
    pace: Option<(u64, Instant, u64)>,
    reject_bad: bool,
    rejected: Vec<RejectedRecord>,
}

impl KafkaSource {
    pub fn open(
        spec: &KafkaSourceSpec,
        assignment: &SourceAssignment,
    ) -> Result<Self, ConnectorError> {
        let mut config = client_config(&spec.brokers, &spec.properties);
        // librdkafka wants a group even for assigned partitions; nothing is
        // committed to it.
        config
            .set("group.id", group_of(spec))
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set(
                "enable.partition.eof",
                if spec.bounded { "true" } else { "false" },
            )
            .set("isolation.level", "read_committed");
        let consumer: BaseConsumer = config
            .create()
            .map_err(|e| kafka_error(format!("consumer for topic `{}`", spec.topic), e))?;
        let (split_count, mine): (u32, Vec<(i32, Option<SplitPosition>)>) = match &assignment
            .restored
        {
            Some(r) => (
                r.split_count,
                r.positions
                    .iter()
                    .map(|p| (p.split as i32, Some(p.clone())))
                    .collect(),
            ),
            None => {
                let metadata = consumer
                    .fetch_metadata(Some(&spec.topic), BROKER_TIMEOUT)
                    .map_err(|e| kafka_error(format!("metadata of topic `{}`", spec.topic), e))?;
                let count = metadata
                    .topics()
                    .iter()
                    .find(|t| t.name() == spec.topic)
                    .map(|t| t.partitions().len())
                    .unwrap_or(0);
                if count == 0 {
                    return Err(ConnectorError::Kafka(format!(
                        "topic `{}` does not exist or has no partitions on {}",
                        spec.topic, spec.brokers
                    )));
                }
                let mine = (0..count as u32)
                    .filter(|p| p % assignment.parallelism == assignment.instance)
                    .map(|p| (p as i32, None))
                    .collect();
                (count as u32, mine)
            }
        };
        let mut partitions = Vec::new();
        let mut list = TopicPartitionList::new();
        for (partition, restored) in mine {
            let (next, max_timestamp) = match restored {
                Some(p) => (p.offset as i64, p.max_timestamp),
                None => (start_offset(&consumer, spec, partition)?, None),
            };
            list.add_partition_offset(&spec.topic, partition, Offset::Offset(next))
                .map_err(|e| kafka_error("assigning partitions", e))?;
            partitions.push(PartitionState {
                partition,
                next,
                max_timestamp,
                last_record: Instant::now(),
                ended: false,
            });
        }
        consumer
            .assign(&list)
            .map_err(|e| kafka_error(format!("assigning partitions of `{}`", spec.topic), e))?;
        let index = partitions
            .iter()
            .enumerate()
            .map(|(i, p)| (p.partition, i))
            .collect();
        Ok(KafkaSource {
            consumer: Some(consumer),
            topic: spec.topic.clone(),
            partitions,
            index,
            key_field: spec.key_field.clone(),
            timestamp_field: spec.timestamp_field.clone(),
            bounded: spec.bounded,
            idle_timeout: spec.watermark.idle_timeout,
            split_count,
            pace: spec.rate.filter(|&r| r > 0).map(|r| (r, Instant::now(), 0)),
            reject_bad: false,
            rejected: Vec::new(),
        })
    }

    /// The key and event time a record's JSON value names, where the spec
    /// says to take them from the value (`None`: from the Kafka record).
    fn decode(
        &self,
        payload: &[u8],
        partition: i32,
        offset: i64,
    ) -> Result<(Option<Vec<u8>>, Option<i64>), ConnectorError> {
        if self.key_field.is_none() && self.timestamp_field.is_none() {
            return Ok((None, None));
        }
        let value = serde_json::from_slice::<serde_json::Value>(payload)
            .map_err(|e| self.bad(partition, offset, format!("value is not JSON: {e}")))?;
        let key = match &self.key_field {
            Some(field) => Some(match json_field(&value, field) {
                Some(serde_json::Value::String(s)) => s.as_bytes().to_vec(),
                Some(other) => other.to_string().into_bytes(),
                None => {
                    return Err(self.bad(partition, offset, format!("no key field `{field}`")));
                }
            }),
            None => None,
        };
        let timestamp = match &self.timestamp_field {
            Some(field) => Some(
                json_field(&value, field)
                    .and_then(serde_json::Value::as_i64)
                    .ok_or_else(|| {
                        self.bad(
                            partition,
                            offset,
                            format!("timestamp field `{field}` is missing or not an integer"),
                        )
                    })?,
            ),
            None => None,
        };
        Ok((key, timestamp))
    }

    fn bad(&self, partition: i32, offset: i64, problem: String) -> ConnectorError {
        ConnectorError::BadRecord {
            path: format!("kafka topic {} partition {partition}", self.topic).into(),
            line: offset.max(0) as u64,
            problem,
        }
    }
}

/// The concrete offset a fresh partition starts at.
fn start_offset(
    consumer: &BaseConsumer,
    spec: &KafkaSourceSpec,
    partition: i32,
) -> Result<i64, ConnectorError> {
    let (low, high) = consumer
        .fetch_watermarks(&spec.topic, partition, BROKER_TIMEOUT)
        .map_err(|e| {
            kafka_error(
                format!("offsets of `{}` partition {partition}", spec.topic),
                e,
            )
        })?;
    Ok(match spec.start {
        KafkaStart::Earliest => low,
        KafkaStart::Latest => high,
        KafkaStart::Timestamp(ms) => {
            let mut list = TopicPartitionList::new();
            list.add_partition_offset(&spec.topic, partition, Offset::Offset(ms))
                .map_err(|e| kafka_error("offsets for a timestamp", e))?;
            let found = consumer
                .offsets_for_times(list, BROKER_TIMEOUT)
                .map_err(|e| kafka_error("offsets for a timestamp", e))?;
            match found
                .find_partition(&spec.topic, partition)
                .map(|p| p.offset())
            {
                Some(Offset::Offset(o)) => o,
                // No record at or after the timestamp: start at the end.
                _ => high,
            }
        }
    })
}

impl Drop for KafkaSource {
    fn drop(&mut self) {
        if let Some(consumer) = self.consumer.take() {
            let _ = consumer.unassign();
            close_in_background(consumer);
        }
    }
}

/// Closing a consumer can hang in librdkafka (rust-rdkafka issue 509); a
/// task or a job that is stopping must not wait for it.
fn close_in_background(consumer: BaseConsumer) {
    let _ = std::thread::Builder::new()
        .name("weir-kafka-close".into())
        .spawn(move || drop(consumer));
}

fn group_of(spec: &KafkaSourceSpec) -> String {
    spec.group
        .clone()
        .unwrap_or_else(|| format!("weir-{}", spec.topic))
}

/// Commits the offsets of complete checkpoints to the source's consumer
/// group, so lag tools see the job's progress. Failures are logged: the
/// group's offsets are information, the checkpoint is the position.
pub struct GroupOffsets {
    consumer: Option<BaseConsumer>,
    topic: String,
    group: String,
}

impl GroupOffsets {
    pub fn new(spec: &KafkaSourceSpec) -> Result<Self, ConnectorError> {
        let consumer: BaseConsumer = client_config(&spec.brokers, &spec.properties)
            .set("group.id", group_of(spec))
            .set("enable.auto.commit", "false")
            .create()
            .map_err(|e| kafka_error("consumer for offset commits", e))?;
        Ok(GroupOffsets {
            consumer: Some(consumer),
            topic: spec.topic.clone(),
            group: group_of(spec),
        })
    }

    pub fn commit(&self, positions: &[SplitPosition]) {
        let Some(consumer) = &self.consumer else {
            return;
        };
        let mut list = TopicPartitionList::new();
        for p in positions {
            if list
                .add_partition_offset(&self.topic, p.split as i32, Offset::Offset(p.offset as i64))
                .is_err()
            {
                return;
            }
        }
        if let Err(e) = consumer.commit(&list, rdkafka::consumer::CommitMode::Sync) {
            tracing::warn!(group = %self.group, topic = %self.topic, error = %e,
                "cannot commit checkpointed offsets to the consumer group");
        }
    }
}

impl Drop for GroupOffsets {
    fn drop(&mut self) {
        if let Some(consumer) = self.consumer.take() {
            close_in_background(consumer);
        }
    }
}

fn json_field<'a>(value: &'a serde_json::Value, field: &str) -> Option<&'a serde_json::Value> {
    value.get(field)
}

impl Source for KafkaSource {
    fn poll(&mut self, out: &mut RecordBatch, max: usize) -> Result<Poll, ConnectorError> {
        if self.partitions.iter().all(|p| p.ended) {
            // Only a bounded source ends; an unbounded instance with no
            // partition (more instances than partitions) waits for ever.
            if self.bounded {
                return Ok(Poll::End);
            }
            std::thread::sleep(Duration::from_millis(10));
            return Ok(Poll::More);
        }
        let mut wait = Duration::from_millis(20);
        let before = out.len();
        while out.len() - before < max {
            let consumer = self.consumer.as_ref().expect("present until dropped");
            let Some(result) = consumer.poll(wait) else {
                break;
            };
            wait = Duration::ZERO;
            let message = match result {
                Ok(m) => m,
                Err(KafkaError::PartitionEOF(partition)) => {
                    if let Some(&i) = self.index.get(&partition) {
                        self.partitions[i].ended = true;
                    }
                    if self.partitions.iter().all(|p| p.ended) {
                        break;
                    }
                    continue;
                }
                Err(e) => return Err(kafka_error(format!("reading `{}`", self.topic), e)),
            };
            let partition = message.partition();
            let offset = message.offset();
            let Some(&i) = self.index.get(&partition) else {
                continue;
            };
            if offset < self.partitions[i].next {
                continue;
            }
            let payload = message.payload().unwrap_or_default();
            let record_time = || match message.timestamp() {
                Timestamp::CreateTime(t) | Timestamp::LogAppendTime(t) => t,
                Timestamp::NotAvailable => crate::time::now_millis(),
            };
            let (key, timestamp) = match self.decode(payload, partition, offset) {
                Ok((key, timestamp)) => (
                    key.map(Cow::Owned)
                        .unwrap_or(Cow::Borrowed(message.key().unwrap_or_default())),
                    timestamp.unwrap_or_else(record_time),
                ),
                Err(e) if self.reject_bad => {
                    self.rejected.push(RejectedRecord {
                        key: message.key().unwrap_or_default().to_vec(),
                        value: payload.to_vec(),
                        timestamp: record_time(),
                        error: e.to_string(),
                    });
                    self.partitions[i].next = offset + 1;
                    continue;
                }
                Err(e) => return Err(e),
            };
            let key = &key[..];
            out.push(key, payload, timestamp);
            let state = &mut self.partitions[i];
            state.next = offset + 1;
            state.max_timestamp = Some(state.max_timestamp.map_or(timestamp, |m| m.max(timestamp)));
            state.last_record = Instant::now();
            state.ended = false;
        }
        if let Some((rate, since, taken)) = &mut self.pace {
            *taken += (out.len() - before) as u64;
            let due = Duration::from_secs_f64(*taken as f64 / *rate as f64);
            if let Some(pause) = due.checked_sub(since.elapsed()) {
                std::thread::sleep(pause);
            }
        }
        if self.bounded && self.partitions.iter().all(|p| p.ended) {
            return Ok(Poll::End);
        }
        Ok(Poll::More)
    }

    fn positions(&self) -> Option<Vec<SplitPosition>> {
        Some(
            self.partitions
                .iter()
                .map(|p| SplitPosition {
                    split: p.partition as u32,
                    offset: p.next.max(0) as u64,
                    line: 0,
                    max_timestamp: p.max_timestamp,
                })
                .collect(),
        )
    }

    fn slowest_split_timestamp(&self) -> Option<i64> {
        let idle = |p: &PartitionState| {
            self.idle_timeout
                .is_some_and(|t| p.last_record.elapsed() >= t)
        };
        self.partitions
            .iter()
            .filter(|p| !p.ended && !idle(p))
            .map(|p| p.max_timestamp.unwrap_or(i64::MIN))
            .min()
    }

    fn split_count(&self) -> Option<u32> {
        Some(self.split_count)
    }

    fn reject_bad_records(&mut self) {
        self.reject_bad = true;
    }

    fn take_rejected(&mut self, into: &mut Vec<RejectedRecord>) {
        into.append(&mut self.rejected);
    }
}

/// Records the first delivery failure of a producer.
#[derive(Default)]
struct DeliveryWatch {
    failure: Mutex<Option<String>>,
}

impl ClientContext for DeliveryWatch {}

impl ProducerContext for DeliveryWatch {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((e, _)) = result {
            let mut failure = self.failure.lock().expect("delivery lock");
            failure.get_or_insert_with(|| e.to_string());
        }
    }
}

type TxProducer = ThreadedProducer<DeliveryWatch>;

/// How a checkpoint names a pre-committed Kafka transaction:
/// `kafka-transaction:<transactional id prefix>#<epoch>`.
pub const TRANSACTION_PREFIX: &str = "kafka-transaction:";

/// The exactly-once transactions of one sink of a run, shared by all its
/// instances: one transaction per epoch, an epoch being what the sink
/// receives between two barriers. Transactional ids are
/// `<prefix>-<epoch % TRANSACTION_POOL>`, independent of parallelism, so a
/// run at any parallelism fences every id an earlier run used.
pub struct SinkTransactions {
    prefix: String,
    topic: String,
    brokers: String,
    properties: std::collections::BTreeMap<String, String>,
    slots: Vec<Arc<TxProducer>>,
    /// For the group metadata of the witness offsets.
    witness: Mutex<Option<BaseConsumer>>,
    epochs: Mutex<Epochs>,
}

#[derive(Default)]
struct Epochs {
    /// Epochs whose transaction has begun and is not committed yet.
    open: std::collections::BTreeSet<u64>,
}

/// The runs' transactions by prefix; a new run's replace the old ones.
fn transactions() -> &'static Mutex<HashMap<String, Arc<SinkTransactions>>> {
    static RUNS: OnceLock<Mutex<HashMap<String, Arc<SinkTransactions>>>> = OnceLock::new();
    RUNS.get_or_init(Default::default)
}

/// The consumer group whose committed offset (on partition 0 of the sink's
/// topic) is the id of the last checkpoint whose transaction committed.
fn witness_group(prefix: &str) -> String {
    format!("{prefix}-committed-checkpoints")
}

fn transactional_prefix(spec: &KafkaSinkSpec, job: &str) -> String {
    spec.transactional_id_prefix
        .clone()
        .unwrap_or_else(|| format!("weir-{job}"))
}

impl SinkTransactions {
    /// Starts a run's transactions: initialising every id of the pool
    /// fences the producers of earlier runs, aborts what they left open and
    /// completes what they had asked to commit.
    pub fn open(spec: &KafkaSinkSpec, job: &str) -> Result<Arc<Self>, ConnectorError> {
        let prefix = transactional_prefix(spec, job);
        let mut slots = Vec::new();
        for slot in 0..TRANSACTION_POOL {
            let id = format!("{prefix}-{slot}");
            let mut config = client_config(&spec.brokers, &spec.properties);
            config
                .set("enable.idempotence", "true")
                .set("acks", "all")
                .set("transactional.id", &id);
            if !spec.properties.contains_key("transaction.timeout.ms") {
                config.set("transaction.timeout.ms", "60000");
            }
            let producer: TxProducer = config
                .create_with_context(DeliveryWatch::default())
                .map_err(|e| kafka_error(format!("producer for topic `{}`", spec.topic), e))?;
            producer
                .init_transactions(BROKER_TIMEOUT)
                .map_err(|e| kafka_error(format!("initialising transactional id `{id}`"), e))?;
            slots.push(Arc::new(producer));
        }
        let run = Arc::new(SinkTransactions {
            prefix: prefix.clone(),
            topic: spec.topic.clone(),
            brokers: spec.brokers.clone(),
            properties: spec.properties.clone(),
            slots,
            witness: Mutex::new(None),
            epochs: Mutex::new(Epochs::default()),
        });
        transactions()
            .lock()
            .expect("transactions lock")
            .insert(prefix, run.clone());
        Ok(run)
    }

    fn producer(&self, epoch: u64) -> &Arc<TxProducer> {
        &self.slots[(epoch % TRANSACTION_POOL as u64) as usize]
    }

    /// Begins epoch `epoch`'s transaction unless another instance has.
    fn begin(&self, epoch: u64) -> Result<(), ConnectorError> {
        let mut epochs = self.epochs.lock().expect("epochs lock");
        if epochs.open.contains(&epoch) {
            return Ok(());
        }
        if let Some(&oldest) = epochs.open.first()
            && epoch - oldest >= TRANSACTION_POOL as u64
        {
            return Err(ConnectorError::Kafka(format!(
                "{TRANSACTION_POOL} transactions to `{}` are waiting for their checkpoints to \
                 complete; checkpoints are failing",
                self.topic
            )));
        }
        self.producer(epoch)
            .begin_transaction()
            .map_err(|e| kafka_error("beginning a transaction", e))?;
        epochs.open.insert(epoch);
        Ok(())
    }

    /// Commits the transaction that checkpoint `checkpoint` pre-committed,
    /// with the checkpoint's id as the witness group's offset inside it.
    fn commit(&self, epoch: u64, checkpoint: u64) -> Result<(), ConnectorError> {
        if !self
            .epochs
            .lock()
            .expect("epochs lock")
            .open
            .contains(&epoch)
        {
            return Ok(());
        }
        let producer = self.producer(epoch);
        let metadata = {
            let mut witness = self.witness.lock().expect("witness lock");
            if witness.is_none() {
                let consumer: BaseConsumer = client_config(&self.brokers, &self.properties)
                    .set("group.id", witness_group(&self.prefix))
                    .set("enable.auto.commit", "false")
                    .create()
                    .map_err(|e| kafka_error("consumer for the commit witness", e))?;
                *witness = Some(consumer);
            }
            witness
                .as_ref()
                .and_then(|c| c.group_metadata())
                .ok_or_else(|| ConnectorError::Kafka("no consumer group metadata".into()))?
        };
        let mut offsets = TopicPartitionList::new();
        offsets
            .add_partition_offset(&self.topic, 0, Offset::Offset(checkpoint as i64))
            .map_err(|e| kafka_error("witness offset", e))?;
        producer
            .send_offsets_to_transaction(&offsets, &metadata, BROKER_TIMEOUT)
            .map_err(|e| kafka_error("adding the witness offset to the transaction", e))?;
        producer.commit_transaction(BROKER_TIMEOUT).map_err(|e| {
            kafka_error(
                format!("committing the transaction of checkpoint {checkpoint}"),
                e,
            )
        })?;
        self.epochs.lock().expect("epochs lock").open.remove(&epoch);
        Ok(())
    }
}

impl Drop for SinkTransactions {
    fn drop(&mut self) {
        if let Some(consumer) = self.witness.lock().expect("witness lock").take() {
            close_in_background(consumer);
        }
    }
}

/// Commits the transaction a checkpoint lists (`<prefix>#<epoch>`), once
/// the checkpoint's manifest is prepared: see [`crate::checkpoint`] for the
/// order that makes a crash at any point recoverable. Idempotent.
pub fn commit_transaction(marker: &str, checkpoint: u64) -> Result<(), ConnectorError> {
    let (prefix, epoch) = marker
        .rsplit_once('#')
        .and_then(|(p, e)| Some((p, e.parse::<u64>().ok()?)))
        .ok_or_else(|| ConnectorError::Kafka(format!("malformed transaction `{marker}`")))?;
    let run = transactions()
        .lock()
        .expect("transactions lock")
        .get(prefix)
        .cloned();
    match run {
        Some(run) => run.commit(epoch, checkpoint),
        // A run that has ended fenced nothing that is still to be committed.
        None => Ok(()),
    }
}

/// The id of the last checkpoint whose transaction of this sink committed
/// (0: none). Call after [`SinkTransactions::open`] has fenced earlier
/// producers, so a commit they had asked for is visible.
pub fn committed_checkpoint(spec: &KafkaSinkSpec, job: &str) -> Result<u64, ConnectorError> {
    let prefix = transactional_prefix(spec, job);
    let consumer: BaseConsumer = client_config(&spec.brokers, &spec.properties)
        .set("group.id", witness_group(&prefix))
        .set("enable.auto.commit", "false")
        .create()
        .map_err(|e| kafka_error("consumer for the commit witness", e))?;
    let mut list = TopicPartitionList::new();
    list.add_partition(&spec.topic, 0);
    let committed = consumer.committed_offsets(list, BROKER_TIMEOUT);
    close_in_background(consumer);
    let committed = committed.map_err(|e| kafka_error("reading the commit witness's offset", e))?;
    Ok(committed
        .elements()
        .first()
        .and_then(|e| match e.offset() {
            Offset::Offset(n) if n > 0 => Some(n as u64),
            _ => None,
        })
        .unwrap_or(0))
}

pub struct KafkaSink {
    topic: String,
    totals: Arc<super::SinkTotals>,
    producer: SinkProducer,
}

enum SinkProducer {
    AtLeastOnce(Arc<TxProducer>),
    ExactlyOnce {
        run: Arc<SinkTransactions>,
        epoch: u64,
    },
}

impl KafkaSink {
    pub fn open(
        spec: &KafkaSinkSpec,
        job: &str,
        run: Option<Arc<SinkTransactions>>,
        totals: Arc<super::SinkTotals>,
    ) -> Result<Self, ConnectorError> {
        let producer = match (spec.delivery, run) {
            (KafkaDelivery::ExactlyOnce, Some(run)) => {
                run.begin(0)?;
                SinkProducer::ExactlyOnce { run, epoch: 0 }
            }
            (KafkaDelivery::ExactlyOnce, None) => {
                return Err(ConnectorError::Kafka(format!(
                    "exactly-once sink to `{}` of job `{job}` opened without its transactions",
                    spec.topic
                )));
            }
            (KafkaDelivery::AtLeastOnce, _) => {
                let mut config = client_config(&spec.brokers, &spec.properties);
                config.set("enable.idempotence", "true").set("acks", "all");
                SinkProducer::AtLeastOnce(Arc::new(
                    config
                        .create_with_context(DeliveryWatch::default())
                        .map_err(|e| {
                            kafka_error(format!("producer for topic `{}`", spec.topic), e)
                        })?,
                ))
            }
        };
        Ok(KafkaSink {
            topic: spec.topic.clone(),
            totals,
            producer,
        })
    }

    fn current(&self) -> &TxProducer {
        match &self.producer {
            SinkProducer::AtLeastOnce(p) => p,
            SinkProducer::ExactlyOnce { run, epoch } => run.producer(*epoch),
        }
    }

    /// Waits until every record sent is acknowledged; any failure is an
    /// unknown outcome and fails the task.
    fn flush(&self) -> Result<(), ConnectorError> {
        let producer = self.current();
        producer
            .flush(BROKER_TIMEOUT)
            .map_err(|e| kafka_error(format!("flushing to `{}`", self.topic), e))?;
        let failure = producer
            .context()
            .failure
            .lock()
            .expect("delivery lock")
            .take();
        match failure {
            Some(f) => Err(ConnectorError::Kafka(format!(
                "a record to `{}` was not delivered: {f}",
                self.topic
            ))),
            None => Ok(()),
        }
    }
}

impl super::Sink for KafkaSink {
    fn write(&mut self, batch: &RecordBatch) -> Result<(), ConnectorError> {
        use std::sync::atomic::Ordering;
        self.totals
            .records
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        let producer = self.current();
        for r in batch.iter() {
            let mut record = BaseRecord::to(&self.topic)
                .key(r.key)
                .payload(r.value)
                .timestamp(r.timestamp);
            loop {
                match producer.send(record) {
                    Ok(()) => break,
                    Err((
                        KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull),
                        back,
                    )) => {
                        record = back;
                        producer.poll(Duration::from_millis(5));
                    }
                    Err((e, _)) => {
                        return Err(kafka_error(format!("producing to `{}`", self.topic), e));
                    }
                }
            }
        }
        Ok(())
    }

    fn prepare_commit(
        &mut self,
        _checkpoint: u64,
    ) -> Result<Vec<std::path::PathBuf>, ConnectorError> {
        self.flush()?;
        let SinkProducer::ExactlyOnce { run, epoch } = &mut self.producer else {
            return Ok(Vec::new());
        };
        // Every instance reaches this barrier after its last record of the
        // epoch; the coordinator commits once all have acknowledged.
        let marker = format!("{TRANSACTION_PREFIX}{}#{epoch}", run.prefix);
        *epoch += 1;
        run.begin(*epoch)?;
        Ok(vec![marker.into()])
    }

    fn close(&mut self) -> Result<(), ConnectorError> {
        self.flush()
    }
}
