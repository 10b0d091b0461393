//! One resource's history and the breakdown rows it yields.
//!
//! A resource keeps the events of its open windows, ordered by `(time, id)`,
//! plus what the folded past left behind: the gauge quantities in force at the
//! fold boundary and the latest folded event's metadata. Rows are recomputed
//! from that state, so they depend only on the set of events and the accrual
//! point, never on the order the events arrived in.
//!
//! Invariant: no event ever arrives before the fold boundary (upstream rejects
//! events aimed at final windows), so folding loses nothing a row still needs.

use std::sync::Arc;

use sorted::SortedMap;

use serde::{Deserialize, Serialize};

use crate::event::{Event, EventKind, EventOrder, Meta, ResourceKey};
use crate::fixed::{Amount, Overflow, Quantity};
use crate::prices::{PriceList, SkuId};
use crate::rate;
use crate::rows::{BreakdownKey, BreakdownRow, Delta};
use crate::time::{HOUR, Millis, window_start};

/// The part of an event a resource's history keeps.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Entry {
    kind: EventKind,
    quantities: Vec<(SkuId, Quantity)>,
    meta: Arc<Meta>,
}

/// What was last emitted for a row of an open window.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Emitted {
    usage: Amount,
    cost: Amount,
    meta: Arc<Meta>,
}

/// A breakdown row that changed, and the change it makes to its day's total.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RowChange {
    /// The row's new value (usage zero when it dropped back to nothing).
    pub row: BreakdownRow,
    /// New minus old usage and cost.
    pub delta: Delta,
}

/// A worker's resources by key. Hashed: a B-tree compared key strings a
/// dozen times or more per lookup. Their order, which changes from run to
/// run, reaches only the order of an epoch's rows (each row once per epoch,
/// all at one version) and of a snapshot's entries (restore files each by
/// its key); the totals stage sorts what it sums. The hasher is seeded per
/// process, as the standard one, and several times faster on short strings.
///
/// Each resource sits behind an `Arc` so that a snapshot is a copy of the
/// map, not of the resources: a checkpoint encodes that copy on a thread of
/// its own while the usage stage goes on, and a resource the stage changes
/// meanwhile is copied then, once (`Arc::make_mut`), the others never.
pub type Resources = foldhash::HashMap<ResourceKey, Arc<Resource>>;

/// One resource's state: see the module docs. Checkpoints hold it as a
/// [`Stored`] writes it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Resource {
    base: Vec<(SkuId, Quantity)>,
    base_meta: Option<Arc<Meta>>,
    events: SortedMap<EventOrder, Entry>,
    emitted: SortedMap<(Millis, SkuId), Emitted>,
}

impl Resource {
    /// Adds an accepted event and returns the earliest time whose rows it can
    /// change: its own window, the window ending at its time (metadata), and for
    /// a gauge event the segment it closes, back to the previous gauge event
    /// (`Millis::MIN` when that segment starts in the folded past).
    pub fn insert(&mut self, event: Event) -> Millis {
        let time = event.order.time;
        let mut earliest = time - 1;
        if event.kind.is_gauge() {
            let previous = self.events.below(&event.order).iter().rev().find(|(_, e)| e.kind.is_gauge());
            earliest = match previous {
                Some((order, _)) => earliest.min(order.time),
                None if self.base.is_empty() => earliest,
                None => Millis::MIN,
            };
        }
        let meta = self.shared_meta(event.meta);
        let entry = Entry { kind: event.kind, quantities: event.quantities, meta };
        self.events.insert(event.order, entry);
        earliest
    }

    /// The resource's copy of `meta` when it holds an equal one: a resource's
    /// events mostly carry the same metadata, and keeping it once per
    /// resource rather than once per event is most of what an event costs.
    /// Looks at the newest event and the folded past only: metadata rarely
    /// changes, and comparing with every event held made inserting quadratic.
    fn shared_meta(&self, meta: Arc<Meta>) -> Arc<Meta> {
        let newest = self.events.entries().last().map(|(_, e)| &e.meta);
        let mut held = newest.into_iter().chain(self.base_meta.as_ref());
        held.find(|held| **held == meta).map_or(meta, Arc::clone)
    }

    /// True when the resource can accrue nothing more and has nothing to
    /// remember: it can be forgotten.
    pub fn is_dormant(&self) -> bool {
        self.base.iter().all(|(_, q)| q.is_zero()) && self.events.is_empty() && self.emitted.is_empty()
    }

    /// Time of the earliest event held, if any.
    pub fn first_event_time(&self) -> Option<Millis> {
        self.events.entries().first().map(|(order, _)| order.time)
    }

    /// Whether events were folded into the base state.
    pub fn has_folded_past(&self) -> bool {
        self.base_meta.is_some()
    }

    /// How many events the resource holds (those of its open windows).
    pub fn events_held(&self) -> usize {
        self.events.entries().len()
    }

    /// Time of the latest event held, if any.
    pub fn last_event_time(&self) -> Option<Millis> {
        self.events.entries().last().map(|(order, _)| order.time)
    }

    /// Whether a gauge is running at the end of the known history.
    pub fn is_running(&self) -> bool {
        let last_gauge = self.events.entries().iter().rev().map(|(_, e)| e).find(|e| e.kind.is_gauge());
        match last_gauge {
            Some(entry) => entry.quantities.iter().any(|(_, q)| !q.is_zero()),
            None => self.base.iter().any(|(_, q)| !q.is_zero()),
        }
    }

    /// Recomputes the rows of the windows starting in `from..=through` and
    /// returns those that changed since last emitted.
    pub fn refresh(
        &mut self,
        key: &ResourceKey,
        from: Millis,
        through: Millis,
        accrued_to: Option<Millis>,
        prices: &PriceList,
    ) -> Result<Vec<RowChange>, Overflow> {
        let mut changes = Vec::new();
        let mut start = window_start(from);
        while start <= through {
            let (mut usage, meta) = self.window(start, accrued_to)?;
            // A SKU emitted before and absent now dropped back to zero.
            for &((_, sku), _) in self.emitted.between(&(start, SkuId(0)), &(start + HOUR, SkuId(0))) {
                if let Err(index) = usage.binary_search_by_key(&sku, |&(s, _)| s) {
                    usage.insert(index, (sku, Amount::ZERO));
                }
            }
            for (sku, new) in usage {
                if let Some(change) = self.change(key, start, sku, new, &meta, prices)? {
                    changes.push(change);
                }
            }
            start += HOUR;
        }
        Ok(changes)
    }

    fn change(
        &mut self,
        key: &ResourceKey,
        window: Millis,
        sku: SkuId,
        usage: Amount,
        meta: &Arc<Meta>,
        prices: &PriceList,
    ) -> Result<Option<RowChange>, Overflow> {
        let old = self.emitted.get(&(window, sku));
        let unchanged = match old {
            None => usage.is_zero(),
            Some(old) => old.usage == usage && (Arc::ptr_eq(&old.meta, meta) || old.meta == *meta),
        };
        if unchanged {
            return Ok(None);
        }
        let definition = prices.sku(sku);
        let price = definition
            .price_at(window)
            .expect("decode admits only SKUs priced at their event's window, and prices only start");
        let cost = rate::cost(usage, price.unit_price, definition.kind)?;
        let (old_usage, old_cost) = old.map_or((Amount::ZERO, Amount::ZERO), |o| (o.usage, o.cost));
        let overflow = || Overflow::new(format!("change of row {}/{}/{}", key.account, key.resource, definition.id));
        let delta = Delta {
            usage: usage.checked_sub(old_usage).ok_or_else(overflow)?,
            cost: cost.checked_sub(old_cost).ok_or_else(overflow)?,
        };
        if usage.is_zero() {
            self.emitted.remove(&(window, sku));
        } else {
            self.emitted.insert((window, sku), Emitted { usage, cost, meta: Arc::clone(meta) });
        }
        let row = BreakdownRow {
            key: BreakdownKey {
                account: key.account.clone(),
                window_start: window,
                resource: key.resource.clone(),
                sku,
            },
            meta: Arc::clone(meta),
            usage,
            cost,
        };
        Ok(Some(RowChange { row, delta }))
    }

    /// The row for `key` (one of this resource's) as last emitted: what a
    /// reader should see now; zero when nothing was emitted for it.
    pub fn emitted_row(&self, key: BreakdownKey) -> BreakdownRow {
        match self.emitted.get(&(key.window_start, key.sku)) {
            Some(emitted) => {
                BreakdownRow { key, meta: Arc::clone(&emitted.meta), usage: emitted.usage, cost: emitted.cost }
            }
            None => BreakdownRow::zero(key),
        }
    }

    /// Usage per SKU in the window starting at `start`, and the metadata of the
    /// latest event at or before its end.
    ///
    /// A gauge segment between two gauge events counts in full; the last one,
    /// open-ended while the resource runs, accrues up to `accrued_to`.
    fn window(&self, start: Millis, accrued_to: Option<Millis>) -> Result<(WindowUsage, Arc<Meta>), Overflow> {
        let end = start + HOUR;
        let overflow = || Overflow::new(format!("usage in window starting {}", crate::time::Rfc3339(start)));
        let mut usage = Usage::default();
        let gauge_before =
            self.events.below(&EventOrder::first_at(start)).iter().rev().find(|(_, e)| e.kind.is_gauge());
        let mut in_force: &[(SkuId, Quantity)] = gauge_before.map_or(&self.base, |(_, e)| &e.quantities);
        let mut from = start;
        for (order, entry) in self.events.between(&EventOrder::first_at(start), &EventOrder::first_at(end)) {
            if entry.kind.is_gauge() {
                if order.time > from {
                    usage.accrue(in_force, order.time - from).ok_or_else(overflow)?;
                    from = order.time;
                }
                in_force = &entry.quantities;
            } else {
                for &(sku, quantity) in &entry.quantities {
                    let units = quantity.nanos().checked_mul(1000).ok_or_else(overflow)?;
                    usage.add(sku, units).ok_or_else(overflow)?;
                }
            }
        }
        // A later gauge event closes the last segment; otherwise the resource
        // is still running and accrues up to `accrued_to`.
        let closed = self.events.at_or_after(&EventOrder::first_at(end)).iter().any(|(_, e)| e.kind.is_gauge());
        let until = if closed { end } else { accrued_to.map_or(from, |a| a.clamp(from, end)) };
        usage.accrue(in_force, until - from).ok_or_else(overflow)?;
        let usage = usage
            .0
            .into_iter()
            .map(|(sku, scaled)| Amount::from_scaled(scaled).map(|a| (sku, a)).ok_or_else(overflow))
            .collect::<Result<_, _>>()?;
        let latest = self.events.entries().iter().rev().find(|(order, _)| order.time <= end).map(|(_, e)| &e.meta);
        let meta = latest.or(self.base_meta.as_ref()).cloned().unwrap_or_default();
        Ok((usage, meta))
    }

    /// Whether [`Resource::fold`] at `boundary` would change anything: an
    /// event or a row before it.
    pub fn holds_before(&self, boundary: Millis) -> bool {
        let event = self.first_event_time().is_some_and(|time| time < boundary);
        event || self.emitted.entries().first().is_some_and(|((window, _), _)| *window < boundary)
    }

    /// Folds every event before `boundary` into the base state and forgets the
    /// rows of windows before it, which are final.
    pub fn fold(&mut self, boundary: Millis) {
        for (_, entry) in self.events.take_below(&EventOrder::first_at(boundary)) {
            if entry.kind.is_gauge() {
                self.base = entry.quantities;
            }
            self.base_meta = Some(entry.meta);
        }
        self.base.retain(|(_, q)| !q.is_zero());
        self.emitted.take_below(&(boundary, SkuId(0)));
    }
}

/// A window's usage per SKU, sorted by SKU.
type WindowUsage = Vec<(SkuId, Amount)>;

/// A window's usage per SKU at scale 12, sorted by SKU: a resource has a
/// handful of SKUs, so one short vector rather than a map per window.
#[derive(Default)]
struct Usage(Vec<(SkuId, i128)>);

impl Usage {
    fn add(&mut self, sku: SkuId, amount: i128) -> Option<()> {
        match self.0.binary_search_by_key(&sku, |&(s, _)| s) {
            Ok(index) => self.0[index].1 = self.0[index].1.checked_add(amount)?,
            Err(index) => self.0.insert(index, (sku, amount)),
        }
        Some(())
    }

    /// Adds `quantities × duration_ms` (scale 9 × 10^-3 s = scale 12 unit-seconds).
    fn accrue(&mut self, quantities: &[(SkuId, Quantity)], duration_ms: Millis) -> Option<()> {
        if duration_ms <= 0 {
            return Some(());
        }
        for &(sku, quantity) in quantities {
            if !quantity.is_zero() {
                self.add(sku, quantity.nanos().checked_mul(i128::from(duration_ms))?)?;
            }
        }
        Some(())
    }
}

mod snapshot;
mod sorted;
#[cfg(test)]
mod tests;

pub use snapshot::{Loaded, Stored};
