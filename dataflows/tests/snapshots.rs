//! Snapshots in a live run: the stream that tells the checkpoint sink a
//! checkpoint epoch is done passes it only once every snapshot as of it is
//! recorded, while the usage state is encoded beside the worker.

mod support;

use std::collections::BTreeMap;
use std::rc::Rc;

use support::{Ev, billing_by_default};
use tally_dataflows::checkpoint::{Cadence, Encoded, Part, Recovery, SnapshotsHandle};
use tally_dataflows::dataflow::ROWS_PER_STEP;
use tally_dataflows::event::Message;
use tally_dataflows::judge::{PartitionState, SourceItem};
use timely::dataflow::operators::{Input, Probe};
use timely::dataflow::{InputHandleVec, ProbeHandle};

fn message(offset: i64, event: &Ev) -> SourceItem {
    SourceItem::Message(Message { partition: 0, offset, timestamp: event.time, payload: event.json() })
}

#[test]
fn a_checkpoint_epoch_is_done_only_once_its_snapshots_are_recorded_for_good() {
    let epochs = 12;
    let cadence = Cadence::every(3);
    timely::execute_directly(move |worker| {
        let snapshots = SnapshotsHandle::default();
        let mut input = InputHandleVec::<u64, SourceItem>::new();
        let recorded = ProbeHandle::new();
        let rows = ProbeHandle::new();
        worker.dataflow::<u64, _, _>(|scope| {
            let recovery = Recovery { snapshots: Some(Rc::clone(&snapshots)), cadence, ..Recovery::default() };
            let streams = billing_by_default(scope.input_from(&mut input), recovery, ROWS_PER_STEP);
            streams.recorded.probe_with(&recorded);
            streams.breakdowns.probe_with(&rows);
        });
        input.send(SourceItem::Status { partition: 0, state: PartitionState::Active });
        let mut offset = 0;
        // Each checkpoint epoch's state, as first seen once the stream passed it.
        let mut seen: BTreeMap<u64, Vec<(Part, Encoded)>> = BTreeMap::new();
        let mut observe = |snapshots: &SnapshotsHandle, recorded: &ProbeHandle<u64>| {
            for epoch in (0..epochs).filter(|&e| cadence.is_checkpoint(e) && !recorded.less_equal(&e)) {
                seen.entry(epoch).or_insert_with(|| snapshots.borrow().parts_at(epoch));
            }
        };
        for epoch in 0..epochs {
            // Enough resources that encoding them takes longer than a step.
            for vm in 0..2_000 {
                let time = format!("2026-11-23T{:02}:{:02}:{:02}Z", 10 + epoch, vm / 60 % 60, vm % 60);
                let started = Ev::new("resource.started", &format!("e{epoch}-{vm}"), &time, &format!("vm-{vm}"));
                input.send(message(offset, &started.q("compute.vcpu", "2")));
                offset += 1;
            }
            input.advance_to(epoch + 1);
            while rows.less_than(&(epoch + 1)) {
                worker.step();
                observe(&snapshots, &recorded);
            }
        }
        input.close();
        while !recorded.done() || !rows.done() {
            worker.step();
            observe(&snapshots, &recorded);
        }
        assert_eq!(seen.len(), 4, "every checkpoint epoch passed: {:?}", seen.keys());
        for (epoch, parts) in seen {
            assert_eq!(parts, snapshots.borrow().parts_at(epoch), "the state as of epoch {epoch} changed once passed");
            let usage = parts.iter().find(|(part, _)| *part == Part::Usage).map(|(_, encoded)| encoded);
            assert!(matches!(usage, Some(Encoded::Held(_))), "epoch {epoch}'s usage snapshot is recorded");
        }
    });
}
