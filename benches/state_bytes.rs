//! Heap bytes per resource in the usage stage's state: a fleet's events
//! decoded, inserted into their resources, their rows emitted up to the
//! newest event and the windows final by then folded away, as the usage
//! stage does; then the bytes the allocator has handed out (its size
//! classes included) and not taken back, divided by the resources held.
//! Deterministic, unlike the resident memory of a whole run, which also
//! counts batches in flight, buffers and the allocator's free pages. Also
//! the bytes of that state in a checkpoint's usage part.
//!
//! `cargo bench --bench state_bytes`; figures go to BENCHMARKS.md.

#![expect(unsafe_code, reason = "counting the allocator's bytes takes a global allocator of its own")]

use std::alloc::{GlobalAlloc, Layout};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tally::workload::{Generator, Workload};
use tally_dataflows::checkpoint::pieces;
use tally_dataflows::decode::decode;
use tally_dataflows::intern::Interner;
use tally_dataflows::lifecycle::{Emitted, Resources, Stored, Windows};
use tally_dataflows::prices::PriceList;
use tally_dataflows::settings::Settings;
use tally_dataflows::time::window_start;

/// The allocator `tally` runs with.
#[path = "../src/allocator.rs"]
#[expect(dead_code, reason = "its settings and trim are the binary's; this counts its blocks only")]
mod allocator;

/// mimalloc, as `tally` runs, counting the usable size of each block it hands out.
struct Counting;

static HELD: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call goes to mimalloc unchanged; only the count is added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as `GlobalAlloc::alloc`; `mi_usable_size` takes any block mimalloc handed out.
        unsafe {
            let block = allocator::Mimalloc.alloc(layout);
            HELD.fetch_add(libmimalloc_sys::mi_usable_size(block.cast()), Ordering::Relaxed);
            block
        }
    }

    unsafe fn dealloc(&self, block: *mut u8, layout: Layout) {
        // SAFETY: as `GlobalAlloc::dealloc`.
        unsafe {
            HELD.fetch_sub(libmimalloc_sys::mi_usable_size(block.cast()), Ordering::Relaxed);
            allocator::Mimalloc.dealloc(block, layout);
        }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// The usage state after `events_per_resource` events per resource of a fleet.
fn measure(prices: &PriceList, fleet: u32, events_per_resource: u64) {
    let start = HELD.load(Ordering::Relaxed);
    let workload = Workload { events: u64::from(fleet) * events_per_resource, fleet, ..Workload::default() };
    let messages = Generator::new(workload).messages();
    let mut interner = Interner::default();
    let mut resources = Resources::default();
    let mut dirty: BTreeMap<_, i64> = BTreeMap::new();
    let mut latest_from = 0;
    for message in messages {
        let Ok(mut event) = decode(&message.payload, prices, &mut interner) else { continue };
        let key = std::mem::take(&mut event.resource);
        let from = resources.get_or_default(&key).resource_mut().insert(event);
        latest_from = latest_from.max(from);
        let earliest = dirty.entry(key).or_insert(from);
        *earliest = (*earliest).min(from);
    }
    // Rows up to the newest event, the running ones accrued to it; then
    // the windows a watermark there makes final folded away.
    let until = latest_from + 1;
    let mut rows = 0;
    for (key, from) in dirty {
        let emitted = Emitted { windows: Windows::default(), prices };
        resources[&key]
            .refresh(&key, emitted, ((from, until), Some(until)), prices, |_| rows += 1)
            .expect("no overflow");
    }
    let final_before = window_start(until - Settings::default().allowed_lateness - 1);
    resources.retain(|held| {
        held.resource_mut().fold(final_before);
        !held.resource().is_dormant()
    });
    resources.shrink_to(resources.len());
    let entries: usize = resources.iter().map(|held| held.resource().entries_held()).sum();
    drop(interner);
    let held = HELD.load(Ordering::Relaxed) - start;
    let running = resources.iter().filter(|held| held.resource().is_running()).count();
    let checkpointed = pieces::joined(&Stored(&resources).compressed()).len();
    println!(
        "fleet {fleet}, {events_per_resource} events per resource: {} resources ({running} running), {entries} entries held (gauge events, windows of counters), \
         {rows} row changes; {held} bytes, {} per resource; checkpointed in {checkpointed} bytes, {} per resource",
        resources.len(),
        held / resources.len(),
        checkpointed / resources.len(),
    );
}

fn main() {
    let prices = Arc::new(PriceList::parse(include_str!("../schemas/prices.toml")).expect("shipped price list"));
    for events_per_resource in [1, 3, 10] {
        measure(&prices, 100_000, events_per_resource);
    }
}
