//! Usage per resource: accepted events, exchanged by `(account, resource)`,
//! become breakdown row changes.
//!
//! Per epoch, in this order: insert the epoch's events; move accrual to the
//! epoch's watermark; recompute the rows those two can have changed (from the
//! earliest new event, and from the old accrual point, to the newest event or
//! the new accrual point, for running resources); fold away the windows that became final. Windows
//! turning final are thus written a last time before their state goes.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use timely::container::CapacityContainerBuilder;
use timely::dataflow::StreamVec;
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::Operator;

use super::pending::Pending;
use super::route;
use super::snapshots::PartSnapshots;
use crate::checkpoint::{Part, Recorder};
use crate::event::{Event, ResourceKey};
use crate::fixed::Overflow;
use crate::lifecycle::{Resource, RowChange};
use crate::prices::PriceList;
use crate::rows::{BreakdownKey, BreakdownRow, Delta, Progress, TotalKey};
use crate::time::{Millis, window_start};

/// What the usage stage emits.
#[derive(Clone, Debug)]
pub enum UsageOut {
    /// A breakdown row's new value.
    Row(BreakdownRow),
    /// The change it makes to its day's total.
    Delta(TotalKey, Delta),
    /// Arithmetic left `Decimal(38, 12)`: the pipeline must stop.
    Overflow(Overflow),
}

/// Turns accepted events into row changes and total deltas. Starts from the
/// resources and progress `restored`, writes its stale rows again in the first
/// epoch it works, and records its state with `recorder`.
pub(crate) fn usage<'scope>(
    events: StreamVec<'scope, u64, Event>,
    progress: StreamVec<'scope, u64, Progress>,
    prices: Arc<PriceList>,
    restored: (BTreeMap<ResourceKey, Resource>, Progress, Vec<BreakdownKey>),
    recorder: Recorder,
) -> StreamVec<'scope, u64, UsageOut> {
    let by_resource = Exchange::new(|e: &Event| route(&e.resource));
    events.binary_frontier::<_, CapacityContainerBuilder<Vec<_>>, _, _, _, _>(
        progress,
        by_resource,
        Pipeline,
        "Usage",
        move |capability, _| {
            let mut pending = Pending::<Event, Progress>::default();
            let (mut resources, mut progress, mut stale) = restored;
            let mut snapshots = PartSnapshots::new(recorder, Part::Usage, capability);
            move |(events, events_frontier), (new_progress, progress_frontier), output| {
                let port = output.output_index();
                events.for_each(|cap, data| pending.first(&cap, port, data));
                new_progress.for_each(|cap, data| pending.second(&cap, port, data));
                for (time, epoch) in pending.complete(&[events_frontier, progress_frontier]) {
                    snapshots.before(time, &resources, resources.len());
                    let next = epoch.second.last().copied().unwrap_or(progress);
                    let mut dirty: BTreeMap<ResourceKey, Millis> = BTreeMap::new();
                    for mut event in epoch.first {
                        let key = std::mem::take(&mut event.resource);
                        let from = resources.entry(key.clone()).or_default().insert(event);
                        let earliest = dirty.entry(key).or_insert(from);
                        *earliest = (*earliest).min(from);
                    }
                    let mut out = Vec::new();
                    // Accrual moved: every running resource's open rows change.
                    // Walk them in place rather than listing their keys.
                    if next.accrued_to > progress.accrued_to {
                        let accrual_from = progress.accrued_to.unwrap_or(Millis::MIN);
                        for (key, resource) in resources.iter_mut() {
                            let from = match (dirty.remove(key), resource.is_running()) {
                                (Some(from), true) => from.min(accrual_from),
                                (Some(from), false) => from,
                                (None, true) => accrual_from,
                                (None, false) => continue,
                            };
                            refresh(key, resource, from, &progress, &next, &prices, &mut out);
                        }
                    }
                    for (key, from) in dirty {
                        let resource = resources.get_mut(&key).expect("dirty resources exist");
                        refresh(&key, resource, from, &progress, &next, &prices, &mut out);
                    }
                    rewrite_stale(std::mem::take(&mut stale), &resources, &mut out);
                    output.session(&epoch.capability).give_iterator(out.into_iter());
                    if let Some(boundary) = next.final_before
                        && next.final_before > progress.final_before
                    {
                        resources.retain(|_, resource| {
                            resource.fold(boundary);
                            !resource.is_dormant()
                        });
                    }
                    progress = next;
                    snapshots.worked(time);
                }
                snapshots.after(&[events_frontier, progress_frontier], &resources, resources.len());
            }
        },
    )
}

/// Queues the current value of each stale row that this epoch does not write
/// anyway: what its resource last emitted for it, or zero.
fn rewrite_stale(stale: Vec<BreakdownKey>, resources: &BTreeMap<ResourceKey, Resource>, out: &mut Vec<UsageOut>) {
    if stale.is_empty() {
        return;
    }
    let written: BTreeSet<&BreakdownKey> =
        out.iter().filter_map(|o| if let UsageOut::Row(row) = o { Some(&row.key) } else { None }).collect();
    let rewrites: Vec<UsageOut> = stale
        .into_iter()
        .filter(|key| !written.contains(key))
        .map(|key| {
            let resource = ResourceKey { account: key.account.clone(), resource: key.resource.clone() };
            UsageOut::Row(match resources.get(&resource) {
                Some(resource) => resource.emitted_row(key),
                None => BreakdownRow::zero(key),
            })
        })
        .collect();
    out.extend(rewrites);
}

/// Recomputes one resource's rows from `from` on, after `previous` and up to
/// `next` progress, and queues what changed.
fn refresh(
    key: &ResourceKey,
    resource: &mut Resource,
    from: Millis,
    previous: &Progress,
    next: &Progress,
    prices: &PriceList,
    out: &mut Vec<UsageOut>,
) {
    let Some(from) = resource.clamp_from(from, previous.final_before) else {
        return;
    };
    let through = next
        .accrued_to
        .map(|a| window_start(a - 1))
        .into_iter()
        .chain(resource.last_event_time().map(window_start))
        .max()
        .unwrap_or(from);
    match resource.refresh(key, from, through, next.accrued_to, prices) {
        Ok(changes) => {
            for RowChange { row, delta } in changes {
                out.push(UsageOut::Delta(TotalKey::of(&row.key), delta));
                out.push(UsageOut::Row(row));
            }
        }
        Err(overflow) => out.push(UsageOut::Overflow(overflow)),
    }
}

impl Resource {
    /// The earliest time worth recomputing from: not before the fold boundary
    /// (those windows are final), nor before the resource's first event when it
    /// has no folded past. `None` when the resource is empty.
    pub fn clamp_from(&self, from: Millis, final_before: Option<Millis>) -> Option<Millis> {
        let floor = match final_before {
            Some(boundary) if self.has_folded_past() => boundary,
            _ => window_start(self.first_event_time()?),
        };
        Some(from.max(floor))
    }
}
