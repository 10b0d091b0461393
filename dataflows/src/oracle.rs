//! The contract as a plain sequential program: the reference the dataflow is
//! tested against and `tally reconcile` recomputes with.
//!
//! It reads every message once, in one global order that keeps each
//! partition's order, and computes the tables from the whole accepted history
//! at the end. It shares only decoding (the definition of a well-formed event)
//! and the rating formula with the dataflow; the time rules, deduplication and
//! the usage integral are written again here, the simple way.

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;
use std::sync::Arc;

use crate::decode::decode;
use crate::event::{Event, Message, Meta, Partition, Reason, ResourceKey};
use crate::fixed::{Amount, Overflow};
use crate::intern::Interner;
use crate::prices::{PriceList, SkuId};
use crate::rate;
use crate::rows::{BreakdownKey, BreakdownRow, Ledger, Progress, Rejection, TotalKey, TotalRow};
use crate::settings::Settings;
use crate::time::{HOUR, Millis, Rfc3339, day_start, window_start};

/// Computes the tables for `messages`, read in that order, from `partitions`
/// (every partition of the topic, read to its end).
pub fn run(
    partitions: &[Partition],
    messages: impl IntoIterator<Item = Message>,
    prices: &PriceList,
    settings: &Settings,
) -> Result<Ledger, Overflow> {
    let mut ledger = Ledger::default();
    let mut clocks: BTreeMap<Partition, Option<Millis>> = partitions.iter().map(|&p| (p, None)).collect();
    let mut seen: BTreeMap<(String, String), Millis> = BTreeMap::new();
    let mut expired_at: Option<Millis> = None;
    let mut history: BTreeMap<ResourceKey, Vec<Event>> = BTreeMap::new();
    let mut interner = Interner::default();

    for message in messages {
        let mut reject = |message: Message, reason: Reason, detail: String| {
            ledger.rejections.insert((message.partition, message.offset), Rejection::of(message, reason, detail));
        };
        let event = match decode(&message.payload, prices, &mut interner) {
            Ok(event) => event,
            Err(invalid) => {
                reject(message, invalid.reason, invalid.detail);
                continue;
            }
        };
        let time = event.time();
        if time > message.timestamp + settings.max_future {
            reject(message, Reason::Future, "ahead of its message timestamp".into());
            continue;
        }
        let clock = clocks.entry(message.partition).or_default();
        let behind = clock.map_or(0, |c| c - time);
        *clock = Some(clock.map_or(time, |c| c.max(time)));
        if behind > settings.dedup_horizon {
            reject(message, Reason::Late, "beyond the dedup horizon".into());
            continue;
        }
        // Every partition holds the watermark back until the end of the input.
        // Remembering an identity longer than the horizon changes nothing (a
        // copy that far behind is rejected above), so identities expire in
        // steps of an hour of watermark, not each time it moves.
        let watermark = clocks.values().copied().min().flatten();
        let expiry_due = match (watermark, expired_at) {
            (Some(watermark), Some(expired)) => watermark >= expired + HOUR,
            (Some(_), None) => true,
            (None, _) => false,
        };
        if expiry_due && let Some(watermark) = watermark {
            seen.retain(|_, &mut t| t >= watermark - settings.dedup_horizon);
            expired_at = Some(watermark);
        }
        let identity = (event.order.source.to_string(), event.order.id.to_string());
        match seen.entry(identity) {
            Entry::Occupied(_) => ledger.outcomes.duplicates += 1,
            Entry::Vacant(_) if behind > settings.allowed_lateness => {
                reject(message, Reason::Late, "behind its partition's clock".into());
            }
            Entry::Vacant(slot) => {
                slot.insert(time);
                ledger.outcomes.accepted += 1;
                history.entry(event.resource.clone()).or_default().push(event);
            }
        }
    }

    // At the end of the input, partitions that never had a clock stop holding
    // the watermark back.
    let watermark = clocks.values().flatten().copied().min();
    let progress = Progress::at(watermark, settings);
    ledger.progress = Some(progress);

    for (resource, mut events) in history {
        events.sort_by(|a, b| a.order.cmp(&b.order));
        let usage = usage_by_window(&events, progress.accrued_to);
        for ((window, sku), scaled) in usage {
            if scaled == 0 {
                continue;
            }
            let row = rated_row(&resource, window, sku, scaled, &events, prices)?;
            ledger.breakdowns.insert(row.key.clone(), row);
        }
    }
    for row in ledger.breakdowns.values() {
        let key = TotalKey { account: row.key.account.clone(), day: day_start(row.key.window_start), sku: row.key.sku };
        let overflow = || Overflow::new(format!("total of {}", row.key.account));
        let total =
            ledger.totals.entry(key.clone()).or_insert(TotalRow { key, usage: Amount::ZERO, cost: Amount::ZERO });
        total.usage = total.usage.checked_add(row.usage).ok_or_else(overflow)?;
        total.cost = total.cost.checked_add(row.cost).ok_or_else(overflow)?;
    }
    Ok(ledger)
}

/// Usage per (window, SKU) as scaled integers: gauge segments between
/// consecutive gauge events, the last one running to the accrual point, split
/// at hour boundaries; counter amounts in the window of their time.
fn usage_by_window(events: &[Event], accrued_to: Option<Millis>) -> BTreeMap<(Millis, SkuId), i128> {
    let mut usage = BTreeMap::new();
    let gauges: Vec<&Event> = events.iter().filter(|e| e.kind.is_gauge()).collect();
    for (i, event) in gauges.iter().enumerate() {
        let start = event.time();
        let end = match gauges.get(i + 1) {
            Some(next) => next.time(),
            None => accrued_to.unwrap_or(Millis::MIN),
        };
        let mut from = start;
        while from < end {
            let window = window_start(from);
            let to = end.min(window + HOUR);
            for &(sku, quantity) in event.quantities.iter() {
                *usage.entry((window, sku)).or_default() += quantity.nanos() * i128::from(to - from);
            }
            from = to;
        }
    }
    for event in events.iter().filter(|e| !e.kind.is_gauge()) {
        for &(sku, quantity) in event.quantities.iter() {
            *usage.entry((window_start(event.time()), sku)).or_default() += quantity.nanos() * 1000;
        }
    }
    usage
}

fn rated_row(
    resource: &ResourceKey,
    window: Millis,
    sku: SkuId,
    scaled: i128,
    events: &[Event],
    prices: &PriceList,
) -> Result<BreakdownRow, Overflow> {
    let usage = Amount::from_scaled(scaled)
        .ok_or_else(|| Overflow::new(format!("usage of {} at {}", resource.resource, Rfc3339(window))))?;
    let definition = prices.sku(sku);
    let price = definition.price_at(window).expect("decode admits only priced SKUs");
    let meta: Arc<Meta> = events
        .iter()
        .rev()
        .find(|e| e.time() <= window + HOUR)
        .map(|e| Arc::clone(&e.meta))
        .expect("a row's window is at or after its resource's first event");
    Ok(BreakdownRow {
        key: BreakdownKey {
            account: resource.account.clone(),
            window_start: window,
            resource: resource.resource.clone(),
            sku,
        },
        meta,
        usage,
        cost: rate::cost(usage, price.unit_price, definition.kind)?,
    })
}
