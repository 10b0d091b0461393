//! Operator state as of an epoch: what a checkpoint holds and what a restore
//! starts from.
//!
//! Every stateful operator records an encoded snapshot of its state after each
//! epoch it works. An operator changes state only when it works an epoch, so
//! its state as of epoch `e` is its latest snapshot at or before `e`, and that
//! snapshot exists once the frontier downstream of it has passed `e`.
//!
//! Keyed state (dedup identities, resources, day totals) lives on the worker
//! its exchange routes the key to. A restore decodes the shards it is given and
//! keeps the entries routed to its worker under the *current* worker count, so
//! a checkpoint taken with one worker count restores under any other.
//! Partition clocks and progress are the same on every worker ([`Shared`]).
//!
//! A restored run may follow an incarnation that crashed after the checkpoint
//! and had already written rows of later epochs. Those rows ([`Stale`]) are
//! written again, from the restored state, in the first epoch the restored run
//! works, so that no row an abandoned epoch wrote outlives the restore.

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::hash::Hash;
use std::rc::Rc;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

pub use self::pieces::Pieces;
use self::pieces::Undecodable;
use crate::event::{Partition, ResourceKey};
use crate::identity::{Fingerprint, IdentityHash};
use crate::judge::PartitionClock;
use crate::lifecycle::{Loading, Resources, Stored};
use crate::prices::PriceList;
use crate::routing::{Routing, route};
use crate::rows::{BreakdownKey, Delta, Progress, TotalKey};
use crate::time::Millis;

pub mod pieces;

/// A piece of keyed state, owned by one operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Part {
    /// Identities remembered by deduplication, with their event times.
    Dedup,
    /// Resources with open windows.
    Usage,
    /// Sums behind the totals of open days.
    Totals,
}

impl Part {
    /// Every part, in the order a shard holds them.
    pub const ALL: [Part; 3] = [Part::Dedup, Part::Usage, Part::Totals];
}

/// One worker's checkpointed state: each part, encoded.
pub type ShardParts = Vec<(Part, Vec<u8>)>;

/// A segment of a worker's dedup identities: written once, as an object of
/// its own, and named by every later shard that still needs it (see
/// [`crate::dataflow::dedup`]). Named by the checkpoint epoch it was written
/// for, the worker that wrote it and the worker count then.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SegmentId {
    /// The checkpoint epoch it was written for.
    pub epoch: u64,
    /// The worker that wrote it.
    pub worker: usize,
    /// The worker count then.
    pub workers: usize,
}

/// A shard's dedup part: the segments holding its identities, oldest first,
/// and identities held in the shard itself. Shards of this format hold
/// every identity in segments; those of formats 2 and 3 held them in the
/// shard, and are read as such.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DedupPart {
    /// The segments, oldest first.
    pub segments: Vec<SegmentId>,
    /// Identities held in the shard, with their event times.
    pub inline: Vec<(Fingerprint, Millis)>,
}

/// What a segment holds: identities by the hour of their event time.
pub type SegmentHours = Vec<(Millis, Vec<Fingerprint>)>;

/// A chunk of a worker's usage snapshot: the snapshot's compressed blocks
/// leave for the store a chunk at a time as they are encoded, each chunk an
/// object of its own, so that a worker never holds its whole encoded state
/// (some 50 MB a worker with a million running resources). The shard's usage
/// part names its chunks, then holds the blocks after them
/// ([`usage_part`]). Named by the checkpoint epoch, the worker and the worker
/// count, and its place in the snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ChunkId {
    /// The checkpoint epoch the snapshot is as of.
    pub epoch: u64,
    /// The worker that wrote it.
    pub worker: usize,
    /// The worker count then.
    pub workers: usize,
    /// Its place in the snapshot, from 0.
    pub index: u32,
}

/// Where usage snapshots' chunks are written as they are encoded.
pub trait ChunkStore: Send + Sync {
    /// A chunk is cut once its blocks hold this many bytes.
    fn chunk_bytes(&self) -> usize;

    /// Writes chunk `id`; returns once it is stored.
    fn write(&self, id: ChunkId, blocks: Pieces);
}

/// Objects a shard names (segments, chunks), read: each one's bytes by its
/// id.
pub type Named<Id> = BTreeMap<Id, Vec<u8>>;

/// Where a restore reads the usage chunks a shard names: one at a time, as
/// it decodes them, so that it holds one chunk and not a worker's every
/// chunk.
pub trait ChunkReader {
    /// The blocks chunk `id` holds.
    fn read(&self, id: ChunkId) -> Result<Cow<'_, [u8]>, DecodeError>;
}

impl ChunkReader for Named<ChunkId> {
    fn read(&self, id: ChunkId) -> Result<Cow<'_, [u8]>, DecodeError> {
        self.get(&id).map(|chunk| Cow::Borrowed(&chunk[..])).ok_or(DecodeError::MissingChunk(id))
    }
}

/// A usage part: the chunks written before it, in order, then the blocks
/// after them.
pub fn usage_part(chunks: &[ChunkId], blocks: Pieces) -> Pieces {
    let header = postcard::to_stdvec(chunks).expect("plain data");
    std::iter::once(bytes::Bytes::from(header)).chain(blocks).collect()
}

/// The chunks a usage part names, and the blocks it holds after them.
pub fn split_usage_part(bytes: &[u8]) -> Result<(Vec<ChunkId>, &[u8]), DecodeError> {
    postcard::take_from_bytes(bytes).map_err(|source| DecodeError::Part { part: Part::Usage, source })
}

/// An operator's state as recorded after a checkpoint epoch.
pub(crate) struct Recorded {
    /// The part's encoding.
    pub(crate) bytes: Pieces,
    /// Entries the state holds.
    pub(crate) entries: usize,
    /// The segments the part names, with their sizes in bytes.
    pub(crate) segments: Vec<(SegmentId, u64)>,
    /// A segment to write before any shard holding the part.
    pub(crate) new_segment: Option<(SegmentId, Pieces)>,
    /// The chunks the part names, written already, with their sizes in
    /// bytes.
    pub(crate) chunks: Vec<(ChunkId, u64)>,
}

impl Recorded {
    /// A state recorded whole, in `bytes`, holding `entries`: no segments.
    pub(crate) fn whole(bytes: Pieces, entries: usize) -> Recorded {
        Recorded { bytes, entries, segments: Vec::new(), new_segment: None, chunks: Vec::new() }
    }
}

/// An operator's state, as it records itself for a checkpoint.
pub(crate) trait Record {
    /// The state as of `epoch`, which it has just reached.
    fn record(&mut self, epoch: u64) -> Recorded;
}

/// A state recorded whole: its encoding, and how many entries it holds.
pub(crate) struct Whole<'a, T>(pub(crate) &'a T, pub(crate) usize);

impl<T: Serialize> Record for Whole<'_, T> {
    fn record(&mut self, _: u64) -> Recorded {
        Recorded::whole(pieces::encode(self.0), self.1)
    }
}

/// The resources, as a checkpoint holds them: compressed, in a usage part
/// of no chunks.
impl Record for Stored<'_> {
    fn record(&mut self, _: u64) -> Recorded {
        Recorded::whole(usage_part(&[], self.compressed()), self.0.len())
    }
}

/// Partition clocks and progress after an epoch: the same on every worker.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shared {
    /// Every partition's clock as the watermark saw it.
    pub clocks: BTreeMap<Partition, PartitionClock>,
    /// Progress after the epoch.
    pub progress: Progress,
}

/// The snapshots one worker's operators recorded, by the epoch they worked.
#[derive(Debug, Default)]
pub struct Snapshots {
    parts: BTreeMap<Part, BTreeMap<u64, Snapshot>>,
    shared: BTreeMap<u64, Shared>,
    /// Segments recorded and not yet written.
    segments: BTreeMap<SegmentId, Pieces>,
}

/// One part's state, encoded, and how many entries it holds. The bytes are
/// let go once a shard holds them (see [`Snapshots::let_go_at`]).
#[derive(Debug)]
struct Snapshot {
    bytes: Option<Pieces>,
    entries: usize,
    segments: Vec<(SegmentId, u64)>,
    chunks: Vec<(ChunkId, u64)>,
}

/// A part's encoded state as of an epoch, as a worker holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Encoded {
    /// Never recorded: the part is empty.
    Empty,
    /// The bytes.
    Held(Pieces),
    /// Let go: the worker's shard written last holds them.
    Written,
}

/// A worker's handle on its operators' snapshots (operators and the sink of
/// one worker run on the same thread).
pub type SnapshotsHandle = Rc<RefCell<Snapshots>>;

/// Why a snapshot could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// A part's bytes are not its encoding.
    #[error("checkpoint state ({part:?}) cannot be decoded: {source}")]
    Part {
        /// The part.
        part: Part,
        /// Why.
        source: postcard::Error,
    },
    /// A segment's bytes are not its encoding.
    #[error("dedup segment {segment:?} cannot be decoded: {source}")]
    Segment {
        /// The segment.
        segment: SegmentId,
        /// Why.
        source: postcard::Error,
    },
    /// A part's compressed bytes cannot be decompressed.
    #[error("checkpoint state ({part:?}) cannot be decompressed: {source}")]
    Compressed {
        /// The part.
        part: Part,
        /// Why.
        source: pieces::Corrupt,
    },
    /// A shard names a segment that was not given.
    #[error("dedup segment {0:?} is missing")]
    MissingSegment(SegmentId),
    /// A shard names a chunk that was not given.
    #[error("usage chunk {0:?} is missing")]
    MissingChunk(ChunkId),
    /// A chunk a shard names cannot be read.
    #[error("usage chunk {chunk:?} cannot be read: {why}")]
    UnreadChunk {
        /// The chunk.
        chunk: ChunkId,
        /// Why.
        why: String,
    },
    /// A part decoded a block at a time asked to borrow from its encoding:
    /// a type it holds reads a string as borrowed (see
    /// [`pieces::decode_compressed`]).
    #[error("checkpoint state ({0:?}) asks to borrow from its encoding, which is read a block at a time")]
    Borrowing(Part),
}

impl Snapshots {
    /// Records `part`'s state after working `epoch`.
    pub(crate) fn record(&mut self, part: Part, epoch: u64, state: &mut impl Record) {
        self.store(part, epoch, state.record(epoch));
    }

    /// Keeps `part`'s state as recorded after working `epoch`.
    pub(crate) fn store(&mut self, part: Part, epoch: u64, recorded: Recorded) {
        let Recorded { bytes, entries, segments, new_segment, chunks } = recorded;
        if let Some((id, bytes)) = new_segment {
            self.segments.insert(id, bytes);
        }
        let snapshot = Snapshot { bytes: Some(bytes), entries, segments, chunks };
        self.parts.entry(part).or_default().insert(epoch, snapshot);
    }

    /// The segments recorded for epochs up to `epoch` and not yet let go:
    /// to be written before a shard of `epoch`.
    pub fn segments_through(&self, epoch: u64) -> Vec<(SegmentId, Pieces)> {
        let written = self.segments.iter().filter(|(id, _)| id.epoch <= epoch);
        written.map(|(id, bytes)| (*id, bytes.clone())).collect()
    }

    /// Lets go of the segments recorded for epochs up to `epoch`: written.
    pub fn let_go_segments_through(&mut self, epoch: u64) {
        self.segments.retain(|id, _| id.epoch > epoch);
    }

    /// The segments the parts as of `epoch` name, with their sizes in bytes.
    pub fn named_segments_at(&self, epoch: u64) -> Vec<(SegmentId, u64)> {
        Part::ALL.iter().filter_map(|&part| self.latest(part, epoch)).flat_map(|s| s.segments.clone()).collect()
    }

    /// The usage chunks the parts as of `epoch` name, with their sizes in
    /// bytes.
    pub fn named_chunks_at(&self, epoch: u64) -> Vec<(ChunkId, u64)> {
        Part::ALL.iter().filter_map(|&part| self.latest(part, epoch)).flat_map(|s| s.chunks.clone()).collect()
    }

    /// Records the shared state after `epoch`.
    pub fn record_shared(&mut self, epoch: u64, shared: Shared) {
        self.shared.insert(epoch, shared);
    }

    /// Each part's encoded state as of `epoch`.
    pub fn parts_at(&self, epoch: u64) -> Vec<(Part, Encoded)> {
        let encoded =
            |snapshot: &Snapshot| snapshot.bytes.as_ref().map_or(Encoded::Written, |b| Encoded::Held(b.clone()));
        Part::ALL.iter().map(|&part| (part, self.latest(part, epoch).map_or(Encoded::Empty, encoded))).collect()
    }

    /// Lets go of the bytes of each part's state as of `epoch`, which the
    /// shard just written holds: encoded, a worker's state is about as large
    /// as the state itself, and it would stay until a later snapshot
    /// replaced it. A later shard whose part has not changed since reads
    /// it back from this one.
    pub fn let_go_at(&mut self, epoch: u64) {
        for snapshots in self.parts.values_mut() {
            if let Some((_, snapshot)) = snapshots.range_mut(..=epoch).next_back() {
                snapshot.bytes = None;
            }
        }
    }

    /// How many entries each part holds as of `epoch`.
    pub fn entries_at(&self, epoch: u64) -> BTreeMap<Part, usize> {
        Part::ALL.iter().map(|&part| (part, self.latest(part, epoch).map_or(0, |s| s.entries))).collect()
    }

    fn latest(&self, part: Part, epoch: u64) -> Option<&Snapshot> {
        self.parts.get(&part).and_then(|s| s.range(..=epoch).next_back()).map(|(_, snapshot)| snapshot)
    }

    /// The shared state as of `epoch`.
    pub fn shared_at(&self, epoch: u64) -> Option<&Shared> {
        self.shared.range(..=epoch).next_back().map(|(_, shared)| shared)
    }

    /// The latest epoch any snapshot was recorded for.
    pub fn last_epoch(&self) -> Option<u64> {
        let parts = self.parts.values().filter_map(|s| s.keys().next_back());
        parts.chain(self.shared.keys().next_back()).copied().max()
    }

    /// Whether any part was recorded after `after` and at or before `through`.
    pub fn changed_between(&self, after: Option<u64>, through: u64) -> bool {
        let from = after.map_or(0, |a| a + 1);
        from <= through && self.parts.values().any(|s| s.range(from..=through).next().is_some())
    }

    /// Drops the snapshots no checkpoint after `epoch` can need.
    pub fn release_before(&mut self, epoch: u64) {
        for snapshots in self.parts.values_mut() {
            release_before(snapshots, epoch);
        }
        release_before(&mut self.shared, epoch);
    }
}

/// Of values recorded by epoch, each standing until the next, keeps the one
/// standing at `epoch` and everything after it.
pub fn release_before<V>(by_epoch: &mut BTreeMap<u64, V>, epoch: u64) {
    if let Some(&keep) = by_epoch.range(..=epoch).next_back().map(|(e, _)| e) {
        *by_epoch = by_epoch.split_off(&keep);
    }
}

/// Rows that an abandoned incarnation wrote after the checkpoint: written
/// again, from the restored state, in the restored run's first epoch.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stale {
    /// `usage_breakdown` rows.
    pub breakdowns: Vec<BreakdownKey>,
    /// `account_totals` rows.
    pub totals: Vec<TotalKey>,
}

/// The dedup identities a worker starts from.
#[derive(Clone, Debug, Default)]
pub struct RestoredSeen {
    /// Segments whose every identity is the worker's: named as they are,
    /// in the order their shards name them.
    pub segments: Vec<(SegmentId, u64, SegmentHours)>,
    /// The worker's identities from segments shared with other workers (a
    /// checkpoint of another worker count), and from shards holding them.
    pub loose: Vec<(Fingerprint, Millis)>,
}

impl RestoredSeen {
    /// How many identities it holds.
    pub fn len(&self) -> usize {
        let in_segments: usize = self.segments.iter().flat_map(|(_, _, hours)| hours).map(|(_, ids)| ids.len()).sum();
        in_segments + self.loose.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One worker's state to start from.
#[derive(Clone, Debug, Default)]
pub struct Restored {
    /// The checkpoint's epoch: the run resumes at the next one.
    pub epoch: u64,
    /// Clocks and progress after the epoch.
    pub shared: Shared,
    /// Identities remembered.
    pub seen: RestoredSeen,
    /// Resources with open windows.
    pub resources: Resources,
    /// Sums of open days.
    pub totals: BTreeMap<TotalKey, Delta>,
    /// Rows to write again.
    pub stale: Stale,
    /// The prices the checkpoint's rows were rated with, where they differ
    /// from the run's (see [`PriceList::earlier`]): the first epoch rates
    /// every open row again.
    pub rated_with: Option<Arc<PriceList>>,
    /// The usage part as the checkpoint holds it, when the worker's
    /// resources are every resource of one shard (the same worker count):
    /// the worker records it again as it is, naming the same chunks, rather
    /// than encoding the state anew and holding it whole until its first
    /// shard (with 1.25 million resources, 1.4 s of a 5.3 s restart).
    pub usage_part: Option<UsagePartAsStored>,
    /// Shards whose usage part was added.
    usage_parts_added: usize,
}

/// A usage part as a checkpoint holds it, with the sizes of its chunks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsagePartAsStored {
    /// The part's bytes.
    pub bytes: Vec<u8>,
    /// The chunks it names, with their sizes in bytes.
    pub chunks: Vec<(ChunkId, u64)>,
}

impl UsagePartAsStored {
    /// The part recorded again, holding `entries`.
    pub(crate) fn recorded(self, entries: usize) -> Recorded {
        Recorded { chunks: self.chunks, ..Recorded::whole(vec![bytes::Bytes::from(self.bytes)], entries) }
    }
}

impl Restored {
    /// Nothing yet, as of `epoch`.
    pub fn new(epoch: u64, shared: Shared) -> Restored {
        Restored { epoch, shared, ..Restored::default() }
    }

    /// Adds the entries of one checkpointed shard (its parts as
    /// [`Snapshots::parts_at`] gave them, the segments its dedup part names,
    /// see [`segments_named`], and where to read the chunks its usage part
    /// names) that `worker` of `workers` owns, resources routed by `routing`
    /// (whatever the routing of the run that checkpointed them).
    pub fn add_shard(
        &mut self,
        parts: &[(Part, Vec<u8>)],
        (segments, chunks): (&Named<SegmentId>, &dyn ChunkReader),
        worker: usize,
        (workers, routing): (usize, Routing),
    ) -> Result<(), DecodeError> {
        let mine = |hash: u64| owner(hash, workers) == worker;
        for (part, bytes) in parts {
            match part {
                Part::Dedup => {
                    let dedup: DedupPart = decode(*part, bytes)?;
                    self.seen.loose.extend(dedup.inline.into_iter().filter(|(identity, _)| mine(identity.route())));
                    for id in dedup.segments {
                        let bytes = segments.get(&id).ok_or(DecodeError::MissingSegment(id))?;
                        let mut hours: SegmentHours = postcard::from_bytes(bytes)
                            .map_err(|source| DecodeError::Segment { segment: id, source })?;
                        let held: usize = hours.iter().map(|(_, ids)| ids.len()).sum();
                        for (_, ids) in &mut hours {
                            ids.retain(|identity| mine(identity.route()));
                        }
                        if hours.iter().map(|(_, ids)| ids.len()).sum::<usize>() == held {
                            self.seen.segments.push((id, bytes.len() as u64, hours));
                        } else {
                            let loose =
                                hours.into_iter().flat_map(|(hour, ids)| ids.into_iter().map(move |id| (id, hour)));
                            self.seen.loose.extend(loose);
                        }
                    }
                }
                Part::Usage => {
                    let (named, blocks) = split_usage_part(bytes)?;
                    let mut sizes = Vec::with_capacity(named.len());
                    let in_turn = named
                        .iter()
                        .map(|&id| chunks.read(id))
                        .inspect(|chunk| sizes.extend(chunk.as_ref().map(|chunk| chunk.len() as u64)))
                        .chain([Ok(Cow::Borrowed(blocks))]);
                    let before = self.resources.len();
                    let loading =
                        Loading { keep: |key: &ResourceKey| mine(routing.route(key)), into: &mut self.resources };
                    let read =
                        pieces::decode_compressed(in_turn, loading).map_err(|undecodable| match undecodable {
                            Undecodable::Unread(unread) => unread,
                            Undecodable::Compressed(source) => DecodeError::Compressed { part: *part, source },
                            Undecodable::Encoding(source) => DecodeError::Part { part: *part, source },
                            Undecodable::Borrowed => DecodeError::Borrowing(*part),
                        })?;
                    let kept = self.resources.len() - before;
                    self.usage_part = (self.usage_parts_added == 0 && kept == read).then(|| {
                        let chunks = named.iter().copied().zip(sizes).collect();
                        UsagePartAsStored { bytes: bytes.clone(), chunks }
                    });
                    self.usage_parts_added += 1;
                }
                Part::Totals => {
                    let totals: BTreeMap<TotalKey, Delta> = decode(*part, bytes)?;
                    self.totals.extend(totals.into_iter().filter(|(key, _)| mine(route(key))));
                }
            }
        }
        Ok(())
    }

    /// Adds the stale rows that `worker` of `workers` owns, resources routed
    /// by `routing`.
    pub fn add_stale(&mut self, stale: &Stale, worker: usize, (workers, routing): (usize, Routing)) {
        let mine = |hash: u64| owner(hash, workers) == worker;
        self.stale.breakdowns.extend(
            stale
                .breakdowns
                .iter()
                .filter(|key| {
                    mine(routing.route(&ResourceKey { account: key.account.clone(), resource: key.resource.clone() }))
                })
                .cloned(),
        );
        self.stale.totals.extend(stale.totals.iter().filter(|key| mine(route(key))).cloned());
    }
}

/// The encoding of a part with nothing in it: what a worker whose operator
/// never recorded a snapshot holds.
pub fn empty(part: Part) -> Vec<u8> {
    match part {
        Part::Dedup => postcard::to_stdvec(&DedupPart::default()).expect("an empty part encodes"),
        Part::Usage => pieces::joined(&usage_part(&[], Stored(&Resources::default()).compressed())),
        Part::Totals => postcard::to_stdvec(&BTreeMap::<TotalKey, Delta>::new()).expect("an empty map encodes"),
    }
}

/// The segments a shard's dedup part names: to be read before
/// [`Restored::add_shard`].
pub fn segments_named(parts: &[(Part, Vec<u8>)]) -> Result<Vec<SegmentId>, DecodeError> {
    let mut named = Vec::new();
    for (part, bytes) in parts.iter().filter(|(part, _)| *part == Part::Dedup) {
        named.extend(decode::<DedupPart>(*part, bytes)?.segments);
    }
    Ok(named)
}

/// A dedup part of formats 2 and 3 (every identity with its event time) as
/// this format encodes it.
pub fn dedup_part_of_format_3(bytes: &[u8]) -> Result<Vec<u8>, postcard::Error> {
    let inline: Vec<(Fingerprint, Millis)> = postcard::from_bytes(bytes)?;
    postcard::to_stdvec(&DedupPart { segments: Vec::new(), inline })
}

fn decode<T: DeserializeOwned>(part: Part, bytes: &[u8]) -> Result<T, DecodeError> {
    postcard::from_bytes(bytes).map_err(|source| DecodeError::Part { part, source })
}

/// The worker an exchange sends a key with this hash to, as timely routes it.
pub fn owner(hash: u64, workers: usize) -> usize {
    (hash % workers as u64) as usize
}

/// Which epochs are checkpointed: those whose number is a multiple of
/// `every`, and the last epoch of a run. Epochs stay short for freshness
/// while the whole state is encoded and written only every few of them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cadence {
    every: u64,
}

impl Cadence {
    /// Every `every`-th epoch (at least every epoch).
    pub fn every(every: u64) -> Cadence {
        Cadence { every: every.max(1) }
    }

    /// Whether `epoch` is checkpointed (the last epoch of a run always is).
    pub fn is_checkpoint(&self, epoch: u64) -> bool {
        epoch.is_multiple_of(self.every)
    }

    /// The first checkpoint epoch at or after `epoch`.
    pub fn next_from(&self, epoch: u64) -> u64 {
        epoch.div_ceil(self.every).saturating_mul(self.every)
    }
}

impl Default for Cadence {
    fn default() -> Cadence {
        Cadence::every(1)
    }
}

/// What the billing dataflow needs to checkpoint and restore one worker.
#[derive(Default)]
pub struct Recovery {
    /// Where the operators record their snapshots; `None` when nothing is
    /// checkpointed.
    pub snapshots: Option<SnapshotsHandle>,
    /// Which epochs the snapshots are for.
    pub cadence: Cadence,
    /// The state to start from; `None` for a fresh start.
    pub restored: Option<Restored>,
    /// Where usage snapshots' chunks go; `None` to hold them whole.
    pub chunks: Option<Arc<dyn ChunkStore>>,
    /// How identities are fingerprinted: as in the state restored, which
    /// remembers fingerprints.
    pub identities: IdentityHash,
}

impl Recovery {
    /// The epoch the run starts at.
    pub fn first_epoch(&self) -> u64 {
        self.restored.as_ref().map_or(0, |r| r.epoch + 1)
    }
}

/// An operator's way to record its snapshots.
#[derive(Clone)]
pub(crate) struct Recorder {
    snapshots: Option<SnapshotsHandle>,
    pub(crate) cadence: Cadence,
    /// Where usage snapshots' chunks go.
    pub(crate) chunks: Option<Arc<dyn ChunkStore>>,
}

impl Recorder {
    pub(crate) fn new(
        snapshots: Option<&SnapshotsHandle>,
        cadence: Cadence,
        chunks: Option<Arc<dyn ChunkStore>>,
    ) -> Recorder {
        Recorder { snapshots: snapshots.cloned(), cadence, chunks }
    }

    pub(crate) fn record(&self, part: Part, epoch: u64, state: &mut impl Record) {
        if let Some(snapshots) = &self.snapshots {
            snapshots.borrow_mut().record(part, epoch, state);
        }
    }

    /// Whether snapshots are kept at all.
    pub(crate) fn is_recording(&self) -> bool {
        self.snapshots.is_some()
    }

    pub(crate) fn store(&self, part: Part, epoch: u64, recorded: Recorded) {
        if let Some(snapshots) = &self.snapshots {
            snapshots.borrow_mut().store(part, epoch, recorded);
        }
    }

    pub(crate) fn record_shared(&self, epoch: u64, shared: impl FnOnce() -> Shared) {
        if let Some(snapshots) = &self.snapshots {
            snapshots.borrow_mut().record_shared(epoch, shared());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lifecycle::Resource;

    fn map(entries: &[(&str, i64)]) -> BTreeMap<String, i64> {
        entries.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    }

    #[test]
    fn releasing_keeps_the_value_standing_at_the_epoch() {
        let mut by_epoch: BTreeMap<u64, &str> = [(2, "a"), (5, "b"), (9, "c")].into();
        release_before(&mut by_epoch, 7);
        assert_eq!(by_epoch, [(5, "b"), (9, "c")].into());
        release_before(&mut by_epoch, 1);
        assert_eq!(by_epoch, [(5, "b"), (9, "c")].into());
    }

    #[test]
    fn the_state_as_of_an_epoch_is_the_latest_snapshot_at_or_before_it() {
        let mut snapshots = Snapshots::default();
        snapshots.record(Part::Usage, 3, &mut Whole(&map(&[("a", 1)]), 1));
        snapshots.record(Part::Usage, 5, &mut Whole(&map(&[("a", 1), ("b", 2)]), 2));
        snapshots.record(Part::Dedup, 4, &mut Whole(&map(&[("x", 9)]), 1));
        let usage_at = |s: &Snapshots, epoch| s.parts_at(epoch).into_iter().find(|(p, _)| *p == Part::Usage).unwrap().1;
        assert_eq!(usage_at(&snapshots, 2), Encoded::Empty, "nothing recorded yet");
        let encoded = |m: &[(&str, i64)]| Encoded::Held(pieces::encode(&map(m)));
        assert_eq!(usage_at(&snapshots, 4), encoded(&[("a", 1)]));
        assert_eq!(snapshots.entries_at(6)[&Part::Usage], 2);
        assert_eq!(snapshots.entries_at(6)[&Part::Totals], 0);
        assert!(snapshots.changed_between(Some(3), 4) && !snapshots.changed_between(Some(5), 9));
        assert!(snapshots.changed_between(None, 3));
        assert_eq!(snapshots.last_epoch(), Some(5));
        snapshots.release_before(4);
        assert_eq!(usage_at(&snapshots, 4), encoded(&[("a", 1)]), "the base of epoch 4 survives its release");
        assert_eq!(usage_at(&snapshots, 2), Encoded::Empty);
    }

    #[test]
    fn states_let_go_once_written_are_named_as_such_until_replaced() {
        let mut snapshots = Snapshots::default();
        snapshots.record(Part::Usage, 3, &mut Whole(&map(&[("a", 1)]), 1));
        snapshots.record(Part::Dedup, 3, &mut Whole(&map(&[("x", 9)]), 1));
        snapshots.record(Part::Usage, 7, &mut Whole(&map(&[("a", 2)]), 1));
        snapshots.let_go_at(5);
        let parts: Vec<Encoded> = snapshots.parts_at(5).into_iter().map(|(_, encoded)| encoded).collect();
        assert_eq!(parts, [Encoded::Written, Encoded::Written, Encoded::Empty]);
        let after = snapshots.parts_at(8);
        assert_eq!(after[0], (Part::Dedup, Encoded::Written), "unchanged since the shard of epoch 5");
        assert_eq!(after[1], (Part::Usage, Encoded::Held(pieces::encode(&map(&[("a", 2)])))));
        assert_eq!(snapshots.entries_at(8)[&Part::Dedup], 1, "entries are kept with the bytes let go");
    }

    /// `count` resources of as many accounts, with nothing in them.
    fn empty_resources(count: usize) -> Resources {
        let key = |i| ResourceKey { account: format!("acc-{i}").into(), resource: format!("vm-{i}").into() };
        (0..count).map(|i| (key(i), Resource::default())).collect()
    }

    #[test]
    fn a_shard_restores_only_the_keys_routed_to_each_worker() {
        let resources = empty_resources(50);
        let parts = vec![(Part::Usage, pieces::joined(&usage_part(&[], Stored(&resources).compressed())))];
        let mut total = 0;
        for worker in 0..3 {
            let mut restored = Restored::new(7, Shared::default());
            restored.add_shard(&parts, (&BTreeMap::new(), &BTreeMap::new()), worker, (3, Routing::Hashed)).unwrap();
            assert!(restored.resources.iter().all(|held| owner(route(held.key()), 3) == worker));
            assert_eq!(restored.usage_part, None, "a part of which the worker keeps some keys is encoded anew");
            total += restored.resources.len();
        }
        assert_eq!(total, resources.len(), "every key lands on exactly one worker");
    }

    #[test]
    fn a_usage_part_reads_its_chunks_then_its_blocks_and_names_a_missing_chunk() {
        let resources = empty_resources(5_000);
        let mut chunks = BTreeMap::new();
        let mut write = |blocks: Pieces| {
            let id = ChunkId { epoch: 7, worker: 0, workers: 1, index: chunks.len() as u32 };
            chunks.insert(id, pieces::joined(&blocks));
        };
        let spill = pieces::Spill { chunk_bytes: 24 << 10, write: &mut write };
        let left = pieces::encode_compressed_spilling(&Stored(&resources), spill);
        assert!(!chunks.is_empty() && !left.is_empty(), "chunks and blocks after them");
        let named: Vec<ChunkId> = chunks.keys().copied().collect();
        let parts = vec![(Part::Usage, pieces::joined(&usage_part(&named, left)))];
        let mut restored = Restored::new(7, Shared::default());
        restored.add_shard(&parts, (&BTreeMap::new(), &chunks), 0, (1, Routing::Hashed)).unwrap();
        assert_eq!(restored.resources, resources);
        let sizes = chunks.iter().map(|(id, chunk)| (*id, chunk.len() as u64)).collect();
        let as_stored = UsagePartAsStored { bytes: parts[0].1.clone(), chunks: sizes };
        assert_eq!(restored.usage_part, Some(as_stored), "the worker's every key: recorded again as stored");
        restored.add_shard(&parts, (&BTreeMap::new(), &chunks), 0, (1, Routing::Hashed)).unwrap();
        assert_eq!(restored.usage_part, None, "the keys of two shards are encoded anew");
        chunks.remove(&named[0]);
        let error = Restored::default()
            .add_shard(&parts, (&BTreeMap::new(), &chunks), 0, (1, Routing::Hashed))
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("usage chunk ChunkId { epoch: 7, worker: 0, workers: 1, index: 0 } is missing"),
            "{error}"
        );
    }

    #[test]
    fn a_usage_part_that_does_not_decompress_is_refused_as_such() {
        let mut compressed = pieces::joined(&usage_part(&[], Stored(&Resources::default()).compressed()));
        compressed.pop();
        let parts = vec![(Part::Usage, compressed)];
        let error = Restored::default()
            .add_shard(&parts, (&BTreeMap::new(), &BTreeMap::new()), 0, (1, Routing::Hashed))
            .unwrap_err()
            .to_string();
        assert!(error.contains("(Usage) cannot be decompressed: a compressed block is cut short"), "{error}");
    }
}
