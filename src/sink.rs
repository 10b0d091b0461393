//! The sink: the dataflow's output for each epoch, written to ClickHouse once
//! the frontier has passed the epoch.
//!
//! Per epoch, each worker writes its own breakdown rows, totals and rejections
//! (one insert per table), then acknowledges the epoch to worker 0. When every
//! worker has acknowledged epoch `e`, worker 0 writes `pipeline_progress` for
//! `e`: a reader that sees progress `e` sees every row of epochs `≤ e`.
//! Rows carry `version = incarnation << 20 | epoch` (see [`Versions`]).

pub mod clickhouse;
pub mod rows;

use std::sync::Arc;

use tally_dataflows::dataflow::Streams;
use tally_dataflows::dataflow::pending::Pending;
use tally_dataflows::prices::PriceList;
use tally_dataflows::rows::{BreakdownRow, Progress, Rejection, TotalRow};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::StreamVec;
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::vec::Map;
use timely::dataflow::operators::{Concat, Operator};

use self::clickhouse::Warehouse;
use self::rows::{AccountTotal, PipelineProgress, RejectedEvent, UsageBreakdown};

/// Row versions that only grow, across epochs and across restarts: the
/// process's start time in milliseconds above 20 bits of epoch. A restart
/// starts later, so its versions are above everything an earlier run wrote;
/// an epoch count past 2^20 spills into the time bits, which stays increasing.
#[derive(Clone, Copy, Debug)]
pub struct Versions {
    incarnation: u64,
}

impl Versions {
    /// Versions for a process started at `start_millis` (Unix time).
    pub fn starting_at(start_millis: u64) -> Versions {
        Versions { incarnation: start_millis }
    }

    /// The version of rows written for `epoch`.
    pub fn of(&self, epoch: u64) -> u64 {
        (self.incarnation << 20) + epoch
    }
}

/// Where and how rows are written.
pub struct Target {
    /// Connection settings.
    pub clickhouse: crate::config::ClickHouse,
    /// Topic name, stored with rejections and as the pipeline's name.
    pub topic: String,
    /// To name SKUs, units and currencies.
    pub prices: Arc<PriceList>,
    /// Row versions.
    pub versions: Versions,
}

#[derive(Clone)]
enum Output {
    Breakdown(BreakdownRow),
    Total(TotalRow),
    Rejection(Rejection),
}

/// Writes the dataflow's output; returns a stream that reaches epoch `e` once
/// everything up to `e` is in ClickHouse, `pipeline_progress` included.
pub fn write<'scope>(streams: Streams<'scope>, target: Arc<Target>, worker: usize) -> StreamVec<'scope, u64, ()> {
    let Streams { breakdowns, totals, rejections, progress, outcomes: _, errors: _ } = streams;
    let output =
        breakdowns.map(Output::Breakdown).concat(totals.map(Output::Total)).concat(rejections.map(Output::Rejection));
    let rows_target = Arc::clone(&target);
    let acks =
        output.unary_frontier::<CapacityContainerBuilder<Vec<()>>, _, _, _>(Pipeline, "ClickHouseRows", move |_, _| {
            let warehouse = Warehouse::new(&rows_target.clickhouse);
            let mut pending = Pending::<Output, ()>::default();
            move |(input, frontier), output| {
                let port = output.output_index();
                input.for_each(|cap, data| pending.first(&cap, port, data));
                for (epoch, batch) in pending.complete(&[frontier]) {
                    write_rows(&warehouse, &rows_target, epoch, &batch.first);
                    output.session(&batch.capability).give(());
                }
            }
        });
    acks.binary_frontier::<_, CapacityContainerBuilder<Vec<()>>, _, _, _, _>(
        progress,
        Exchange::new(|_: &()| 0),
        Pipeline,
        "ClickHouseProgress",
        move |_, _| {
            let writer = (worker == 0).then(|| Warehouse::new(&target.clickhouse));
            let mut pending = Pending::<(), Progress>::default();
            let mut progress = Progress::START;
            move |(acks, acks_frontier), (new_progress, progress_frontier), output| {
                let port = output.output_index();
                acks.for_each(|cap, data| pending.first(&cap, port, data));
                new_progress.for_each(|cap, data| pending.second(&cap, port, data));
                for (epoch, batch) in pending.complete(&[acks_frontier, progress_frontier]) {
                    progress = batch.second.last().copied().unwrap_or(progress);
                    if let Some(writer) = &writer {
                        write_progress(writer, &target, epoch, progress);
                    }
                    output.session(&batch.capability).give(());
                }
            }
        },
    )
}

fn write_rows(warehouse: &Warehouse, target: &Target, epoch: u64, batch: &[Output]) {
    let version = target.versions.of(epoch);
    let prices = &target.prices;
    let mut breakdowns = Vec::new();
    let mut totals = Vec::new();
    let mut rejections = Vec::new();
    for output in batch {
        match output {
            Output::Breakdown(row) => breakdowns.push(UsageBreakdown::of(row, prices, version)),
            Output::Total(row) => totals.push(AccountTotal::of(row, prices, version)),
            Output::Rejection(rejection) => rejections.push(RejectedEvent::of(rejection, &target.topic, version)),
        }
    }
    warehouse.insert_all::<UsageBreakdown>("usage_breakdown", &breakdowns);
    warehouse.insert_all::<AccountTotal>("account_totals", &totals);
    warehouse.insert_all::<RejectedEvent>("rejected_events", &rejections);
    tracing::debug!(
        epoch,
        breakdowns = breakdowns.len(),
        totals = totals.len(),
        rejections = rejections.len(),
        "epoch written"
    );
}

fn write_progress(warehouse: &Warehouse, target: &Target, epoch: u64, progress: Progress) {
    let committed_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u32::try_from(d.as_secs()).unwrap_or(u32::MAX));
    let row = PipelineProgress {
        pipeline: &target.topic,
        watermark: PipelineProgress::seconds(progress.watermark),
        final_before: PipelineProgress::seconds(progress.final_before),
        epoch,
        committed_at,
        version: target.versions.of(epoch),
    };
    warehouse.insert_all::<PipelineProgress>("pipeline_progress", &[row]);
}
