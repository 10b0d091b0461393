//! Deduplication by `(source, id)`, exchanged by that identity.
//!
//! An epoch's on-time candidates are taken first, in `(partition, offset)`
//! order, then its late ones. The first on-time copy of an identity is
//! accepted; any other copy, late ones included, is a duplicate. A late copy of
//! an identity not accepted by the end of its epoch is rejected as `late`.
//! Copies of one identity are expected to be the same event; a late copy and an
//! on-time copy on different partitions in different epochs are judged in
//! epoch order (only that late copy's `rejected_events` entry can differ
//! between runs, never the money). Identities are remembered until the watermark passes their event
//! time by the dedup horizon; the partition stage rejects anything further
//! behind, so a remembered identity is never needed after it is forgotten.

use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;

use serde::{Deserialize, Serialize};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::StreamVec;
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::Operator;

use super::pending::Pending;
use super::route;
use crate::checkpoint::{Identity, Part, Recorder};
use crate::event::{Event, Reason};
use crate::judge::Candidate;
use crate::rows::{Outcomes, Progress, Rejection};
use crate::settings::Settings;
use crate::time::Millis;

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

/// The identities remembered, with their event times for expiry. Each
/// identity is held once, shared by both indexes.
#[derive(Default)]
pub struct Seen {
    times: BTreeMap<Rc<Identity>, Millis>,
    by_time: BTreeSet<(Millis, Rc<Identity>)>,
}

impl Seen {
    /// The identities of a checkpoint.
    pub fn restore(restored: BTreeMap<Identity, Millis>) -> Seen {
        let mut seen = Seen::default();
        for (identity, time) in restored {
            seen.insert(identity, time);
        }
        seen
    }

    /// Whether `identity` was counted.
    pub fn contains(&self, identity: &Identity) -> bool {
        self.times.contains_key(identity)
    }

    /// Remembers `identity`, counted at event time `time`.
    pub fn insert(&mut self, identity: Identity, time: Millis) {
        let identity = Rc::new(identity);
        self.by_time.insert((time, Rc::clone(&identity)));
        self.times.insert(identity, time);
    }

    /// Forgets every identity counted before `time`.
    pub fn forget_before(&mut self, time: Millis) {
        while self.by_time.first().is_some_and(|(t, _)| *t < time) {
            if let Some((_, identity)) = self.by_time.pop_first() {
                self.times.remove(&*identity);
            }
        }
    }
}

/// Deduplicates candidates; `progress` is this worker's copy of the progress.
/// Starts from the identities `restored`, and records its state with `recorder`.
pub(crate) fn dedup<'scope>(
    candidates: StreamVec<'scope, u64, Candidate>,
    progress: StreamVec<'scope, u64, Progress>,
    settings: Settings,
    restored: BTreeMap<Identity, Millis>,
    recorder: Recorder,
) -> StreamVec<'scope, u64, Deduped> {
    let by_identity = Exchange::new(|c: &Candidate| route(&(&c.event.order.source, &c.event.order.id)));
    candidates.binary_frontier::<_, CapacityContainerBuilder<Vec<Deduped>>, _, _, _, _>(
        progress,
        by_identity,
        Pipeline,
        "Dedup",
        move |_, _| {
            let mut pending = Pending::<Candidate, Progress>::default();
            let mut seen = Seen::restore(restored);
            move |(candidates, candidates_frontier), (progress, progress_frontier), output| {
                let port = output.output_index();
                candidates.for_each(|cap, data| pending.first(&cap, port, data));
                progress.for_each(|cap, data| pending.second(&cap, port, data));
                for (time, mut epoch) in pending.complete(&[candidates_frontier, progress_frontier]) {
                    let mut session = output.session(&epoch.capability);
                    let mut outcomes = Outcomes::default();
                    epoch.first.sort_unstable_by_key(|c| (c.late.is_some(), c.partition, c.offset));
                    for candidate in epoch.first {
                        let order = &candidate.event.order;
                        let identity = (order.source.clone(), order.id.clone());
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
                    recorder.record(Part::Dedup, time, &seen.times);
                }
            }
        },
    )
}
