//! A live run's idle partitions: one that stops holding the watermark back
//! lets windows turn final, and when it wakes up with events for those
//! windows they are rejected `late` (final rows never change) while its
//! current events count.

mod support;

use std::sync::{Arc, Mutex};

use support::{Ev, at, billing_by_default};
use tally_dataflows::checkpoint::Recovery;
use tally_dataflows::dataflow::ROWS_PER_STEP;
use tally_dataflows::event::{Message, Reason};
use tally_dataflows::judge::{PartitionState, SourceItem};
use tally_dataflows::rows::{Progress, Rejection};
use timely::dataflow::InputHandleVec;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::{Input, Operator};

fn message(partition: u32, offset: i64, event: &Ev) -> SourceItem {
    SourceItem::Message(Message { partition, offset, timestamp: event.time, payload: event.json() })
}

#[test]
fn an_idle_partition_waking_up_cannot_touch_final_windows() {
    let rejections: Arc<Mutex<Vec<Rejection>>> = Arc::default();
    let progress: Arc<Mutex<Vec<Progress>>> = Arc::default();
    let (seen_rejections, seen_progress) = (Arc::clone(&rejections), Arc::clone(&progress));
    timely::execute_directly(move |worker| {
        let mut input = InputHandleVec::<u64, SourceItem>::new();
        worker.dataflow::<u64, _, _>(|scope| {
            let streams = billing_by_default(scope.input_from(&mut input), Recovery::default(), ROWS_PER_STEP);
            streams.rejections.sink(Pipeline, "Rejections", move |(input, _)| {
                input.for_each(|_, data| seen_rejections.lock().unwrap().extend(data.drain(..)));
            });
            streams.progress.sink(Pipeline, "Progress", move |(input, _)| {
                input.for_each(|_, data| seen_progress.lock().unwrap().extend(data.drain(..)));
            });
        });
        let egress = |id: &str, time: &str| Ev::new("usage.recorded", id, time, "lb").q("network.egress_gib", "1");
        for partition in [0, 1] {
            input.send(SourceItem::Status { partition, state: PartitionState::Active });
        }
        input.send(message(1, 0, &egress("p1-a", "2026-11-23T10:00:00Z")));
        input.send(message(0, 0, &egress("p0-a", "2026-11-23T10:00:00Z")));
        input.advance_to(1);
        // Partition 1 goes quiet; partition 0 moves on three hours.
        input.send(SourceItem::Status { partition: 1, state: PartitionState::Idle });
        input.send(message(0, 1, &egress("p0-b", "2026-11-23T13:30:00Z")));
        input.advance_to(2);
        // Partition 1 wakes up: an event for 10:30 (final by now) and one for 13:00.
        input.send(message(1, 1, &egress("p1-b", "2026-11-23T10:30:00Z")));
        input.send(message(1, 2, &egress("p1-c", "2026-11-23T13:00:00Z")));
        input.close();
        while worker.step() {}
    });
    let rejections = rejections.lock().unwrap();
    assert_eq!(rejections.len(), 1, "{rejections:?}");
    assert_eq!((rejections[0].partition, rejections[0].offset, rejections[0].reason), (1, 1, Reason::Late));
    assert!(rejections[0].detail.contains("already final"), "{}", rejections[0].detail);
    let last = progress.lock().unwrap().last().copied().unwrap();
    // Partition 1 holds the watermark again once it has spoken, but the
    // watermark never moves back: it stays at partition 0's 13:30.
    assert_eq!(last.watermark, Some(at("2026-11-23T13:30:00Z")));
    assert_eq!(last.final_before, Some(at("2026-11-23T12:00:00Z")));
}
