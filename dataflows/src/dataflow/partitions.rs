//! The partition-local stage and the watermark.
//!
//! `judge` runs on the worker that reads each partition (no exchange) and
//! decides everything that depends on partition order alone. It handles epoch
//! `e` only once it knows the progress of epoch `e - 1` (fed back through a
//! loop), so that it can reject an event aimed at a window already final.
//! `watermark` sees every partition's clock (the reports are broadcast) and
//! emits the same [`Progress`] on every worker for every epoch that moved a
//! clock, and for the checkpoint epoch that moves accrual held behind the
//! watermark (see `Progress::accruing_at`) when no clock moves then.

use std::collections::BTreeMap;
use std::sync::Arc;

use timely::container::CapacityContainerBuilder;
use timely::dataflow::StreamVec;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::operators::{Capability, Operator};

use super::outputs::{One, Outputs, Ports};
use super::pending::Pending;
use super::usage::UsageIn;
use crate::checkpoint::{Cadence, Recorder, Shared};
use crate::event::Partition;
use crate::identity::IdentityHash;
use crate::intern::Interner;
use crate::judge::{Claim, ClockReport, Decoded, PartitionClock, PartitionState, SourceItem, Verdict};
use crate::prices::PriceList;
use crate::routing::Routing;
use crate::rows::{Progress, Rejection};
use crate::settings::Settings;
use crate::time::{Millis, window_start};

/// What the partition stage emits: on-time events for the usage stage, the
/// claims of well-formed events for deduplication, messages rejected on
/// their partition, and each partition's clock after an epoch that moved
/// it.
pub(crate) type Judged<'scope> = (
    StreamVec<'scope, u64, UsageIn>,
    StreamVec<'scope, u64, Claim>,
    StreamVec<'scope, u64, Rejection>,
    StreamVec<'scope, u64, ClockReport>,
);

/// A source item held until its epoch's turn, its message already decoded.
enum Arrived {
    Message(Decoded),
    Status { partition: Partition, state: PartitionState },
}

/// Judges each worker's partitions in offset order; `previous` is the progress
/// of the epoch before, fed back. On-time events go to their resources'
/// workers by `routing`; identities are fingerprinted with `identities`.
/// Starts from the clocks and progress `restored`.
pub(crate) fn judge<'scope>(
    source: StreamVec<'scope, u64, SourceItem>,
    previous: StreamVec<'scope, u64, Progress>,
    (prices, identities): (Arc<PriceList>, IdentityHash),
    (settings, routing): (Settings, Routing),
    restored: Shared,
) -> Judged<'scope> {
    // This worker, as `ReadAt` names where an event was read.
    let reader = u16::try_from(source.scope().index()).expect("fewer than 65,536 workers");
    let mut builder = OperatorBuilder::new("JudgePartitions".to_owned(), source.scope());
    let mut source = builder.new_input(source, Pipeline);
    let mut previous = builder.new_input(previous, Pipeline);
    let (mut outputs, streams) = <(One<_>, One<_>, One<_>, One<_>)>::new(&mut builder);
    builder.build(move |_| {
        let mut pending = Pending::<Arrived, Progress, 4>::default();
        let Shared { mut clocks, mut progress } = restored;
        let mut interner = Interner::default();
        move |frontiers| {
            let output = outputs.activate();
            let ports = output.ports();
            let (mut events, mut claims, mut rejections, mut reports) = output;
            source.for_each(|cap, data| {
                let mut arrived = data
                    .drain(..)
                    .map(|item| match item {
                        SourceItem::Message(message) => {
                            Arrived::Message(Decoded::of(message, (&prices, identities), &mut interner))
                        }
                        SourceItem::Status { partition, state } => Arrived::Status { partition, state },
                    })
                    .collect();
                pending.first(&cap, ports, &mut arrived);
            });
            previous.for_each(|cap, data| pending.second(&cap, ports, data));
            for (_, epoch) in pending.complete(&[&frontiers[0], &frontiers[1]]) {
                if let Some(&last) = epoch.second.last() {
                    progress = last;
                }
                let [events_at, claims_at, rejections_at, reports_at] = &epoch.capabilities;
                let (mut events, mut claims, mut rejections) =
                    (events.session(events_at), claims.session(claims_at), rejections.session(rejections_at));
                let mut touched = Vec::new();
                let mut read: u32 = 0;
                for item in epoch.first {
                    match item {
                        Arrived::Status { partition, state } => {
                            clocks.entry(partition).or_default().state = state;
                            touched.push(partition);
                        }
                        Arrived::Message(decoded) => {
                            let partition = decoded.message.partition;
                            let clock = clocks.entry(partition).or_default();
                            if clock.state == PartitionState::Idle {
                                clock.state = PartitionState::Active;
                            }
                            let read_at = (reader, read);
                            read = read.checked_add(1).expect("fewer than 2^32 messages an epoch on a worker");
                            match clock.judge(decoded, (read_at, routing), &settings, progress.final_before) {
                                Verdict::Rejected(rejection) => rejections.give(rejection),
                                Verdict::OnTime(event, claim) => {
                                    events.give(UsageIn::Event(event));
                                    claims.give(claim);
                                }
                                Verdict::Late(claim) => claims.give(claim),
                            }
                            // Runs of one partition are usual: the
                            // sort below then has a few to order, not
                            // one per message.
                            if touched.last() != Some(&partition) {
                                touched.push(partition);
                            }
                        }
                    }
                }
                touched.sort_unstable();
                touched.dedup();
                let reported =
                    touched.into_iter().map(|partition| ClockReport { partition, clock: clocks[&partition] });
                reports.session(reports_at).give_iterator(reported);
            }
        }
    });
    streams
}

/// Computes the watermark from every partition's clock; runs on every worker
/// with the reports broadcast, so each emits the same progress. Starts from
/// the clocks and progress `restored`, and records them with `recorder`.
pub(crate) fn watermark<'scope>(
    reports: StreamVec<'scope, u64, ClockReport>,
    settings: Settings,
    restored: Shared,
    recorder: Recorder,
) -> StreamVec<'scope, u64, Progress> {
    reports.unary_frontier::<CapacityContainerBuilder<Vec<Progress>>, _, _, _>(Pipeline, "Watermark", move |_, _| {
        let mut pending = Pending::<ClockReport, ()>::default();
        let Shared { mut clocks, mut progress } = restored;
        // While accrual is held behind the watermark: the checkpoint epoch
        // that moves it up even if no clock moves by then, so that a quiet
        // live run does not leave running resources short.
        let mut release: Option<Capability<u64>> = None;
        move |(reports, frontier), output| {
            let port = output.output_index();
            reports.for_each(|cap, data| pending.first(&cap, [port], data));
            let mut ready = pending.complete(&[frontier]).into_iter().peekable();
            loop {
                // The release comes before any later epoch; without one, once
                // the frontier has passed it.
                let next = ready.peek().map(|(time, _)| *time);
                let due = |at: &mut Capability<u64>| match next {
                    Some(time) => *at.time() < time,
                    None => !frontier.is_empty() && !frontier.less_equal(at.time()),
                };
                if let Some(at) = release.take_if(due) {
                    progress = Progress::at(progress.watermark, &settings);
                    output.session(&at).give(progress);
                    recorder.record_shared(*at.time(), || Shared { clocks: clocks.clone(), progress });
                    continue;
                }
                let Some((time, epoch)) = ready.next() else { break };
                for report in epoch.first {
                    clocks.insert(report.partition, report.clock);
                }
                let target = Progress::at(crate::judge::watermark(clocks.values(), progress.watermark), &settings);
                progress = target.accruing_at(time, progress, recorder.cadence, &clocks);
                output.session(&epoch.capabilities[0]).give(progress);
                recorder.record_shared(time, || Shared { clocks: clocks.clone(), progress });
                release = (progress.accrued_to < target.accrued_to)
                    .then(|| epoch.capabilities[0].delayed(&recorder.cadence.next_from(time + 1)));
            }
            // A run that ends (its input closed) stops where it is: a drain
            // ended fully accrued, and a stopping live run resumes from its
            // last checkpoint, which is fully accrued too.
            if frontier.is_empty() {
                release = None;
            }
        }
    })
}

impl Progress {
    /// This progress, with accrual held where `previous` left it unless
    /// `epoch` must move it: a checkpoint epoch, the end of a drain (every
    /// partition read to its end), or windows turning final that have not
    /// accrued to their end. Moving accrual rewrites the open row of every
    /// running resource, so a catch-up that crosses an accrual step every
    /// epoch does so once per checkpoint rather than once per epoch; a
    /// checkpoint's state and the end of a drain are always fully accrued.
    fn accruing_at(
        self,
        epoch: u64,
        previous: Progress,
        cadence: Cadence,
        clocks: &BTreeMap<Partition, PartitionClock>,
    ) -> Progress {
        let drained = clocks.values().all(|c| c.state == PartitionState::Exhausted);
        let unaccrued_final = self.final_before > previous.accrued_to;
        if cadence.is_checkpoint(epoch) || drained || unaccrued_final {
            self
        } else {
            Progress { accrued_to: previous.accrued_to, ..self }
        }
    }

    /// Progress at a watermark: what has accrued and which windows are final.
    pub fn at(watermark: Option<Millis>, settings: &Settings) -> Progress {
        Progress {
            watermark,
            accrued_to: watermark.map(|w| w.div_euclid(settings.accrual_granularity) * settings.accrual_granularity),
            // Final once the watermark is *past* window end + lateness: an event
            // exactly `allowed_lateness` behind its clock is still on time, and
            // may be the latest event at the end of the window before it.
            final_before: watermark.map(|w| window_start(w.saturating_sub(settings.allowed_lateness) - 1)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::{HOUR, MINUTE};

    const T0: Millis = 1_795_392_000_000;

    fn clocks(states: &[PartitionState]) -> BTreeMap<Partition, PartitionClock> {
        let clock = |state| PartitionClock { clock: Some(T0), state };
        (0..).zip(states.iter().map(|&s| clock(s))).collect()
    }

    fn progress(watermark: Millis) -> Progress {
        Progress::at(Some(watermark), &Settings::default())
    }

    #[test]
    fn accrual_waits_for_a_checkpoint_epoch() {
        let reading = clocks(&[PartitionState::Active, PartitionState::Exhausted]);
        let previous = progress(T0 + 2 * HOUR + 10 * MINUTE);
        let target = progress(T0 + 2 * HOUR + 25 * MINUTE);
        let held = target.accruing_at(7, previous, Cadence::every(5), &reading);
        assert_eq!(held, Progress { accrued_to: previous.accrued_to, ..target });
        assert_eq!(target.accruing_at(10, previous, Cadence::every(5), &reading), target);
    }

    #[test]
    fn a_drain_ends_fully_accrued() {
        let drained = clocks(&[PartitionState::Exhausted, PartitionState::Exhausted]);
        let previous = progress(T0 + 2 * HOUR + 10 * MINUTE);
        let target = progress(T0 + 2 * HOUR + 25 * MINUTE);
        assert_eq!(target.accruing_at(7, previous, Cadence::every(5), &drained), target);
    }

    #[test]
    fn windows_turning_final_are_accrued_to_their_end_first() {
        let reading = clocks(&[PartitionState::Active]);
        // The watermark leaps by more than the allowed lateness: the window
        // starting at T0 turns final, and accrual must reach its end.
        let previous = progress(T0 + 30 * MINUTE);
        let target = progress(T0 + 2 * HOUR + 5 * MINUTE);
        assert!(target.final_before > previous.accrued_to);
        assert_eq!(target.accruing_at(7, previous, Cadence::every(5), &reading), target);
    }
}
