//! Deduplication by `(source, id)`, exchanged by that identity.
//!
//! An epoch's on-time candidates are taken first, in `(partition, offset)`
//! order, then its late ones. The first on-time copy of an identity is
//! accepted; any other copy, late ones included, is a duplicate. A late copy of
//! an identity not accepted by the end of its epoch is rejected as `late`.
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

use serde::ser::{SerializeSeq, Serializer};
use serde::{Deserialize, Serialize};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::StreamVec;
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::Operator;

use super::pending::Pending;
use super::snapshots::PartSnapshots;
use crate::checkpoint::{Part, Recorder};
use crate::event::{Event, Reason};
use crate::identity::{BuildFingerprintHasher, Fingerprint};
use crate::judge::Candidate;
use crate::rows::{Outcomes, Progress, Rejection};
use crate::settings::Settings;
use crate::time::{HOUR, Millis, window_start};

/// What deduplication emits.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Deduped {
    /// Counted from here on.
    Accepted(Event),
    /// A late copy of nothing counted.
    Rejected(Rejection),
    /// Counts for the epoch on this worker.
    Outcomes(Outcomes),
}

/// The identities remembered, filed by the hour of their event time so that
/// expiry takes whole hours at once. Forgetting up to an hour later than the
/// horizon allows changes nothing: the partition stage rejects any copy that
/// far behind. The hour is all that expiry needs of an identity's time.
#[derive(Default)]
pub struct Seen {
    #[expect(clippy::disallowed_types, reason = "looked up by fingerprint only; encoding walks `by_hour`")]
    identities: HashSet<Fingerprint, BuildFingerprintHasher>,
    by_hour: BTreeMap<Millis, Vec<Fingerprint>>,
}

impl Seen {
    /// The identities of a checkpoint.
    pub fn restore(restored: Vec<(Fingerprint, Millis)>) -> Seen {
        let mut seen = Seen::default();
        seen.identities.reserve(restored.len());
        for (identity, time) in restored {
            seen.insert(identity, time);
        }
        seen
    }

    /// Whether `identity` was counted.
    pub fn contains(&self, identity: &Fingerprint) -> bool {
        self.identities.contains(identity)
    }

    /// Remembers `identity`, counted at event time `time`.
    pub fn insert(&mut self, identity: Fingerprint, time: Millis) {
        if self.identities.insert(identity) {
            self.by_hour.entry(window_start(time)).or_default().push(identity);
        }
    }

    /// Forgets the identities counted in hours that ended by `time`.
    pub fn forget_before(&mut self, time: Millis) {
        while let Some(hour) = self.by_hour.first_entry() {
            if hour.key().saturating_add(HOUR) > time {
                break;
            }
            for identity in hour.remove() {
                self.identities.remove(&identity);
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
}

/// Encoded as the sequence of `(fingerprint, hour)`, oldest hour first: one
/// pass over the hours, no lookups.
impl Serialize for Seen {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(Some(self.identities.len()))?;
        for (hour, identities) in &self.by_hour {
            for identity in identities {
                seq.serialize_element(&(identity, hour))?;
            }
        }
        seq.end()
    }
}

/// Deduplicates candidates; `progress` is this worker's copy of the progress.
/// Starts from the identities `restored`, and records its state with `recorder`.
pub(crate) fn dedup<'scope>(
    candidates: StreamVec<'scope, u64, Candidate>,
    progress: StreamVec<'scope, u64, Progress>,
    settings: Settings,
    restored: Vec<(Fingerprint, Millis)>,
    recorder: Recorder,
) -> StreamVec<'scope, u64, Deduped> {
    let by_identity = Exchange::new(|c: &Candidate| c.identity.route());
    candidates.binary_frontier::<_, CapacityContainerBuilder<Vec<Deduped>>, _, _, _, _>(
        progress,
        by_identity,
        Pipeline,
        "Dedup",
        move |capability, _| {
            let mut pending = Pending::<Candidate, Progress>::default();
            let mut seen = Seen::restore(restored);
            let mut snapshots = PartSnapshots::new(recorder, Part::Dedup, capability);
            move |(candidates, candidates_frontier), (progress, progress_frontier), output| {
                let port = output.output_index();
                candidates.for_each(|cap, data| pending.first(&cap, port, data));
                progress.for_each(|cap, data| pending.second(&cap, port, data));
                for (time, mut epoch) in pending.complete(&[candidates_frontier, progress_frontier]) {
                    snapshots.before(time, &seen, seen.len());
                    let mut session = output.session(&epoch.capability);
                    let mut outcomes = Outcomes::default();
                    epoch.first.sort_unstable_by_key(|c| (c.late.is_some(), c.partition, c.offset));
                    for candidate in epoch.first {
                        let identity = candidate.identity;
                        if seen.contains(&identity) {
                            outcomes.duplicates += 1;
                        } else if let Some(late) = candidate.late {
                            let late = *late;
                            session.give(Deduped::Rejected(Rejection::of(late.message, Reason::Late, late.detail)));
                        } else {
                            seen.insert(identity, candidate.event.time());
                            outcomes.accepted += 1;
                            session.give(Deduped::Accepted(candidate.event));
                        }
                    }
                    if outcomes != Outcomes::default() {
                        session.give(Deduped::Outcomes(outcomes));
                    }
                    if let Some(watermark) = epoch.second.last().and_then(|p| p.watermark) {
                        seen.forget_before(watermark.saturating_sub(settings.dedup_horizon));
                    }
                    snapshots.worked(time);
                }
                snapshots.after(&[candidates_frontier, progress_frontier], &seen, seen.len());
            }
        },
    )
}
