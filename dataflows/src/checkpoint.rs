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

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::hash::Hash;
use std::rc::Rc;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::dataflow::route;
use crate::event::{Partition, ResourceKey};
use crate::identity::Fingerprint;
use crate::judge::PartitionClock;
use crate::lifecycle::{Loaded, Resources, Stored};
use crate::rows::{BreakdownKey, Delta, Progress, TotalKey};
use crate::time::Millis;

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
}

/// One part's state, encoded, and how many entries it holds. The bytes are
/// let go once a shard holds them (see [`Snapshots::let_go_at`]).
#[derive(Debug)]
struct Snapshot {
    bytes: Option<Arc<Vec<u8>>>,
    entries: usize,
}

/// A part's encoded state as of an epoch, as a worker holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Encoded {
    /// Never recorded: the part is empty.
    Empty,
    /// The bytes.
    Held(Arc<Vec<u8>>),
    /// Let go: the worker's shard written last holds them.
    Written,
}

/// A worker's handle on its operators' snapshots (operators and the sink of
/// one worker run on the same thread).
pub type SnapshotsHandle = Rc<RefCell<Snapshots>>;

/// Why a snapshot could not be decoded.
#[derive(Debug, thiserror::Error)]
#[error("checkpoint state ({part:?}) cannot be decoded: {source}")]
pub struct DecodeError {
    part: Part,
    source: postcard::Error,
}

impl Snapshots {
    /// Records `part`'s state, of `entries` entries, after working `epoch`.
    pub fn record<T: Serialize>(&mut self, part: Part, epoch: u64, state: &T, entries: usize) {
        let encoded = postcard::to_stdvec(state).expect("operator state is plain data and encodes");
        self.parts.entry(part).or_default().insert(epoch, Snapshot { bytes: Some(Arc::new(encoded)), entries });
    }

    /// Records the shared state after `epoch`.
    pub fn record_shared(&mut self, epoch: u64, shared: Shared) {
        self.shared.insert(epoch, shared);
    }

    /// Each part's encoded state as of `epoch`.
    pub fn parts_at(&self, epoch: u64) -> Vec<(Part, Encoded)> {
        let encoded =
            |snapshot: &Snapshot| snapshot.bytes.as_ref().map_or(Encoded::Written, |b| Encoded::Held(Arc::clone(b)));
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

/// One worker's state to start from.
#[derive(Clone, Debug, Default)]
pub struct Restored {
    /// The checkpoint's epoch: the run resumes at the next one.
    pub epoch: u64,
    /// Clocks and progress after the epoch.
    pub shared: Shared,
    /// Identities remembered, with the hour of their event times.
    pub seen: Vec<(Fingerprint, Millis)>,
    /// Resources with open windows.
    pub resources: Resources,
    /// Sums of open days.
    pub totals: BTreeMap<TotalKey, Delta>,
    /// Rows to write again.
    pub stale: Stale,
}

impl Restored {
    /// Nothing yet, as of `epoch`.
    pub fn new(epoch: u64, shared: Shared) -> Restored {
        Restored { epoch, shared, ..Restored::default() }
    }

    /// Adds the entries of one checkpointed shard (its parts as
    /// [`Snapshots::parts_at`] gave them) that `worker` of `workers` owns.
    pub fn add_shard(&mut self, parts: &[(Part, Vec<u8>)], worker: usize, workers: usize) -> Result<(), DecodeError> {
        let mine = |hash: u64| owner(hash, workers) == worker;
        for (part, bytes) in parts {
            match part {
                Part::Dedup => {
                    let seen: Vec<(Fingerprint, Millis)> = decode(*part, bytes)?;
                    self.seen.extend(seen.into_iter().filter(|(identity, _)| mine(identity.route())));
                }
                Part::Usage => {
                    let Loaded(resources) = decode(*part, bytes)?;
                    let resources: Vec<_> = resources.into_iter().filter(|(key, _)| mine(route(key))).collect();
                    self.resources.reserve(resources.len());
                    self.resources.extend(resources);
                }
                Part::Totals => {
                    let totals: BTreeMap<TotalKey, Delta> = decode(*part, bytes)?;
                    self.totals.extend(totals.into_iter().filter(|(key, _)| mine(route(key))));
                }
            }
        }
        Ok(())
    }

    /// Adds the stale rows that `worker` of `workers` owns.
    pub fn add_stale(&mut self, stale: &Stale, worker: usize, workers: usize) {
        let mine = |hash: u64| owner(hash, workers) == worker;
        self.stale.breakdowns.extend(
            stale
                .breakdowns
                .iter()
                .filter(|key| {
                    mine(route(&ResourceKey { account: key.account.clone(), resource: key.resource.clone() }))
                })
                .cloned(),
        );
        self.stale.totals.extend(stale.totals.iter().filter(|key| mine(route(key))).cloned());
    }
}

/// The encoding of a part with nothing in it: what a worker whose operator
/// never recorded a snapshot holds.
pub fn empty(part: Part) -> Vec<u8> {
    let encoded = match part {
        Part::Dedup => postcard::to_stdvec(&Vec::<(Fingerprint, Millis)>::new()),
        Part::Usage => postcard::to_stdvec(&Stored(&Resources::default())),
        Part::Totals => postcard::to_stdvec(&BTreeMap::<TotalKey, Delta>::new()),
    };
    encoded.expect("empty maps encode")
}

fn decode<T: DeserializeOwned>(part: Part, bytes: &[u8]) -> Result<T, DecodeError> {
    postcard::from_bytes(bytes).map_err(|source| DecodeError { part, source })
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
}

impl Recorder {
    pub(crate) fn new(snapshots: Option<&SnapshotsHandle>, cadence: Cadence) -> Recorder {
        Recorder { snapshots: snapshots.cloned(), cadence }
    }

    pub(crate) fn record<T: Serialize>(&self, part: Part, epoch: u64, state: &T, entries: usize) {
        if let Some(snapshots) = &self.snapshots {
            snapshots.borrow_mut().record(part, epoch, state, entries);
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
        snapshots.record(Part::Usage, 3, &map(&[("a", 1)]), 1);
        snapshots.record(Part::Usage, 5, &map(&[("a", 1), ("b", 2)]), 2);
        snapshots.record(Part::Dedup, 4, &map(&[("x", 9)]), 1);
        let usage_at = |s: &Snapshots, epoch| s.parts_at(epoch).into_iter().find(|(p, _)| *p == Part::Usage).unwrap().1;
        assert_eq!(usage_at(&snapshots, 2), Encoded::Empty, "nothing recorded yet");
        let encoded = |m: &[(&str, i64)]| Encoded::Held(Arc::new(postcard::to_stdvec(&map(m)).unwrap()));
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
        snapshots.record(Part::Usage, 3, &map(&[("a", 1)]), 1);
        snapshots.record(Part::Dedup, 3, &map(&[("x", 9)]), 1);
        snapshots.record(Part::Usage, 7, &map(&[("a", 2)]), 1);
        snapshots.let_go_at(5);
        let parts: Vec<Encoded> = snapshots.parts_at(5).into_iter().map(|(_, encoded)| encoded).collect();
        assert_eq!(parts, [Encoded::Written, Encoded::Written, Encoded::Empty]);
        let after = snapshots.parts_at(8);
        assert_eq!(after[0], (Part::Dedup, Encoded::Written), "unchanged since the shard of epoch 5");
        assert_eq!(after[1], (Part::Usage, Encoded::Held(Arc::new(postcard::to_stdvec(&map(&[("a", 2)])).unwrap()))));
        assert_eq!(snapshots.entries_at(8)[&Part::Dedup], 1, "entries are kept with the bytes let go");
    }

    #[test]
    fn a_shard_restores_only_the_keys_routed_to_each_worker() {
        let resources: Resources = (0..50)
            .map(|i| {
                (
                    ResourceKey { account: format!("acc-{i}").into(), resource: format!("vm-{i}").into() },
                    Resource::default(),
                )
            })
            .collect();
        let parts = vec![(Part::Usage, postcard::to_stdvec(&Stored(&resources)).unwrap())];
        let mut total = 0;
        for worker in 0..3 {
            let mut restored = Restored::new(7, Shared::default());
            restored.add_shard(&parts, worker, 3).unwrap();
            assert!(restored.resources.keys().all(|key| owner(route(key), 3) == worker));
            total += restored.resources.len();
        }
        assert_eq!(total, resources.len(), "every key lands on exactly one worker");
    }
}
