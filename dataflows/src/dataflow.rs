//! The billing dataflow: source items in, row upserts, rejections and progress
//! out.
//!
//! ```text
//!  source ─► judge ─┬─ events ──────────────────► usage ─┬─ breakdown rows
//!  (per     (per    │                  ┌ copies ─► (by account,  └─ deltas ─► totals ─► total rows
//!  worker)  part.)  ├─ claims ─► dedup ┤           resource)           (by account,day,sku)
//!                   │   (by source,id) └ late ───────────────────────────────────► rejections
//!                   ├─ rejections ─────────────────────────────────────────────────► rejections
//!                   └─ clocks ─► (broadcast) watermark ─► progress ─┐
//!             ▲                                                     │
//!             └──────────────── progress of epoch e-1 ◄─────────────┘
//! ```
//!
//! An on-time event goes from the partition stage to the usage stage
//! directly; its claim (identity and place) goes to deduplication, which
//! tells the usage stage which events are copies of one counted before the
//! usage stage works their epoch. An event is 128 bytes and a claim 64:
//! sent through deduplication and on to usage, each event would cross
//! between workers, and between the processes of a cluster, twice.
//!
//! The timely timestamp is the checkpoint epoch; event time is data. Every
//! stateful operator handles a whole epoch at once, in epoch order, after the
//! frontier passed it (see [`pending`]), and its output at epoch `e` depends
//! only on the input of epochs `≤ e`. Breakdown and total rows are absolute
//! values: at most one per key per epoch, the last one per key is the current
//! value, and at the end of the input they equal what the oracle computes.

use std::sync::Arc;

use timely::dataflow::StreamVec;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::operators::vec::Broadcast;
use timely::dataflow::operators::{Concat, ConnectLoop, Feedback, OkErr};
use timely::progress::operate::FrontierInterest;

use crate::checkpoint::{Part, Recorder, Recovery, Restored, Whole};
use crate::fixed::Overflow;
use crate::judge::SourceItem;
use crate::lifecycle::Stored;
use crate::prices::PriceList;
use crate::routing::Routing;
use crate::rows::{BreakdownRow, Outcomes, Progress, Rejection, TotalRow};
use crate::settings::Settings;

pub mod dedup;
mod outputs;
pub mod partitions;
pub mod pending;
mod snapshots;
mod totals;
mod usage;

use dedup::Seen;
use outputs::{One, Outputs};
use usage::UsageOut;

/// The streams a billing dataflow produces on each worker.
pub struct Streams<'scope> {
    /// `usage_breakdown` upserts.
    pub breakdowns: StreamVec<'scope, u64, BreakdownRow>,
    /// `account_totals` upserts.
    pub totals: StreamVec<'scope, u64, TotalRow>,
    /// `rejected_events` rows.
    pub rejections: StreamVec<'scope, u64, Rejection>,
    /// Progress per epoch, the same on every worker.
    pub progress: StreamVec<'scope, u64, Progress>,
    /// Accepted and duplicate counts per epoch and worker.
    pub outcomes: StreamVec<'scope, u64, Outcomes>,
    /// Arithmetic overflows: the pipeline must stop with this message.
    pub errors: StreamVec<'scope, u64, Overflow>,
    /// Carries nothing; passes a checkpoint epoch once every operator of
    /// this worker has recorded its state as of it. The rows' streams do not
    /// wait for snapshots.
    pub recorded: StreamVec<'scope, u64, ()>,
}

/// Rows the usage stage makes before it lets them go downstream: an epoch
/// in which accrual moves changes every running resource's rows, and its
/// rows leave in steps of about this many (see [`billing`]). A few
/// megabytes of rows; and a step is short next to an insert of them.
pub const ROWS_PER_STEP: usize = 1 << 16;

/// Messages a source gives its worker's dataflow before the worker steps it.
/// The partition stage decodes messages as they arrive: a few hundred at a
/// time (about 100 KB) are decoded while the source's copies of them are
/// still in the core's cache, where the first of 10,000 given at once had
/// left it by the time they were decoded.
pub const MESSAGES_PER_STEP: usize = 256;

/// Epochs a source may run ahead of the last one fully worked downstream
/// (for `tally run`, written to ClickHouse): reading stalls behind a slow
/// stage instead of piling up messages, and the rows they make, in memory.
pub const EPOCHS_IN_FLIGHT: u64 = 2;

/// Builds the billing dataflow over each worker's source items, starting from
/// the state `recovery` restores (if any) and recording snapshots into it.
/// The source must start at [`Recovery::first_epoch`]; resources go to
/// workers by `routing`, the same on every worker. The usage stage
/// sends an epoch's rows about `rows_per_step` at a time, each step in an
/// activation of its own ([`ROWS_PER_STEP`] unless a test wants the steps
/// small).
pub fn billing<'scope>(
    source: StreamVec<'scope, u64, SourceItem>,
    prices: Arc<PriceList>,
    (settings, routing): (Settings, Routing),
    recovery: Recovery,
    rows_per_step: usize,
) -> Streams<'scope> {
    let recorder = Recorder::new(recovery.snapshots.as_ref(), recovery.cadence, recovery.chunks.clone());
    // A restored worker's state as of the checkpoint is its first snapshot:
    // an operator that never works an epoch still checkpoints what it holds.
    let restored_epoch = recovery.restored.as_ref().map(|r| r.epoch);
    let identities = recovery.identities;
    let Restored { shared, seen, resources, totals: sums, stale, rated_with, usage_part, .. } =
        recovery.restored.unwrap_or_default();
    let mut seen = Seen::restore(seen, source.scope().index(), source.scope().peers());
    if let Some(epoch) = restored_epoch {
        recorder.record(Part::Dedup, epoch, &mut seen);
        match usage_part {
            Some(part) => recorder.store(Part::Usage, epoch, part.recorded(resources.len())),
            None => recorder.record(Part::Usage, epoch, &mut Stored(&resources)),
        }
        recorder.record(Part::Totals, epoch, &mut Whole(&sums, sums.len()));
        recorder.record_shared(epoch, || shared.clone());
    }
    let (loop_handle, previous_progress) = source.scope().feedback::<Vec<Progress>>(1);
    let (events, claims, rejected, clocks) = partitions::judge(
        source,
        previous_progress,
        (Arc::clone(&prices), identities),
        (settings, routing),
        shared.clone(),
    );

    let restored_progress = shared.progress;
    let progress = partitions::watermark(clocks.broadcast(), settings, shared, recorder.clone());
    progress.clone().connect_loop(loop_handle);

    let ((duplicates, late, outcomes), dedup_recorded) =
        dedup::dedup(claims, progress.clone(), settings, seen, recorder.clone());

    let (usage, usage_recorded) = usage::usage(
        events.concat(duplicates),
        progress.clone(),
        (prices, routing),
        usage::Start { resources, progress: restored_progress, stale: stale.breakdowns, rated_with },
        (recorder.clone(), rows_per_step),
    );
    let (breakdowns, deltas, usage_errors) = split(usage, |out| match out {
        UsageOut::Row(row) => Branch::First(row),
        UsageOut::Delta(key, delta) => Branch::Second((key, delta)),
        UsageOut::Overflow(overflow) => Branch::Third(overflow),
    });
    let (totals, totals_recorded) = totals::totals(deltas, progress.clone(), (sums, stale.totals), recorder);
    let (totals, total_errors) = totals.ok_err::<Vec<TotalRow>, _, Vec<Overflow>, _, _>(|result| result);

    Streams {
        breakdowns,
        totals,
        rejections: rejected.concat(late),
        progress,
        outcomes,
        errors: usage_errors.concat(total_errors),
        recorded: dedup_recorded.concat(usage_recorded).concat(totals_recorded),
    }
}

/// Which of [`split`]'s outputs a record goes to.
enum Branch<A, B, C> {
    First(A),
    Second(B),
    Third(C),
}

/// Splits an operator's output into three streams, moving each record once:
/// one operator with three outputs, where timely's `partition` sorts each
/// batch into a map of vectors and copies it again into containers, and
/// three `flat_map`s after it would move every record once more.
fn split<'scope, T: 'static, A: 'static, B: 'static, C: 'static>(
    stream: StreamVec<'scope, u64, T>,
    route: impl Fn(T) -> Branch<A, B, C> + 'static,
) -> (StreamVec<'scope, u64, A>, StreamVec<'scope, u64, B>, StreamVec<'scope, u64, C>) {
    let mut builder = OperatorBuilder::new("Split".to_owned(), stream.scope());
    let mut input = builder.new_input(stream, Pipeline);
    builder.set_notify_for(0, FrontierInterest::Never);
    let (mut outputs, streams) = <(One<A>, One<B>, One<C>)>::new(&mut builder);
    builder.build(move |_| {
        move |_| {
            let (mut first, mut second, mut third) = outputs.activate();
            input.for_each(|cap, data| {
                let (mut first, mut second, mut third) =
                    (first.session(&cap), second.session(&cap), third.session(&cap));
                for record in data.drain(..) {
                    match route(record) {
                        Branch::First(a) => first.give(a),
                        Branch::Second(b) => second.give(b),
                        Branch::Third(c) => third.give(c),
                    }
                }
            });
        }
    });
    streams
}
