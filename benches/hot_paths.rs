//! The hot paths one at a time, outside the dataflow, on a generated workload:
//! deduplication, the lifecycle (a resource's events → its breakdown rows),
//! rating, the sink's encoding of rows for ClickHouse (RowBinary, LZ4,
//! over HTTP to an in-process mock server) and their sort into a table's
//! order, and a checkpoint's encoding of the resources (plain, compressed as
//! checkpoints hold them, and read back).
//!
//! `cargo bench --bench hot_paths`; figures go to BENCHMARKS.md.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;

use criterion::{BatchSize, Criterion, Throughput, criterion_group};
use tally::sink::order;
use tally::sink::rows::UsageBreakdown;
use tally::workload::{Generator, Workload};
use tally_dataflows::checkpoint::pieces;
use tally_dataflows::dataflow::dedup::Seen;
use tally_dataflows::decode::decode;
use tally_dataflows::event::{Event, ResourceKey};
use tally_dataflows::fixed::Amount;
use tally_dataflows::identity::IdentityHash;
use tally_dataflows::intern::Interner;
use tally_dataflows::lifecycle::{Emitted, Loading, Resource, Resources, Stored, Windows};
use tally_dataflows::oracle;
use tally_dataflows::prices::{PriceList, SkuKind};
use tally_dataflows::rows::BreakdownRow;
use tally_dataflows::settings::Settings;
use tally_dataflows::time::HOUR;

/// The allocator `tally` runs with, set up as it is: the figures are the
/// shipped program's.
#[path = "../src/allocator.rs"]
#[cfg_attr(test, expect(dead_code, reason = "its test runs with the binary's, this harness runs none"))]
mod allocator;

#[global_allocator]
static ALLOCATOR: allocator::Mimalloc = allocator::Mimalloc;

fn prices() -> Arc<PriceList> {
    Arc::new(PriceList::parse(include_str!("../schemas/prices.toml")).expect("shipped price list"))
}

fn workload(events: u64) -> Workload {
    Workload { events, fleet: 20_000, accounts: 2_000, partitions: 8, ..Workload::default() }
}

/// The well-formed events of a generated workload, in message order.
fn events(count: u64, prices: &PriceList) -> Vec<Event> {
    let mut interner = Interner::default();
    let messages = Generator::new(workload(count)).messages();
    messages.iter().filter_map(|m| decode(&m.payload, prices, &mut interner).ok()).collect()
}

/// Identities hashed as a deployment's are, under a key of its own.
const IDENTITIES: IdentityHash = IdentityHash::SipHash([0x5eed, 0x1d]);

fn dedup(c: &mut Criterion) {
    let prices = prices();
    let events = events(200_000, &prices);
    let mut group = c.benchmark_group("dedup");
    group.throughput(Throughput::Elements(events.len() as u64));
    group.bench_function("check_insert_expire", |b| {
        b.iter(|| {
            let mut seen = Seen::new(0, 1);
            let mut accepted = 0usize;
            for (i, event) in events.iter().enumerate() {
                let identity = IDENTITIES.fingerprint(&event.order.source, &event.order.id);
                if !seen.contains(&identity) {
                    seen.insert(identity, event.time());
                    accepted += 1;
                }
                if i % 20_000 == 0 {
                    seen.forget_before(event.time() - 25 * HOUR);
                }
            }
            accepted
        })
    });
    group.finish();
}

fn lifecycle(c: &mut Criterion) {
    let prices = prices();
    let events = events(200_000, &prices);
    let mut by_resource: BTreeMap<ResourceKey, Vec<Event>> = BTreeMap::new();
    for event in &events {
        by_resource.entry(event.resource.clone()).or_default().push(event.clone());
    }
    let end = events.iter().map(Event::time).max().expect("events");
    let mut group = c.benchmark_group("lifecycle");
    group.throughput(Throughput::Elements(events.len() as u64));
    group.bench_function("insert_refresh_fold", |b| {
        b.iter_batched(
            || by_resource.clone(),
            |by_resource| {
                let mut rows = 0usize;
                for (key, history) in by_resource {
                    let mut resource = Resource::default();
                    let mut from = i64::MAX;
                    for event in history {
                        from = from.min(resource.insert(event));
                    }
                    let nothing_yet = Emitted { windows: Windows::default(), prices: &prices };
                    resource
                        .refresh(&key, nothing_yet, ((from, end), Some(end)), &prices, |_| rows += 1)
                        .expect("no overflow");
                    resource.fold(end - HOUR);
                }
                rows
            },
            BatchSize::LargeInput,
        )
    });
    group.finish();
}

fn rating(c: &mut Criterion) {
    let prices = prices();
    let usages: Vec<Amount> =
        (1..=100_000i128).map(|i| Amount::from_scaled(i * 3_600_123_456_789).expect("in range")).collect();
    let mut group = c.benchmark_group("rating");
    group.throughput(Throughput::Elements(usages.len() as u64));
    for (name, kind) in [("gauge", SkuKind::Gauge), ("counter", SkuKind::Counter)] {
        let price = prices.sku(tally_dataflows::prices::SkuId(0)).prices[0].unit_price;
        group.bench_function(name, |b| {
            b.iter(|| {
                usages
                    .iter()
                    .map(|&usage| tally_dataflows::rate::cost(usage, price, kind).expect("no overflow"))
                    .fold(0i128, |sum, cost| sum + cost.scaled())
            })
        });
    }
    group.finish();
}

fn sink_encoding(c: &mut Criterion) {
    let prices = prices();
    let messages = Generator::new(workload(100_000)).messages();
    let partitions: Vec<u32> = (0..8).collect();
    let ledger = oracle::run(&partitions, messages, &prices, &Settings::default()).expect("no overflow");
    let rows: Vec<BreakdownRow> = ledger.breakdowns.into_values().collect();
    let runtime = tally::blocking_runtime();
    // The mock serves on the runtime it is made in.
    let _entered = runtime.enter();
    let mock = clickhouse::test::Mock::new();
    let client = clickhouse::Client::default().with_url(mock.url()).with_validation(false);
    let mut group = c.benchmark_group("sink");
    group.throughput(Throughput::Elements(rows.len() as u64));
    group.bench_function("encode_usage_breakdown", |b| {
        b.iter(|| {
            // Takes the body whatever it is and answers 200, as an insert would.
            mock.add(clickhouse::test::handlers::record_ddl());
            runtime.block_on(async {
                let mut insert = client.insert::<UsageBreakdown<'_>>("usage_breakdown").await.expect("insert");
                for row in &rows {
                    insert.write(&UsageBreakdown::of(row, &prices, 1)).await.expect("write");
                }
                insert.end().await.expect("end");
            })
        })
    });
    // Rows as the usage stage emits them, a resource's together, in the
    // order ClickHouse wants them: by account, window, resource, SKU.
    let mut by_resource: Vec<(&BreakdownRow, u64)> = rows.iter().map(|row| (row, 1)).collect();
    by_resource
        .sort_by(|(a, _), (b, _)| (&a.key.resource, a.key.window_start).cmp(&(&b.key.resource, b.key.window_start)));
    group.bench_function("order_usage_breakdown", |b| {
        b.iter_batched(
            || by_resource.clone(),
            |mut rows| order::sort(&mut rows, |(row, _)| UsageBreakdown::place(row)),
            BatchSize::LargeInput,
        )
    });
    group.finish();
}

fn checkpoint_encoding(c: &mut Criterion) {
    let prices = prices();
    let mut resources = Resources::default();
    for event in events(200_000, &prices) {
        resources.get_or_default(&event.resource).resource_mut().insert(event);
    }
    let plain = pieces::joined(&pieces::encode(&Stored(&resources)));
    let compressed = pieces::joined(&Stored(&resources).compressed());
    println!(
        "checkpoint: {} resources, usage part {} bytes plain, {} compressed",
        resources.len(),
        plain.len(),
        compressed.len()
    );
    let mut group = c.benchmark_group("checkpoint");
    group.throughput(Throughput::Bytes(plain.len() as u64));
    group.bench_function("encode_usage", |b| b.iter(|| pieces::encode(&Stored(&resources))));
    group.bench_function("encode_usage_compressed", |b| b.iter(|| Stored(&resources).compressed()));
    group.bench_function("restore_usage", |b| {
        b.iter(|| {
            let mut into = Resources::default();
            let keep = |_: &ResourceKey| true;
            let blocks = [Ok::<_, Infallible>(Cow::Borrowed(&compressed[..]))];
            pieces::decode_compressed(blocks.into_iter(), Loading { keep, into: &mut into })
                .expect("encoded as written");
            into.len()
        })
    });
    group.finish();
}

criterion_group!(benches, dedup, lifecycle, rating, sink_encoding, checkpoint_encoding);
fn main() {
    allocator::configure();
    benches();
    Criterion::default().configure_from_args().final_summary();
}
