//! Accrual in a live run: held between checkpoint epochs, and moved up to the
//! watermark at the next checkpoint epoch even when no clock moves by then.

mod support;

use std::sync::{Arc, Mutex};

use support::{Ev, at, billing_by_default};
use tally_dataflows::checkpoint::{Cadence, Recovery};
use tally_dataflows::dataflow::{ROWS_PER_STEP, Streams};
use tally_dataflows::event::Message;
use tally_dataflows::judge::{PartitionState, SourceItem};
use tally_dataflows::rows::{BreakdownRow, Progress};
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::{Input, Operator, Probe};
use timely::dataflow::{InputHandleVec, ProbeHandle};

fn message(offset: i64, event: &Ev) -> SourceItem {
    SourceItem::Message(Message { partition: 0, offset, timestamp: event.time, payload: event.json() })
}

/// A live run on one partition, checkpointing every fifth epoch: `vms`
/// vms start at 10:00 in epoch 0, an egress at 10:20:30 moves the clock in
/// epoch 1, and the partition stays quiet up to epoch 7; the worker steps
/// until epoch 6 is done. `attach` reads the streams and probes each end it
/// makes with the probe it is given.
fn quiet_live_run(
    vms: usize,
    rows_per_step: usize,
    attach: impl for<'s> FnOnce(Streams<'s>, &ProbeHandle<u64>) + Send + Sync + 'static,
) {
    timely::execute_directly(move |worker| {
        let mut input = InputHandleVec::<u64, SourceItem>::new();
        let probe = ProbeHandle::new();
        worker.dataflow::<u64, _, _>(|scope| {
            let recovery = Recovery { cadence: Cadence::every(5), ..Recovery::default() };
            let streams = billing_by_default(scope.input_from(&mut input), recovery, rows_per_step);
            attach(streams, &probe);
        });
        input.send(SourceItem::Status { partition: 0, state: PartitionState::Active });
        for vm in 0..vms {
            let start = Ev::new("resource.started", &format!("s{vm}"), "2026-11-23T10:00:00Z", &format!("vm-{vm}"));
            input.send(message(vm as i64, &start.q("compute.vcpu", "1")));
        }
        input.advance_to(1);
        let egress = Ev::new("usage.recorded", "e", "2026-11-23T10:20:30Z", "lb").q("network.egress_gib", "1");
        input.send(message(vms as i64, &egress));
        // From here on the partition is quiet, and the run goes on.
        input.advance_to(7);
        worker.step_while(|| probe.less_than(&6));
    });
}

#[test]
fn a_quiet_live_run_accrues_to_the_watermark_at_the_next_checkpoint_epoch() {
    let progress: Arc<Mutex<Vec<(u64, Progress)>>> = Arc::default();
    let rows: Arc<Mutex<Vec<(u64, BreakdownRow)>>> = Arc::default();
    let (seen_progress, seen_rows) = (Arc::clone(&progress), Arc::clone(&rows));
    quiet_live_run(1, ROWS_PER_STEP, move |streams, probe| {
        streams.progress.probe_with(probe).sink(Pipeline, "Progress", move |(input, _)| {
            input.for_each(|cap, data| {
                let epoch = *cap.least().expect("an epoch");
                seen_progress.lock().unwrap().extend(data.drain(..).map(|p| (epoch, p)));
            });
        });
        streams.breakdowns.probe_with(probe).sink(Pipeline, "Rows", move |(input, _)| {
            input.for_each(|cap, data| {
                let epoch = *cap.least().expect("an epoch");
                seen_rows.lock().unwrap().extend(data.drain(..).map(|r| (epoch, r)));
            });
        });
    });
    let progress = progress.lock().unwrap();
    let accrued = |epoch: u64| progress.iter().find(|(e, _)| *e == epoch).and_then(|(_, p)| p.accrued_to);
    assert_eq!(accrued(1), Some(at("2026-11-23T10:00:00Z")), "held between checkpoint epochs: {progress:?}");
    assert_eq!(accrued(5), Some(at("2026-11-23T10:20:00Z")), "moved at the checkpoint epoch: {progress:?}");
    let rows = rows.lock().unwrap();
    let vm: Vec<_> = rows.iter().filter(|(_, r)| &*r.key.resource == "vm-0").collect();
    assert_eq!(vm.len(), 1, "{vm:?}");
    assert_eq!((vm[0].0, vm[0].1.usage.to_string()), (5, "1200.000000000000".to_string()));
}

/// When accrual moves, every running resource's row changes in one epoch:
/// those rows leave the usage stage a step at a time, and no step of the
/// worker carries more than a step's rows downstream.
#[test]
fn an_accrual_move_sends_its_rows_a_step_at_a_time() {
    const VMS: usize = 50;
    const ROWS_PER_STEP: usize = 8;
    let arrivals: Arc<Mutex<Vec<usize>>> = Arc::default();
    let seen = Arc::clone(&arrivals);
    quiet_live_run(VMS, ROWS_PER_STEP, move |streams, probe| {
        streams.progress.probe_with(probe);
        streams.breakdowns.probe_with(probe).sink(Pipeline, "Rows", move |(input, _)| {
            let mut arrived = 0;
            input.for_each(|_, data| arrived += std::mem::take(data).len());
            seen.lock().unwrap().push(arrived);
        });
    });
    let arrivals = arrivals.lock().unwrap();
    let rows: usize = arrivals.iter().sum();
    assert_eq!(rows, VMS + 1, "a row per running vm and the egress: {arrivals:?}");
    let most = arrivals.iter().max().copied().unwrap_or_default();
    assert!(most <= ROWS_PER_STEP, "at most a step's rows arrive at once: {arrivals:?}");
}
