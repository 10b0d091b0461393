//! Hot paths of the billing core on a generated workload: decode + validate,
//! and the whole dataflow (judge, dedup, usage, totals) on 1 and 2 workers,
//! with the tables merged as a reader sees them and alone.
//!
//! `cargo bench --bench pipeline`; figures go to BENCHMARKS.md.

use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group};
use tally::workload::{Generator, Workload};
use tally_dataflows::checkpoint::Cadence;
use tally_dataflows::dataflow::ROWS_PER_STEP;
use tally_dataflows::decode::decode;
use tally_dataflows::intern::Interner;
use tally_dataflows::memory::{self, RunShape};
use tally_dataflows::prices::PriceList;
use tally_dataflows::settings::Settings;

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

fn decode_validate(c: &mut Criterion) {
    let prices = prices();
    let messages = Generator::new(Workload { events: 20_000, ..Workload::default() }).messages();
    let mut group = c.benchmark_group("decode");
    group.throughput(Throughput::Elements(messages.len() as u64));
    group.bench_function("decode_validate", |b| {
        let mut interner = Interner::default();
        b.iter(|| messages.iter().filter(|m| decode(&m.payload, &prices, &mut interner).is_ok()).count())
    });
    group.finish();
}

fn dataflow(c: &mut Criterion) {
    let prices = prices();
    // Twenty thousand resources see about one event an epoch each, so the
    // run is mostly per-resource work; two thousand see ten, as a drain's
    // resources see many, and the run is mostly per-event work.
    for (fleet, suffix) in [(20_000, ""), (2_000, "_2000_resources")] {
        let workload = Workload { events: 200_000, fleet, accounts: fleet / 10, partitions: 8, ..Workload::default() };
        let messages = Generator::new(workload.clone()).messages();
        let partitions: Vec<u32> = (0..workload.partitions).collect();
        let mut group = c.benchmark_group("dataflow");
        group.sample_size(10);
        group.throughput(Throughput::Elements(messages.len() as u64));
        let workers = if suffix.is_empty() { vec![1, 2] } else { vec![2] };
        for workers in workers {
            let shape = RunShape {
                workers,
                epoch_starts: (0..messages.len()).step_by(20_000).collect(),
                cadence: Cadence::every(5),
                rows_per_step: ROWS_PER_STEP,
            };
            group.bench_function(format!("{workers}_workers{suffix}"), |b| {
                b.iter(|| memory::run(&partitions, messages.clone(), Arc::clone(&prices), Settings::default(), &shape))
            });
        }
        group.finish();
    }
}

/// The dataflow alone, as the in-process target counts it: the same runs as
/// `dataflow`, without the copy of every message made before a run on the
/// bench's own thread and the tables merged on one thread after it (which
/// stand in for the source and for ClickHouse's `FINAL`). Each worker still
/// copies the messages it reads, as the source copies them out of
/// librdkafka, and counts the rows it emits as they leave, letting them go
/// as the ClickHouse writer does once it has encoded them.
fn dataflow_alone(c: &mut Criterion) {
    let prices = prices();
    for (fleet, suffix) in [(20_000, ""), (2_000, "_2000_resources")] {
        let workload = Workload { events: 200_000, fleet, accounts: fleet / 10, partitions: 8, ..Workload::default() };
        let messages = Arc::new(Generator::new(workload.clone()).messages());
        let partitions: Vec<u32> = (0..workload.partitions).collect();
        let mut group = c.benchmark_group("dataflow_alone");
        group.sample_size(10);
        group.throughput(Throughput::Elements(messages.len() as u64));
        let shape = RunShape {
            workers: 2,
            epoch_starts: (0..messages.len()).step_by(20_000).collect(),
            cadence: Cadence::every(5),
            rows_per_step: ROWS_PER_STEP,
        };
        group.bench_function(format!("2_workers{suffix}"), |b| {
            b.iter(|| memory::rows_emitted(&partitions, &messages, Arc::clone(&prices), Settings::default(), &shape))
        });
        group.finish();
    }
}

criterion_group!(benches, decode_validate, dataflow, dataflow_alone);
fn main() {
    allocator::configure();
    benches();
    Criterion::default().configure_from_args().final_summary();
}
