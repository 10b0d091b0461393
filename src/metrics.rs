//! What a `tally run` process exposes to Prometheus, and the endpoint that
//! serves it at `metrics.listen`:
//!
//! - `/metrics`: the registry below, in the OpenMetrics text format;
//! - `/healthz`: 200 while the process serves (liveness: a stalled pipeline
//!   waiting out an outage is alive and must not be restarted for it);
//! - `/ready`: 200 once every worker of the process has restored its state
//!   and reads its partitions, 503 before (readiness).
//!
//! Metrics are per process. In a cluster, process 0 commits the manifests, so
//! `tally_checkpoint_committed_epoch` and the `commit` stage exist there only;
//! every process reports its own partitions, shards, rows and freshness.

mod server;

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tally_dataflows::rows::Outcomes;
use tally_dataflows::time::Millis;

pub use self::server::serve;

/// A partition of the topic.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PartitionLabel {
    /// Its number.
    pub partition: i32,
}

/// What became of events.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// `accepted`, `duplicate` or `rejected`.
    pub outcome: &'static str,
    /// The rejection reason; empty otherwise.
    pub reason: &'static str,
}

/// A ClickHouse table.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TableLabel {
    /// Its name.
    pub table: &'static str,
}

/// A step of checkpointing: `shard` (a worker's state to the store) or
/// `commit` (the manifest, then `pipeline_progress`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StageLabel {
    /// The step.
    pub stage: &'static str,
}

type FloatGauge = Gauge<f64, AtomicU64>;

/// A partition's next offset to read and end offset, once known.
#[derive(Clone, Copy, Default)]
struct Offsets {
    next: Option<i64>,
    end: Option<i64>,
}

fn seconds_buckets() -> Histogram {
    Histogram::new([0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0])
}

fn freshness_buckets() -> Histogram {
    Histogram::new([0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0])
}

/// Every metric of the process.
pub struct Metrics {
    registry: Registry,
    next_offset: Family<PartitionLabel, Gauge>,
    end_offset: Family<PartitionLabel, Gauge>,
    lag: Family<PartitionLabel, Gauge>,
    offsets: Mutex<BTreeMap<i32, Offsets>>,
    watermark: FloatGauge,
    final_before: FloatGauge,
    events: Family<OutcomeLabels, Counter>,
    epoch: Gauge,
    epoch_seconds: Histogram,
    checkpoint_seconds: Family<StageLabel, Histogram>,
    checkpoint_bytes: Gauge,
    committed_epoch: Gauge,
    checkpoint_age: FloatGauge,
    last_checkpoint: Mutex<Option<Instant>>,
    sink_rows: Family<TableLabel, Counter>,
    sink_seconds: Family<TableLabel, Histogram>,
    freshness: Histogram,
    workers: usize,
    workers_ready: AtomicUsize,
}

impl Metrics {
    /// The metrics of a process with `workers` worker threads.
    pub fn new(workers: usize) -> Metrics {
        let mut metrics = Metrics {
            registry: Registry::with_prefix("tally"),
            next_offset: Family::default(),
            end_offset: Family::default(),
            lag: Family::default(),
            offsets: Mutex::default(),
            watermark: FloatGauge::default(),
            final_before: FloatGauge::default(),
            events: Family::default(),
            epoch: Gauge::default(),
            epoch_seconds: seconds_buckets(),
            checkpoint_seconds: Family::new_with_constructor(seconds_buckets),
            checkpoint_bytes: Gauge::default(),
            committed_epoch: Gauge::default(),
            checkpoint_age: FloatGauge::default(),
            last_checkpoint: Mutex::default(),
            sink_rows: Family::default(),
            sink_seconds: Family::new_with_constructor(seconds_buckets),
            freshness: freshness_buckets(),
            workers,
            workers_ready: AtomicUsize::new(0),
        };
        metrics.register();
        metrics
    }

    fn register(&mut self) {
        let r = &mut self.registry;
        r.register("partition_next_offset", "Next offset to read, per partition", self.next_offset.clone());
        r.register("partition_end_offset", "End (high watermark) offset the broker reported", self.end_offset.clone());
        r.register("partition_lag", "Messages appended but not yet read, per partition", self.lag.clone());
        r.register("watermark_seconds", "Event-time watermark (Unix seconds)", self.watermark.clone());
        r.register(
            "final_before_seconds",
            "Windows starting before this are final (Unix seconds)",
            self.final_before.clone(),
        );
        r.register("events", "Events by outcome, rejections by reason", self.events.clone());
        r.register("epoch", "Epoch the source is reading", self.epoch.clone());
        r.register(
            "epoch_duration_seconds",
            "From an epoch's last message read to its commit",
            self.epoch_seconds.clone(),
        );
        r.register("checkpoint_duration_seconds", "Checkpoint steps", self.checkpoint_seconds.clone());
        r.register("checkpoint_bytes", "State size of the last committed checkpoint", self.checkpoint_bytes.clone());
        r.register(
            "checkpoint_committed_epoch",
            "Last epoch whose manifest was committed",
            self.committed_epoch.clone(),
        );
        r.register(
            "checkpoint_age_seconds",
            "Time since this process last completed a checkpoint step",
            self.checkpoint_age.clone(),
        );
        r.register("sink_rows", "Rows written to ClickHouse", self.sink_rows.clone());
        r.register("sink_insert_duration_seconds", "ClickHouse inserts, retries included", self.sink_seconds.clone());
        r.register(
            "freshness_seconds",
            "From an event's append to Kafka to its effect visible in ClickHouse",
            self.freshness.clone(),
        );
    }

    /// The next offset to read of `partition`.
    pub fn set_next_offset(&self, partition: i32, offset: i64) {
        self.offsets.lock().expect("no panic holding the lock").entry(partition).or_default().next = Some(offset);
    }

    /// The partitions this process reads.
    pub fn partitions(&self) -> Vec<i32> {
        self.offsets.lock().expect("no panic holding the lock").keys().copied().collect()
    }

    /// The end offset the broker reported for `partition`.
    pub fn set_end_offset(&self, partition: i32, offset: i64) {
        self.offsets.lock().expect("no panic holding the lock").entry(partition).or_default().end = Some(offset);
    }

    /// The watermark and finality of the last committed epoch.
    pub fn set_progress(&self, watermark: Option<Millis>, final_before: Option<Millis>) {
        let seconds = |millis: Millis| millis as f64 / 1000.0;
        if let Some(watermark) = watermark {
            self.watermark.set(seconds(watermark));
        }
        if let Some(final_before) = final_before {
            self.final_before.set(seconds(final_before));
        }
    }

    /// Accepted and duplicate events of an epoch.
    pub fn count_outcomes(&self, outcomes: &Outcomes) {
        self.events.get_or_create(&OutcomeLabels { outcome: "accepted", reason: "" }).inc_by(outcomes.accepted);
        self.events.get_or_create(&OutcomeLabels { outcome: "duplicate", reason: "" }).inc_by(outcomes.duplicates);
    }

    /// One rejected event.
    pub fn count_rejection(&self, reason: &'static str) {
        self.events.get_or_create(&OutcomeLabels { outcome: "rejected", reason }).inc();
    }

    /// The source moved on to `epoch`.
    pub fn set_epoch(&self, epoch: u64) {
        self.epoch.set(i64::try_from(epoch).unwrap_or(i64::MAX));
    }

    /// An epoch went from its last message read to committed in `took`.
    pub fn observe_epoch(&self, took: Duration) {
        self.epoch_seconds.observe(took.as_secs_f64());
    }

    /// A checkpoint step took `took`.
    pub fn observe_checkpoint(&self, stage: &'static str, took: Duration) {
        self.checkpoint_seconds.get_or_create(&StageLabel { stage }).observe(took.as_secs_f64());
        *self.last_checkpoint.lock().expect("no panic holding the lock") = Some(Instant::now());
    }

    /// A manifest was committed.
    pub fn set_committed(&self, epoch: u64, bytes: u64) {
        self.committed_epoch.set(i64::try_from(epoch).unwrap_or(i64::MAX));
        self.checkpoint_bytes.set(i64::try_from(bytes).unwrap_or(i64::MAX));
    }

    /// `rows` rows inserted into `table` in `took`.
    pub fn observe_insert(&self, table: &'static str, rows: usize, took: Duration) {
        let label = TableLabel { table };
        self.sink_rows.get_or_create(&label).inc_by(rows as u64);
        self.sink_seconds.get_or_create(&label).observe(took.as_secs_f64());
    }

    /// `count` events appended at `appended` (Unix milliseconds) are visible.
    pub fn observe_visible(&self, appended: Millis, count: u64) {
        let now = crate::unix_millis();
        let seconds = (now - appended).max(0) as f64 / 1000.0;
        for _ in 0..count {
            self.freshness.observe(seconds);
        }
    }

    /// One more worker has restored and reads.
    pub fn worker_ready(&self) {
        self.workers_ready.fetch_add(1, Ordering::Relaxed);
    }

    /// Every worker of the process has restored and reads.
    pub fn ready(&self) -> bool {
        self.workers_ready.load(Ordering::Relaxed) >= self.workers
    }

    /// The registry in the OpenMetrics text format, the partitions' offsets,
    /// lag and the checkpoint's age set as of now.
    pub fn encode(&self) -> String {
        for (&partition, offsets) in self.offsets.lock().expect("no panic holding the lock").iter() {
            let label = PartitionLabel { partition };
            if let Some(next) = offsets.next {
                self.next_offset.get_or_create(&label).set(next);
            }
            if let Some(end) = offsets.end {
                self.end_offset.get_or_create(&label).set(end);
            }
            if let (Some(next), Some(end)) = (offsets.next, offsets.end) {
                self.lag.get_or_create(&label).set((end - next).max(0));
            }
        }
        if let Some(last) = *self.last_checkpoint.lock().expect("no panic holding the lock") {
            self.checkpoint_age.set(last.elapsed().as_secs_f64());
        }
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry).expect("writing to a String cannot fail");
        text
    }
}
