//! Reading a worker's partitions from Kafka.
//!
//! Partition `p` belongs to worker `p mod W` over the whole cluster; each
//! worker assigns its partitions explicitly (no consumer-group balancing, no
//! committed offsets: where to read from is tally's to decide). New partitions
//! are picked up when the topic's metadata is refreshed. librdkafka reconnects
//! by itself after a broker outage; reading resumes at the next offset, so
//! nothing is skipped or read twice. An offset the broker no longer holds
//! (retention or a deletion took events tally had not read) stops the run
//! with an error: skipping them would bill too little, silently.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::base_consumer::PartitionQueue;
use rdkafka::consumer::{BaseConsumer, Consumer, DefaultConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::BorrowedMessage;
use rdkafka::message::Message as _;
use rdkafka::{Offset, TopicPartitionList};
use tally_dataflows::event::{Message, Offset as EventOffset, Partition};
use tally_dataflows::judge::{PartitionState, SourceItem};
use tally_dataflows::time::Millis;

use crate::metrics::Metrics;

/// How long metadata and watermark requests may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the end offsets of the partitions read are asked for (the lag).
const END_OFFSETS_INTERVAL: Duration = Duration::from_secs(5);
/// The consumer's defaults, which `[kafka.properties]` may override.
///
/// A message waiting in librdkafka costs its decompressed payload and about
/// as much again in bookkeeping, and the queue thresholds only decide whether
/// a partition is fetched again: one response lands whole on top of them. At
/// the bounds this replaced (20,000 messages or 16 MiB a partition, fetches
/// of up to 16 MiB compressed), eight partitions held about 300 MB while a
/// backlog was read, a quarter of the heap's peak. Small fetches keep each
/// response small; a short backoff after the queue was full fetches again as
/// soon as the worker has taken from it (at librdkafka's default of a second,
/// a full queue stalled its partition for that second).
const CONSUMER_TUNING: &[(&str, &str)] = &[
    ("queued.min.messages", "5000"),
    ("queued.max.messages.kbytes", "2048"),
    // The whole response, of which the first partition with data may take
    // all (the least librdkafka accepts: `message.max.bytes`).
    ("fetch.max.bytes", "1000000"),
    ("max.partition.fetch.bytes", "262144"),
    ("fetch.queue.backoff.ms", "20"),
];

/// How a live run fetches: a fetch that finds less than half the most a
/// response holds waits for more, up to half a second (Kafka's own default
/// wait), instead of coming back at once with a handful. Asked again as fast
/// as it answered, the broker spent most of its time on fetches (the local
/// one lists every stored batch of a partition per fetch), on the cores
/// tally shares with it; half a second is a quarter of an epoch.
const LIVE_FETCH: &[(&str, &str)] = &[("fetch.wait.max.ms", "500"), ("fetch.min.bytes", "500000")];

/// How a drain fetches: its backlog fills any fetch at once, and the last
/// fetches, which find less, should not wait.
const DRAIN_FETCH: &[(&str, &str)] = &[("fetch.wait.max.ms", "50")];

/// Append times are counted in steps of this many milliseconds, for freshness.
const APPEND_STEP: Millis = 100;
/// Messages fetched ahead per partition, for the merge by timestamp. Each is
/// copied out of librdkafka when fetched ahead: a few hundred over a
/// worker's partitions are still in the core's cache when the partition
/// stage decodes them (see [`MESSAGES_PER_STEP`]).
///
/// [`MESSAGES_PER_STEP`]: tally_dataflows::dataflow::MESSAGES_PER_STEP
const LOOKAHEAD: usize = 128;
/// How far past the next partition's head the merge keeps taking from one
/// partition.
const MERGE_SLACK: Millis = 1_000;

/// Asks the broker, on a thread of its own, for the end offset of every
/// partition this process reads, for the lag metric: a worker waiting out a
/// ClickHouse outage reads nothing, which is when the lag matters most.
pub fn watch_end_offsets(kafka: &crate::config::Kafka, metrics: Arc<Metrics>) -> Result<(), SourceError> {
    let consumer: BaseConsumer = kafka.client_config(&[]).create().map_err(|source| SourceError::Kafka {
        brokers: kafka.brokers.clone(),
        what: "create the end offset client".into(),
        source: Box::new(source),
    })?;
    let topic = kafka.topic.clone();
    let watch = move || {
        loop {
            std::thread::sleep(END_OFFSETS_INTERVAL);
            for partition in metrics.partitions() {
                match consumer.fetch_watermarks(&topic, partition, REQUEST_TIMEOUT) {
                    Ok((_, end)) => metrics.set_end_offset(partition, end),
                    Err(error) => tracing::debug!(partition, %error, "end offset unknown for now"),
                }
            }
        }
    };
    std::thread::Builder::new().name("end-offsets".into()).spawn(watch).map(drop).map_err(|e| SourceError::Unusable {
        brokers: kafka.brokers.clone(),
        what: format!("cannot start the end offset thread: {e}"),
    })
}

/// How many partitions the topic has now; none when it does not exist yet.
pub fn count_partitions(kafka: &crate::config::Kafka) -> Result<u32, SourceError> {
    let fail = |what: &str| {
        let (brokers, what) = (kafka.brokers.clone(), what.to_owned());
        move |source| SourceError::Kafka { brokers, what, source: Box::new(source) }
    };
    let consumer: BaseConsumer = kafka.client_config(&[]).create().map_err(fail("create the metadata client"))?;
    let metadata = consumer.fetch_metadata(Some(&kafka.topic), REQUEST_TIMEOUT).map_err(fail("fetch metadata"))?;
    let partitions =
        metadata.topics().iter().filter(|t| t.name() == kafka.topic).map(|t| t.partitions().len()).sum::<usize>();
    Ok(u32::try_from(partitions).unwrap_or(u32::MAX))
}

/// Why Kafka could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// Kafka answered with an error, or not at all.
    #[error("Kafka at {brokers}: {what}: {source}")]
    Kafka {
        /// Bootstrap servers.
        brokers: String,
        /// What was being done.
        what: String,
        /// What librdkafka said.
        source: Box<rdkafka::error::KafkaError>,
    },
    /// What Kafka holds cannot be used as asked.
    #[error("Kafka at {brokers}: {what}")]
    Unusable {
        /// Bootstrap servers.
        brokers: String,
        /// What is wrong.
        what: String,
    },
    /// The broker no longer holds the offset tally reads next: waiting
    /// cannot mend that, and reading on would skip events.
    #[error("Kafka at {brokers}: {what}")]
    OffsetGone {
        /// Bootstrap servers.
        brokers: String,
        /// Which offset, and what the partition holds instead.
        what: String,
    },
}

/// Refuses to read `partition` at `next` unless `next` is in `start..=end`:
/// an offset the partition holds, or `end`, the next one to be appended.
fn check_offset(brokers: &str, partition: Partition, next: i64, (start, end): (i64, i64)) -> Result<(), SourceError> {
    let what = if next < start {
        format!(
            "partition {partition} now starts at offset {start}, but tally reads offset {next} next: the broker \
             deleted events tally has not read (retention shorter than tally's lag, or deleted records); tally \
             stops rather than skip them: offsets {next}..{start} are not billed"
        )
    } else if next > end {
        format!(
            "partition {partition} ends at offset {end}, but tally's checkpoint is at offset {next}: this is not \
             the topic tally read (was it deleted and created again?)"
        )
    } else {
        return Ok(());
    };
    Err(SourceError::OffsetGone { brokers: brokers.into(), what })
}

struct Owned {
    /// Next offset to hand out: messages before it are in the dataflow.
    next_offset: i64,
    /// Next offset expected from the partition's queue.
    fetched: i64,
    /// Fetched, not yet handed out: the head of the partition in the merge by
    /// timestamp.
    ahead: VecDeque<Message>,
    /// In a drain: the end offset found at start.
    end: Option<i64>,
    state: PartitionState,
    last_message: Instant,
}

/// The partitions one worker reads.
pub struct PartitionReader {
    consumer: Arc<BaseConsumer>,
    /// One queue per partition, merged by message timestamp, so that
    /// partitions advance together in time: read by message count, partitions
    /// of different event densities drift apart by hours over a backlog, and
    /// everything ahead of the watermark (the slowest partition) stays in
    /// memory until it catches up. The order across partitions never changes
    /// a result (the contract's determinism); only memory.
    queues: Vec<(Partition, PartitionQueue<DefaultConsumerContext>)>,
    brokers: String,
    topic: String,
    worker: usize,
    workers: usize,
    drain: bool,
    idle_timeout: Duration,
    start: BTreeMap<Partition, EventOffset>,
    owned: BTreeMap<Partition, Owned>,
    /// Messages read since [`PartitionReader::take_appended`], by append time
    /// (Unix milliseconds, in steps of [`APPEND_STEP`]).
    appended: BTreeMap<Millis, u64>,
    metrics: Arc<Metrics>,
}

impl PartitionReader {
    /// Connects; partitions start at the offsets in `start` (else at 0);
    /// `drain` fixes each partition's end at the offset found now.
    pub fn connect(
        kafka: &crate::config::Kafka,
        (worker, workers): (usize, usize),
        start: BTreeMap<Partition, EventOffset>,
        drain: bool,
        idle_timeout: Duration,
        metrics: Arc<Metrics>,
    ) -> Result<PartitionReader, SourceError> {
        let (brokers, topic) = (&kafka.brokers, &kafka.topic);
        let fetch = if drain { DRAIN_FETCH } else { LIVE_FETCH };
        let tuning: Vec<(&str, &str)> = CONSUMER_TUNING.iter().chain(fetch).copied().collect();
        let consumer: BaseConsumer = kafka
            .client_config(&tuning)
            // assign() still wants a group id; nothing is committed to it.
            .set("group.id", "tally")
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            // An offset out of range is an error, not a jump to either end.
            .set("auto.offset.reset", "error")
            .create()
            .map_err(|source| SourceError::Kafka {
                brokers: brokers.clone(),
                what: "create consumer".into(),
                source: Box::new(source),
            })?;
        Ok(PartitionReader {
            consumer: Arc::new(consumer),
            queues: Vec::new(),
            brokers: brokers.clone(),
            topic: topic.clone(),
            worker,
            workers,
            drain,
            idle_timeout,
            start,
            owned: BTreeMap::new(),
            appended: BTreeMap::new(),
            metrics,
        })
    }

    fn error(&self, what: impl Into<String>) -> impl FnOnce(rdkafka::error::KafkaError) -> SourceError {
        let (brokers, what) = (self.brokers.clone(), what.into());
        move |source| SourceError::Kafka { brokers, what, source: Box::new(source) }
    }

    /// Looks for partitions of this worker not assigned yet and starts reading
    /// them from the beginning; returns their status items.
    pub fn discover(&mut self, out: &mut Vec<SourceItem>) -> Result<(), SourceError> {
        let metadata =
            self.consumer.fetch_metadata(Some(&self.topic), REQUEST_TIMEOUT).map_err(self.error("fetch metadata"))?;
        let mut found = Vec::new();
        for topic in metadata.topics().iter().filter(|t| t.name() == self.topic) {
            for partition in topic.partitions() {
                let Ok(partition) = Partition::try_from(partition.id()) else { continue };
                if partition as usize % self.workers == self.worker && !self.owned.contains_key(&partition) {
                    found.push(partition);
                }
            }
        }
        if found.is_empty() {
            return Ok(());
        }
        for partition in found {
            let watermarks = self
                .consumer
                .fetch_watermarks(&self.topic, partition as i32, REQUEST_TIMEOUT)
                .map_err(self.error(format!("offsets of partition {partition}")))?;
            let next_offset = self.start.get(&partition).copied().unwrap_or(0);
            check_offset(&self.brokers, partition, next_offset, watermarks)?;
            let end = self.drain.then_some(watermarks.1);
            let owned = Owned {
                next_offset,
                fetched: next_offset,
                ahead: VecDeque::new(),
                end,
                state: PartitionState::Active,
                last_message: Instant::now(),
            };
            tracing::info!(partition, next_offset, end_offset = ?end, "reading partition");
            self.metrics.set_next_offset(partition as i32, next_offset);
            out.push(SourceItem::Status { partition, state: PartitionState::Active });
            self.owned.insert(partition, owned);
        }
        let mut assignment = TopicPartitionList::new();
        for owned in self.owned.values_mut() {
            // The new assignment starts every partition at what was handed
            // out: what was fetched beyond it comes again.
            owned.ahead.clear();
            owned.fetched = owned.next_offset;
        }
        for (&partition, owned) in &self.owned {
            assignment
                .add_partition_offset(&self.topic, partition as i32, Offset::Offset(owned.next_offset))
                .map_err(self.error("build assignment"))?;
        }
        self.consumer.assign(&assignment).map_err(self.error("assign partitions"))?;
        // An assignment deactivates the queues split before it.
        self.queues = self
            .owned
            .keys()
            .filter_map(|&partition| {
                self.consumer.split_partition_queue(&self.topic, partition as i32).map(|queue| (partition, queue))
            })
            .collect();
        self.mark_exhausted(out);
        Ok(())
    }

    /// Hands out up to `max` messages, merging the partitions by timestamp,
    /// waiting at most `wait` when there are none; fails when the broker no
    /// longer holds an offset to read.
    pub fn poll(&mut self, max: usize, wait: Duration, out: &mut Vec<SourceItem>) -> Result<(), SourceError> {
        // The consumer's own queue first: it serves events, and holds what was
        // fetched before the partition queues were split, which precedes
        // anything in them.
        let before = out.len();
        let mut out_of_range = false;
        // Once per call, not per message: it only tells idle partitions.
        let now = Instant::now();
        while let Some(result) = self.consumer.poll(Duration::ZERO) {
            out_of_range |= fetch(&mut self.owned, result, now);
        }
        for (partition, queue) in &self.queues {
            out_of_range |= refill(&mut self.owned, *partition, queue, now);
        }
        // Messages come in timestamp order, many to a step: the map is
        // touched once per run of one step.
        let mut run: Option<(Millis, u64)> = None;
        while out.len() - before < max {
            let Some((partition, bound)) = self.earliest() else { break };
            let owned = self.owned.get_mut(&partition).expect("the earliest partition is owned");
            while out.len() - before < max && owned.ahead.front().is_some_and(|m| m.timestamp <= bound) {
                let message = owned.ahead.pop_front().expect("a front message");
                owned.next_offset = message.offset + 1;
                let step = message.timestamp - message.timestamp.rem_euclid(APPEND_STEP);
                match &mut run {
                    Some((held, count)) if *held == step => *count += 1,
                    _ => {
                        if let Some((held, count)) = run.replace((step, 1)) {
                            *self.appended.entry(held).or_default() += count;
                        }
                    }
                }
                out.push(SourceItem::Message(message));
            }
            if owned.ahead.is_empty()
                && let Some((_, queue)) = self.queues.iter().find(|(p, _)| *p == partition)
            {
                out_of_range |= refill(&mut self.owned, partition, queue, now);
            }
        }
        if let Some((step, count)) = run {
            *self.appended.entry(step).or_default() += count;
        }
        if out.len() == before
            && let Some(result) = self.consumer.poll(wait)
        {
            out_of_range |= fetch(&mut self.owned, result, Instant::now());
        }
        if out.len() > before {
            for (&partition, owned) in &self.owned {
                self.metrics.set_next_offset(partition as i32, owned.next_offset);
            }
        }
        self.mark_exhausted(out);
        self.mark_idle(out);
        if out_of_range {
            return Err(self.offset_gone());
        }
        Ok(())
    }

    /// Why librdkafka found an offset out of range: the partition whose next
    /// offset to fetch the broker no longer holds. librdkafka has stopped
    /// fetching it, so the run stops even when the watermarks, asked a moment
    /// later, cannot say which.
    fn offset_gone(&self) -> SourceError {
        for (&partition, owned) in &self.owned {
            let checked = self
                .consumer
                .fetch_watermarks(&self.topic, partition as i32, REQUEST_TIMEOUT)
                .map_err(self.error(format!("offsets of partition {partition}")))
                .and_then(|watermarks| check_offset(&self.brokers, partition, owned.fetched, watermarks));
            if let Err(error) = checked {
                return error;
            }
        }
        SourceError::OffsetGone {
            brokers: self.brokers.clone(),
            what: "an offset tally was to read is out of the range the broker holds".into(),
        }
    }

    /// The partition whose next message is the earliest, and up to which
    /// timestamp to take from it: the next partition's head, plus
    /// [`MERGE_SLACK`] so that it takes runs rather than single messages.
    fn earliest(&self) -> Option<(Partition, Millis)> {
        let mut first: Option<(Millis, Partition)> = None;
        let mut second: Option<Millis> = None;
        for (&partition, owned) in &self.owned {
            let Some(head) = owned.ahead.front().map(|m| m.timestamp) else { continue };
            match first {
                Some((earliest, _)) if head >= earliest => second = Some(second.map_or(head, |s| s.min(head))),
                _ => {
                    second = first.map(|(earliest, _)| earliest);
                    first = Some((head, partition));
                }
            }
        }
        let (_, partition) = first?;
        Some((partition, second.map_or(Millis::MAX, |next| next.saturating_add(MERGE_SLACK))))
    }

    /// The append times of the messages read since the last call, counted in
    /// steps of 100 ms.
    pub fn take_appended(&mut self) -> BTreeMap<Millis, u64> {
        std::mem::take(&mut self.appended)
    }

    fn mark_exhausted(&mut self, out: &mut Vec<SourceItem>) {
        for (&partition, owned) in &mut self.owned {
            let done = owned.end.is_some_and(|end| owned.next_offset >= end);
            if done && owned.state != PartitionState::Exhausted {
                owned.state = PartitionState::Exhausted;
                tracing::info!(partition, offset = owned.next_offset, "partition read to its end");
                out.push(SourceItem::Status { partition, state: PartitionState::Exhausted });
            }
        }
    }

    fn mark_idle(&mut self, out: &mut Vec<SourceItem>) {
        if self.drain {
            return;
        }
        for (&partition, owned) in &mut self.owned {
            let waiting = owned.ahead.is_empty() && owned.last_message.elapsed() >= self.idle_timeout;
            if owned.state == PartitionState::Active && waiting {
                owned.state = PartitionState::Idle;
                out.push(SourceItem::Status { partition, state: PartitionState::Idle });
            }
        }
    }

    /// The next offset of each partition read.
    pub fn positions(&self) -> BTreeMap<Partition, EventOffset> {
        self.owned.iter().map(|(&partition, owned)| (partition, owned.next_offset)).collect()
    }

    /// In a drain: every partition of this worker has been read to its end.
    pub fn drained(&self) -> bool {
        self.drain && self.owned.values().all(|o| o.state == PartitionState::Exhausted)
    }
}

/// Polls `partition`'s queue until [`LOOKAHEAD`] messages are ahead or the
/// queue is empty; true when an offset was out of range.
fn refill(
    owned: &mut BTreeMap<Partition, Owned>,
    partition: Partition,
    queue: &PartitionQueue<DefaultConsumerContext>,
    now: Instant,
) -> bool {
    let ahead = |owned: &BTreeMap<Partition, Owned>| owned.get(&partition).map_or(LOOKAHEAD, |o| o.ahead.len());
    let mut out_of_range = false;
    while ahead(owned) < LOOKAHEAD {
        let Some(result) = queue.poll(Duration::ZERO) else { break };
        out_of_range |= fetch(owned, result, now);
    }
    out_of_range
}

/// Takes one polled message of an owned partition, in offset order, into the
/// partition's messages ahead, polled at `now`; true when librdkafka found
/// the offset to fetch out of range instead.
fn fetch(
    owned: &mut BTreeMap<Partition, Owned>,
    result: rdkafka::error::KafkaResult<BorrowedMessage<'_>>,
    now: Instant,
) -> bool {
    let message = match result {
        Ok(message) => message,
        Err(KafkaError::MessageConsumption(RDKafkaErrorCode::AutoOffsetReset)) => return true,
        Err(error) => {
            tracing::warn!(%error, "Kafka read failed; librdkafka retries");
            return false;
        }
    };
    let Ok(partition) = Partition::try_from(message.partition()) else { return false };
    let Some(owned) = owned.get_mut(&partition) else { return false };
    if owned.end.is_some_and(|end| message.offset() >= end) || message.offset() < owned.fetched {
        return false;
    }
    owned.fetched = message.offset() + 1;
    owned.last_message = now;
    owned.state = PartitionState::Active;
    owned.ahead.push_back(Message {
        partition,
        offset: message.offset(),
        timestamp: message.timestamp().to_millis().unwrap_or_else(crate::unix_millis),
        payload: message.payload().map(<[u8]>::to_vec).unwrap_or_default(),
    });
    false
}

/// The whole topic, for a recomputation: every message of every partition
/// from offset 0 up to the end offsets found when opened, each partition in
/// offset order.
pub struct TopicLog {
    consumer: BaseConsumer,
    brokers: String,
    next: BTreeMap<Partition, i64>,
    end: BTreeMap<Partition, i64>,
    /// Messages to read in all.
    pub total: u64,
    /// Messages read so far.
    pub read: u64,
}

impl TopicLog {
    /// Finds the topic's partitions and their end offsets; refuses a topic
    /// that no longer holds its beginning (retention deleted some of it).
    pub fn open(kafka: &crate::config::Kafka) -> Result<TopicLog, SourceError> {
        let fail = |what: String| {
            let brokers = kafka.brokers.clone();
            move |source| SourceError::Kafka { brokers, what, source: Box::new(source) }
        };
        let consumer: BaseConsumer = kafka
            .client_config(&[])
            .set("group.id", "tally-reconcile")
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .create()
            .map_err(fail("create consumer".into()))?;
        let metadata =
            consumer.fetch_metadata(Some(&kafka.topic), REQUEST_TIMEOUT).map_err(fail("fetch metadata".into()))?;
        let mut log = TopicLog {
            consumer,
            brokers: kafka.brokers.clone(),
            next: BTreeMap::new(),
            end: BTreeMap::new(),
            total: 0,
            read: 0,
        };
        let mut assignment = TopicPartitionList::new();
        for topic in metadata.topics().iter().filter(|t| t.name() == kafka.topic) {
            for partition in topic.partitions() {
                let Ok(number) = Partition::try_from(partition.id()) else { continue };
                let (low, high) = log
                    .consumer
                    .fetch_watermarks(&kafka.topic, partition.id(), REQUEST_TIMEOUT)
                    .map_err(fail(format!("offsets of partition {number}")))?;
                if low > 0 {
                    return Err(SourceError::Unusable {
                        brokers: kafka.brokers.clone(),
                        what: format!(
                            "partition {number} starts at offset {low}, not 0: the topic no longer holds the whole \
                             history; reconcile from an event file instead"
                        ),
                    });
                }
                log.next.insert(number, 0);
                log.end.insert(number, high);
                log.total += u64::try_from(high).unwrap_or(0);
                assignment
                    .add_partition_offset(&kafka.topic, partition.id(), Offset::Offset(0))
                    .map_err(fail("build assignment".into()))?;
            }
        }
        if log.end.is_empty() {
            return Err(SourceError::Unusable {
                brokers: kafka.brokers.clone(),
                what: format!("topic {} has no partitions", kafka.topic),
            });
        }
        log.consumer.assign(&assignment).map_err(fail("assign partitions".into()))?;
        Ok(log)
    }

    /// Every partition of the topic.
    pub fn partitions(&self) -> Vec<Partition> {
        self.end.keys().copied().collect()
    }
}

impl Iterator for TopicLog {
    type Item = Message;

    fn next(&mut self) -> Option<Message> {
        loop {
            if self.next.iter().all(|(partition, next)| *next >= self.end[partition]) {
                return None;
            }
            // Nothing within the wait: the broker may be away; librdkafka
            // reconnects, and the caller's progress shows the stall.
            let Some(result) = self.consumer.poll(Duration::from_secs(1)) else { continue };
            let message = match result {
                Ok(message) => message,
                Err(error) => {
                    tracing::warn!(brokers = self.brokers, %error, "Kafka read failed; librdkafka retries");
                    continue;
                }
            };
            let Ok(partition) = Partition::try_from(message.partition()) else { continue };
            let (Some(next), Some(&end)) = (self.next.get_mut(&partition), self.end.get(&partition)) else { continue };
            if message.offset() < *next || message.offset() >= end {
                continue;
            }
            *next = message.offset() + 1;
            self.read += 1;
            return Some(Message {
                partition,
                offset: message.offset(),
                timestamp: message.timestamp().to_millis().unwrap_or_else(crate::unix_millis),
                payload: message.payload().map(<[u8]>::to_vec).unwrap_or_default(),
            });
        }
    }
}
