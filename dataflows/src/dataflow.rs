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
    let mut judged = partitions::judge(source, previous_progress, Arc::clone(&prices), settings)
        .partition(3, |judged| match judged {
            Judged::Candidate(_) => (0, judged),
            Judged::Rejected(_) => (1, judged),
            Judged::Clock(_) => (2, judged),
        })
        .into_iter();
    let (candidates, rejected, clocks) = (judged.next().unwrap(), judged.next().unwrap(), judged.next().unwrap());
    let candidates = candidates.flat_map(|j| match j {
        Judged::Candidate(candidate) => Some(candidate),
        _ => None,
    });
    let rejected = rejected.flat_map(|j| match j {
        Judged::Rejected(rejection) => Some(rejection),
        _ => None,
    });
    let clocks = clocks
        .flat_map(|j| match j {
            Judged::Clock(report) => Some(report),
            _ => None,
        })
        .broadcast();

    let progress = partitions::watermark(clocks, settings);
    progress.clone().connect_loop(loop_handle);

    let mut deduped = dedup::dedup(candidates, progress.clone(), settings)
        .partition(3, |d| match d {
            Deduped::Accepted(_) => (0, d),
            Deduped::Rejected(_) => (1, d),
            Deduped::Outcomes(_) => (2, d),
        })
        .into_iter();
    let (accepted, late, outcomes) = (deduped.next().unwrap(), deduped.next().unwrap(), deduped.next().unwrap());
    let accepted = accepted.flat_map(|d| match d {
        Deduped::Accepted(event) => Some(event),
        _ => None,
    });
    let late = late.flat_map(|d| match d {
        Deduped::Rejected(rejection) => Some(rejection),
        _ => None,
    });
    let outcomes = outcomes.flat_map(|d| match d {
        Deduped::Outcomes(outcomes) => Some(outcomes),
        _ => None,
    });

    let mut usage = usage::usage(accepted, progress.clone(), prices)
        .partition(3, |out| match out {
            UsageOut::Row(_) => (0, out),
            UsageOut::Delta(..) => (1, out),
            UsageOut::Overflow(_) => (2, out),
        })
        .into_iter();
    let (breakdowns, deltas, usage_errors) = (usage.next().unwrap(), usage.next().unwrap(), usage.next().unwrap());
    let breakdowns = breakdowns.flat_map(|out| match out {
        UsageOut::Row(row) => Some(row),
        _ => None,
    });
    let deltas = deltas.flat_map(|out| match out {
        UsageOut::Delta(key, delta) => Some((key, delta)),
        _ => None,
    });
    let usage_errors = usage_errors.flat_map(|out| match out {
        UsageOut::Overflow(overflow) => Some(overflow),
        _ => None,
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

/// The worker a key is exchanged to: a hash that every process of a cluster
/// computes the same way (no per-process random seed).
fn route<K: Hash + ?Sized>(key: &K) -> u64 {
    let mut hasher = std::hash::DefaultHasher::new();
    key.hash(&mut hasher);
    hasher.finish()
}
