//! The sink: the dataflow's output for each epoch, written to ClickHouse as
//! it comes, then checkpointed once the frontier has passed the epoch.
//!
//! Per epoch, each worker's breakdown rows, totals and rejections are
//! written on a thread for rows (one insert per table, with those of the
//! process's other workers in a drain, or several for more than
//! `clickhouse.rows_per_insert` rows; see [`ProcessRows`]), each in its
//! table's order (see [`order`]), then its state shard on a thread of its
//! own (see [`tally_dataflows::offload`]); then it acknowledges the epoch to
//! worker 0. When every worker has acknowledged epoch `e`, worker 0 commits
//! the manifest for `e` and then writes `pipeline_progress` for `e`: a
//! reader that sees progress `e` sees every row of epochs `≤ e` (the
//! protocol is in [`crate::checkpoint`]). Rows carry
//! `version = incarnation << 20 | epoch` (see [`Versions`]).

pub mod clickhouse;
pub mod inserter;
pub mod order;
pub mod rows;

use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use std::rc::Rc;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tally_dataflows::checkpoint::{
    Cadence, ChunkId, Encoded, Part, Pieces, SegmentId, ShardParts, Shared, SnapshotsHandle, release_before,
};
use tally_dataflows::dataflow::Streams;
use tally_dataflows::dataflow::pending::Pending;
use tally_dataflows::event::{Offset, Partition};
use tally_dataflows::identity::IdentityHash;
use tally_dataflows::offload::Offload;
use tally_dataflows::prices::PriceList;
use tally_dataflows::routing::Routing;
use tally_dataflows::rows::{BreakdownRow, Progress, Rejection, TotalRow};
use tally_dataflows::time::Millis;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::StreamVec;
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::vec::Map;
use timely::dataflow::operators::{Capability, Concat, Inspect, Operator};

use self::clickhouse::Warehouse;
use self::inserter::{Chunk, Inserter};
use self::rows::{AccountTotal, PipelineProgress, RejectedEvent, UsageBreakdown};
use crate::checkpoint::store::Store;
use crate::checkpoint::{self, Manifest, StateSize};
use crate::fault::{self, Fault};
use crate::metrics::Metrics;

/// Row versions that only grow, across epochs and across restarts: the
/// incarnation above 20 bits of epoch. Every start takes an incarnation above
/// every earlier one (see [`crate::checkpoint`]) and epochs continue from the
/// checkpoint, so a restart's versions are above everything an earlier run
/// wrote; an epoch count past 2^20 spills into the incarnation bits, which
/// stays increasing because both parts only grow.
#[derive(Clone, Copy, Debug)]
pub struct Versions {
    incarnation: u64,
}

impl Versions {
    /// Versions of incarnation `incarnation`.
    pub fn of_incarnation(incarnation: u64) -> Versions {
        Versions { incarnation }
    }

    /// The version of rows written for `epoch`.
    pub fn of(&self, epoch: u64) -> u64 {
        (self.incarnation << 20) + epoch
    }

    /// The incarnation.
    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }
}

/// Where and how rows are written.
pub struct Target {
    /// Connection settings.
    pub clickhouse: crate::config::ClickHouse,
    /// Topic name, stored with rejections and as the pipeline's name.
    pub topic: String,
    /// To name SKUs, units and currencies.
    pub prices: Arc<PriceList>,
    /// Row versions.
    pub versions: Versions,
    /// The process's metrics.
    pub metrics: Arc<Metrics>,
    /// How the run routes resources, which its manifests record.
    pub routing: Routing,
    /// How the run fingerprints identities, which its manifests record.
    pub identities: IdentityHash,
}

/// Each epoch's next offsets of a worker's partitions, recorded by the source
/// as it moves to the next epoch.
pub type OffsetsHandle = Rc<RefCell<BTreeMap<u64, BTreeMap<Partition, Offset>>>>;

/// Each epoch's messages by append time (Unix milliseconds), recorded by the
/// source as it moves to the next epoch, for freshness.
pub type AppendedHandle = Rc<RefCell<BTreeMap<u64, BTreeMap<Millis, u64>>>>;

/// One worker's part in checkpointing.
pub struct Checkpointing {
    /// The store.
    pub store: Store,
    /// Its operators' snapshots.
    pub snapshots: SnapshotsHandle,
    /// Its source's offsets.
    pub offsets: OffsetsHandle,
    /// Its source's append times.
    pub appended: AppendedHandle,
    /// The first epoch this run works.
    pub first_epoch: u64,
    /// Which epochs are checkpointed.
    pub cadence: Cadence,
    /// Manifests to keep.
    pub keep: usize,
    /// The manifest restored, if any.
    pub restored: Option<Manifest>,
}

/// A worker's shard for an epoch, sent to worker 0 for the manifest.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct ShardAck {
    worker: usize,
    shard: String,
    bytes: u64,
    /// The dedup segments the shard names, with their sizes in bytes.
    segments: Vec<(SegmentId, u64)>,
    /// The usage chunks the shard names, with their sizes in bytes.
    chunks: Vec<(ChunkId, u64)>,
    entries: BTreeMap<Part, usize>,
    offsets: BTreeMap<Partition, Offset>,
    /// Partition clocks and progress as of the epoch, the same on every
    /// worker.
    shared: Shared,
}

#[derive(Clone)]
enum Output {
    Breakdown(BreakdownRow),
    Total(TotalRow),
    Rejection(Rejection),
}

/// The process's rows: its workers' epochs are handed over as they come,
/// `clickhouse.rows_per_insert` at a time, and the rest once the epoch is
/// complete, to threads that insert them (see [`inserter`]). An epoch in
/// which accrual moves has a row for every running resource, and, held
/// until the epoch was complete, those rows were most of a worker's peak
/// memory.
///
/// A drain's workers share one thread, which writes what they end an epoch
/// with together: with two workers, a third fewer inserts, and fewer parts
/// for ClickHouse to make and merge. A live run's workers each have their own, and their inserts
/// go side by side: shared, an epoch's rows waited for the other worker's
/// and went in one insert after another, and freshness suffered.
pub struct ProcessRows {
    shared: Option<OnceLock<Inserter<Output>>>,
    workers: usize,
}

impl ProcessRows {
    /// The rows of `workers` workers; `together` when they share a thread,
    /// which the first of them to build its sink starts.
    pub fn new(workers: usize, together: bool) -> ProcessRows {
        ProcessRows { shared: together.then(OnceLock::new), workers }
    }

    /// Waits for a shared thread to write what it was handed; called once
    /// every worker is done.
    pub fn finish(&self) {
        if let Some(inserter) = self.shared.as_ref().and_then(OnceLock::get) {
            inserter.finish();
        }
    }
}

/// Moves `data` into `chunk`, handing each chunk over with `full` once it
/// holds `rows_per_insert` rows. A chunk never holds more, nor room for more:
/// grown by doubling past it, a chunk of the default size took room for
/// twice its rows and copied them all once more, and the three chunks of
/// each worker (one written, one waiting, one filling) held 84 MB at the
/// heap's peak while a live run caught up with a million resources.
fn fill_chunks<T>(chunk: &mut Vec<T>, data: &mut Vec<T>, rows_per_insert: usize, mut full: impl FnMut(Vec<T>)) {
    let mut data = data.drain(..);
    while data.len() > 0 {
        let taken = data.len().min(rows_per_insert - chunk.len());
        let wanted = chunk.len() + taken;
        if wanted > chunk.capacity() {
            let room = (chunk.capacity() * 2).clamp(wanted, rows_per_insert);
            chunk.reserve_exact(room - chunk.len());
        }
        chunk.extend(data.by_ref().take(taken));
        if chunk.len() == rows_per_insert {
            full(std::mem::take(chunk));
        }
    }
}

/// Writes and checkpoints the dataflow's output; returns a stream that reaches
/// epoch `e` once everything up to `e` is in ClickHouse and committed, and
/// `pipeline_progress` written.
pub fn write<'scope>(
    streams: Streams<'scope>,
    target: Arc<Target>,
    checkpointing: Checkpointing,
    (rows, local): (&ProcessRows, usize),
    (worker, workers): (usize, usize),
) -> StreamVec<'scope, u64, ()> {
    let Streams { breakdowns, totals, rejections, progress, outcomes, errors: _, recorded } = streams;
    let outcome_metrics = Arc::clone(&target.metrics);
    outcomes.inspect(move |outcomes| outcome_metrics.count_outcomes(outcomes));
    let output =
        breakdowns.map(Output::Breakdown).concat(totals.map(Output::Total)).concat(rejections.map(Output::Rejection));
    let rows_target = Arc::clone(&target);
    let timely_worker = output.scope().worker();
    let written = output.unary_frontier::<CapacityContainerBuilder<Vec<()>>, _, _, _>(
        Pipeline,
        "ClickHouseRows",
        move |_, info| {
            let activator = timely_worker.sync_activator_for(info.address.to_vec());
            let rows_per_insert = rows_target.clickhouse.rows_per_insert;
            let start = |name: String, workers: usize| {
                let warehouse = Warehouse::new(&rows_target.clickhouse);
                let target = Arc::clone(&rows_target);
                Inserter::start(name, workers, inserter::GRACE, move |chunks| write_rows(&warehouse, &target, chunks))
            };
            let writer = match &rows.shared {
                Some(shared) => shared
                    .get_or_init(|| start(format!("tally-rows-{}", worker - local), rows.workers))
                    .connect(local, activator),
                None => start(format!("tally-rows-{worker}"), 1).into_only_worker(activator),
            };
            // Epochs not complete yet: rows not yet handed to the writer,
            // and the capability held for the epoch meanwhile.
            let mut filling: BTreeMap<u64, (Capability<u64>, Vec<Output>)> = BTreeMap::new();
            // Epochs whose last rows are handed to the writer, oldest first,
            // each held until its rows are in ClickHouse.
            let mut writing = VecDeque::new();
            move |(input, frontier), output| {
                let port = output.output_index();
                input.for_each(|capability, data| {
                    let Some(&epoch) = capability.least() else { return };
                    let (_, rows) =
                        filling.entry(epoch).or_insert_with(|| (capability.delayed(&epoch, port), Vec::new()));
                    fill_chunks(rows, data, rows_per_insert, |rows| {
                        writer.hand_over(Chunk { epoch, rows, last: false });
                    });
                });
                while let Some(entry) = filling.first_entry()
                    && !frontier.less_equal(entry.key())
                {
                    let (epoch, (capability, rows)) = entry.remove_entry();
                    writer.hand_over(Chunk { epoch, rows, last: true });
                    writing.push_back(capability);
                }
                writer.passed(frontier.frontier().first().copied().unwrap_or(u64::MAX));
                for epoch in writer.done() {
                    let capability = writing.pop_front().expect("the writer writes only epochs handed to it");
                    assert_eq!(*capability.time(), epoch, "the writer writes epochs in the order handed to it");
                    output.session(&capability).give(());
                }
            }
        },
    );
    let Checkpointing { store, snapshots: shard_snapshots, offsets, appended, first_epoch, cadence, keep, restored } =
        checkpointing;
    let shard_metrics = Arc::clone(&target.metrics);
    let shard_store = store.another();
    let shards = written.binary_frontier::<_, CapacityContainerBuilder<Vec<ShardAck>>, _, _, _, _>(
        recorded,
        Pipeline,
        Pipeline,
        "CheckpointShard",
        move |capability, info| {
            let activator = timely_worker.sync_activator_for(info.address.to_vec());
            let upload_metrics = Arc::clone(&shard_metrics);
            // The uploads remember the shard written last, whose parts let go
            // since are read back from there.
            let mut previous: Option<String> = None;
            let uploads = Offload::start(format!("tally-shards-{worker}"), activator, move |shard: ShardUpload| {
                let epoch = shard.epoch;
                let (name, bytes) =
                    write_shard(&shard_store, shard, previous.as_deref(), (worker, workers), &upload_metrics);
                previous = Some(name.clone());
                (epoch, name, bytes)
            });
            // Held at the next epoch to pass, so that every checkpoint epoch
            // gets an acknowledgement from every worker, rows or not.
            let mut capability = Some(capability.delayed(&first_epoch));
            let mut next = first_epoch;
            // The epoch of the latest shard handed over.
            let mut last_shard: Option<u64> = None;
            // The latest shard written: its epoch, name and size.
            let mut shard_written: Option<(u64, String, u64)> = None;
            // Acknowledgements waiting for the shard they name to be written.
            let mut waiting: VecDeque<WaitingAck> = VecDeque::new();
            let mut acknowledged: Option<u64> = None;
            move |(written, written_frontier), (recorded, recorded_frontier), output| {
                written.for_each(|_, _| {});
                recorded.for_each(|_, _| {});
                // This worker's rows of the epochs its written frontier
                // passed are in ClickHouse: their events' effects are visible,
                // whether or not their snapshots are recorded yet.
                let visible = {
                    let mut appended = appended.borrow_mut();
                    let later = match written_frontier.frontier().first() {
                        Some(&frontier) => appended.split_off(&frontier),
                        None => BTreeMap::new(),
                    };
                    std::mem::replace(&mut *appended, later)
                };
                for (appended_at, count) in visible.into_values().flatten() {
                    shard_metrics.observe_visible(appended_at, count);
                }
                // An epoch is done here once its rows are written and every
                // snapshot as of it is recorded.
                let frontiers = [written_frontier, recorded_frontier];
                let ended = frontiers.iter().all(|f| f.is_empty());
                while let Some(held) = capability.as_mut() {
                    // Once everything is done, the epochs left are those this
                    // worker read or its operators worked; after them its
                    // state no longer changes, and worker 0 carries its last
                    // shard forward (see `manifest`). The last of them is
                    // checkpointed, so that a drain ends with everything it
                    // read in a checkpoint. Operators hold the frontier at
                    // their next checkpoint epoch until the input ends, so the
                    // last epoch may have been passed over as an ordinary one:
                    // then the final state is checkpointed at `next`.
                    let last_epoch =
                        offsets.borrow().keys().next_back().copied().max(shard_snapshots.borrow().last_epoch());
                    let (complete, last) = if ended {
                        match last_epoch {
                            Some(last) if next <= last => (true, next == last),
                            Some(last) if acknowledged < Some(last) => (true, true),
                            _ => (false, false),
                        }
                    } else {
                        (!frontiers.iter().any(|f| f.less_equal(&next)), false)
                    };
                    if !complete {
                        break;
                    }
                    if cadence.is_checkpoint(next) || last {
                        let changed =
                            last_shard.is_none() || shard_snapshots.borrow().changed_between(last_shard, next);
                        if changed {
                            let parts = shard_snapshots.borrow().parts_at(next);
                            let segments = shard_snapshots.borrow().segments_through(next);
                            uploads.hand_over(ShardUpload { epoch: next, segments, parts });
                            shard_snapshots.borrow_mut().let_go_at(next);
                            shard_snapshots.borrow_mut().let_go_segments_through(next);
                            last_shard = Some(next);
                        }
                        waiting.push_back(WaitingAck {
                            capability: held.delayed(&next),
                            shard: last_shard.expect("a shard was handed over"),
                            segments: shard_snapshots.borrow().named_segments_at(next),
                            chunks: shard_snapshots.borrow().named_chunks_at(next),
                            entries: shard_snapshots.borrow().entries_at(next),
                            // Taken now: the snapshots before `next` go below,
                            // and the commit may come epochs later.
                            shared: shard_snapshots.borrow().shared_at(next).cloned().unwrap_or_default(),
                            offsets: offsets
                                .borrow()
                                .range(..=next)
                                .next_back()
                                .map(|(_, o)| o.clone())
                                .unwrap_or_default(),
                        });
                        acknowledged = Some(next);
                    }
                    shard_snapshots.borrow_mut().release_before(next);
                    // The offsets standing at `next` stay: a checkpoint at a
                    // later epoch the source never reached (the last one,
                    // passed over) covers what it read by then.
                    release_before(&mut offsets.borrow_mut(), next);
                    next += 1;
                    held.downgrade(&next);
                }
                if ended {
                    capability = None;
                }
                // Shards are written and acknowledgements wait in epoch
                // order: each report releases those naming its shard.
                let mut reports = uploads.done().into_iter();
                loop {
                    while let Some(ack) = waiting.front()
                        && let Some((epoch, shard, bytes)) = &shard_written
                        && ack.shard == *epoch
                    {
                        let WaitingAck { capability, segments, chunks, entries, offsets, shared, .. } =
                            waiting.pop_front().expect("an acknowledgement waits");
                        let shard = shard.clone();
                        let ack = ShardAck { worker, shard, bytes: *bytes, segments, chunks, entries, offsets, shared };
                        output.session(&capability).give(ack);
                    }
                    match reports.next() {
                        Some(report) => shard_written = Some(report),
                        None => break,
                    }
                }
            }
        },
    );
    shards.binary_frontier::<_, CapacityContainerBuilder<Vec<()>>, _, _, _, _>(
        progress,
        Exchange::new(|_: &ShardAck| 0),
        Pipeline,
        "CheckpointCommit",
        move |_, _| {
            let writer = (worker == 0).then(|| Warehouse::new(&target.clickhouse));
            let mut pending = Pending::<ShardAck, Progress>::default();
            let mut progress = restored.as_ref().map_or_else(Progress::default, |m| m.shared.progress);
            let restored_offsets = restored.as_ref().map(|m| m.offsets.clone()).unwrap_or_default();
            let mut latest = vec![None; workers];
            let mut known_manifests: BTreeMap<u64, Vec<String>> =
                restored.iter().map(|m| (m.epoch, m.objects())).collect();
            if worker == 0 {
                store.remove_abandoned_uploads();
            }
            move |(acks, acks_frontier), (new_progress, progress_frontier), output| {
                let port = output.output_index();
                acks.for_each(|cap, data| pending.first(&cap, [port], data));
                new_progress.for_each(|cap, data| pending.second(&cap, [port], data));
                let complete = pending.complete(&[acks_frontier, progress_frontier]);
                // At the end every worker acknowledges its last epoch, which
                // need not be one the cadence checkpoints: the latest of them
                // is committed, with the state every worker ended with.
                let last = acks_frontier
                    .is_empty()
                    .then(|| complete.iter().rev().find(|(_, batch)| !batch.first.is_empty()).map(|(epoch, _)| *epoch))
                    .flatten();
                for (epoch, batch) in complete {
                    progress = batch.second.last().copied().unwrap_or(progress);
                    target.metrics.set_progress(progress.watermark, progress.final_before);
                    let acknowledged = !batch.first.is_empty();
                    let commit = acknowledged && (cadence.is_checkpoint(epoch) || last == Some(epoch));
                    if !commit {
                        remember_acks(batch.first.into_iter().collect(), &mut latest);
                    } else if let Some(writer) = &writer {
                        let started = Instant::now();
                        let acks = batch.first.into_iter().collect();
                        let manifest = manifest(&target, epoch, acks, &mut latest, &restored_offsets);
                        checkpoint::commit_manifest(&store, &manifest);
                        fault::point(Fault::AfterManifest);
                        write_progress(writer, &target, epoch, progress);
                        target.metrics.observe_checkpoint("commit", started.elapsed());
                        target.metrics.set_committed(epoch, manifest.state.bytes);
                        known_manifests.insert(epoch, manifest.objects());
                        checkpoint::collect_garbage(&store, keep, &mut known_manifests, &target.topic);
                    }
                    output.session(&batch.capabilities[0]).give(());
                }
            }
        },
    )
}

/// A worker's shard of `epoch`, handed to its upload thread: the dedup
/// segments recorded since its last shard, and its operators' snapshots as of
/// `epoch`.
struct ShardUpload {
    epoch: u64,
    segments: Vec<(SegmentId, Pieces)>,
    parts: Vec<(Part, Encoded)>,
}

/// An acknowledgement of a checkpoint epoch, waiting for the shard it names.
struct WaitingAck {
    capability: Capability<u64>,
    /// The epoch of the shard.
    shard: u64,
    segments: Vec<(SegmentId, u64)>,
    chunks: Vec<(ChunkId, u64)>,
    entries: BTreeMap<Part, usize>,
    offsets: BTreeMap<Partition, Offset>,
    shared: Shared,
}

/// Writes `worker`'s shard: its segments, then its parts, those let go since
/// `previous` (the shard it wrote last) read back from there. Returns the
/// shard's name and size.
fn write_shard(
    store: &Store,
    ShardUpload { epoch, segments, parts }: ShardUpload,
    previous: Option<&str>,
    (worker, workers): (usize, usize),
    metrics: &Metrics,
) -> (String, u64) {
    let started = Instant::now();
    for (id, pieces) in segments {
        checkpoint::write_segment(store, id, pieces);
    }
    let mut previous_parts: Option<ShardParts> = None;
    let encoded: Vec<(Part, Pieces)> = parts
        .into_iter()
        .map(|(part, encoded)| {
            let bytes = match encoded {
                Encoded::Empty => vec![Bytes::from(tally_dataflows::checkpoint::empty(part))],
                Encoded::Held(pieces) => pieces,
                Encoded::Written => {
                    let name = previous.expect("a part let go was written in an earlier shard");
                    let shard = previous_parts.get_or_insert_with(|| {
                        checkpoint::read_shard(store, name)
                            .unwrap_or_else(|e| panic!("this worker's last shard cannot be read back: {e}"))
                    });
                    let index = shard.iter().position(|(p, _)| *p == part).expect("a shard holds every part");
                    vec![Bytes::from(std::mem::take(&mut shard[index].1))]
                }
            };
            (part, bytes)
        })
        .collect();
    let (name, bytes) = checkpoint::write_shard(store, epoch, worker, workers, encoded);
    fault::point(Fault::AfterShardWrite);
    metrics.observe_checkpoint("shard", started.elapsed());
    tracing::debug!(epoch, worker, bytes, "shard written");
    (name, bytes)
}

/// The manifest of `epoch` from every worker's latest acknowledgement, and
/// the shared state the acknowledgements of `epoch` carry. Every worker
/// acknowledges every checkpoint epoch while any input is left, and its own
/// last epoch at the end of a drain; a worker whose source and operators
/// stopped before the last epoch stops acknowledging, its state unchanged:
/// its last shard stands.
fn manifest(
    target: &Target,
    epoch: u64,
    acks: Vec<ShardAck>,
    latest: &mut [Option<ShardAck>],
    restored_offsets: &BTreeMap<Partition, Offset>,
) -> Manifest {
    let shared = acks.first().map(|ack| ack.shared.clone()).expect("a checkpoint is committed on acknowledgements");
    remember_acks(acks, latest);
    let mut offsets = restored_offsets.clone();
    let mut shards = Vec::with_capacity(latest.len());
    let (mut segments, mut chunks) = (Vec::new(), Vec::new());
    let mut state = StateSize::default();
    for (worker, ack) in latest.iter().enumerate() {
        let ack = ack.as_ref().unwrap_or_else(|| panic!("worker {worker} acknowledged no epoch up to {epoch}"));
        offsets.extend(&ack.offsets);
        let named_bytes: u64 =
            ack.segments.iter().map(|(_, bytes)| bytes).chain(ack.chunks.iter().map(|(_, bytes)| bytes)).sum();
        state.add(&ack.entries, ack.bytes + named_bytes);
        shards.push(ack.shard.clone());
        segments.extend(ack.segments.iter().map(|(id, _)| checkpoint::segment_name(*id)));
        chunks.extend(ack.chunks.iter().map(|(id, _)| checkpoint::chunk_name(*id)));
    }
    Manifest {
        format: checkpoint::FORMAT,
        pipeline: target.topic.clone(),
        epoch,
        incarnation: target.versions.incarnation(),
        version: target.versions.of(epoch),
        workers: latest.len(),
        routing: target.routing,
        identities: target.identities,
        shards,
        segments,
        chunks,
        offsets,
        shared,
        prices: Some(target.prices.text().to_owned()),
        state,
        committed_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
    }
}

/// Keeps each worker's latest acknowledgement.
fn remember_acks(acks: Vec<ShardAck>, latest: &mut [Option<ShardAck>]) {
    for ack in acks {
        let worker = ack.worker;
        latest[worker] = Some(ack);
    }
}

/// Writes `chunks` of rows, of one or several workers and epochs, one insert
/// per table. Each table's rows are put in order by reference and encoded
/// from the chunks as the insert sends them: gathered as encoded rows first,
/// an epoch's breakdown rows took a vector of ten megabytes, on pages the
/// kernel zeroed afresh each time.
fn write_rows(warehouse: &Warehouse, target: &Target, chunks: &[Chunk<Output>]) {
    let prices = &target.prices;
    let rows = InTableOrder::of(chunks, &target.versions);
    for (rejection, _) in &rows.rejections {
        target.metrics.count_rejection(rejection.reason.as_str());
    }
    let breakdown_rows = rows.breakdowns.iter().map(|&(row, version)| UsageBreakdown::of(row, prices, version));
    timed_insert::<UsageBreakdown>(warehouse, target, "usage_breakdown", rows.breakdowns.len(), breakdown_rows);
    fault::point(Fault::BetweenSinkBatches);
    let total_rows = rows.totals.iter().map(|&(row, version)| AccountTotal::of(row, prices, version));
    timed_insert::<AccountTotal>(warehouse, target, "account_totals", rows.totals.len(), total_rows);
    let rejection_rows =
        rows.rejections.iter().map(|&(rejection, version)| RejectedEvent::of(rejection, &target.topic, version));
    timed_insert::<RejectedEvent>(warehouse, target, "rejected_events", rows.rejections.len(), rejection_rows);
    let epochs = chunks.iter().map(|chunk| chunk.epoch);
    let (first, last) = (epochs.clone().min(), epochs.max());
    let ends = chunks.iter().filter(|chunk| chunk.last).count();
    let (breakdowns, totals, rejections) = (rows.breakdowns.len(), rows.totals.len(), rows.rejections.len());
    tracing::debug!(?first, ?last, chunks = chunks.len(), ends, breakdowns, totals, rejections, "rows written");
    if ends > 0 {
        fault::point(Fault::AfterSinkWrite);
    }
}

/// An insert's rows with their versions, each table's in the order of its
/// `ORDER BY` (see [`order`]). Sorts are stable: rows of one key keep the
/// order they were made in.
struct InTableOrder<'a> {
    breakdowns: Vec<(&'a BreakdownRow, u64)>,
    totals: Vec<(&'a TotalRow, u64)>,
    rejections: Vec<(&'a Rejection, u64)>,
}

impl<'a> InTableOrder<'a> {
    fn of(chunks: &'a [Chunk<Output>], versions: &Versions) -> InTableOrder<'a> {
        let mut rows = InTableOrder { breakdowns: Vec::new(), totals: Vec::new(), rejections: Vec::new() };
        for chunk in chunks {
            let version = versions.of(chunk.epoch);
            for output in &chunk.rows {
                match output {
                    Output::Breakdown(row) => rows.breakdowns.push((row, version)),
                    Output::Total(row) => rows.totals.push((row, version)),
                    Output::Rejection(rejection) => rows.rejections.push((rejection, version)),
                }
            }
        }
        order::sort(&mut rows.breakdowns, |(row, _)| UsageBreakdown::place(row));
        order::sort(&mut rows.totals, |(row, _)| AccountTotal::place(row));
        rows.rejections.sort_by_key(|(rejection, _)| RejectedEvent::order(rejection));
        rows
    }
}

/// Inserts the `count` rows `rows` yields into `table`, timed.
fn timed_insert<'r, R: ::clickhouse::Row + ::clickhouse::RowWrite>(
    warehouse: &Warehouse,
    target: &Target,
    table: &'static str,
    count: usize,
    rows: impl Iterator<Item = R::Value<'r>> + Clone,
) {
    if count == 0 {
        return;
    }
    let started = Instant::now();
    warehouse.insert_all::<R>(&target.topic, table, rows);
    target.metrics.observe_insert(table, count, started.elapsed());
}

fn write_progress(warehouse: &Warehouse, target: &Target, epoch: u64, progress: Progress) {
    let committed_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u32::try_from(d.as_secs()).unwrap_or(u32::MAX));
    let row = PipelineProgress {
        pipeline: &target.topic,
        watermark: PipelineProgress::seconds(progress.watermark),
        final_before: PipelineProgress::seconds(progress.final_before),
        epoch,
        committed_at,
        version: target.versions.of(epoch),
    };
    warehouse.insert_all::<PipelineProgress>(&target.topic, "pipeline_progress", std::iter::once(row));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_hold_rows_per_insert_and_no_room_beyond() {
        let rows_per_insert = 1000;
        let mut handed: Vec<Vec<u32>> = Vec::new();
        let mut chunk = Vec::new();
        let mut next = 0;
        for batch in [1, 7, 300, 999, 1000, 2500, 3, 0, 1024] {
            let mut data: Vec<u32> = (next..next + batch).collect();
            next += batch;
            fill_chunks(&mut chunk, &mut data, rows_per_insert, |full| handed.push(full));
            assert!(data.is_empty(), "every row is taken");
            assert!(chunk.len() < rows_per_insert && chunk.capacity() <= rows_per_insert);
        }
        assert!(handed.iter().all(|full| full.len() == rows_per_insert && full.capacity() == rows_per_insert));
        let order: Vec<u32> = handed.into_iter().flatten().chain(chunk).collect();
        assert_eq!(order, (0..next).collect::<Vec<_>>(), "rows keep their order and none is lost");
    }

    #[test]
    fn a_part_let_go_is_read_back_from_the_shard_written_before() {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
        let dir = std::env::temp_dir().join(format!("tally-sink-{}-{nanos}", std::process::id()));
        let store = Store::open(&format!("file://{}", dir.display()), "events").unwrap();
        let metrics = Metrics::new(1);
        let held = |bytes: &[u8]| Encoded::Held(vec![Bytes::from(bytes.to_vec())]);
        let first = vec![
            (Part::Dedup, held(b"dedup at 5")),
            (Part::Usage, held(b"usage at 5")),
            (Part::Totals, Encoded::Empty),
        ];
        let upload = |epoch, parts| ShardUpload { epoch, segments: Vec::new(), parts };
        let (first, _) = write_shard(&store, upload(5, first), None, (0, 1), &metrics);
        let second = vec![
            (Part::Dedup, Encoded::Written),
            (Part::Usage, held(b"usage at 10")),
            (Part::Totals, held(b"totals at 10")),
        ];
        let (second, _) = write_shard(&store, upload(10, second), Some(&first), (0, 1), &metrics);
        let read = checkpoint::read_shard(&store, &second).unwrap();
        let expected: ShardParts = vec![
            (Part::Dedup, b"dedup at 5".to_vec()),
            (Part::Usage, b"usage at 10".to_vec()),
            (Part::Totals, b"totals at 10".to_vec()),
        ];
        assert_eq!(read, expected);
        std::fs::remove_dir_all(dir).ok();
    }
}
