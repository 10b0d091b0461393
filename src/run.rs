//! `tally run`: the worker loop tying source, dataflow and sink together.
//!
//! Each worker thread reads its partitions, feeds the billing dataflow one
//! epoch at a time (an epoch lasts `checkpoint.interval`, or
//! [`MAX_EPOCH_MESSAGES`] messages when reading a backlog), and lets the sink
//! write each epoch once the frontier has passed it. The source runs at most
//! [`EPOCHS_IN_FLIGHT`] epochs ahead of what ClickHouse has acknowledged, so a
//! slow or absent ClickHouse stalls reading instead of piling up memory.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tally_dataflows::checkpoint::Recovery;
use tally_dataflows::dataflow::billing;
use tally_dataflows::prices::PriceList;
use tally_dataflows::settings::Settings;
use timely::dataflow::operators::{Input, Inspect, Probe};
use timely::dataflow::{InputHandleVec, ProbeHandle};

use crate::cluster::Cluster;
use crate::config::Config;
use crate::sink::{self, Target, Versions};
use crate::source::kafka::PartitionReader;

/// Epochs the source may run ahead of the last one fully written.
pub const EPOCHS_IN_FLIGHT: u64 = 2;
/// An epoch also ends after this many messages on a worker, so that a
/// backlog read faster than `checkpoint.interval` still advances in steps:
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
    idle_timeout: Duration,
    versions: Versions,
    mode: Mode,
    failure: Mutex<Option<String>>,
}

/// Runs this process's workers until the mode says stop; the first error any
/// worker hit is the result.
pub fn run(config: Config, cluster: &Cluster, mode: Mode) -> anyhow::Result<()> {
    let settings = config.settings()?;
    let prices = Arc::new(config.prices()?);
    let epoch_interval = Duration::from_millis(config.epoch_interval()?.unsigned_abs());
    let idle_timeout = Duration::from_millis(config.idle_timeout()?.unsigned_abs());
    let started = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?;
    let shared = Arc::new(Shared {
        config,
        prices,
        settings,
        epoch_interval,
        idle_timeout,
        versions: Versions::starting_at(u64::try_from(started.as_millis())?),
        mode,
        failure: Mutex::new(None),
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
        None => Ok(()),
    }
}

fn work(worker: &mut timely::worker::Worker, shared: &Shared) -> Result<(), String> {
    let (index, peers) = (worker.index(), worker.peers());
    let config = &shared.config;
    let mut input = InputHandleVec::new();
    let probe = ProbeHandle::new();
    let target = Arc::new(Target {
        clickhouse: config.clickhouse.clone(),
        topic: config.kafka.topic.clone(),
        prices: Arc::clone(&shared.prices),
        versions: shared.versions,
    });
    let overflow: Arc<Mutex<Option<String>>> = Arc::default();
    let seen_overflow = Arc::clone(&overflow);
    worker.dataflow::<u64, _, _>(|scope| {
        let streams =
            billing(scope.input_from(&mut input), Arc::clone(&shared.prices), shared.settings, Recovery::default());
        streams.errors.clone().inspect(move |error| {
            seen_overflow.lock().expect("no panic holding the lock").get_or_insert_with(|| error.to_string());
        });
        sink::write(streams, target, index).probe_with(&probe);
    });

    let drain = shared.mode == Mode::Drain;
    let mut reader =
        PartitionReader::connect(&config.kafka.brokers, &config.kafka.topic, index, peers, drain, shared.idle_timeout)
            .map_err(|e| e.to_string())?;
    let mut items = Vec::new();
    retry_discovery(&mut reader, &mut items);
    let mut last_discovery = Instant::now();
    let mut epoch = 0u64;
    let mut epoch_started = Instant::now();
    let mut epoch_messages = 0usize;
    loop {
        if let Some(error) = overflow.lock().expect("no panic holding the lock").take() {
            return Err(format!("stopping: {error}"));
        }
        if reader.drained() {
            break;
        }
        reader.poll(10_000, Duration::from_millis(10), &mut items);
        epoch_messages += items.len();
        for item in items.drain(..) {
            input.send(item);
        }
        worker.step();
        if epoch_started.elapsed() >= shared.epoch_interval || epoch_messages >= MAX_EPOCH_MESSAGES {
            epoch_messages = 0;
            epoch += 1;
            input.advance_to(epoch);
            epoch_started = Instant::now();
            while probe.less_than(&epoch.saturating_sub(EPOCHS_IN_FLIGHT)) {
                worker.step_or_park(Some(Duration::from_millis(10)));
            }
        }
        if !drain && last_discovery.elapsed() >= DISCOVERY_INTERVAL {
            retry_discovery(&mut reader, &mut items);
            last_discovery = Instant::now();
        }
    }
    for item in items.drain(..) {
        input.send(item);
    }
    input.close();
    while worker.step_or_park(Some(Duration::from_millis(10))) {}
    if let Some(error) = overflow.lock().expect("no panic holding the lock").take() {
        return Err(format!("stopping: {error}"));
    }
    tracing::info!(worker = index, epochs = epoch + 1, "worker done");
    Ok(())
}

/// Looks for partitions until the broker answers, backing off.
fn retry_discovery(reader: &mut PartitionReader, items: &mut Vec<tally_dataflows::judge::SourceItem>) {
    let mut backoff = Duration::from_millis(200);
    while let Err(error) = reader.discover(items) {
        tracing::warn!(%error, retry_in_ms = backoff.as_millis() as u64, "cannot read the topic's partitions; retrying");
        std::thread::sleep(backoff);
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
}
