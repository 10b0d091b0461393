//! The partition-local stage and the watermark.
//!
//! `judge` runs on the worker that reads each partition (no exchange) and
//! decides everything that depends on partition order alone. It handles epoch
//! `e` only once it knows the progress of epoch `e - 1` (fed back through a
//! loop), so that it can reject an event aimed at a window already final.
//! `watermark` sees every partition's clock (the reports are broadcast) and
//! emits the same [`Progress`] on every worker for every epoch that moved a clock.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::StreamVec;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::Operator;

use super::pending::Pending;
use crate::checkpoint::{Recorder, Shared};
use crate::judge::{Candidate, ClockReport, PartitionState, SourceItem, Verdict};
use crate::prices::PriceList;
use crate::rows::{Progress, Rejection};
use crate::settings::Settings;
use crate::time::{Millis, window_start};

/// What the partition stage emits.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Judged {
    /// A well-formed event for deduplication.
    Candidate(Candidate),
    /// A message rejected on its partition.
    Rejected(Rejection),
    /// A partition's clock after the epoch.
    Clock(ClockReport),
}

/// Judges each worker's partitions in offset order; `previous` is the progress
/// of the epoch before, fed back. Starts from the clocks and progress `restored`.
pub fn judge<'scope>(
    source: StreamVec<'scope, u64, SourceItem>,
    previous: StreamVec<'scope, u64, Progress>,
    prices: Arc<PriceList>,
    settings: Settings,
    restored: Shared,
) -> StreamVec<'scope, u64, Judged> {
    source.binary_frontier::<_, CapacityContainerBuilder<Vec<Judged>>, _, _, _, _>(
        previous,
        Pipeline,
        Pipeline,
        "JudgePartitions",
        move |_, _| {
            let mut pending = Pending::<SourceItem, Progress>::default();
            let Shared { mut clocks, mut progress } = restored;
            move |(source, source_frontier), (previous, previous_frontier), output| {
                let port = output.output_index();
                source.for_each(|cap, data| pending.first(&cap, port, data));
                previous.for_each(|cap, data| pending.second(&cap, port, data));
                for (_, epoch) in pending.complete(&[source_frontier, previous_frontier]) {
                    if let Some(&last) = epoch.second.last() {
                        progress = last;
                    }
                    let mut session = output.session(&epoch.capability);
                    let mut touched = Vec::new();
                    for item in epoch.first {
                        match item {
                            SourceItem::Status { partition, state } => {
                                clocks.entry(partition).or_default().state = state;
                                touched.push(partition);
                            }
                            SourceItem::Message(message) => {
                                let partition = message.partition;
                                let clock = clocks.entry(partition).or_default();
                                if clock.state == PartitionState::Idle {
                                    clock.state = PartitionState::Active;
                                }
                                session.give(match clock.judge(message, &prices, &settings, progress.final_before) {
                                    Verdict::Rejected(rejection) => Judged::Rejected(rejection),
                                    Verdict::Candidate(candidate) => Judged::Candidate(candidate),
                                });
                                touched.push(partition);
                            }
                        }
                    }
                    touched.sort_unstable();
                    touched.dedup();
                    for partition in touched {
                        session.give(Judged::Clock(ClockReport { partition, clock: clocks[&partition] }));
                    }
                }
            }
        },
    )
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
        move |(reports, frontier), output| {
            let port = output.output_index();
            reports.for_each(|cap, data| pending.first(&cap, port, data));
            for (time, epoch) in pending.complete(&[frontier]) {
                for report in epoch.first {
                    clocks.insert(report.partition, report.clock);
                }
                progress = Progress::at(crate::judge::watermark(clocks.values(), progress.watermark), &settings);
                output.session(&epoch.capability).give(progress);
                recorder.record_shared(time, || Shared { clocks: clocks.clone(), progress });
            }
        }
    })
}

impl Progress {
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
