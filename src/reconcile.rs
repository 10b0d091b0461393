//! `tally reconcile`: the billing team's independent check. Reads the whole
//! event log (the topic from offset 0 to its end offsets found at start, or a
//! JSON Lines file as `tally gen --out` writes), recomputes the tables in
//! batch with the oracle (a sequential program sharing only decoding and the
//! rating formula with the dataflow), reads ClickHouse with `FINAL`, and
//! reports every row that is missing, extra or different, with its amounts.
//!
//! It compares a quiet pipeline: one that has drained the log it reads (a
//! live pipeline is compared against a moving target). The recomputation
//! holds every accepted event in memory, as the oracle does.

pub mod tables;

use std::collections::{BTreeMap, BTreeSet};
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Deserialize;
use tally_dataflows::event::{Message, Partition};
use tally_dataflows::oracle;

use self::tables::{Differences, RejectionId, Tables};
use crate::config::{Config, ConfigError};
use crate::sink::clickhouse::{Warehouse, WarehouseError};
use crate::source::kafka::{SourceError, TopicLog};

/// How often progress is reported while reading.
const PROGRESS_INTERVAL: Duration = Duration::from_secs(2);

/// Why the check could not be made (differences are a result, not an error).
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// The configuration is unusable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The topic cannot be read.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// ClickHouse cannot be read.
    #[error(transparent)]
    Warehouse(#[from] WarehouseError),
    /// The event file cannot be read.
    #[error("event file {path}, line {line}: {message}")]
    File {
        /// The file.
        path: PathBuf,
        /// 1-based line, 0 for the file as a whole.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// Amounts left `Decimal(38, 12)` in the recomputation.
    #[error("the recomputation overflowed: {0}")]
    Overflow(String),
}

/// What was compared, and how it differs.
pub struct Outcome {
    /// Where the events came from.
    pub log: String,
    /// Messages read.
    pub messages: u64,
    /// Every difference.
    pub differences: Differences,
}

/// Recomputes from the topic, or from `events` when given, and compares.
pub fn reconcile(config: &Config, events: Option<&Path>) -> Result<Outcome, ReconcileError> {
    let prices = config.prices()?;
    let settings = config.settings()?;
    let mut identities = Identities::default();
    let mut progress = Progress::new();
    let (log, ledger, messages) = match events {
        Some(path) => {
            let (partitions, total) = scan_file(path)?;
            let mut failure = None;
            let messages =
                read_file(path, &mut failure)?.inspect(|m| identities.add(m)).inspect(|_| progress.tick(total));
            let ledger = oracle::run(&partitions, messages, &prices, &settings);
            if let Some(error) = failure {
                return Err(error);
            }
            (format!("event file {}", path.display()), ledger, progress.read)
        }
        None => {
            let mut topic = TopicLog::open(&config.kafka)?;
            let (partitions, total) = (topic.partitions(), topic.total);
            let messages = topic.by_ref().inspect(|m| identities.add(m)).inspect(|_| progress.tick(total));
            let ledger = oracle::run(&partitions, messages, &prices, &settings);
            let log =
                format!("topic {} at {} ({} partitions)", config.kafka.topic, config.kafka.brokers, partitions.len());
            (log, ledger, progress.read)
        }
    };
    let ledger = ledger.map_err(|overflow| ReconcileError::Overflow(overflow.to_string()))?;
    eprintln!("tally reconcile: recomputed {messages} messages; reading ClickHouse");
    let mut expected = Tables::of(&ledger, &prices);
    expected.order_dependent = identities.order_dependent();
    let stored = Tables::read(&Warehouse::new(&config.clickhouse))?;
    Ok(Outcome { log, messages, differences: stored.differences(&expected) })
}

/// Counts messages and reports every [`PROGRESS_INTERVAL`].
struct Progress {
    read: u64,
    last: Instant,
}

impl Progress {
    fn new() -> Progress {
        Progress { read: 0, last: Instant::now() }
    }

    fn tick(&mut self, total: u64) {
        self.read += 1;
        if self.last.elapsed() >= PROGRESS_INTERVAL {
            self.last = Instant::now();
            let percent = if total == 0 { 100.0 } else { self.read as f64 * 100.0 / total as f64 };
            eprintln!("tally reconcile: read {} of {total} messages ({percent:.1}%)", self.read);
        }
    }
}

/// Where each `(source, id)` was seen, to name the messages whose `late`
/// rejection depends on how partitions interleave.
#[derive(Default)]
struct Identities {
    seen: BTreeMap<(String, String), Vec<RejectionId>>,
}

#[derive(Deserialize)]
struct Identity<'a> {
    #[serde(borrow)]
    source: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    id: std::borrow::Cow<'a, str>,
}

impl Identities {
    fn add(&mut self, message: &Message) {
        let Ok(identity) = serde_json::from_slice::<Identity<'_>>(&message.payload) else { return };
        let partition = i32::try_from(message.partition).unwrap_or(i32::MAX);
        self.seen
            .entry((identity.source.into_owned(), identity.id.into_owned()))
            .or_default()
            .push((partition, message.offset));
    }

    fn order_dependent(&self) -> BTreeSet<RejectionId> {
        self.seen
            .values()
            .filter(|copies| copies.iter().map(|(p, _)| p).collect::<BTreeSet<_>>().len() > 1)
            .flatten()
            .copied()
            .collect()
    }
}

/// One line of an event file.
#[derive(Deserialize)]
struct Line {
    partition: Partition,
    timestamp: i64,
    value: String,
}

/// The partitions an event file names, and its line count.
fn scan_file(path: &Path) -> Result<(Vec<Partition>, u64), ReconcileError> {
    let mut partitions = BTreeSet::new();
    let mut lines = 0;
    let mut failure = None;
    for message in read_file(path, &mut failure)? {
        partitions.insert(message.partition);
        lines += 1;
    }
    match failure {
        Some(error) => Err(error),
        None => Ok((partitions.into_iter().collect(), lines)),
    }
}

/// The messages of an event file, offsets counted per partition from 0 in
/// line order; the first unreadable line ends the iteration and is left in
/// `failure`.
fn read_file<'a>(
    path: &'a Path,
    failure: &'a mut Option<ReconcileError>,
) -> Result<impl Iterator<Item = Message> + 'a, ReconcileError> {
    let file = std::fs::File::open(path).map_err(|e| ReconcileError::File {
        path: path.to_path_buf(),
        line: 0,
        message: e.to_string(),
    })?;
    let mut offsets: BTreeMap<Partition, i64> = BTreeMap::new();
    let lines = std::io::BufReader::new(file).lines().enumerate();
    Ok(lines
        .map(move |(index, line)| {
            let fail = |message: String| ReconcileError::File { path: path.to_path_buf(), line: index + 1, message };
            let line = line.map_err(|e| fail(e.to_string()))?;
            let line: Line = serde_json::from_str(&line)
                .map_err(|e| fail(format!("expected {{\"partition\", \"timestamp\", \"value\"}}: {e}")))?;
            let offset = offsets.entry(line.partition).or_default();
            *offset += 1;
            Ok(Message {
                partition: line.partition,
                offset: *offset - 1,
                timestamp: line.timestamp,
                payload: line.value.into_bytes(),
            })
        })
        .map_while(move |result| match result {
            Ok(message) => Some(message),
            Err(error) => {
                failure.get_or_insert(error);
                None
            }
        }))
}
