//! Deduplication by `(source, id)`, of claims exchanged by that identity.
//!
//! The events themselves go from the partition stage to the usage stage; a
//! claim is their identity and where they were read. An epoch's on-time
//! claims are taken first, in `(partition, offset)` order, then its late
//! ones. The first on-time copy of an identity is accepted; any other copy,
//! late ones included, is a duplicate, and the usage stage is told to leave
//! an on-time duplicate's event out. A late copy of an identity not
//! accepted by the end of its epoch is rejected as `late`.
//! Copies of one identity are expected to be the same event; a late copy and an
//! on-time copy on different partitions in different epochs are judged in
//! epoch order (only that late copy's `rejected_events` entry can differ
//! between runs, never the money). Identities are remembered until the
//! watermark passes the end of their event time's hour by the dedup horizon;
//! the partition stage rejects anything further behind, so a remembered
//! identity is never needed after it is forgotten.

use std::collections::BTreeMap;
#[expect(clippy::disallowed_types, reason = "looked up by fingerprint only; encoding walks `by_hour`")]
use std::collections::HashSet;
use std::collections::btree_map::Entry;
use std::ops::Range;

use timely::dataflow::StreamVec;
use timely::dataflow::channels::pact::Exchange;

use super::outputs::{One, Ports};
use super::pending::{Batches, Pending};
use super::snapshots::stateful;
use super::usage::UsageIn;
use crate::checkpoint::{DedupPart, Part, Pieces, Record, Recorded, Recorder, RestoredSeen, SegmentId, pieces};
use crate::event::{Partition, Reason};
use crate::identity::{BuildFingerprintHasher, Fingerprint};
use crate::judge::{Arrival, Claim};
use crate::rows::{Outcomes, Progress, Rejection};
use crate::settings::Settings;
use crate::time::{HOUR, Millis, window_start};

/// The identities remembered, filed by the hour of their event time so that
/// expiry takes whole hours at once. Forgetting up to an hour later than the
/// horizon allows changes nothing: the partition stage rejects any copy that
/// far behind. The hour is all that expiry needs of an identity's time.
///
/// # Checkpoints in segments
///
/// A worker remembers every identity of the horizon (a day and an hour of
/// events by default), and writing them all at every checkpoint would cost
/// time in proportion to the horizon, not to the events since the last one.
/// Each hour's identities are kept in the order they were first seen, so the
/// identities seen since the last checkpoint are, per hour, a run at the end
/// of its list. A checkpoint writes them as a new *segment*, an object of its
/// own that later shards name instead of holding; a restore reads the
/// segments in order and rebuilds the same lists.
///
/// Segments are merged as a binary counter merges: while the newest segment
/// holds no more live identities than the new one, it is taken into it. Per
/// hour the merged runs are adjacent, so the merged segment is encoded from
/// memory, and what expired on the way is left out. There are then at most
/// about log2(checkpoints per horizon) segments, and an identity is written
/// that many times at most, instead of at every checkpoint. Hours expire
/// from every segment at once; a segment with nothing live left is dropped.
pub struct Seen {
    #[expect(clippy::disallowed_types, reason = "looked up by fingerprint only; encoding walks `by_hour`")]
    identities: HashSet<Fingerprint, BuildFingerprintHasher>,
    by_hour: BTreeMap<Millis, Vec<Fingerprint>>,
    /// The segments holding the written identities, oldest first.
    segments: Vec<Segment>,
    /// This worker and the worker count, which name its segments.
    worker: (usize, usize),
}

/// A written segment: per hour, the run of that hour's identities it holds.
struct Segment {
    id: SegmentId,
    bytes: u64,
    runs: BTreeMap<Millis, Range<usize>>,
}

fn live(runs: &BTreeMap<Millis, Range<usize>>) -> usize {
    runs.values().map(ExactSizeIterator::len).sum()
}

impl Seen {
    /// Nothing remembered, on `worker` of `workers`.
    pub fn new(worker: usize, workers: usize) -> Seen {
        Seen {
            identities: Default::default(),
            by_hour: BTreeMap::new(),
            segments: Vec::new(),
            worker: (worker, workers),
        }
    }

    /// The identities of a checkpoint: its segments as they are, then the
    /// loose identities, to be written in the next segment.
    pub fn restore(restored: RestoredSeen, worker: usize, workers: usize) -> Seen {
        let mut seen = Seen::new(worker, workers);
        seen.identities.reserve(restored.len());
        for (id, bytes, hours) in restored.segments {
            let mut runs = BTreeMap::new();
            for (hour, identities) in hours {
                let held = seen.by_hour.entry(hour).or_default();
                let start = held.len();
                for identity in identities {
                    if seen.identities.insert(identity) {
                        held.push(identity);
                    }
                }
                if held.len() > start {
                    runs.insert(hour, start..held.len());
                }
            }
            seen.segments.push(Segment { id, bytes, runs });
        }
        for (identity, time) in restored.loose {
            seen.insert(identity, time);
        }
        seen
    }

    /// Whether `identity` was counted.
    pub fn contains(&self, identity: &Fingerprint) -> bool {
        self.identities.contains(identity)
    }

    /// Remembers `identity`, counted at event time `time`; false when it was
    /// remembered already.
    pub fn insert(&mut self, identity: Fingerprint, time: Millis) -> bool {
        let new = self.identities.insert(identity);
        if new {
            self.by_hour.entry(window_start(time)).or_default().push(identity);
        }
        new
    }

    /// Forgets the identities counted in hours that ended by `time`.
    pub fn forget_before(&mut self, time: Millis) {
        while let Some(hour) = self.by_hour.first_entry() {
            if hour.key().saturating_add(HOUR) > time {
                break;
            }
            let (hour, identities) = hour.remove_entry();
            for identity in identities {
                self.identities.remove(&identity);
            }
            for segment in &mut self.segments {
                segment.runs.remove(&hour);
            }
        }
    }

    /// How many identities are remembered.
    pub fn len(&self) -> usize {
        self.identities.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.identities.is_empty()
    }

    /// The segment to write for `epoch`, if anything is new: the identities
    /// seen since the last one, merged with the newest segments while those
    /// hold no more (see the type's documentation).
    fn next_segment(&mut self, epoch: u64) -> Option<(SegmentId, Pieces)> {
        self.segments.retain(|segment| !segment.runs.is_empty());
        let mut runs: BTreeMap<Millis, Range<usize>> = self
            .by_hour
            .iter()
            .filter_map(|(hour, identities)| {
                // Segments hold each hour's first identities, the newest up to its run's end.
                let written = self.segments.iter().rev().find_map(|s| s.runs.get(hour)).map_or(0, |run| run.end);
                (written < identities.len()).then_some((*hour, written..identities.len()))
            })
            .collect();
        if runs.is_empty() {
            return None;
        }
        while let Some(newest) = self.segments.last()
            && live(&newest.runs) <= live(&runs)
        {
            let newest = self.segments.pop().expect("a newest segment");
            for (hour, earlier) in newest.runs {
                match runs.entry(hour) {
                    Entry::Vacant(vacant) => {
                        vacant.insert(earlier);
                    }
                    Entry::Occupied(mut later) => {
                        debug_assert_eq!(earlier.end, later.get().start, "runs of one hour are adjacent");
                        later.get_mut().start = earlier.start;
                    }
                }
            }
        }
        let hours: Vec<(Millis, &[Fingerprint])> =
            runs.iter().map(|(hour, run)| (*hour, &self.by_hour[hour][run.clone()])).collect();
        let bytes = encode_hours(&hours);
        let (worker, workers) = self.worker;
        let id = SegmentId { epoch, worker, workers };
        self.segments.push(Segment { id, bytes: bytes.iter().map(|piece| piece.len() as u64).sum(), runs });
        Some((id, bytes))
    }
}

/// A segment's identities by the hour, as postcard encodes them, each
/// fingerprint's bytes written at once (see [`pieces::encode_with`]).
fn encode_hours(hours: &[(Millis, &[Fingerprint])]) -> Pieces {
    pieces::encode_with(|encoder| {
        encoder.value(&hours.len());
        for &(hour, identities) in hours {
            encoder.value(&(hour, identities.len()));
            for identity in identities {
                encoder.array(identity.bytes());
            }
        }
    })
}

/// Recorded as the segments that hold every identity, after writing the
/// new one.
impl Record for Seen {
    fn record(&mut self, epoch: u64) -> Recorded {
        let new_segment = self.next_segment(epoch);
        let part = DedupPart { segments: self.segments.iter().map(|s| s.id).collect(), inline: Vec::new() };
        Recorded {
            bytes: pieces::encode(&part),
            entries: self.len(),
            segments: self.segments.iter().map(|s| (s.id, s.bytes)).collect(),
            new_segment,
            chunks: Vec::new(),
        }
    }
}

/// What deduplication emits: the on-time events that do not count, for
/// the usage stage, the late copies of nothing counted, and the epoch's
/// counts on this worker.
pub(crate) type Deduped<'scope> =
    (StreamVec<'scope, u64, UsageIn>, StreamVec<'scope, u64, Rejection>, StreamVec<'scope, u64, Outcomes>);

/// Deduplicates claims; `progress` is this worker's copy of the progress.
/// Starts from the identities `seen`, and records its state with `recorder`.
/// The second stream holds back each checkpoint epoch until its snapshot is
/// recorded.
pub(crate) fn dedup<'scope>(
    claims: StreamVec<'scope, u64, Claim>,
    progress: StreamVec<'scope, u64, Progress>,
    settings: Settings,
    mut seen: Seen,
    recorder: Recorder,
) -> (Deduped<'scope>, StreamVec<'scope, u64, ()>) {
    let by_identity = Exchange::new(|c: &Claim| c.identity.route());
    let part = (recorder, Part::Dedup);
    type Outputs = (One<UsageIn>, One<Rejection>, One<Outcomes>);
    stateful::<_, Outputs, _, _, _>(claims, progress, by_identity, "Dedup", part, move |mut snapshots, _| {
        let mut pending = Pending::<Claim, Progress, 3>::default();
        move |(claims, claims_frontier), (progress, progress_frontier), output| {
            let ports = output.ports();
            claims.for_each(|cap, data| pending.first(&cap, ports, data));
            progress.for_each(|cap, data| pending.second(&cap, ports, data));
            for (time, epoch) in pending.complete(&[claims_frontier, progress_frontier]) {
                snapshots.before(time, &mut seen);
                let [duplicates_at, rejected_at, outcomes_at] = &epoch.capabilities;
                let mut duplicates = output.0.session(duplicates_at);
                let mut rejected = output.1.session(rejected_at);
                let mut outcomes = Outcomes::default();
                for claim in in_dedup_order(epoch.first) {
                    // An on-time claim is looked up by inserting it: the
                    // set holds every identity of the horizon, and each
                    // probe of it is a miss in the cache.
                    match claim.arrival {
                        Arrival::OnTime { .. } if seen.insert(claim.identity, claim.time) => outcomes.accepted += 1,
                        Arrival::OnTime { route, read_at } => {
                            outcomes.duplicates += 1;
                            duplicates.give(UsageIn::Duplicate { route, at: read_at });
                        }
                        Arrival::Late(late) if !seen.contains(&claim.identity) => {
                            let late = *late;
                            rejected.give(Rejection::of(late.message, Reason::Late, late.detail));
                        }
                        Arrival::Late(_) => outcomes.duplicates += 1,
                    }
                }
                if outcomes != Outcomes::default() {
                    output.2.session(outcomes_at).give(outcomes);
                }
                if let Some(watermark) = epoch.second.last().and_then(|p| p.watermark) {
                    seen.forget_before(watermark.saturating_sub(settings.dedup_horizon));
                }
                snapshots.worked(time);
            }
            snapshots.after(&[claims_frontier, progress_frontier], &mut seen);
        }
    })
}

/// An epoch's claims on time first, each part in `(partition, offset)`
/// order.
///
/// A partition's claims all come from the worker that reads it, in the
/// order it read them: offset order. So the claims are placed by
/// `(late, partition)` alone, keeping their order within each (a counting
/// sort), and each part's order is checked, which is all a sort of a
/// sorted run does. A sort of the whole epoch by `(late, partition,
/// offset)` had been 4% of a worker's instructions (10,000 claims an
/// epoch, the partitions interleaved as they were read). Only their
/// positions move: filed into a vector each, the claims themselves took
/// a live catch-up's peak 50 MiB higher. Held in room for all of them
/// from the start: grown by doubling, the claims were copied again.
fn in_dedup_order(arrived: Batches<Claim>) -> impl Iterator<Item = Claim> {
    let mut files = Files::default();
    let (mut claims, mut file_of) = (Vec::with_capacity(arrived.len()), Vec::with_capacity(arrived.len()));
    for claim in arrived {
        file_of.push(files.file_of(&claim));
        claims.push(Some(claim));
    }
    let parts = files.parts();
    let mut positions = files.positions(&file_of, &parts);
    for (_, part) in parts {
        positions[part].sort_unstable_by_key(|&index| claims[index as usize].as_ref().map(|claim| claim.offset));
    }
    positions.into_iter().map(move |index| claims[index as usize].take().expect("each claim is placed once"))
}

/// What deduplication files an epoch's claims under: late or not, and
/// their partition.
type FileKey = (bool, Partition);

/// The files of an epoch's claims, numbered as they are first met.
#[derive(Default)]
struct Files {
    numbers: foldhash::HashMap<FileKey, u32>,
    keys: Vec<FileKey>,
    counts: Vec<usize>,
    /// Claims of one partition come in runs as a source reads them: the
    /// last file is looked up first.
    last: Option<(FileKey, u32)>,
}

impl Files {
    /// The number of `claim`'s file, counting it there.
    fn file_of(&mut self, claim: &Claim) -> u32 {
        let key = (matches!(claim.arrival, Arrival::Late(_)), claim.partition);
        let number = match self.last {
            Some((held, number)) if held == key => number,
            _ => *self.numbers.entry(key).or_insert_with(|| {
                self.keys.push(key);
                self.counts.push(0);
                u32::try_from(self.keys.len() - 1).expect("fewer than 2^32 files")
            }),
        };
        self.last = Some((key, number));
        self.counts[number as usize] += 1;
        number
    }

    /// The files in key order: each one's number and its range of
    /// [`Files::positions`].
    fn parts(&self) -> Vec<(usize, std::ops::Range<usize>)> {
        let mut order: Vec<usize> = (0..self.keys.len()).collect();
        order.sort_unstable_by_key(|&number| self.keys[number]);
        let mut at = 0;
        order
            .into_iter()
            .map(|number| {
                let part = at..at + self.counts[number];
                at = part.end;
                (number, part)
            })
            .collect()
    }

    /// The claims' indices placed file by file into `parts`, each file's
    /// in the order they came.
    fn positions(&self, file_of: &[u32], parts: &[(usize, std::ops::Range<usize>)]) -> Vec<u32> {
        let mut next = vec![0; self.keys.len()];
        for (number, part) in parts {
            next[*number] = part.start;
        }
        let mut positions = vec![0; file_of.len()];
        for (index, &number) in (0u32..).zip(file_of) {
            let slot = &mut next[number as usize];
            positions[*slot] = index;
            *slot += 1;
        }
        positions
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::{Restored, SegmentHours, Shared, dedup_part_of_format_3, owner};
    use crate::event::{Offset, Partition};
    use crate::identity::IdentityHash;
    use crate::routing::Routing;
    use crate::time::DAY;

    fn identity(n: u64) -> Fingerprint {
        IdentityHash::SipHash([1, 2]).fingerprint("test", &n.to_string())
    }

    /// Remembers identities `range`, one a minute from `start`.
    fn see(seen: &mut Seen, range: Range<u64>, start: Millis) {
        for n in range {
            seen.insert(identity(n), start + n as Millis * 60_000);
        }
    }

    /// A checkpoint of `seen` at `epoch` as a store would hold it: the
    /// shard's dedup part, and every segment written so far.
    fn checkpoint(seen: &mut Seen, epoch: u64, written: &mut BTreeMap<SegmentId, Vec<u8>>) -> Vec<(Part, Vec<u8>)> {
        let recorded = seen.record(epoch);
        written.extend(recorded.new_segment.map(|(id, bytes)| (id, pieces::joined(&bytes))));
        vec![(Part::Dedup, pieces::joined(&recorded.bytes))]
    }

    fn restore(
        parts: &[(Part, Vec<u8>)],
        written: &BTreeMap<SegmentId, Vec<u8>>,
        worker: usize,
        workers: usize,
    ) -> Seen {
        let mut restored = Restored::new(0, Shared::default());
        restored.add_shard(parts, (written, &BTreeMap::new()), worker, (workers, Routing::Hashed)).unwrap();
        Seen::restore(restored.seen, worker, workers)
    }

    fn held(seen: &Seen) -> BTreeMap<Millis, Vec<Fingerprint>> {
        seen.by_hour.clone()
    }

    fn claim(partition: Partition, offset: Offset, late: bool) -> Claim {
        use crate::event::Message;
        use crate::judge::LateCopy;
        let arrival = if late {
            let message = Message { partition, offset, timestamp: 0, payload: Vec::new() };
            Arrival::Late(Box::new(LateCopy { message, detail: String::new() }))
        } else {
            Arrival::OnTime { route: 0, read_at: (0, 0) }
        };
        Claim { identity: identity(offset as u64), time: 0, partition, offset, arrival }
    }

    #[test]
    fn claims_come_on_time_first_each_in_partition_and_offset_order() {
        let arrived =
            [(1, 7, false), (0, 9, true), (0, 3, false), (1, 2, false), (0, 1, true), (0, 5, false), (1, 4, true)];
        let mut earlier: Vec<_> = arrived.iter().map(|&(p, o, l)| claim(p, o, l)).collect();
        let later = earlier.split_off(3);
        let ordered: Vec<_> = in_dedup_order(Batches::from(vec![earlier, later]))
            .map(|c| (c.partition, c.offset, matches!(c.arrival, Arrival::Late(_))))
            .collect();
        let expected =
            [(0, 3, false), (0, 5, false), (1, 2, false), (1, 7, false), (0, 1, true), (0, 9, true), (1, 4, true)];
        assert_eq!(ordered, expected);
    }

    proptest::proptest! {
        /// Any interleaving of partitions each read in offset order, cut
        /// into any batches, comes out as a sort by the whole key would
        /// order it.
        #[test]
        fn claims_come_out_as_sorted_by_late_partition_and_offset(
            keys in proptest::collection::btree_set((0u32..6, -3i64..40), 0..60),
            lateness in proptest::collection::vec(proptest::bool::weighted(0.2), 60),
            order in proptest::collection::vec(proptest::num::u64::ANY, 60),
            cuts in proptest::collection::vec(0usize..60, 0..5),
        ) {
            // Interleaved at random, each partition's offsets still ascending.
            let mut by_partition: BTreeMap<Partition, Vec<Offset>> = BTreeMap::new();
            for &(partition, offset) in &keys {
                by_partition.entry(partition).or_default().push(offset);
            }
            let mut arrived: Vec<(u64, Partition, Offset)> = Vec::new();
            for (partition, offsets) in by_partition {
                let mut draws: Vec<u64> = order.iter().copied().skip(arrived.len()).take(offsets.len()).collect();
                draws.sort_unstable();
                arrived.extend(draws.into_iter().zip(offsets).map(|(draw, offset)| (draw, partition, offset)));
            }
            arrived.sort_by_key(|&(draw, ..)| draw);
            let claims: Vec<Claim> =
                arrived.iter().zip(&lateness).map(|(&(_, p, o), &late)| claim(p, o, late)).collect();
            let mut expected: Vec<_> =
                claims.iter().map(|c| (matches!(c.arrival, Arrival::Late(_)), c.partition, c.offset)).collect();
            expected.sort_unstable();
            let mut batches = vec![claims];
            for cut in cuts {
                let last = batches.last_mut().unwrap();
                let rest = last.split_off(cut.min(last.len()));
                batches.push(rest);
            }
            let ordered: Vec<_> = in_dedup_order(Batches::from(batches))
                .map(|c| (matches!(c.arrival, Arrival::Late(_)), c.partition, c.offset))
                .collect();
            proptest::prop_assert_eq!(ordered, expected);
        }

        /// Segments written by hand are what postcard writes,
        /// lengths and hours of any varint width (a run past 127 takes
        /// two bytes), far into the past included.
        #[test]
        fn segments_encode_as_postcard_does(
            hours in proptest::collection::vec((proptest::num::i64::ANY, 0usize..300), 0..5),
        ) {
            let identities: Vec<Fingerprint> = (0..300).map(identity).collect();
            let hours: Vec<(Millis, &[Fingerprint])> =
                hours.iter().map(|&(hour, count)| (hour, &identities[..count])).collect();
            proptest::prop_assert_eq!(pieces::joined(&encode_hours(&hours)), postcard::to_stdvec(&hours).unwrap());
        }
    }

    #[test]
    fn a_checkpoint_writes_only_what_is_new_and_restores_whole() {
        let mut seen = Seen::new(0, 1);
        let mut written = BTreeMap::new();
        see(&mut seen, 0..100, 0);
        let first = checkpoint(&mut seen, 5, &mut written);
        assert_eq!(seen.segments.len(), 1);
        see(&mut seen, 100..130, 0);
        let parts = checkpoint(&mut seen, 10, &mut written);
        let newest = &written[&SegmentId { epoch: 10, worker: 0, workers: 1 }];
        let hours: SegmentHours = postcard::from_bytes(newest).unwrap();
        assert_eq!(hours.iter().map(|(_, ids)| ids.len()).sum::<usize>(), 30, "only the identities since epoch 5");
        assert_eq!(seen.segments.len(), 2, "30 new identities do not merge into 100");
        assert!(seen.record(15).new_segment.is_none(), "nothing new, nothing written");

        let restored = restore(&parts, &written, 0, 1);
        assert_eq!(held(&restored), held(&seen));
        assert_eq!(
            restored.segments.iter().map(|s| s.id).collect::<Vec<_>>(),
            [5, 10].map(|epoch| SegmentId { epoch, worker: 0, workers: 1 })
        );
        let at_five = restore(&first, &written, 0, 1);
        assert_eq!(at_five.len(), 100, "an older shard names only the segments of its time");
    }

    #[test]
    fn segments_merge_as_a_binary_counter_and_leave_out_what_expired() {
        let mut seen = Seen::new(0, 1);
        let mut written = BTreeMap::new();
        let mut parts = Vec::new();
        let mut writes = 0;
        for epoch in 1..=64u64 {
            see(&mut seen, (epoch - 1) * 10..epoch * 10, 0);
            parts = checkpoint(&mut seen, epoch, &mut written);
            let newest = seen.segments.last().unwrap();
            writes += live(&newest.runs);
            assert!(seen.segments.len() <= 7, "{} segments after {epoch} checkpoints", seen.segments.len());
            let sizes: Vec<usize> = seen.segments.iter().map(|s| live(&s.runs)).collect();
            assert!(sizes.windows(2).all(|pair| pair[0] > pair[1]), "sizes fall from oldest to newest: {sizes:?}");
        }
        assert_eq!(seen.segments.len(), 1, "64 equal checkpoints merge into one");
        assert!(writes <= 640 * 7, "each identity is written at most log2(64) + 1 times, not 64: {writes}");
        assert_eq!(held(&restore(&parts, &written, 0, 1)), held(&seen));

        // Identities n are at minute n: forgetting the first five hours leaves 340.
        seen.forget_before(5 * HOUR);
        see(&mut seen, 640..650, 0);
        let parts = checkpoint(&mut seen, 65, &mut written);
        let newest: SegmentHours = postcard::from_bytes(&written[&seen.segments.last().unwrap().id]).unwrap();
        assert_eq!(newest.iter().map(|(_, ids)| ids.len()).sum::<usize>(), 10);
        let mut restored = restore(&parts, &written, 0, 1);
        assert_eq!(restored.len(), 650, "the older segment still holds what expired since it was written");
        restored.forget_before(5 * HOUR);
        assert_eq!(held(&restored), held(&seen), "and the restored run's first epoch forgets it again");
        // 340 new identities take in the 10, then the 340 live of the old segment.
        see(&mut seen, 650..990, 0);
        let parts = checkpoint(&mut seen, 66, &mut written);
        let newest: SegmentHours = postcard::from_bytes(&written[&seen.segments.last().unwrap().id]).unwrap();
        assert_eq!(newest.iter().map(|(_, ids)| ids.len()).sum::<usize>(), 690, "merged without what expired");
        assert_eq!(seen.segments.len(), 1);
        assert_eq!(restore(&parts, &written, 0, 1).len(), 690);
        seen.forget_before(DAY);
        assert!(seen.is_empty());
        let parts = checkpoint(&mut seen, 67, &mut written);
        assert!(seen.segments.is_empty(), "segments with nothing live are dropped");
        assert!(restore(&parts, &written, 0, 1).is_empty());
    }

    #[test]
    fn another_worker_count_takes_its_share_and_writes_it_anew() {
        let mut written = BTreeMap::new();
        let shards: Vec<Vec<(Part, Vec<u8>)>> = (0..2)
            .map(|worker| {
                let mut seen = Seen::new(worker, 2);
                see(&mut seen, (worker as u64 * 100)..(worker as u64 * 100 + 100), 0);
                checkpoint(&mut seen, 4, &mut written);
                see(&mut seen, (worker as u64 * 100 + 1000)..(worker as u64 * 100 + 1010), 0);
                checkpoint(&mut seen, 8, &mut written)
            })
            .collect();
        let mut total = 0;
        for worker in 0..3 {
            let mut restored = Restored::new(8, Shared::default());
            for shard in &shards {
                restored.add_shard(shard, (&written, &BTreeMap::new()), worker, (3, Routing::Hashed)).unwrap();
            }
            let mut seen = Seen::restore(restored.seen, worker, 3);
            assert!(seen.identities.iter().all(|identity| owner(identity.route(), 3) == worker));
            total += seen.len();
            let recorded = seen.record(8);
            let (id, _) = recorded.new_segment.expect("the share is written again");
            assert_eq!((id.worker, id.workers), (worker, 3));
        }
        assert_eq!(total, 220, "every identity on exactly one worker");
    }

    #[test]
    fn shards_of_format_3_hold_their_identities_inline() {
        let inline = vec![(identity(1), 3 * HOUR), (identity(2), 4 * HOUR + 5)];
        let old = postcard::to_stdvec(&inline).unwrap();
        let parts = vec![(Part::Dedup, dedup_part_of_format_3(&old).unwrap())];
        let mut seen = restore(&parts, &BTreeMap::new(), 0, 1);
        assert!(seen.contains(&identity(1)) && seen.contains(&identity(2)));
        assert_eq!(seen.by_hour.keys().copied().collect::<Vec<_>>(), [3 * HOUR, 4 * HOUR]);
        assert!(seen.record(9).new_segment.is_some(), "written into a segment at the next checkpoint");
    }

    #[test]
    fn a_shard_naming_a_missing_segment_is_refused() {
        let mut seen = Seen::new(0, 1);
        see(&mut seen, 0..10, 0);
        let parts = checkpoint(&mut seen, 3, &mut BTreeMap::new());
        let mut restored = Restored::new(3, Shared::default());
        let error = restored
            .add_shard(&parts, (&BTreeMap::new(), &BTreeMap::new()), 0, (1, Routing::Hashed))
            .unwrap_err()
            .to_string();
        assert!(error.contains("is missing"), "{error}");
    }
}
