//! `tally run`: the worker loop tying source, dataflow and sink together.
//!
//! Each worker thread reads its partitions, feeds the billing dataflow one
//! epoch at a time (an epoch lasts `checkpoint.epoch_interval`, or
//! [`MAX_EPOCH_MESSAGES`] messages when reading a backlog), and lets the sink
//! write each epoch once the frontier has passed it and checkpoint every few
//! epochs (the config's [`Cadence`]). The source runs at most
//! [`EPOCHS_IN_FLIGHT`] epochs ahead of what ClickHouse has acknowledged, so a
//! slow or absent ClickHouse stalls reading instead of piling up memory.

use std::cell::Cell;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tally_dataflows::checkpoint::{Cadence, Recovery, Restored, SnapshotsHandle, Stale};
use tally_dataflows::dataflow::{EPOCHS_IN_FLIGHT, MESSAGES_PER_STEP, ROWS_PER_STEP, billing};
use tally_dataflows::identity::{self, IdentityHash};
use tally_dataflows::prices::PriceList;
use tally_dataflows::routing::Routing;
use tally_dataflows::settings::Settings;
use timely::dataflow::operators::vec::Broadcast;
use timely::dataflow::operators::{Input, Inspect, Probe};
use timely::dataflow::{InputHandleVec, ProbeHandle};

use crate::backoff;
use crate::checkpoint::store::Store;
use crate::checkpoint::{self, CheckpointError, Chunks, Incarnations, Manifest};
use crate::cluster::Cluster;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::sink::clickhouse::{Warehouse, await_earlier_inserts, has_progress, stale_rows};
use crate::sink::{self, AppendedHandle, Checkpointing, OffsetsHandle, ProcessRows, Target, Versions};
use crate::source::kafka::{self, PartitionReader, SourceError};

/// An epoch also ends after this many messages on a worker, so that a
/// backlog read faster than `checkpoint.epoch_interval` still advances in steps:
/// windows turn final and fold away while a drain goes on.
pub const MAX_EPOCH_MESSAGES: usize = 100_000;
/// How often a live run looks for new partitions.
const DISCOVERY_INTERVAL: Duration = Duration::from_secs(10);

/// How a run ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Until stopped.
    Live,
    /// Until every partition is read up to the end offsets found at start and
    /// everything is written.
    Drain,
}

struct Shared {
    config: Config,
    prices: Arc<PriceList>,
    settings: Settings,
    epoch_interval: Duration,
    cadence: Cadence,
    idle_timeout: Duration,
    started_millis: u64,
    mode: Mode,
    /// The first error a worker of this process stopped on.
    failure: Mutex<Option<String>>,
    metrics: Arc<Metrics>,
    /// Worker threads per process: the first of each process reports its
    /// process's epochs.
    threads: usize,
    /// The threads that insert this process's workers' rows.
    rows: ProcessRows,
}

impl Shared {
    /// Stops a worker once another worker of the process has failed: its
    /// epochs can no longer complete, and the process should exit with the
    /// error rather than wait for them.
    fn stop_if_failed(&self) -> Result<(), String> {
        match self.failure.lock().expect("no worker panics holding the lock").as_deref() {
            Some(error) => Err(format!("stopping: another worker stopped: {error}")),
            None => Ok(()),
        }
    }
}

/// Runs this process's workers until the mode says stop; the first error any
/// worker hit is the result.
pub fn run(config: Config, cluster: &Cluster, mode: Mode) -> anyhow::Result<()> {
    let settings = config.settings()?;
    let prices = Arc::new(config.prices()?);
    let epoch_interval = Duration::from_millis(config.epoch_interval()?.unsigned_abs());
    let cadence = config.cadence()?;
    let idle_timeout = Duration::from_millis(config.idle_timeout()?.unsigned_abs());
    let started = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?;
    let metrics = Arc::new(Metrics::new(cluster.threads));
    crate::metrics::serve(&config.metrics.listen, Arc::clone(&metrics));
    crate::source::kafka::watch_end_offsets(&config.kafka, Arc::clone(&metrics))?;
    let shared = Arc::new(Shared {
        config,
        prices,
        settings,
        epoch_interval,
        cadence,
        idle_timeout,
        started_millis: u64::try_from(started.as_millis())?,
        mode,
        failure: Mutex::new(None),
        metrics,
        threads: cluster.threads,
        rows: ProcessRows::new(cluster.threads, mode == Mode::Drain),
    });
    tracing::info!(
        ?mode,
        workers = cluster.threads,
        process = cluster.process,
        prices = shared.prices.version.as_deref().unwrap_or("unversioned"),
        "starting"
    );
    let worker_shared = Arc::clone(&shared);
    let guards = timely::execute(cluster.timely_config()?, move |worker| {
        if let Err(error) = work(worker, &worker_shared) {
            let mut failure = worker_shared.failure.lock().expect("no worker panics holding the lock");
            failure.get_or_insert(error);
        }
    })
    .map_err(|e| anyhow::anyhow!("cannot start the timely workers: {e}"))?;
    for result in guards.join() {
        result.map_err(|e| anyhow::anyhow!("a worker failed: {e}"))?;
    }
    let failure = shared.failure.lock().expect("workers are done").take();
    match failure {
        Some(error) => Err(anyhow::anyhow!(error)),
        None => {
            // A failed run does not wait: the thread may be retrying against
            // a service away, and nothing acknowledges what it writes.
            shared.rows.finish();
            Ok(())
        }
    }
}

fn work(worker: &mut timely::worker::Worker, shared: &Shared) -> Result<(), String> {
    let (index, peers) = (worker.index(), worker.peers());
    let config = &shared.config;
    let store = Store::open(&config.checkpoint.url, &config.kafka.topic).map_err(|e| e.to_string())?;
    let warehouse = Warehouse::new(&config.clickhouse);
    // No worker of this run writes before every worker has agreed on where
    // to start, so an insert running now is an earlier run's.
    await_earlier_inserts(&warehouse, &config.kafka.topic);
    let partitions =
        backoff::retry("Kafka", "count the topic's partitions", "", || kafka::count_partitions(&config.kafka));
    // Worker 0's draw, which the others' zeros leave as the maximum.
    let key = match index {
        0 => identity::draw_key().map_err(|e| format!("drawing a key for identities: {e}"))?,
        _ => [0, 0],
    };
    let start =
        Start::agree(worker, &store, &warehouse, (&config.kafka.topic, partitions), (shared.started_millis, key))
            .map_err(|e| e.to_string())?;
    if index == 0 {
        if start.manifest.is_none() {
            checkpoint::abandon(&store);
        }
        checkpoint::record_incarnation(&store, start.incarnations);
    }
    let versions = Versions::of_incarnation(start.incarnations.latest);
    let stale = match start.stale_above() {
        Some(version) => stale_rows(&warehouse, version, &shared.prices),
        None => Stale::default(),
    };
    let restored = start.restore(&store, &stale, index, &shared.prices).map_err(|e| e.to_string())?;
    let (routing, identities) = (start.routing, start.identities);
    tracing::info!(
        worker = index,
        ?routing,
        ?identities,
        incarnation = versions.incarnation(),
        checkpoint = ?start.manifest.as_ref().map(|m| m.epoch),
        stale_rows = stale.breakdowns.len() + stale.totals.len(),
        "state restored"
    );
    let snapshots = SnapshotsHandle::default();
    let chunks = Chunks { store: store.another(), chunk_bytes: config.checkpoint.chunk_bytes };
    let recovery = Recovery {
        snapshots: Some(Rc::clone(&snapshots)),
        cadence: shared.cadence,
        restored,
        chunks: Some(Arc::new(chunks)),
        identities,
    };
    let first_epoch = recovery.first_epoch();
    let offsets = OffsetsHandle::default();
    let appended = AppendedHandle::default();
    let start_offsets = start.manifest.as_ref().map(|m| m.offsets.clone()).unwrap_or_default();
    let checkpointing = Checkpointing {
        store,
        snapshots,
        offsets: Rc::clone(&offsets),
        appended: Rc::clone(&appended),
        first_epoch,
        cadence: shared.cadence,
        keep: config.checkpoint.keep,
        restored: start.manifest,
    };

    let mut input = InputHandleVec::new();
    let probe = ProbeHandle::new();
    let target = Arc::new(Target {
        clickhouse: config.clickhouse.clone(),
        topic: config.kafka.topic.clone(),
        prices: Arc::clone(&shared.prices),
        versions,
        metrics: Arc::clone(&shared.metrics),
        routing,
        identities,
    });
    let overflow: Arc<Mutex<Option<String>>> = Arc::default();
    let seen_overflow = Arc::clone(&overflow);
    worker.dataflow::<u64, _, _>(|scope| {
        let streams = billing(
            scope.input_from(&mut input),
            Arc::clone(&shared.prices),
            (shared.settings, routing),
            recovery,
            ROWS_PER_STEP,
        );
        streams.errors.clone().inspect(move |error| {
            seen_overflow.lock().expect("no panic holding the lock").get_or_insert_with(|| error.to_string());
        });
        let rows = (&shared.rows, index % shared.threads);
        sink::write(streams, target, checkpointing, rows, (index, peers)).probe_with(&probe);
    });

    let drain = shared.mode == Mode::Drain;
    let metrics = &shared.metrics;
    let mut reader = PartitionReader::connect(
        &config.kafka,
        (index, peers),
        start_offsets,
        drain,
        shared.idle_timeout,
        Arc::clone(metrics),
    )
    .map_err(|e| e.to_string())?;
    input.advance_to(first_epoch);
    let mut items = Vec::new();
    retry_discovery(&mut reader, &mut items)?;
    metrics.worker_ready();
    let reporter = index % shared.threads == 0;
    if reporter {
        metrics.set_epoch(first_epoch);
    }
    let mut closed = EpochTimes::default();
    let mut last_discovery = Instant::now();
    let mut epoch = first_epoch;
    let mut epoch_started = Instant::now();
    let mut epoch_messages = 0usize;
    loop {
        if let Some(error) = overflow.lock().expect("no panic holding the lock").take() {
            return Err(format!("stopping: {error}"));
        }
        shared.stop_if_failed()?;
        if reader.drained() {
            break;
        }
        reader.poll(MESSAGES_PER_STEP, Duration::from_millis(10), &mut items).map_err(|e| e.to_string())?;
        epoch_messages += items.len();
        for item in items.drain(..) {
            input.send(item);
        }
        worker.step();
        if epoch_started.elapsed() >= shared.epoch_interval || epoch_messages >= MAX_EPOCH_MESSAGES {
            epoch_messages = 0;
            offsets.borrow_mut().insert(epoch, reader.positions());
            appended.borrow_mut().insert(epoch, reader.take_appended());
            if reporter {
                closed.close(epoch);
                metrics.set_epoch(epoch + 1);
            }
            epoch += 1;
            input.advance_to(epoch);
            epoch_started = Instant::now();
            while probe.less_than(&epoch.saturating_sub(EPOCHS_IN_FLIGHT)) {
                shared.stop_if_failed()?;
                worker.step_or_park(Some(Duration::from_millis(10)));
            }
        }
        if reporter {
            closed.observe_committed(&probe, metrics);
        }
        if !drain && last_discovery.elapsed() >= DISCOVERY_INTERVAL {
            retry_discovery(&mut reader, &mut items)?;
            last_discovery = Instant::now();
        }
    }
    for item in items.drain(..) {
        input.send(item);
    }
    offsets.borrow_mut().insert(epoch, reader.positions());
    appended.borrow_mut().insert(epoch, reader.take_appended());
    if reporter {
        closed.close(epoch);
    }
    input.close();
    while worker.step_or_park(Some(Duration::from_millis(10))) {
        shared.stop_if_failed()?;
        if reporter {
            closed.observe_committed(&probe, metrics);
        }
    }
    if reporter {
        closed.observe_committed(&probe, metrics);
    }
    if let Some(error) = overflow.lock().expect("no panic holding the lock").take() {
        return Err(format!("stopping: {error}"));
    }
    tracing::info!(worker = index, epochs = epoch + 1 - first_epoch, last_epoch = epoch, "worker done");
    Ok(())
}

/// When the source closed each epoch not yet committed, to time epochs.
#[derive(Default)]
struct EpochTimes(std::collections::VecDeque<(u64, Instant)>);

impl EpochTimes {
    fn close(&mut self, epoch: u64) {
        self.0.push_back((epoch, Instant::now()));
    }

    fn observe_committed(&mut self, probe: &ProbeHandle<u64>, metrics: &Metrics) {
        while let Some(&(epoch, closed)) = self.0.front() {
            if probe.less_equal(&epoch) {
                break;
            }
            metrics.observe_epoch(closed.elapsed());
            self.0.pop_front();
        }
    }
}

/// Where a start begins: the newest committed manifest, the incarnation, how
/// resources are routed and how identities are fingerprinted, agreed by
/// every worker of the cluster.
struct Start {
    manifest: Option<Manifest>,
    previous: Option<Incarnations>,
    incarnations: Incarnations,
    routing: Routing,
    workers: usize,
    identities: IdentityHash,
}

impl Start {
    /// Reads the store and agrees with the other workers on the newest
    /// manifest (the newest any of them saw: it is committed), on an
    /// incarnation above every earlier one and above the start time, and on
    /// the routing of the most partitions any of them saw the topic with (a
    /// topic may grow while they look: routing must be the same on every
    /// worker, and any routing is correct); and on how identities are
    /// fingerprinted: as the manifest's state was, or under the key worker 0
    /// drew (`key`: the other workers give zeros). A store whose rows the
    /// warehouse has never seen is not restored from.
    fn agree(
        worker: &mut timely::worker::Worker,
        store: &Store,
        warehouse: &Warehouse,
        (pipeline, partitions): (&str, u32),
        (started_millis, key): (u64, [u64; 2]),
    ) -> Result<Start, CheckpointError> {
        let mut newest = checkpoint::committed_epochs(store).last().copied();
        if newest.is_some() && !has_progress(warehouse, pipeline) {
            tracing::warn!(
                checkpoint = newest,
                url = store.url(),
                "ClickHouse holds no progress of this pipeline: the checkpoint accounts for rows that are not there; \
                 starting from the beginning of the topic"
            );
            newest = None;
        }
        let previous = checkpoint::read_incarnations(store)?;
        let seen = match newest {
            Some(epoch) => Some(checkpoint::read_manifest(store, epoch, pipeline)?),
            None => None,
        };
        let proposal = [
            newest.map_or(0, |e| e + 1),
            [Some(started_millis), seen.as_ref().map(|m| m.incarnation + 1), previous.map(|p| p.latest + 1)]
                .into_iter()
                .flatten()
                .max()
                .unwrap_or(started_millis),
            u64::from(partitions),
            key[0],
            key[1],
        ];
        let [newest_plus_one, incarnation, partitions, key0, key1] = agree_on_maxima(worker, proposal);
        let manifest = match (newest_plus_one.checked_sub(1), seen) {
            (None, _) => None,
            (Some(epoch), Some(seen)) if seen.epoch == epoch => Some(seen),
            (Some(epoch), _) => Some(checkpoint::read_manifest(store, epoch, pipeline)?),
        };
        let workers = worker.peers();
        let routing = Routing::for_run(u32::try_from(partitions).expect("agreed from u32 counts"), workers);
        let incarnations = checkpoint::next_incarnations(previous, incarnation);
        let identities = manifest.as_ref().map_or(IdentityHash::SipHash([key0, key1]), |m| m.identities);
        Ok(Start { manifest, previous, incarnations, routing, workers, identities })
    }

    /// Rows with a version above this one are stale: the manifest's version,
    /// or with no manifest, everything since the first incarnation of this
    /// store (none when the store is new).
    fn stale_above(&self) -> Option<u64> {
        match (&self.manifest, self.previous) {
            (Some(manifest), _) => Some(manifest.version),
            (None, Some(previous)) => Some(Versions::of_incarnation(previous.first).of(0).saturating_sub(1)),
            (None, None) => None,
        }
    }

    /// This worker's state to start from, under `prices`.
    fn restore(
        &self,
        store: &Store,
        stale: &Stale,
        worker: usize,
        prices: &PriceList,
    ) -> Result<Option<Restored>, CheckpointError> {
        let owned = (self.workers, self.routing);
        let mut restored = match &self.manifest {
            None if stale.breakdowns.is_empty() && stale.totals.is_empty() => return Ok(None),
            None => Restored::new(0, Default::default()),
            Some(manifest) => {
                let mut restored = Restored::new(manifest.epoch, manifest.shared.clone());
                if let Some(text) = &manifest.prices {
                    let refused =
                        |source| CheckpointError::Prices { url: store.url().into(), epoch: manifest.epoch, source };
                    restored.rated_with = prices.earlier(text).map_err(refused)?.map(Arc::new);
                }
                for name in manifest.shards_holding(worker, owned) {
                    let parts = checkpoint::read_shard(store, name)?;
                    let segments = checkpoint::read_segments(store, &parts)?;
                    restored.add_shard(&parts, (&segments, store), worker, owned).map_err(|e| {
                        CheckpointError::Corrupt { url: store.url().into(), name: name.clone(), message: e.to_string() }
                    })?;
                }
                restored
            }
        };
        restored.add_stale(stale, worker, owned);
        Ok(Some(restored))
    }
}

/// The maxima of every worker's values, known to every worker.
fn agree_on_maxima(worker: &mut timely::worker::Worker, values: [u64; 5]) -> [u64; 5] {
    let mut input = InputHandleVec::new();
    let probe = ProbeHandle::new();
    let agreed = Rc::new(Cell::new(values));
    let seen = Rc::clone(&agreed);
    worker.dataflow::<u64, _, _>(|scope| {
        scope
            .input_from(&mut input)
            .broadcast()
            .inspect(move |other: &[u64; 5]| {
                let mine = seen.get();
                seen.set(std::array::from_fn(|i| mine[i].max(other[i])));
            })
            .probe_with(&probe);
    });
    input.send(values);
    input.advance_to(1);
    while probe.less_than(&1) {
        worker.step_or_park(Some(Duration::from_millis(10)));
    }
    agreed.get()
}

/// Looks for partitions until the broker answers, backing off; fails when a
/// partition no longer holds the offset to read, which no wait mends.
fn retry_discovery(
    reader: &mut PartitionReader,
    items: &mut Vec<tally_dataflows::judge::SourceItem>,
) -> Result<(), String> {
    backoff::retry("Kafka", "read the topic's partitions", "", || match reader.discover(items) {
        Err(gone @ SourceError::OffsetGone { .. }) => Ok(Err(gone.to_string())),
        found => found.map(Ok),
    })
}
