//! Per (account, UTC day, SKU) totals: the exact sums of the day's breakdown
//! rows, exchanged by that key.
//!
//! Row changes arrive as deltas and are summed per epoch; a total is emitted
//! when its value changed. A day's totals are forgotten once its last window
//! is final, having been written with their final value.

use std::collections::{BTreeMap, BTreeSet};

use timely::dataflow::StreamVec;
use timely::dataflow::channels::pact::Exchange;

use super::outputs::One;
use super::pending::Pending;
use super::snapshots::stateful;
use crate::checkpoint::{Part, Recorder, Whole};
use crate::fixed::Overflow;
use crate::routing::route;
use crate::rows::{Delta, Progress, TotalKey, TotalRow};
use crate::time::DAY;

/// Sums row deltas into totals (or an overflow error). Starts from the sums
/// `restored`, writes its stale totals again in the first epoch it works, and
/// records its state with `recorder`. The second stream holds back each
/// checkpoint epoch until its snapshot is recorded.
pub(crate) fn totals<'scope>(
    deltas: StreamVec<'scope, u64, (TotalKey, Delta)>,
    progress: StreamVec<'scope, u64, Progress>,
    restored: (BTreeMap<TotalKey, Delta>, Vec<TotalKey>),
    recorder: Recorder,
) -> (StreamVec<'scope, u64, Result<TotalRow, Overflow>>, StreamVec<'scope, u64, ()>) {
    let by_key = Exchange::new(|(key, _): &(TotalKey, Delta)| route(key));
    let part = (recorder, Part::Totals);
    stateful::<_, One<_>, _, _, _>(deltas, progress, by_key, "Totals", part, move |mut snapshots, _| {
        let mut pending = Pending::<(TotalKey, Delta), Progress>::default();
        let (mut sums, mut stale) = restored;
        move |(deltas, deltas_frontier), (progress, progress_frontier), output| {
            let port = output.output_index();
            deltas.for_each(|cap, data| pending.first(&cap, [port], data));
            progress.for_each(|cap, data| pending.second(&cap, [port], data));
            for (time, epoch) in pending.complete(&[deltas_frontier, progress_frontier]) {
                snapshots.before(time, &mut Whole(&sums, sums.len()));
                let mut session = output.session(&epoch.capabilities[0]);
                let mut written = BTreeSet::new();
                let rewriting = !stale.is_empty();
                let mut changes = Vec::with_capacity(epoch.first.len());
                changes.extend(epoch.first);
                changes.sort_unstable_by(|a, b| a.0.cmp(&b.0));
                let mut changes = changes.into_iter().peekable();
                while let Some((key, delta)) = changes.next() {
                    let mut sum = sums.get(&key).copied().unwrap_or_default();
                    let before = sum;
                    let mut result = add(&mut sum, delta, &key);
                    while let Some((_, delta)) = changes.next_if(|(next, _)| *next == key) {
                        result = result.and_then(|()| add(&mut sum, delta, &key));
                    }
                    if let Err(overflow) = result {
                        session.give(Err(overflow));
                        continue;
                    }
                    if sum == before {
                        continue;
                    }
                    session.give(Ok(TotalRow { key: key.clone(), usage: sum.usage, cost: sum.cost }));
                    if rewriting {
                        written.insert(key.clone());
                    }
                    if sum == Delta::default() {
                        sums.remove(&key);
                    } else {
                        sums.insert(key, sum);
                    }
                }
                // Stale totals not written above: their current sums.
                for key in std::mem::take(&mut stale).into_iter().filter(|key| !written.contains(key)) {
                    let sum = sums.get(&key).copied().unwrap_or_default();
                    session.give(Ok(TotalRow { key, usage: sum.usage, cost: sum.cost }));
                }
                if let Some(boundary) = epoch.second.last().and_then(|p| p.final_before) {
                    sums.retain(|key, _| key.day + DAY > boundary);
                }
                snapshots.worked(time);
            }
            snapshots.after(&[deltas_frontier, progress_frontier], &mut Whole(&sums, sums.len()));
        }
    })
}

fn add(sum: &mut Delta, delta: Delta, key: &TotalKey) -> Result<(), Overflow> {
    let overflow = || Overflow::new(format!("total of account {} for day {}", key.account, key.day));
    sum.usage = sum.usage.checked_add(delta.usage).ok_or_else(overflow)?;
    sum.cost = sum.cost.checked_add(delta.cost).ok_or_else(overflow)?;
    Ok(())
}

impl TotalKey {
    /// The total a breakdown row counts towards.
    pub fn of(row: &crate::rows::BreakdownKey) -> TotalKey {
        TotalKey { account: row.account.clone(), day: crate::time::day_start(row.window_start), sku: row.sku }
    }
}
