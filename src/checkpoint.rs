//! Checkpoints: the commit protocol, and what it leaves in the store.
//!
//! # The commit protocol
//!
//! Every epoch's rows are written once the epoch is complete. For every
//! checkpoint epoch `e` (the cadence's, and the last epoch of a drain), in
//! this order:
//!
//! 1. each worker writes the rows of epoch `e` to ClickHouse and waits for
//!    them to be acknowledged (its rows of earlier epochs were written first);
//! 2. each worker writes its shard for `e`: its operators' keyed state as of
//!    `e` (or, when nothing changed, names its previous shard again); the
//!    chunks of its usage state, written while that state was encoded, are
//!    objects of their own that the shard names;
//! 3. worker 0, once every worker has done both, commits the manifest for `e`
//!    with one atomic put: the epoch, the incarnation, the highest row version
//!    written for epochs `≤ e`, every partition's next offset, the partition
//!    clocks and progress, and each worker's shard;
//! 4. worker 0 writes `pipeline_progress` for `e`.
//!
//! **Invariant.** A committed manifest for `e` describes the state after
//! reading exactly the messages before its offsets, and every row that state
//! implies is in ClickHouse with a version at most the manifest's `version`.
//! Rows with a greater version were written by an incarnation after the
//! manifest, for epochs the manifest does not cover.
//!
//! # Restore
//!
//! On start the workers agree on the newest manifest, on a new incarnation
//! number (greater than any recorded, and than the previous start time), which
//! is recorded in the store before anything is written, on how resources
//! are routed (`tally_dataflows::routing`), and on how identities are
//! fingerprinted (the manifest's way, or under a key drawn for a store
//! without one: `tally_dataflows::identity`). Every worker loads the manifest's
//! shards (its own shard when the worker count and the routing are unchanged,
//! every shard re-sharded otherwise), seeks its partitions to the stored offsets
//! (partitions the manifest does not know start at offset 0) and resumes at
//! `e + 1`. Rows with a version above the manifest's are *stale*: an abandoned
//! incarnation wrote them, and the restored run may never produce them again
//! (a value that went back to what it was at `e`). They are written again from
//! the restored state in the first epoch, with the new incarnation's higher
//! version (see `tally_dataflows::checkpoint`). Before looking for them, the
//! workers wait until ClickHouse runs no insert of the pipeline: one that a
//! killed incarnation sent in full is still carried out, and its rows must
//! be there to be found.
//!
//! A checkpoint is only as good as the rows it accounts for: when ClickHouse
//! holds no `pipeline_progress` for the pipeline (a new or recreated
//! database), the manifests are abandoned and the run starts from the
//! beginning of the topic.
//!
//! # Layout
//!
//! Under the configured URL, one folder per pipeline (its topic):
//!
//! ```text
//! manifests/<epoch>.json        one per committed epoch; the newest `keep` are kept
//! shards/<epoch>/<worker>.bin   a worker's state as of the epoch it was written
//! segments/<epoch>/<worker>-of-<workers>.bin
//!                               dedup identities a worker wrote at the epoch,
//!                               named by its shards from then on
//! usage/<epoch>/<worker>-of-<workers>-<index>.bin
//!                               a chunk of a worker's usage snapshot as of the
//!                               epoch, written as it was encoded, named by its
//!                               shards
//! incarnation.json              the latest incarnation, written before it writes rows
//! ```
//!
//! Shards, segments and chunks no kept manifest names, at or before the
//! newest manifest, are garbage: left by a crash between shard and manifest,
//! by segments merged into newer ones, or by manifests dropped for age.
//! Worker 0 deletes them after each commit.

pub mod store;

use std::borrow::Cow;
use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::mem::take;
use std::ops::RangeInclusive;

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tally_dataflows::checkpoint::{
    ChunkId, ChunkReader, ChunkStore, DecodeError, Part, Pieces, SegmentId, ShardParts, Shared, dedup_part_of_format_3,
    pieces, segments_named, usage_part,
};
use tally_dataflows::event::{Offset, Partition};
use tally_dataflows::identity::IdentityHash;
use tally_dataflows::lifecycle::{Loaded, Stored};
use tally_dataflows::routing::Routing;

use self::store::Store;
use crate::fault::Fault;

/// Version of the formats below; a store written in another is refused.
/// 2: dedup identities are fingerprints.
/// 3: a usage part holds each distinct metadata once, in a table.
/// 4: dedup identities are held in segments, which shards name.
/// 5: a usage part holds a resource's counter events summed per window.
/// 6: a usage part holds no rows last emitted (resources recompute them).
/// 7: a usage part is compressed, piece by piece, with LZ4.
/// 8: a usage part names the chunks written before it.
/// 9: a manifest names how its run routed resources. Format 8 routed them
/// by hash; a tally of format 8 would restore each worker from its own
/// shard alone, which under another routing no longer holds all of the
/// worker's resources, and so refuses format 9.
/// 10: a manifest names how its state's identities were fingerprinted.
/// Formats 2 to 9 hold BLAKE3 fingerprints; a tally of format 9 would
/// fingerprint new events with BLAKE3 against remembered SipHash ones,
/// and count their copies again, and so refuses format 10.
pub const FORMAT: u32 = 10;
/// The formats read: this one, and formats 2 to 9, whose shards differ in
/// how a dedup part (2 and 3) and a usage part (2 to 7) are encoded;
/// those are converted as the shard is read.
const READS: [u32; 9] = [2, 3, 4, 5, 6, 7, 8, 9, FORMAT];
/// The first format with dedup segments, which later formats write alike.
const SEGMENTS_SINCE: u32 = 4;
/// The first format with usage chunks, which later formats write alike.
const CHUNKS_SINCE: u32 = 8;

/// A committed checkpoint: everything a restore needs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Format version.
    pub format: u32,
    /// The topic whose state this is.
    pub pipeline: String,
    /// The epoch the state is as of.
    pub epoch: u64,
    /// The incarnation that committed it.
    pub incarnation: u64,
    /// Rows of epochs up to `epoch` have versions up to this one.
    pub version: u64,
    /// Worker count of the cluster that wrote it.
    pub workers: usize,
    /// How that cluster routed resources to its workers (by hash before
    /// format 9).
    #[serde(default)]
    pub routing: Routing,
    /// How the state's identities were fingerprinted (with BLAKE3 before
    /// format 10): a restored run goes on alike, or the identities it
    /// remembers would not match the copies it reads.
    #[serde(default)]
    pub identities: IdentityHash,
    /// Each worker's shard, by worker index.
    pub shards: Vec<String>,
    /// The dedup segments the shards name.
    #[serde(default)]
    pub segments: Vec<String>,
    /// The usage chunks the shards name.
    #[serde(default)]
    pub chunks: Vec<String>,
    /// Every partition's next offset.
    pub offsets: BTreeMap<Partition, Offset>,
    /// Partition clocks and progress.
    pub shared: Shared,
    /// The price list the state's rows were rated with (its TOML), which a
    /// restore under another list needs to rate them again. Absent before
    /// format 6.
    #[serde(default)]
    pub prices: Option<String>,
    /// What the shards hold.
    pub state: StateSize,
    /// When it was committed (RFC 3339).
    pub committed_at: String,
}

impl Manifest {
    /// The shards that hold keys `worker` owns in a run of `workers` routing
    /// resources by `routing`: its own alone when the run that wrote them had
    /// as many workers and routed alike, which sent every key to the same
    /// worker; every shard otherwise.
    pub fn shards_holding(&self, worker: usize, (workers, routing): (usize, Routing)) -> &[String] {
        if (self.workers, self.routing) == (workers, routing) {
            self.shards.get(worker..=worker).unwrap_or_default()
        } else {
            &self.shards
        }
    }

    /// The objects it names: its shards and their segments and chunks.
    pub fn objects(&self) -> Vec<String> {
        self.shards.iter().chain(&self.segments).chain(&self.chunks).cloned().collect()
    }
}

/// The size of a checkpoint's state, over every shard: what must stay flat
/// while events flow through a steady set of running resources.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateSize {
    /// Dedup identities remembered.
    pub identities: u64,
    /// Resources with open windows or running.
    pub resources: u64,
    /// Day totals of open days.
    pub day_totals: u64,
    /// Bytes of the shards.
    pub bytes: u64,
}

impl StateSize {
    /// Adds one shard's entries and bytes.
    pub fn add(&mut self, entries: &BTreeMap<Part, usize>, bytes: u64) {
        let count = |part| entries.get(&part).copied().unwrap_or(0) as u64;
        self.identities += count(Part::Dedup);
        self.resources += count(Part::Usage);
        self.day_totals += count(Part::Totals);
        self.bytes += bytes;
    }
}

/// The incarnations that have run against this store.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Incarnations {
    /// Format version.
    pub format: u32,
    /// The latest one started.
    pub latest: u64,
    /// The first one: before any manifest, rows from it on are stale.
    pub first: u64,
}

/// A shard as stored; its parts are borrowed when written, so that the
/// operators' encoded snapshots are copied once, into the file.
#[derive(Serialize, Deserialize)]
struct ShardFile<'a> {
    format: u32,
    epoch: u64,
    worker: usize,
    workers: usize,
    #[serde(borrow)]
    parts: Vec<EncodedPart<'a>>,
}

#[derive(Serialize, Deserialize)]
struct EncodedPart<'a> {
    part: Part,
    #[serde(with = "serde_bytes", borrow)]
    bytes: Cow<'a, [u8]>,
}

/// A checkpoint that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// A named object is missing.
    #[error("checkpoint store {url}: {name} is missing (named by the newest manifest)")]
    Missing {
        /// The store.
        url: String,
        /// The object.
        name: String,
    },
    /// An object cannot be decoded.
    #[error("checkpoint store {url}: {name} cannot be read: {message}")]
    Corrupt {
        /// The store.
        url: String,
        /// The object.
        name: String,
        /// Why.
        message: String,
    },
    /// The configured price list cannot take the state over.
    #[error("checkpoint store {url}, manifest of epoch {epoch}: {source}")]
    Prices {
        /// The store.
        url: String,
        /// The manifest's epoch.
        epoch: u64,
        /// Why.
        source: tally_dataflows::prices::PriceListError,
    },
    /// The store holds another topic's state.
    #[error(
        "checkpoint store {url} holds the state of topic {found:?}, not {expected:?}: give each topic its own checkpoint.url"
    )]
    OtherPipeline {
        /// The store.
        url: String,
        /// Its topic.
        found: String,
        /// The configured topic.
        expected: String,
    },
}

fn manifest_name(epoch: u64) -> String {
    format!("manifests/{epoch:020}.json")
}

/// Where a dedup segment is stored.
pub fn segment_name(id: SegmentId) -> String {
    format!("segments/{:020}/{:05}-of-{:05}.bin", id.epoch, id.worker, id.workers)
}

/// Writes a dedup segment: a header naming it, then its bytes as encoded.
pub fn write_segment(store: &Store, id: SegmentId, bytes: Pieces) {
    write_named(store, &segment_name(id), id, bytes, None);
}

/// Reads the dedup segments a shard's parts name.
pub fn read_segments(store: &Store, parts: &ShardParts) -> Result<BTreeMap<SegmentId, Vec<u8>>, CheckpointError> {
    read_named(store, segments_named(parts), segment_name, (SEGMENTS_SINCE..=FORMAT, "dedup part", "segment"))
}

/// Writes an object a shard names (a segment, a chunk): a header of the
/// format and `id`, then `bytes`.
fn write_named<Id: Serialize>(store: &Store, name: &str, id: Id, bytes: Pieces, mid_write: Option<Fault>) {
    let header = postcard::to_stdvec(&(FORMAT, id)).expect("plain data");
    let pieces = std::iter::once(Bytes::from(header)).chain(bytes).collect();
    store.put_pieces(name, pieces, mid_write);
}

/// Reads the objects a shard's `part` names, `named`, as [`read_named_one`]
/// reads each.
fn read_named<Id: Copy + Ord + Debug + DeserializeOwned>(
    store: &Store,
    named: Result<Vec<Id>, DecodeError>,
    name: fn(Id) -> String,
    (formats, part, kind): (RangeInclusive<u32>, &str, &str),
) -> Result<BTreeMap<Id, Vec<u8>>, CheckpointError> {
    let named = named.map_err(|e| CheckpointError::Corrupt {
        url: store.url().into(),
        name: format!("a shard's {part}"),
        message: e.to_string(),
    })?;
    named.into_iter().map(|id| Ok((id, read_named_one(store, id, name, (&formats, kind))?))).collect()
}

/// Reads object `id`, stored under `name(id)`: its bytes after the header,
/// which must name the same id in one of `formats`. `kind` names such an
/// object in messages.
fn read_named_one<Id: Copy + Debug + PartialEq + DeserializeOwned>(
    store: &Store,
    id: Id,
    name: fn(Id) -> String,
    (formats, kind): (&RangeInclusive<u32>, &str),
) -> Result<Vec<u8>, CheckpointError> {
    let name = name(id);
    let corrupt = |message: String| CheckpointError::Corrupt { url: store.url().into(), name: name.clone(), message };
    let bytes =
        store.get(&name).ok_or_else(|| CheckpointError::Missing { url: store.url().into(), name: name.clone() })?;
    let ((format, found), body): ((u32, Id), &[u8]) =
        postcard::take_from_bytes(&bytes).map_err(|e| corrupt(e.to_string()))?;
    if !formats.contains(&format) || found != id {
        return Err(corrupt(format!("holds {kind} {found:?} of format {format}")));
    }
    Ok(body.to_vec())
}

/// Where a usage chunk is stored.
pub fn chunk_name(id: ChunkId) -> String {
    format!("usage/{:020}/{:05}-of-{:05}-{:05}.bin", id.epoch, id.worker, id.workers, id.index)
}

/// Writes a usage chunk: a header naming it, then its blocks.
pub fn write_chunk(store: &Store, id: ChunkId, blocks: Pieces) {
    write_named(store, &chunk_name(id), id, blocks, Some(Fault::MidChunkWrite));
}

/// A restore reads the usage chunks a shard names from the store, one at a
/// time as it decodes them.
impl ChunkReader for Store {
    fn read(&self, id: ChunkId) -> Result<Cow<'_, [u8]>, DecodeError> {
        let read = read_named_one(self, id, chunk_name, (&(CHUNKS_SINCE..=FORMAT), "chunk"));
        read.map(Cow::Owned).map_err(|unread| DecodeError::UnreadChunk { chunk: id, why: unread.to_string() })
    }
}

/// The store usage snapshots write their chunks to.
pub struct Chunks {
    /// The checkpoint store.
    pub store: Store,
    /// `checkpoint.chunk_bytes`.
    pub chunk_bytes: usize,
}

impl ChunkStore for Chunks {
    fn chunk_bytes(&self) -> usize {
        self.chunk_bytes
    }

    fn write(&self, id: ChunkId, blocks: Pieces) {
        write_chunk(&self.store, id, blocks);
    }
}

fn shard_name(epoch: u64, worker: usize) -> String {
    format!("shards/{epoch:020}/{worker:05}.bin")
}

const INCARNATIONS: &str = "incarnation.json";

/// The epochs of the committed manifests, oldest first.
pub fn committed_epochs(store: &Store) -> Vec<u64> {
    let (_, objects) = store.list("manifests");
    let mut epochs: Vec<u64> = objects
        .iter()
        .filter_map(|name| name.strip_prefix("manifests/")?.strip_suffix(".json")?.parse().ok())
        .collect();
    epochs.sort_unstable();
    epochs
}

/// Reads the manifest of `epoch`, checking it belongs to `pipeline`.
pub fn read_manifest(store: &Store, epoch: u64, pipeline: &str) -> Result<Manifest, CheckpointError> {
    let name = manifest_name(epoch);
    let bytes =
        store.get(&name).ok_or_else(|| CheckpointError::Missing { url: store.url().into(), name: name.clone() })?;
    let manifest: Manifest = serde_json::from_slice(&bytes).map_err(|e| CheckpointError::Corrupt {
        url: store.url().into(),
        name: name.clone(),
        message: e.to_string(),
    })?;
    if !READS.contains(&manifest.format) {
        let message = format!("format {} (this tally reads {READS:?})", manifest.format);
        return Err(CheckpointError::Corrupt { url: store.url().into(), name, message });
    }
    if manifest.pipeline != pipeline {
        return Err(CheckpointError::OtherPipeline {
            url: store.url().into(),
            found: manifest.pipeline,
            expected: pipeline.into(),
        });
    }
    Ok(manifest)
}

/// Deletes every manifest: their state belongs to rows the warehouse no
/// longer holds. Their shards go with the next garbage collection.
pub fn abandon(store: &Store) {
    for epoch in committed_epochs(store) {
        store.delete(&manifest_name(epoch));
    }
}

/// Commits `manifest` (step 3 of the protocol).
pub fn commit_manifest(store: &Store, manifest: &Manifest) {
    let bytes = serde_json::to_vec_pretty(manifest).expect("a manifest is plain data");
    store.put(&manifest_name(manifest.epoch), bytes, Some(Fault::MidManifest));
}

/// Writes one worker's shard for `epoch` from its encoded parts; returns its
/// name and size.
pub fn write_shard(
    store: &Store,
    epoch: u64,
    worker: usize,
    workers: usize,
    parts: Vec<(Part, Pieces)>,
) -> (String, u64) {
    let pieces = shard_pieces(epoch, worker, workers, parts);
    let size = pieces.iter().map(Bytes::len).sum::<usize>() as u64;
    let name = shard_name(epoch, worker);
    store.put_pieces(&name, pieces, Some(Fault::MidShardWrite));
    (name, size)
}

/// The encoding of a [`ShardFile`] in pieces, each part's pieces where they
/// are: a shard is as large as the worker's state, and encoding it whole
/// copied all of it into one more buffer.
fn shard_pieces(epoch: u64, worker: usize, workers: usize, parts: Vec<(Part, Pieces)>) -> Vec<Bytes> {
    // postcard writes a struct as its fields in order, a list and a byte
    // string as their length then their items, and a length as a varint
    // whatever its type.
    let header = postcard::to_stdvec(&(FORMAT, epoch, worker, workers, parts.len())).expect("plain data");
    let mut pieces = vec![Bytes::from(header)];
    for (part, bytes) in parts {
        let len: usize = bytes.iter().map(Bytes::len).sum();
        pieces.push(Bytes::from(postcard::to_stdvec(&(part, len)).expect("plain data")));
        pieces.extend(bytes);
    }
    pieces
}

/// Reads a shard named by a manifest.
pub fn read_shard(store: &Store, name: &str) -> Result<ShardParts, CheckpointError> {
    let bytes =
        store.get(name).ok_or_else(|| CheckpointError::Missing { url: store.url().into(), name: name.into() })?;
    let corrupt = |message: String| CheckpointError::Corrupt { url: store.url().into(), name: name.into(), message };
    let file: ShardFile = postcard::from_bytes(&bytes).map_err(|e| corrupt(e.to_string()))?;
    if !READS.contains(&file.format) {
        return Err(corrupt(format!("format {} (this tally reads {READS:?})", file.format)));
    }
    let mut parts: ShardParts = file.parts.into_iter().map(|p| (p.part, p.bytes.into_owned())).collect();
    for (part, bytes) in &mut parts {
        let format = file.format;
        match part {
            Part::Usage if format == 2 => {
                *bytes = usage_part_as_now(Loaded::from_format_2(bytes))
                    .map_err(|e| corrupt(format!("usage part of format 2: {e}")))?;
            }
            Part::Usage if format < 5 => {
                let converted = usage_part_as_now(Loaded::from_format_4(bytes));
                *bytes = converted.map_err(|e| corrupt(format!("usage part of format {format}: {e}")))?;
            }
            Part::Usage if format == 5 => {
                *bytes = usage_part_as_now(Loaded::from_format_5(bytes))
                    .map_err(|e| corrupt(format!("usage part of format 5: {e}")))?;
            }
            Part::Usage if format == 6 => *bytes = pieces::joined(&usage_part(&[], pieces::compress(bytes))),
            Part::Usage if format == 7 => *bytes = pieces::joined(&usage_part(&[], vec![Bytes::from(take(bytes))])),
            Part::Dedup if format < SEGMENTS_SINCE => {
                let converted = dedup_part_of_format_3(bytes);
                *bytes = converted.map_err(|e| corrupt(format!("dedup part of format {format}: {e}")))?;
            }
            _ => {}
        }
    }
    Ok(parts)
}

/// A usage part of an earlier format, read as `loaded`, as this format
/// encodes it.
fn usage_part_as_now(loaded: Result<Loaded, postcard::Error>) -> Result<Vec<u8>, postcard::Error> {
    let Loaded(resources) = loaded?;
    Ok(pieces::joined(&usage_part(&[], Stored(&resources.into_iter().collect()).compressed())))
}

/// The incarnations recorded, if any.
pub fn read_incarnations(store: &Store) -> Result<Option<Incarnations>, CheckpointError> {
    let Some(bytes) = store.get(INCARNATIONS) else { return Ok(None) };
    serde_json::from_slice(&bytes).map(Some).map_err(|e| CheckpointError::Corrupt {
        url: store.url().into(),
        name: INCARNATIONS.into(),
        message: e.to_string(),
    })
}

/// Records that `incarnations.latest` has started.
pub fn record_incarnation(store: &Store, incarnations: Incarnations) {
    let bytes = serde_json::to_vec_pretty(&incarnations).expect("plain data");
    store.put(INCARNATIONS, bytes, None);
}

/// The incarnation record for a new start.
pub fn next_incarnations(previous: Option<Incarnations>, latest: u64) -> Incarnations {
    Incarnations { format: FORMAT, latest, first: previous.map_or(latest, |p| p.first) }
}

/// Deletes manifests beyond the newest `keep`, and shards and segments at or
/// before the newest manifest that no kept manifest names. `known` caches
/// the objects named by manifests already read.
pub fn collect_garbage(store: &Store, keep: usize, known: &mut BTreeMap<u64, Vec<String>>, pipeline: &str) {
    let epochs = committed_epochs(store);
    let Some(&newest) = epochs.last() else { return };
    let split = epochs.len().saturating_sub(keep.max(1));
    for &epoch in &epochs[..split] {
        store.delete(&manifest_name(epoch));
        known.remove(&epoch);
    }
    let mut referenced = BTreeSet::new();
    for &epoch in &epochs[split..] {
        let shards = match known.entry(epoch) {
            Entry::Occupied(entry) => entry.into_mut(),
            Entry::Vacant(entry) => match read_manifest(store, epoch, pipeline) {
                Ok(manifest) => entry.insert(manifest.objects()),
                Err(error) => {
                    tracing::warn!(%error, "cannot read a manifest while collecting garbage; keeping every shard");
                    return;
                }
            },
        };
        referenced.extend(shards.iter().cloned());
    }
    for kind in ["shards", "segments", "usage"] {
        let (directories, _) = store.list(kind);
        for directory in directories {
            let epoch =
                directory.strip_prefix(kind).and_then(|e| e.strip_prefix('/')).and_then(|e| e.parse::<u64>().ok());
            if epoch.is_none_or(|epoch| epoch > newest) {
                continue;
            }
            let (_, objects) = store.list(&directory);
            for object in objects.iter().filter(|o| !referenced.contains(*o)) {
                store.delete(object);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use tally_dataflows::checkpoint::{DedupPart, split_usage_part};

    use super::*;

    fn scratch() -> (Store, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!("tally-checkpoint-{}-{}", std::process::id(), rand_suffix()));
        (Store::open(&format!("file://{}", dir.display()), "events").unwrap(), dir)
    }

    fn rand_suffix() -> u64 {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
    }

    fn manifest(epoch: u64, shards: Vec<String>) -> Manifest {
        Manifest {
            format: FORMAT,
            pipeline: "events".into(),
            epoch,
            incarnation: 7,
            version: (7 << 20) + epoch,
            workers: shards.len(),
            routing: Routing::default(),
            identities: IdentityHash::SipHash([3, 4]),
            shards,
            segments: Vec::new(),
            chunks: Vec::new(),
            offsets: BTreeMap::from([(0, 12), (3, 40)]),
            shared: Shared::default(),
            prices: Some(crate::config::DEFAULT_PRICES.into()),
            state: StateSize::default(),
            committed_at: "2026-11-23T12:00:00Z".into(),
        }
    }

    #[test]
    fn manifests_and_shards_round_trip() {
        let (store, dir) = scratch();
        let parts = vec![(Part::Dedup, vec![1, 2, 3]), (Part::Usage, Vec::new()), (Part::Totals, vec![9])];
        let pieces = parts.iter().map(|(p, b)| (*p, vec![Bytes::from(b.clone())])).collect();
        let (name, size) = write_shard(&store, 4, 1, 2, pieces);
        assert!(size > 0);
        assert_eq!(read_shard(&store, &name).unwrap(), parts);
        let written = manifest(4, vec![shard_name(4, 0), name]);
        commit_manifest(&store, &written);
        assert_eq!(committed_epochs(&store), vec![4]);
        assert_eq!(read_manifest(&store, 4, "events").unwrap(), written);
        let other = read_manifest(&store, 4, "other").unwrap_err().to_string();
        assert!(other.contains("holds the state of topic \"events\""), "{other}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_worker_restores_from_its_own_shard_only_under_the_routing_that_wrote_it() {
        let by_partition = Routing::ByPartition { partitions: 4 };
        let shards = vec![shard_name(4, 0), shard_name(4, 1)];
        let written = Manifest { routing: by_partition, ..manifest(4, shards.clone()) };
        assert_eq!(written.shards_holding(1, (2, by_partition)), &shards[1..]);
        assert_eq!(written.shards_holding(1, (2, Routing::Hashed)), &shards[..], "routed otherwise");
        assert_eq!(
            written.shards_holding(1, (2, Routing::ByPartition { partitions: 8 })),
            &shards[..],
            "the topic grew"
        );
        assert_eq!(written.shards_holding(1, (3, by_partition)), &shards[..], "more workers");
        assert_eq!(written.shards_holding(2, (3, by_partition)), &shards[..], "a worker the run did not have");
    }

    /// The test manifest as a tally of `format` wrote it: without `field`,
    /// which that format did not have.
    fn written_by_format(format: u32, field: &str) -> Manifest {
        let mut json = serde_json::to_value(manifest(4, vec![shard_name(4, 0)])).unwrap();
        json.as_object_mut().unwrap().remove(field).expect("a field of the current format");
        json["format"] = format.into();
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn a_manifest_of_format_9_fingerprinted_identities_with_blake3() {
        let written = manifest(4, vec![shard_name(4, 0)]);
        let json = serde_json::to_value(&written).unwrap();
        assert_eq!(serde_json::from_value::<Manifest>(json).unwrap().identities, written.identities);
        assert_eq!(written_by_format(9, "identities").identities, IdentityHash::Blake3);
    }

    #[test]
    fn a_manifest_of_format_8_routed_by_hash() {
        assert_eq!(written_by_format(8, "routing").routing, Routing::Hashed);
    }

    #[test]
    fn a_shard_of_format_2_reads_with_its_parts_converted_and_format_1_is_refused() {
        let (store, dir) = scratch();
        let usage = include_bytes!("../dataflows/src/lifecycle/format_2_usage.bin");
        let inline = vec![(IdentityHash::Blake3.fingerprint("//compute", "evt-1"), 1_795_392_000_000)];
        let dedup = postcard::to_stdvec(&inline).unwrap();
        let file = |format| {
            let parts = [(Part::Dedup, &dedup[..]), (Part::Usage, &usage[..])]
                .map(|(part, bytes)| EncodedPart { part, bytes: Cow::Borrowed(bytes) })
                .into();
            postcard::to_stdvec(&ShardFile { format, epoch: 5, worker: 0, workers: 1, parts }).unwrap()
        };
        store.put("old.bin", file(2), None);
        let parts = read_shard(&store, "old.bin").unwrap();
        let converted: DedupPart = postcard::from_bytes(&parts[0].1).unwrap();
        assert_eq!(converted, DedupPart { segments: Vec::new(), inline }, "identities held in the shard");
        let Loaded(converted) = usage_read_back(&parts[1].1);
        let Loaded(original) = Loaded::from_format_2(usage).unwrap();
        assert_eq!(original.len(), 2);
        let by_key = |resources: Vec<_>| resources.into_iter().collect::<tally_dataflows::lifecycle::Resources>();
        assert_eq!(by_key(converted), by_key(original));
        store.put("older.bin", file(1), None);
        let refused = read_shard(&store, "older.bin").unwrap_err().to_string();
        assert!(refused.contains("format 1 (this tally reads [2, 3, 4, 5, 6, 7, 8, 9, 10])"), "{refused}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// A usage part as a shard read back holds it: naming no chunks, then
    /// compressed.
    fn usage_read_back(bytes: &[u8]) -> Loaded {
        let (chunks, blocks) = split_usage_part(bytes).unwrap();
        assert_eq!(chunks, [], "a part of an earlier format names no chunks");
        postcard::from_bytes(&pieces::decompressed(blocks).unwrap()).unwrap()
    }

    /// A shard of `format` holding no identities and `usage`, as read back.
    fn read_back(store: &Store, format: u32, usage: &[u8]) -> ShardParts {
        let dedup = postcard::to_stdvec(&DedupPart::default()).unwrap();
        let parts = [(Part::Dedup, &dedup[..]), (Part::Usage, usage)]
            .map(|(part, bytes)| EncodedPart { part, bytes: Cow::Borrowed(bytes) })
            .into();
        let file = ShardFile { format, epoch: 5, worker: 0, workers: 1, parts };
        let name = format!("format-{format}.bin");
        store.put(&name, postcard::to_stdvec(&file).unwrap(), None);
        let parts = read_shard(store, &name).unwrap();
        assert_eq!(parts[0].1, dedup, "a dedup part of format {format} is read as it is");
        parts
    }

    #[test]
    fn a_shard_of_format_4_reads_with_its_usage_part_converted() {
        let (store, dir) = scratch();
        let usage = include_bytes!("../dataflows/src/lifecycle/format_4_usage.bin");
        let parts = read_back(&store, 4, usage);
        let Loaded(converted) = usage_read_back(&parts[1].1);
        let Loaded(original) = Loaded::from_format_4(usage).unwrap();
        assert_eq!(original.len(), 2);
        let by_key = |resources: Vec<_>| resources.into_iter().collect::<tally_dataflows::lifecycle::Resources>();
        assert_eq!(by_key(converted), by_key(original));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_shard_of_format_5_reads_with_its_rows_last_emitted_dropped() {
        use tally_dataflows::event::{EventKind, EventOrder, Meta, ResourceKey};
        use tally_dataflows::fixed::{Amount, Quantity};
        use tally_dataflows::prices::SkuId;
        type Counted = (i64, (Vec<(SkuId, i128)>, i64, (EventOrder, u32), Option<(EventOrder, u32)>));
        let (store, dir) = scratch();
        let vcpus = vec![(SkuId(0), Quantity::parse("2").unwrap())];
        let started = (EventOrder { time: 1, id: "a".into(), source: "s".into() }, (EventKind::Started, vcpus, 0_u32));
        let row = ((0_i64, SkuId(0)), (Amount::from_scaled(2).unwrap(), Amount::from_scaled(1).unwrap(), 0_u32));
        let key = ResourceKey { account: "acc".into(), resource: "vm".into() };
        let resource = (Vec::<(SkuId, Quantity)>::new(), None::<u32>, vec![started], Vec::<Counted>::new(), vec![row]);
        let usage = postcard::to_stdvec(&(vec![Meta::default()], vec![(key, resource)])).unwrap();
        let parts = read_back(&store, 5, &usage);
        let Loaded(converted) = usage_read_back(&parts[1].1);
        let Loaded(original) = Loaded::from_format_5(&usage).unwrap();
        assert_eq!(original.len(), 1);
        assert_eq!(converted, original);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_shard_of_format_6_reads_with_its_usage_part_compressed() {
        let (store, dir) = scratch();
        let Loaded(original) =
            Loaded::from_format_4(include_bytes!("../dataflows/src/lifecycle/format_4_usage.bin")).unwrap();
        let resources: tally_dataflows::lifecycle::Resources = original.into_iter().collect();
        let usage = postcard::to_stdvec(&Stored(&resources)).unwrap();
        let parts = read_back(&store, 6, &usage);
        let Loaded(converted) = usage_read_back(&parts[1].1);
        assert_eq!(converted.into_iter().collect::<tally_dataflows::lifecycle::Resources>(), resources);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_shard_of_format_7_reads_with_its_usage_part_naming_no_chunks() {
        let (store, dir) = scratch();
        let Loaded(original) =
            Loaded::from_format_4(include_bytes!("../dataflows/src/lifecycle/format_4_usage.bin")).unwrap();
        let resources: tally_dataflows::lifecycle::Resources = original.into_iter().collect();
        let compressed = pieces::joined(&Stored(&resources).compressed());
        let parts = read_back(&store, 7, &compressed);
        assert_eq!(parts[1].1, pieces::joined(&usage_part(&[], vec![Bytes::from(compressed)])));
        let Loaded(converted) = usage_read_back(&parts[1].1);
        assert_eq!(converted.into_iter().collect::<tally_dataflows::lifecycle::Resources>(), resources);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn chunks_are_read_by_id_and_checked() {
        let (store, dir) = scratch();
        let ids = [0, 1].map(|index| ChunkId { epoch: 5, worker: 1, workers: 2, index });
        let chunks = Chunks { store: store.another(), chunk_bytes: 1 };
        chunks.write(ids[0], vec![Bytes::from_static(b"fir"), Bytes::from_static(b"st")]);
        chunks.write(ids[1], vec![Bytes::from_static(b"second")]);
        assert_eq!(store.read(ids[0]).unwrap(), &b"first"[..]);
        assert_eq!(store.read(ids[1]).unwrap(), &b"second"[..]);
        assert_eq!(chunk_name(ids[1]), "usage/00000000000000000005/00001-of-00002-00001.bin");
        let missing = ChunkId { index: 2, ..ids[0] };
        let error = store.read(missing).unwrap_err().to_string();
        assert!(error.contains("usage/00000000000000000005/00001-of-00002-00002.bin is missing"), "{error}");
        store.put(&chunk_name(missing), store.get(&chunk_name(ids[0])).unwrap(), None);
        let error = store.read(missing).unwrap_err().to_string();
        assert!(error.contains("holds chunk ChunkId { epoch: 5, worker: 1, workers: 2, index: 0 }"), "{error}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn chunks_no_kept_manifest_names_are_garbage() {
        let (store, dir) = scratch();
        let chunk = |epoch, index| {
            let id = ChunkId { epoch, worker: 0, workers: 1, index };
            write_chunk(&store, id, vec![Bytes::from_static(b"resources")]);
            chunk_name(id)
        };
        let (old, kept) = ((chunk(2, 0), chunk(2, 1)), chunk(4, 0));
        let shard = write_shard(&store, 2, 0, 1, Vec::new()).0;
        commit_manifest(&store, &Manifest { chunks: vec![old.0.clone(), old.1.clone()], ..manifest(2, vec![shard]) });
        let (orphan, pending) = (chunk(3, 0), chunk(6, 0));
        let shard = write_shard(&store, 4, 0, 1, Vec::new()).0;
        commit_manifest(&store, &Manifest { chunks: vec![kept.clone()], ..manifest(4, vec![shard]) });
        collect_garbage(&store, 1, &mut BTreeMap::new(), "events");
        assert!(store.get(&old.0).is_none() && store.get(&old.1).is_none(), "named by a dropped manifest only");
        assert!(store.get(&orphan).is_none(), "left by a crash before its manifest");
        assert!(store.get(&kept).is_some() && store.get(&pending).is_some());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_shard_in_pieces_is_the_encoding_of_its_file() {
        let parts = [(Part::Dedup, vec![7; 300]), (Part::Usage, Vec::new()), (Part::Totals, vec![1, 2])];
        // A part in several pieces is written as their concatenation.
        let in_pieces = |bytes: &Vec<u8>| bytes.chunks(128).map(|c| Bytes::from(c.to_vec())).collect();
        let pieces = shard_pieces(1 << 40, 3, 4, parts.iter().map(|(p, b)| (*p, in_pieces(b))).collect());
        let joined: Vec<u8> = pieces.iter().flat_map(|piece| piece.iter().copied()).collect();
        let parts =
            parts.iter().map(|(part, bytes)| EncodedPart { part: *part, bytes: Cow::Borrowed(bytes) }).collect();
        let file = ShardFile { format: FORMAT, epoch: 1 << 40, worker: 3, workers: 4, parts };
        assert_eq!(joined, postcard::to_stdvec(&file).unwrap());
    }

    #[test]
    fn garbage_is_what_no_kept_manifest_names() {
        let (store, dir) = scratch();
        let shard = |epoch, worker| write_shard(&store, epoch, worker, 2, Vec::new()).0;
        // Epoch 1: both workers; epoch 2: only worker 1 changed; epoch 3: worker
        // 0's shard written but the manifest never committed (a crash).
        let (a1, b1) = (shard(1, 0), shard(1, 1));
        commit_manifest(&store, &manifest(1, vec![a1.clone(), b1.clone()]));
        let b2 = shard(2, 1);
        commit_manifest(&store, &manifest(2, vec![a1.clone(), b2.clone()]));
        let orphan = shard(3, 0);
        let mut known = BTreeMap::new();
        collect_garbage(&store, 1, &mut known, "events");
        assert_eq!(committed_epochs(&store), vec![2]);
        assert!(store.get(&a1).is_some(), "still named by the kept manifest");
        assert!(store.get(&b1).is_none(), "named by a dropped manifest only");
        assert!(store.get(&b2).is_some());
        assert!(store.get(&orphan).is_some(), "after the newest manifest: maybe in progress");
        commit_manifest(&store, &manifest(3, vec![a1.clone(), b2.clone()]));
        collect_garbage(&store, 1, &mut known, "events");
        assert!(store.get(&orphan).is_none(), "partial checkpoint of a crash");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn segments_are_read_as_the_shard_names_them_and_checked() {
        let (store, dir) = scratch();
        let ids = [5, 9].map(|epoch| SegmentId { epoch, worker: 1, workers: 2 });
        write_segment(&store, ids[0], vec![Bytes::from_static(b"fif"), Bytes::from_static(b"th")]);
        write_segment(&store, ids[1], vec![Bytes::from_static(b"ninth")]);
        let named = |segments: &[SegmentId]| {
            let part = DedupPart { segments: segments.to_vec(), inline: Vec::new() };
            vec![(Part::Dedup, postcard::to_stdvec(&part).unwrap())]
        };
        let read = read_segments(&store, &named(&ids)).unwrap();
        assert_eq!(read, BTreeMap::from([(ids[0], b"fifth".to_vec()), (ids[1], b"ninth".to_vec())]));
        let missing = SegmentId { epoch: 7, ..ids[0] };
        let error = read_segments(&store, &named(&[missing])).unwrap_err().to_string();
        assert!(error.contains("segments/00000000000000000007/00001-of-00002.bin is missing"), "{error}");
        store.put(&segment_name(missing), store.get(&segment_name(ids[0])).unwrap(), None);
        let error = read_segments(&store, &named(&[missing])).unwrap_err().to_string();
        assert!(error.contains("holds segment SegmentId { epoch: 5"), "a segment under another's name: {error}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn segments_no_kept_manifest_names_are_garbage() {
        let (store, dir) = scratch();
        let segment = |epoch| {
            let id = SegmentId { epoch, worker: 0, workers: 1 };
            write_segment(&store, id, vec![Bytes::from_static(b"identities")]);
            segment_name(id)
        };
        let (first, second) = (segment(1), segment(2));
        let shard = write_shard(&store, 2, 0, 1, Vec::new()).0;
        commit_manifest(
            &store,
            &Manifest { segments: vec![first.clone(), second.clone()], ..manifest(2, vec![shard]) },
        );
        // Epoch 4 merged both into one; epoch 6's segment is not committed yet.
        let (merged, pending) = (segment(4), segment(6));
        let shard = write_shard(&store, 4, 0, 1, Vec::new()).0;
        commit_manifest(&store, &Manifest { segments: vec![merged.clone()], ..manifest(4, vec![shard]) });
        collect_garbage(&store, 1, &mut BTreeMap::new(), "events");
        assert!(store.get(&first).is_none() && store.get(&second).is_none(), "merged away");
        assert!(store.get(&merged).is_some() && store.get(&pending).is_some());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn unknown_schemes_are_refused() {
        let error = Store::open("ftp://host/state", "events").err().unwrap().to_string();
        assert!(error.contains("expected file://PATH or s3://BUCKET"), "{error}");
    }
}
