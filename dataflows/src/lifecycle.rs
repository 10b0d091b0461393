//! One resource's history and the breakdown rows it yields.
//!
//! A resource keeps the gauge events of its open windows, ordered by
//! `(time, id)`; the counter events of each open window summed per SKU, with
//! the latest of them (and the latest at the window's very start) for the
//! metadata rule; and what the folded past left behind: the gauge quantities
//! in force at the fold boundary and the latest folded event's metadata. Rows
//! are recomputed from that state, so they depend only on the set of events
//! and the accrual point, never on the order the events arrived in.
//!
//! The rows last emitted are not kept: they are recomputed too, from the
//! resource before the events since ([`Windows`], [`Emitted`]). Kept, they
//! were more than half of a running resource's memory and of its checkpoint,
//! and every accrual move rewrote them, so that a resource shared with a
//! snapshot being encoded was copied only to update its rows.
//!
//! A counter adds to its own window and nothing else, so its amounts need
//! not be kept one by one: a resource reporting every second held thousands
//! of events per window, and recomputing a row read them all, at every epoch
//! that touched it; the window's sums are what every epoch reads now.
//!
//! Invariant: no event ever arrives before the fold boundary (upstream rejects
//! events aimed at final windows), so folding loses nothing a row still needs.

use std::sync::Arc;

use sorted::SortedMap;

use serde::{Deserialize, Serialize};

use crate::event::{Event, EventKind, EventOrder, FirstAt, Meta, Quantities, ResourceKey};
use crate::fixed::{Amount, Overflow, Quantity};
use crate::prices::{PriceList, SkuId};
use crate::rate;
use crate::rows::{BreakdownKey, BreakdownRow, Delta};
use crate::time::{HOUR, Millis, window_start};

/// The part of a gauge event a resource's history keeps.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Entry {
    kind: EventKind,
    quantities: Quantities,
    meta: Arc<Meta>,
}

/// The counter events of one window.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Counted {
    /// Amounts per SKU at scale 12 (quantity nanos × 1000, as a gauge's
    /// unit-seconds), sorted by SKU. Saturating: a sum this large is out
    /// of `Decimal(38, 12)` anyway, which recomputing the row reports.
    sums: Vec<(SkuId, i128)>,
    /// Time of the window's earliest counter event.
    first: Millis,
    /// The window's latest counter event, with its metadata.
    latest: (EventOrder, Arc<Meta>),
    /// The latest counter event at the window's start exactly, if any: the
    /// window before takes its metadata from events up to its end inclusive.
    at_start: Option<Box<(EventOrder, Arc<Meta>)>>,
}

impl Counted {
    fn of(order: EventOrder, quantities: &[(SkuId, Quantity)], meta: Arc<Meta>, window: Millis) -> Counted {
        let at_start = (order.time == window).then(|| Box::new((order.clone(), Arc::clone(&meta))));
        let sums = Vec::with_capacity(quantities.len());
        let mut counted = Counted { sums, first: order.time, latest: (order, meta), at_start };
        counted.add(quantities);
        counted
    }

    fn add(&mut self, quantities: &[(SkuId, Quantity)]) {
        for &(sku, quantity) in quantities {
            // Below 10^21 nanos, a quantity is below 10^24 at scale 12: the
            // product fits, and only the sums need saturating.
            let units = quantity.nanos() * 1000;
            match self.sums.binary_search_by_key(&sku, |&(s, _)| s) {
                Ok(index) => self.sums[index].1 = self.sums[index].1.saturating_add(units),
                Err(index) => {
                    // Room for the SKUs seen only: a window's sums live as
                    // long as the window, and grown by doubling, the first
                    // took room for four, most of it never used.
                    self.sums.reserve_exact(1);
                    self.sums.insert(index, (sku, units));
                }
            }
        }
    }

    fn insert(&mut self, order: EventOrder, quantities: &[(SkuId, Quantity)], meta: Arc<Meta>, window: Millis) {
        self.add(quantities);
        self.first = self.first.min(order.time);
        if order.time == window && self.at_start.as_ref().is_none_or(|held| order > held.0) {
            self.at_start = Some(Box::new((order.clone(), Arc::clone(&meta))));
        }
        if order > self.latest.0 {
            self.latest = (order, meta);
        }
    }
}

/// What a run of a resource's windows read at one time: from the window
/// of its first time on, each window's usage per SKU and metadata. Read
/// before an epoch's events go in, they are the rows last emitted, since
/// every epoch emits each row its changes can have changed.
#[derive(Clone, Debug, Default)]
pub struct Windows(Vec<(WindowUsage, Arc<Meta>)>);

/// The rows last emitted: the windows they were read from and the prices
/// they were rated with (a restore may run with another list).
#[derive(Clone, Debug)]
pub struct Emitted<'a> {
    /// The windows as emitted, from the first one refreshed on; none
    /// when nothing was.
    pub windows: Windows,
    /// The prices then.
    pub prices: &'a PriceList,
}

/// One row's usage and metadata, as emitted or as now.
type RowValue<'a> = (Amount, &'a Arc<Meta>);

/// A breakdown row that changed, and the change it makes to its day's total.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RowChange {
    /// The row's new value (usage zero when it dropped back to nothing).
    pub row: BreakdownRow,
    /// New minus old usage and cost.
    pub delta: Delta,
}

/// One resource's state: see the module docs. Checkpoints hold it as a
/// [`Stored`] writes it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Resource {
    base: Quantities,
    base_meta: Option<Arc<Meta>>,
    /// Gauge events.
    events: SortedMap<EventOrder, Entry>,
    /// Counter events by the start of their window.
    counted: SortedMap<Millis, Counted>,
}

impl Resource {
    /// Adds an accepted event and returns the earliest time whose rows it can
    /// change: its own window, the window ending at its time (metadata), and for
    /// a gauge event the segment it closes, back to the previous gauge event
    /// (`Millis::MIN` when that segment starts in the folded past).
    pub fn insert(&mut self, event: Event) -> Millis {
        let earliest = self.earliest_change(&event);
        let meta = self.shared_meta(event.meta);
        if !event.kind.is_gauge() {
            self.count(event.order, &event.quantities, meta);
            return earliest;
        }
        let entry = Entry { kind: event.kind, quantities: event.quantities, meta };
        self.events.insert(event.order, entry);
        earliest
    }

    /// The earliest time whose rows inserting `event` can change, as
    /// [`Resource::insert`] returns it, without inserting it. For several
    /// events, the least of theirs on the resource without any of them is
    /// at or before what inserting them one by one returns: each one's
    /// gauge event before it can only be later with the others in.
    pub fn earliest_change(&self, event: &Event) -> Millis {
        let time = event.order.time;
        if !event.kind.is_gauge() {
            return time - 1;
        }
        match self.events.below(&event.order).last() {
            Some((order, _)) => (time - 1).min(order.time),
            None if self.base.is_empty() => time - 1,
            None => Millis::MIN,
        }
    }

    /// Adds a counter event to its window.
    fn count(&mut self, order: EventOrder, quantities: &[(SkuId, Quantity)], meta: Arc<Meta>) {
        let window = window_start(order.time);
        match self.counted.get_mut(&window) {
            Some(counted) => counted.insert(order, quantities, meta, window),
            None => self.counted.insert(window, Counted::of(order, quantities, meta, window)),
        }
    }

    /// The resource's copy of `meta` when it holds an equal one: a resource's
    /// events mostly carry the same metadata, and keeping it once per
    /// resource rather than once per event is most of what an event costs.
    /// Looks at the newest gauge event, the newest window's counters and the
    /// folded past only: metadata rarely changes, and comparing with every
    /// event held made inserting quadratic.
    fn shared_meta(&self, meta: Arc<Meta>) -> Arc<Meta> {
        let gauge = self.events.entries().last().map(|(_, e)| &e.meta);
        let counter = self.counted.entries().last().map(|(_, c)| &c.latest.1);
        let mut held = gauge.into_iter().chain(counter).chain(self.base_meta.as_ref());
        match held.find(|held| **held == meta) {
            // The event's own handle when it is to the same copy: cloning the
            // held one and dropping the event's counted the copy up and down,
            // and the worker that decoded the event counts it too.
            Some(held) if !Arc::ptr_eq(held, &meta) => Arc::clone(held),
            _ => meta,
        }
    }

    /// True when the resource can accrue nothing more and has nothing to
    /// remember: it can be forgotten.
    pub fn is_dormant(&self) -> bool {
        self.base.iter().all(|(_, q)| q.is_zero()) && self.events.is_empty() && self.counted.is_empty()
    }

    /// Time of the earliest event held, if any.
    pub fn first_event_time(&self) -> Option<Millis> {
        let gauge = self.events.entries().first().map(|(order, _)| order.time);
        let counter = self.counted.entries().first().map(|(_, counted)| counted.first);
        gauge.into_iter().chain(counter).min()
    }

    /// Whether events were folded into the base state.
    pub fn has_folded_past(&self) -> bool {
        self.base_meta.is_some()
    }

    /// How many entries the resource holds for its open windows: a gauge
    /// event each, and one per window with counter events.
    pub fn entries_held(&self) -> usize {
        self.events.entries().len() + self.counted.entries().len()
    }

    /// Time of the latest event held, if any.
    pub fn last_event_time(&self) -> Option<Millis> {
        let gauge = self.events.entries().last().map(|(order, _)| order.time);
        let counter = self.counted.entries().last().map(|(_, counted)| counted.latest.0.time);
        gauge.into_iter().chain(counter).max()
    }

    /// Whether a gauge is running at the end of the known history.
    pub fn is_running(&self) -> bool {
        match self.events.entries().last() {
            Some((_, entry)) => entry.quantities.iter().any(|(_, q)| !q.is_zero()),
            None => self.base.iter().any(|(_, q)| !q.is_zero()),
        }
    }

    /// Recomputes the rows of the windows starting in `from..=through`, accrued
    /// to `accrued_to` and rated with `prices`, and gives `changed` those that
    /// differ from the rows `emitted` yields, in window and SKU order; an
    /// overflow ends it after the rows before it were given. Given, not
    /// returned: collected into a vector of their own, they were grown and
    /// moved once more on their way to the epoch's output.
    pub fn refresh(
        &self,
        key: &ResourceKey,
        emitted: Emitted<'_>,
        ((from, through), accrued_to): ((Millis, Millis), Option<Millis>),
        prices: &PriceList,
        mut changed: impl FnMut(RowChange),
    ) -> Result<(), Overflow> {
        let mut start = window_start(from);
        let mut old_windows = emitted.windows.0.into_iter();
        while start <= through {
            let (old, old_meta) = old_windows.next().unwrap_or_default();
            let (new, meta) = self.window(start, accrued_to)?;
            for (sku, old_usage, new_usage) in side_by_side(old, new) {
                let old = ((old_usage, &old_meta), emitted.prices);
                if let Some(change) = change(key, start, sku, old, ((new_usage, &meta), prices))? {
                    changed(change);
                }
            }
            start += HOUR;
        }
        Ok(())
    }

    /// The windows starting in `from..=through`, accrued to `accrued_to`, as
    /// they read now.
    pub fn windows(&self, (from, through): (Millis, Millis), accrued_to: Option<Millis>) -> Result<Windows, Overflow> {
        let mut windows = Vec::new();
        let mut start = window_start(from);
        while start <= through {
            windows.push(self.window(start, accrued_to)?);
            start += HOUR;
        }
        Ok(Windows(windows))
    }

    /// The row for `key` (one of this resource's) as now, accrued to
    /// `accrued_to`: what a reader should see. Zero for a window before
    /// `final_before` (final, its state folded away) or before the
    /// resource's first event: no row of it is open.
    pub fn current_row(
        &self,
        key: BreakdownKey,
        accrued_to: Option<Millis>,
        final_before: Option<Millis>,
        prices: &PriceList,
    ) -> Result<BreakdownRow, Overflow> {
        if self.clamp_from(key.window_start, final_before) != Some(key.window_start) {
            return Ok(BreakdownRow::zero(key));
        }
        let (usage, meta) = self.window(key.window_start, accrued_to)?;
        let usage = usage.iter().find(|(sku, _)| *sku == key.sku).map_or(Amount::ZERO, |&(_, usage)| usage);
        if usage.is_zero() {
            return Ok(BreakdownRow::zero(key));
        }
        let cost = rated(key.window_start, key.sku, usage, prices)?;
        Ok(BreakdownRow { key, meta, usage, cost })
    }

    /// The earliest time worth recomputing from: not before the fold boundary
    /// (those windows are final), nor before the resource's first event when it
    /// has no folded past. `None` when the resource is empty.
    pub fn clamp_from(&self, from: Millis, final_before: Option<Millis>) -> Option<Millis> {
        self.clamp_from_first(from, final_before, self.first_event_time())
    }

    /// [`Resource::clamp_from`], the resource's first event at `first`.
    pub fn clamp_from_first(
        &self,
        from: Millis,
        final_before: Option<Millis>,
        first: Option<Millis>,
    ) -> Option<Millis> {
        let floor = match final_before {
            Some(boundary) if self.has_folded_past() => boundary,
            _ => window_start(first?),
        };
        Some(from.max(floor))
    }

    /// Usage per SKU in the window starting at `start`, and the metadata of the
    /// latest event at or before its end.
    ///
    /// A gauge segment between two gauge events counts in full; the last one,
    /// open-ended while the resource runs, accrues up to `accrued_to`.
    fn window(&self, start: Millis, accrued_to: Option<Millis>) -> Result<(WindowUsage, Arc<Meta>), Overflow> {
        let end = start + HOUR;
        let overflow = || Overflow::new(format!("usage in window starting {}", crate::time::Rfc3339(start)));
        let mut usage = Usage(Vec::with_capacity(USUAL_SKUS));
        let gauge_before = self.events.below(&FirstAt(start)).last();
        let mut in_force: &[(SkuId, Quantity)] = gauge_before.map_or(&self.base, |(_, e)| &e.quantities);
        let mut from = start;
        for (order, entry) in self.events.between(&FirstAt(start), &FirstAt(end)) {
            if order.time > from {
                usage.accrue(in_force, order.time - from).ok_or_else(overflow)?;
                from = order.time;
            }
            in_force = &entry.quantities;
        }
        // A later gauge event closes the last segment; otherwise the resource
        // is still running and accrues up to `accrued_to`.
        let closed = !self.events.at_or_after(&FirstAt(end)).is_empty();
        let until = if closed { end } else { accrued_to.map_or(from, |a| a.clamp(from, end)) };
        usage.accrue(in_force, until - from).ok_or_else(overflow)?;
        if let Some(counted) = self.counted.get(&start) {
            for &(sku, units) in &counted.sums {
                usage.add(sku, units).ok_or_else(overflow)?;
            }
        }
        let usage = usage
            .0
            .into_iter()
            .map(|(sku, scaled)| Amount::from_scaled(scaled).map(|a| (sku, a)).ok_or_else(overflow))
            .collect::<Result<_, _>>()?;
        let meta = self.latest_meta_through(end).or(self.base_meta.as_ref()).cloned().unwrap_or_default();
        Ok((usage, meta))
    }

    /// The metadata of the latest event held at or before `end` (a window's
    /// end: a counter exactly there sits in the next window's sums).
    fn latest_meta_through(&self, end: Millis) -> Option<&Arc<Meta>> {
        let gauge = self.events.below(&FirstAt(end + 1)).last().map(|(order, e)| (order, &e.meta));
        let counter = match self.counted.get(&end).and_then(|c| c.at_start.as_deref()) {
            Some((order, meta)) => Some((order, meta)),
            None => self.counted.below(&end).last().map(|(_, c)| (&c.latest.0, &c.latest.1)),
        };
        let latest = match (gauge, counter) {
            (Some(g), Some(c)) => Some(if g.0 > c.0 { g } else { c }),
            (g, c) => g.or(c),
        };
        latest.map(|(_, meta)| meta)
    }

    /// Whether [`Resource::fold`] at `boundary` would change anything: an
    /// event before it.
    pub fn holds_before(&self, boundary: Millis) -> bool {
        self.first_event_time().is_some_and(|time| time < boundary)
    }

    /// Folds every event before `boundary`, a window's start, into the base
    /// state: the windows before it are final.
    pub fn fold(&mut self, boundary: Millis) {
        debug_assert_eq!(boundary, window_start(boundary), "folds happen at window starts");
        let mut latest: Option<(EventOrder, Arc<Meta>)> = None;
        for (order, entry) in self.events.take_below(&FirstAt(boundary)) {
            self.base = entry.quantities;
            latest = Some((order, entry.meta));
        }
        for (_, counted) in self.counted.take_below(&boundary) {
            if latest.as_ref().is_none_or(|(order, _)| counted.latest.0 > *order) {
                latest = Some(counted.latest);
            }
        }
        if let Some((_, meta)) = latest {
            self.base_meta = Some(meta);
        }
        if self.base.iter().any(|(_, q)| q.is_zero()) {
            self.base = self.base.iter().filter(|(_, q)| !q.is_zero()).copied().collect();
        }
    }
}

/// The SKUs of two windows' usage, each sorted by SKU, in order, with the
/// usage on each side: zero on a side that lacks the SKU.
fn side_by_side(old: WindowUsage, new: WindowUsage) -> impl Iterator<Item = (SkuId, Amount, Amount)> {
    let (mut old, mut new) = (old.into_iter().peekable(), new.into_iter().peekable());
    std::iter::from_fn(move || match (old.peek().map(|&(sku, _)| sku), new.peek().map(|&(sku, _)| sku)) {
        (None, None) => None,
        (Some(o), Some(n)) if o == n => Some((o, old.next()?.1, new.next()?.1)),
        (Some(o), n) if n.is_none_or(|n| o < n) => Some((o, old.next()?.1, Amount::ZERO)),
        _ => new.next().map(|(n, usage)| (n, Amount::ZERO, usage)),
    })
}

/// The change from the row `old` to the row `new` of `key`'s SKU `sku` in
/// the window starting at `window`, each rated with its prices; `None`
/// when the row reads the same. A row of zero usage is no row, whatever its
/// metadata.
fn change(
    key: &ResourceKey,
    window: Millis,
    sku: SkuId,
    (old, old_prices): (RowValue<'_>, &PriceList),
    (new, prices): (RowValue<'_>, &PriceList),
) -> Result<Option<RowChange>, Overflow> {
    let same_row = old.0 == new.0 && (new.0.is_zero() || Arc::ptr_eq(old.1, new.1) || old.1 == new.1);
    if same_row && std::ptr::eq(old_prices, prices) {
        return Ok(None);
    }
    let cost = rated(window, sku, new.0, prices)?;
    let old_cost = rated(window, sku, old.0, old_prices)?;
    if same_row && cost == old_cost {
        return Ok(None);
    }
    let overflow = || Overflow::new(format!("change of row {}/{}/{}", key.account, key.resource, prices.sku(sku).id));
    let delta = Delta {
        usage: new.0.checked_sub(old.0).ok_or_else(overflow)?,
        cost: cost.checked_sub(old_cost).ok_or_else(overflow)?,
    };
    let row = BreakdownRow {
        key: BreakdownKey { account: key.account.clone(), window_start: window, resource: key.resource.clone(), sku },
        meta: Arc::clone(new.1),
        usage: new.0,
        cost,
    };
    Ok(Some(RowChange { row, delta }))
}

/// The cost of `usage` of `sku` in the window starting at `window`.
fn rated(window: Millis, sku: SkuId, usage: Amount, prices: &PriceList) -> Result<Amount, Overflow> {
    if usage.is_zero() {
        return Ok(Amount::ZERO);
    }
    let definition = prices.sku(sku);
    let price = definition
        .price_at(window)
        .expect("decode admits only SKUs priced at their event's window, and prices only start");
    rate::cost(usage, price.unit_price, definition.kind)
}

/// A window's usage per SKU, sorted by SKU.
type WindowUsage = Vec<(SkuId, Amount)>;

/// A window's usage per SKU at scale 12, sorted by SKU: a resource has a
/// handful of SKUs, so one short vector rather than a map per window.
struct Usage(Vec<(SkuId, i128)>);

/// SKUs a window's usage has room for at first, the size its first insert
/// would grow it to: made that size at once, it skips the vector's slower
/// growth path (growing vectors was 6.5% of a worker's instructions).
const USUAL_SKUS: usize = 4;

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

mod resources;
mod snapshot;
mod sorted;
#[cfg(test)]
mod tests;

pub use resources::{Held, Resources};
pub use snapshot::{Copied, Loaded, Loading, Stored, copied, encode_letting_go};
