//! Runs the billing dataflow over in-memory partitions, as a drain would:
//! for tests, benchmarks and batch recomputation.
//!
//! Messages are given in one global read order and cut into epochs; each
//! worker reads the partitions `p` with `p mod workers == index`, in that
//! order, so any cut and any worker count are a legitimate run over the same
//! input. At the end every partition is marked exhausted.
//!
//! As `tally run`'s source does, a worker steps its dataflow after every
//! [`MESSAGES_PER_STEP`] messages it gives, and starts an epoch only while
//! it is at most [`EPOCHS_IN_FLIGHT`] epochs ahead of the last one its
//! dataflow has fully worked, and works the dataflow until it is: a run
//! holds a few epochs' messages and events at a time, not all of them.

use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::{Arc, Mutex};

use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::{Input, Operator, Probe};
use timely::dataflow::{InputHandleVec, ProbeHandle};

use crate::checkpoint::{
    self, Cadence, ChunkId, ChunkStore, Encoded, Part, Pieces, Recovery, Restored, SegmentId, ShardParts, Shared,
    SnapshotsHandle, Stale, pieces,
};
use crate::dataflow::{EPOCHS_IN_FLIGHT, MESSAGES_PER_STEP, billing};
use crate::event::{Message, Offset, Partition};
use crate::fixed::Overflow;
use crate::identity::{self, IdentityHash};
use crate::judge::{PartitionState, SourceItem};
use crate::prices::PriceList;
use crate::routing::Routing;
use crate::rows::{BreakdownRow, Ledger, Outcomes, Progress, Rejection, TotalRow};
use crate::settings::Settings;

/// How to run: worker threads and where epochs end.
#[derive(Clone, Debug)]
pub struct RunShape {
    /// Worker threads in this process.
    pub workers: usize,
    /// Indices into the message sequence at which a new epoch starts
    /// (sorted; out-of-range indices are ignored).
    pub epoch_starts: Vec<usize>,
    /// Which epochs are checkpointed.
    pub cadence: Cadence,
    /// Rows the usage stage sends per step (see [`crate::dataflow::billing`]).
    pub rows_per_step: usize,
}

/// A checkpoint as the in-memory runner keeps it: what a checkpoint store
/// would hold for one epoch.
#[derive(Clone, Debug)]
pub struct Checkpoint {
    /// The epoch it was taken after.
    pub epoch: u64,
    /// Clocks and progress.
    pub shared: Shared,
    /// Each worker's encoded state.
    pub shards: Vec<ShardParts>,
    /// The dedup segments written by then, by every worker.
    pub segments: BTreeMap<SegmentId, Vec<u8>>,
    /// The usage chunks written by then, by every worker.
    pub chunks: BTreeMap<ChunkId, Vec<u8>>,
    /// Where each partition resumes.
    pub next_offsets: BTreeMap<Partition, Offset>,
    /// The price list the state's rows were rated with (its text).
    pub prices: String,
    /// How the state's identities were fingerprinted.
    pub identities: IdentityHash,
}

/// Where a simulated crash happens: after the rows of `written_through` (an
/// epoch at or after the checkpoint's) reached the tables, with the last
/// committed checkpoint taken after `checkpoint`, or none at all; and what
/// the crashed run's identities were fingerprinted with.
#[derive(Clone, Copy, Debug)]
pub struct Crash {
    /// The last committed checkpoint's epoch: one the first run's cadence
    /// checkpoints, or its last; `None` when none was committed.
    pub checkpoint: Option<u64>,
    /// The last epoch whose rows were written.
    pub written_through: u64,
    /// How the crashed run fingerprinted identities, which its checkpoint
    /// records: BLAKE3 for a store of a format before 10.
    pub identities: IdentityHash,
}

/// A worker's encoded parts as of an epoch (`None`: never recorded).
type SharedParts = Vec<(Part, Option<Pieces>)>;

#[derive(Default)]
struct Collected {
    breakdowns: Vec<(u64, BreakdownRow)>,
    totals: Vec<(u64, TotalRow)>,
    /// Breakdown and total rows emitted, when they are counted instead of kept.
    rows_counted: usize,
    rejections: Vec<(u64, Rejection)>,
    outcomes: Vec<(u64, Outcomes)>,
    progress: Vec<(u64, Progress)>,
    errors: Vec<Overflow>,
    /// Per epoch, per worker: the encoded parts as of that epoch, shared
    /// with the epochs that did not change them.
    snapshots: BTreeMap<u64, BTreeMap<usize, SharedParts>>,
    shared: BTreeMap<u64, Shared>,
    /// Every worker's dedup segments.
    segments: BTreeMap<SegmentId, Pieces>,
    /// Every worker's usage chunks.
    chunks: BTreeMap<ChunkId, Vec<u8>>,
    /// How the run fingerprinted identities.
    identities: IdentityHash,
}

/// Every block of the runner's usage snapshots leaves as a chunk of its
/// own, so that the small states of tests are restored from chunks as a
/// large state is.
const CHUNK_BYTES: usize = 1;

/// A chunk store in memory, shared by a run's workers.
#[derive(Default)]
struct MemoryChunks(Mutex<BTreeMap<ChunkId, Vec<u8>>>);

impl ChunkStore for MemoryChunks {
    fn chunk_bytes(&self) -> usize {
        CHUNK_BYTES
    }

    fn write(&self, id: ChunkId, blocks: Pieces) {
        self.0.lock().expect("no worker panicked holding the lock").insert(id, pieces::joined(&blocks));
    }
}

impl Collected {
    /// Drops what was not written before a crash.
    fn written_through(mut self, epoch: u64) -> Collected {
        self.breakdowns.retain(|(e, _)| *e <= epoch);
        self.totals.retain(|(e, _)| *e <= epoch);
        self.rejections.retain(|(e, _)| *e <= epoch);
        self.outcomes.retain(|(e, _)| *e <= epoch);
        self.progress.retain(|(e, _)| *e <= epoch);
        self
    }
}

/// Runs the dataflow over `messages` (read in that order) from `partitions`,
/// and returns the tables as a reader would see them afterwards.
pub fn run(
    partitions: &[Partition],
    messages: Vec<Message>,
    prices: Arc<PriceList>,
    settings: Settings,
    shape: &RunShape,
) -> Result<Ledger, Overflow> {
    let collected = execute(partitions, &Arc::new(messages), prices, settings, shape, (None, drawn()), Rows::Kept)?;
    Ok(materialize(vec![collected]))
}

/// Runs the dataflow over `messages` as [`run`] does and counts the rows
/// it emitted, without merging them into the tables a reader would see:
/// the dataflow alone, as its benchmark measures it. The merge stands in
/// for ClickHouse's `FINAL`, on one thread after the workers are done.
/// Each worker counts the rows as they leave and lets them go, as the
/// ClickHouse writer lets them go once it has encoded them: kept, each was
/// cloned into one vector that both workers locked in turn, 7% of a run's
/// samples, which no part of the dataflow spends.
pub fn rows_emitted(
    partitions: &[Partition],
    messages: &Arc<Vec<Message>>,
    prices: Arc<PriceList>,
    settings: Settings,
    shape: &RunShape,
) -> Result<usize, Overflow> {
    let collected = execute(partitions, messages, prices, settings, shape, (None, drawn()), Rows::Counted)?;
    Ok(collected.rows_counted)
}

/// Runs the dataflow shaped as `first`, crashes it as `crash` says, restores
/// the checkpoint into a run shaped as `second` (any worker count, any cuts of
/// the remaining messages) and returns the tables as a reader would see them
/// at the end: the restored run's rows replace the crashed run's. `prices`
/// are the first run's and the restored run's price lists.
pub fn run_with_crash(
    partitions: &[Partition],
    messages: Vec<Message>,
    (prices, restored_prices): (Arc<PriceList>, Arc<PriceList>),
    settings: Settings,
    first: &RunShape,
    crash: Crash,
    second: &RunShape,
) -> Result<Ledger, Overflow> {
    let messages = Arc::new(messages);
    let first_run = (None, crash.identities);
    let mut crashed = execute(partitions, &messages, prices.clone(), settings, first, first_run, Rows::Kept)?
        .written_through(crash.written_through);
    let checkpoint = crash.checkpoint.map(|epoch| checkpoint_at(&crashed, &messages, first, epoch, &prices));
    let after = checkpoint.as_ref().map(|c| c.epoch);
    // Counts are metrics of committed epochs: the restored run counts the rest.
    crashed.outcomes.retain(|(e, _)| Some(*e) <= after);
    let stale = Stale {
        breakdowns: crashed.breakdowns.iter().filter(|(e, _)| after < Some(*e)).map(|(_, r)| r.key.clone()).collect(),
        totals: crashed.totals.iter().filter(|(e, _)| after < Some(*e)).map(|(_, r)| r.key.clone()).collect(),
    };
    let restore = Restore { checkpoint, stale };
    let restored_run = (Some(Arc::new(restore)), drawn());
    let restored = execute(partitions, &messages, restored_prices, settings, second, restored_run, Rows::Kept)?;
    Ok(materialize(vec![crashed, restored]))
}

/// What a run keeps of the breakdown and total rows it emits.
#[derive(Clone, Copy)]
enum Rows {
    /// Every row, with its epoch, to merge into the tables.
    Kept,
    /// Their count.
    Counted,
}

/// A keyed hash under a key of its own, as a deployment starting without a
/// checkpoint draws: a restore that ignored its checkpoint's would not
/// share it.
fn drawn() -> IdentityHash {
    IdentityHash::SipHash(identity::draw_key().expect("the operating system gives random numbers"))
}

/// What a restored run starts from.
struct Restore {
    checkpoint: Option<Checkpoint>,
    stale: Stale,
}

/// The checkpoint the crashed run left after `epoch`.
fn checkpoint_at(
    crashed: &Collected,
    messages: &[Message],
    shape: &RunShape,
    epoch: u64,
    prices: &PriceList,
) -> Checkpoint {
    let shard = |parts: &SharedParts| -> ShardParts {
        parts
            .iter()
            .map(|(part, bytes)| {
                (*part, bytes.as_ref().map_or_else(|| checkpoint::empty(*part), |b| pieces::joined(b)))
            })
            .collect()
    };
    let shards = crashed.snapshots.get(&epoch).map(|s| s.values().map(shard).collect()).unwrap_or_default();
    let shared = crashed.shared.range(..=epoch).next_back().map(|(_, s)| s.clone()).unwrap_or_default();
    let segments =
        crashed.segments.iter().filter(|(id, _)| id.epoch <= epoch).map(|(id, b)| (*id, pieces::joined(b))).collect();
    let chunks = crashed.chunks.iter().filter(|(id, _)| id.epoch <= epoch).map(|(id, b)| (*id, b.clone())).collect();
    let mut next_offsets = BTreeMap::new();
    for (message, message_epoch) in messages.iter().zip(epochs(messages.len(), shape, 0)) {
        if message_epoch <= epoch {
            next_offsets.insert(message.partition, message.offset + 1);
        }
    }
    let (prices, identities) = (prices.text().to_owned(), crashed.identities);
    Checkpoint { epoch, shared, shards, segments, chunks, next_offsets, prices, identities }
}

/// The epoch of each of `count` messages read from `first` on, cut as `shape` says.
fn epochs(count: usize, shape: &RunShape, first: u64) -> Vec<u64> {
    let mut epoch = first;
    (0..count)
        .map(|i| {
            if i > 0 && shape.epoch_starts.binary_search(&i).is_ok() {
                epoch += 1;
            }
            epoch
        })
        .collect()
}

fn execute(
    partitions: &[Partition],
    messages: &Arc<Vec<Message>>,
    prices: Arc<PriceList>,
    settings: Settings,
    shape: &RunShape,
    (restore, fresh): (Option<Arc<Restore>>, IdentityHash),
    rows: Rows,
) -> Result<Collected, Overflow> {
    let chunks = Arc::new(MemoryChunks::default());
    let worker_chunks = Arc::clone(&chunks);
    let messages = Arc::clone(messages);
    let partitions = Arc::new(partitions.to_vec());
    let shape = Arc::new(shape.clone());
    // As `tally run` routes over a topic of these partitions: a restored run
    // of another worker count may route otherwise.
    let routing = Routing::for_run(u32::try_from(partitions.len()).expect("fewer than 2^32 partitions"), shape.workers);
    // As `tally run` fingerprints identities: as the checkpoint did, or
    // as `fresh` says for a run with none.
    let identities = restore.as_ref().and_then(|r| r.checkpoint.as_ref()).map_or(fresh, |c| c.identities);
    let collected = Arc::new(Mutex::new(Collected { identities, ..Collected::default() }));
    let sink = Arc::clone(&collected);
    timely::execute(timely::Config::process(shape.workers), move |worker| {
        let (index, peers) = (worker.index(), worker.peers());
        let mine = |p: Partition| p as usize % peers == index;
        let snapshots = SnapshotsHandle::default();
        let recovery = Recovery {
            snapshots: Some(Rc::clone(&snapshots)),
            cadence: shape.cadence,
            restored: restored(restore.as_deref(), index, (peers, routing), &prices),
            chunks: Some(Arc::clone(&worker_chunks) as Arc<dyn ChunkStore>),
            identities,
        };
        let first_epoch = recovery.first_epoch();
        let resume =
            restore.as_ref().and_then(|r| r.checkpoint.as_ref()).map(|c| c.next_offsets.clone()).unwrap_or_default();
        let mut input = InputHandleVec::<u64, SourceItem>::new();
        let worked = ProbeHandle::new();
        worker.dataflow::<u64, _, _>(|scope| {
            let streams = billing(
                scope.input_from(&mut input),
                Arc::clone(&prices),
                (settings, routing),
                recovery,
                shape.rows_per_step,
            );
            match rows {
                Rows::Kept => {
                    collect(streams.breakdowns, (&sink, &worked), |c, t, rows| {
                        c.breakdowns.extend(rows.iter().map(|r| (t, r.clone())))
                    });
                    collect(streams.totals, (&sink, &worked), |c, t, rows| {
                        c.totals.extend(rows.iter().map(|r| (t, r.clone())))
                    });
                }
                Rows::Counted => {
                    collect(streams.breakdowns, (&sink, &worked), |c, _, rows| c.rows_counted += rows.len());
                    collect(streams.totals, (&sink, &worked), |c, _, rows| c.rows_counted += rows.len());
                }
            }
            collect(streams.rejections, (&sink, &worked), |c, t, rows| {
                c.rejections.extend(rows.iter().map(|r| (t, r.clone())))
            });
            collect(streams.errors, (&sink, &worked), |c, _, rows| c.errors.extend(rows.iter().cloned()));
            collect(streams.outcomes, (&sink, &worked), |c, t, rows| c.outcomes.extend(rows.iter().map(|o| (t, *o))));
            collect(streams.progress, (&sink, &worked), |c, t, rows| c.progress.extend(rows.iter().map(|p| (t, *p))));
        });
        input.advance_to(first_epoch);
        for &partition in partitions.iter().filter(|&&p| mine(p)) {
            input.send(SourceItem::Status { partition, state: PartitionState::Active });
        }
        let unread = |m: &&Message| resume.get(&m.partition).is_none_or(|&next| m.offset >= next);
        let remaining: Vec<&Message> = messages.iter().filter(unread).collect();
        let mut epoch = first_epoch;
        let mut given = 0usize;
        for (message, message_epoch) in remaining.iter().zip(epochs(remaining.len(), &shape, first_epoch)) {
            if message_epoch > epoch {
                epoch = message_epoch;
                input.advance_to(epoch);
                while worked.less_than(&epoch.saturating_sub(EPOCHS_IN_FLIGHT)) {
                    worker.step_or_park(None);
                }
            }
            if mine(message.partition) {
                input.send(SourceItem::Message((*message).clone()));
                given += 1;
                if given.is_multiple_of(MESSAGES_PER_STEP) {
                    worker.step();
                }
            }
        }
        input.advance_to(epoch + 1);
        for &partition in partitions.iter().filter(|&&p| mine(p)) {
            input.send(SourceItem::Status { partition, state: PartitionState::Exhausted });
        }
        input.close();
        while worker.step_or_park(None) {}
        let snapshots = snapshots.borrow();
        let mut sink = sink.lock().expect("no worker panicked holding the lock");
        sink.segments.extend(snapshots.segments_through(u64::MAX));
        for epoch in first_epoch..=epoch + 1 {
            let parts = snapshots.parts_at(epoch).into_iter().map(|(part, encoded)| {
                let bytes = match encoded {
                    Encoded::Empty => None,
                    Encoded::Held(bytes) => Some(bytes),
                    Encoded::Written => unreachable!("the in-memory runner lets go of no snapshot"),
                };
                (part, bytes)
            });
            sink.snapshots.entry(epoch).or_default().insert(index, parts.collect());
            if index == 0
                && let Some(shared) = snapshots.shared_at(epoch)
            {
                sink.shared.insert(epoch, shared.clone());
            }
        }
    })
    .expect("timely workers start")
    .join()
    .into_iter()
    .for_each(|result| result.expect("a billing worker panicked"));

    let mut collected = std::mem::take(&mut *collected.lock().expect("no worker panicked holding the lock"));
    collected.chunks = std::mem::take(&mut *chunks.0.lock().expect("no worker panicked holding the lock"));
    if let Some(error) = collected.errors.first().cloned() {
        return Err(error);
    }
    Ok(collected)
}

/// One worker's share of what a restored run starts from.
fn restored(
    restore: Option<&Restore>,
    worker: usize,
    (workers, routing): (usize, Routing),
    prices: &PriceList,
) -> Option<Restored> {
    let restore = restore?;
    let mut restored = match &restore.checkpoint {
        Some(checkpoint) => {
            let mut restored = Restored::new(checkpoint.epoch, checkpoint.shared.clone());
            for shard in &checkpoint.shards {
                restored
                    .add_shard(shard, (&checkpoint.segments, &checkpoint.chunks), worker, (workers, routing))
                    .expect("the runner's own checkpoints decode");
            }
            let earlier = prices.earlier(&checkpoint.prices).expect("a price list the checkpoint's state reads under");
            restored.rated_with = earlier.map(Arc::new);
            restored
        }
        None => Restored::new(0, Shared::default()),
    };
    restored.add_stale(&restore.stale, worker, (workers, routing));
    Some(restored)
}

/// Keeps the last upsert of every key, as `FINAL` does with versions that
/// grow with the incarnation and then the epoch, and drops zero usage.
/// Outcome counts are those of the epochs each incarnation wrote.
fn materialize(incarnations: Vec<Collected>) -> Ledger {
    let mut ledger = Ledger::default();
    for collected in incarnations {
        let mut breakdowns = collected.breakdowns;
        breakdowns.sort_by_key(|(epoch, _)| *epoch);
        for (_, row) in breakdowns {
            ledger.breakdowns.insert(row.key.clone(), row);
        }
        let mut totals = collected.totals;
        totals.sort_by_key(|(epoch, _)| *epoch);
        for (_, row) in totals {
            ledger.totals.insert(row.key.clone(), row);
        }
        let mut rejections = collected.rejections;
        rejections.sort_by_key(|(epoch, _)| *epoch);
        for (_, rejection) in rejections {
            ledger.rejections.insert((rejection.partition, rejection.offset), rejection);
        }
        for (_, outcomes) in collected.outcomes {
            ledger.outcomes.accepted += outcomes.accepted;
            ledger.outcomes.duplicates += outcomes.duplicates;
        }
        if let Some(progress) = collected.progress.iter().max_by_key(|(epoch, _)| *epoch).map(|(_, p)| *p) {
            ledger.progress = Some(progress);
        }
    }
    ledger.breakdowns.retain(|_, row| !row.usage.is_zero());
    ledger.totals.retain(|_, row| !row.usage.is_zero());
    ledger
}

/// Collects `stream` into `sink` with `add`, and has `worked` follow it.
fn collect<'scope, D: Clone + 'static>(
    stream: timely::dataflow::StreamVec<'scope, u64, D>,
    (sink, worked): (&Arc<Mutex<Collected>>, &ProbeHandle<u64>),
    mut add: impl FnMut(&mut Collected, u64, &[D]) + 'static,
) {
    let sink = Arc::clone(sink);
    stream.probe_with(worked).sink(Pipeline, "Collect", move |(input, _)| {
        input.for_each(|cap, data| {
            if let Some(&epoch) = cap.least() {
                add(&mut sink.lock().expect("no worker panicked holding the lock"), epoch, data);
            }
        });
    });
}
