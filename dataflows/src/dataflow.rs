//! The billing dataflow: source items in, row upserts, rejections and progress
//! out.
//!
//! ```text
//!  source ─► judge ─┬─ candidates ─► dedup ─► usage ─┬─ breakdown rows
//!  (per     (per    │  (by source,id)  (by account,  └─ deltas ─► totals ─► total rows
//!  worker)  part.)  │                   resource)          (by account,day,sku)
//!                   ├─ rejections ─────────────────────────────────────────► rejections
//!                   └─ clocks ─► (broadcast) watermark ─► progress ─┐
//!             ▲                                                     │
//!             └──────────────── progress of epoch e-1 ◄─────────────┘
//! ```
//!
//! The timely timestamp is the checkpoint epoch; event time is data. Every
//! stateful operator handles a whole epoch at once, in epoch order, after the
//! frontier passed it (see [`pending`]), and its output at epoch `e` depends
//! only on the input of epochs `≤ e`. Breakdown and total rows are absolute
//! values: at most one per key per epoch, the last one per key is the current
//! value, and at the end of the input they equal what the oracle computes.

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use timely::dataflow::StreamVec;
use timely::dataflow::operators::vec::{Broadcast, Map, Partition};
use timely::dataflow::operators::{Concat, ConnectLoop, Feedback, OkErr};

use crate::fixed::Overflow;
use crate::judge::SourceItem;
use crate::prices::PriceList;
use crate::rows::{BreakdownRow, Outcomes, Progress, Rejection, TotalRow};
use crate::settings::Settings;

mod dedup;
pub mod partitions;
pub mod pending;
mod totals;
mod usage;

use dedup::Deduped;
use partitions::Judged;
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
}

/// Builds the billing dataflow over each worker's source items.
pub fn billing<'scope>(
    source: StreamVec<'scope, u64, SourceItem>,
    prices: Arc<PriceList>,
    settings: Settings,
) -> Streams<'scope> {
    let (loop_handle, previous_progress) = source.scope().feedback::<Vec<Progress>>(1);
    let judged = partitions::judge(source, previous_progress, Arc::clone(&prices), settings);
    let (candidates, rejected, clocks) = split(judged, |judged| match judged {
        Judged::Candidate(candidate) => Part::First(candidate),
        Judged::Rejected(rejection) => Part::Second(rejection),
        Judged::Clock(report) => Part::Third(report),
    });

    let progress = partitions::watermark(clocks.broadcast(), settings);
    progress.clone().connect_loop(loop_handle);

    let deduped = dedup::dedup(candidates, progress.clone(), settings);
    let (accepted, late, outcomes) = split(deduped, |deduped| match deduped {
        Deduped::Accepted(event) => Part::First(event),
        Deduped::Rejected(rejection) => Part::Second(rejection),
        Deduped::Outcomes(outcomes) => Part::Third(outcomes),
    });

    let usage = usage::usage(accepted, progress.clone(), prices);
    let (breakdowns, deltas, usage_errors) = split(usage, |out| match out {
        UsageOut::Row(row) => Part::First(row),
        UsageOut::Delta(key, delta) => Part::Second((key, delta)),
        UsageOut::Overflow(overflow) => Part::Third(overflow),
    });
    let (totals, total_errors) =
        totals::totals(deltas, progress.clone()).ok_err::<Vec<TotalRow>, _, Vec<Overflow>, _, _>(|result| result);

    Streams {
        breakdowns,
        totals,
        rejections: rejected.concat(late),
        progress,
        outcomes,
        errors: usage_errors.concat(total_errors),
    }
}

/// Where [`split`] sends a record.
enum Part<A, B, C> {
    First(A),
    Second(B),
    Third(C),
}

/// Splits an operator's output into three streams, moving each record once.
fn split<'scope, T: 'static, A: 'static, B: 'static, C: 'static>(
    stream: StreamVec<'scope, u64, T>,
    route: impl Fn(T) -> Part<A, B, C> + 'static,
) -> (StreamVec<'scope, u64, A>, StreamVec<'scope, u64, B>, StreamVec<'scope, u64, C>) {
    let mut parts = stream
        .partition(3, move |record| {
            let part = route(record);
            let index = match part {
                Part::First(_) => 0,
                Part::Second(_) => 1,
                Part::Third(_) => 2,
            };
            (index, part)
        })
        .into_iter();
    let mut next = || parts.next().expect("partition(3) makes three streams");
    let (first, second, third) = (next(), next(), next());
    (
        first.flat_map(|part| if let Part::First(a) = part { Some(a) } else { None }),
        second.flat_map(|part| if let Part::Second(b) = part { Some(b) } else { None }),
        third.flat_map(|part| if let Part::Third(c) = part { Some(c) } else { None }),
    )
}

/// The worker a key is exchanged to: a hash that every process of a cluster
/// computes the same way (no per-process random seed).
fn route<K: Hash + ?Sized>(key: &K) -> u64 {
    let mut hasher = std::hash::DefaultHasher::new();
    key.hash(&mut hasher);
    hasher.finish()
}
