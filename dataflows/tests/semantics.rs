//! Each rule of the contract on a small input with hand-computed results; every
//! case runs through the oracle and the dataflow (1, 2, 4 workers, several
//! epoch cuts), which must agree.

mod support;

use support::{Ev, Topic, at, check, pair, row, total};
use tally_dataflows::event::Reason;

const STARTED: &str = "resource.started";
const RESIZED: &str = "resource.resized";
const STOPPED: &str = "resource.stopped";
const RECORDED: &str = "usage.recorded";
const VCPU: &str = "compute.vcpu";
const RAM: &str = "compute.ram_gib";
const EGRESS: &str = "network.egress_gib";

#[test]
fn a_gauge_integrates_across_hour_boundaries() {
    let mut topic = Topic::new(1);
    topic
        .send(0, &Ev::new(STARTED, "e1", "2026-11-23T10:30:00Z", "vm").q(VCPU, "4"))
        .send(0, &Ev::new(STOPPED, "e2", "2026-11-23T12:15:00Z", "vm"));
    let ledger = check(&topic);
    // 4 vCPU × 30 min, × 60 min, × 15 min; 0.0125 EUR per vCPU-hour.
    assert_eq!(row(&ledger, "acc-1", "2026-11-23T10:00:00Z", "vm", VCPU), pair("7200.000000000000", "0.025000000000"));
    assert_eq!(row(&ledger, "acc-1", "2026-11-23T11:00:00Z", "vm", VCPU), pair("14400.000000000000", "0.050000000000"));
    assert_eq!(row(&ledger, "acc-1", "2026-11-23T12:00:00Z", "vm", VCPU), pair("3600.000000000000", "0.012500000000"));
    assert_eq!(total(&ledger, "acc-1", "2026-11-23T00:00:00Z", VCPU), pair("25200.000000000000", "0.087500000000"));
    assert_eq!(ledger.breakdowns.len(), 3);
}

#[test]
fn a_resize_replaces_the_whole_map() {
    let mut topic = Topic::new(1);
    topic
        .send(0, &Ev::new(STARTED, "e1", "2026-11-23T10:00:00Z", "vm").q(VCPU, "2").q(RAM, "8"))
        .send(0, &Ev::new(RESIZED, "e2", "2026-11-23T10:30:00Z", "vm").q(VCPU, "4"))
        .send(0, &Ev::new(STOPPED, "e3", "2026-11-23T11:00:00Z", "vm"));
    let ledger = check(&topic);
    assert_eq!(row(&ledger, "acc-1", "2026-11-23T10:00:00Z", "vm", VCPU), pair("10800.000000000000", "0.037500000000"));
    // RAM left out of the resize drops to zero: 8 GiB × 30 min at 0.0017.
    assert_eq!(row(&ledger, "acc-1", "2026-11-23T10:00:00Z", "vm", RAM), pair("14400.000000000000", "0.006800000000"));
}

#[test]
fn stop_without_anything_running_adds_nothing_and_second_start_resizes() {
    let mut topic = Topic::new(1);
    topic
        .send(0, &Ev::new(STOPPED, "e0", "2026-11-23T09:50:00Z", "vm"))
        .send(0, &Ev::new(STARTED, "e1", "2026-11-23T10:00:00Z", "vm").q(VCPU, "2"))
        .send(0, &Ev::new(STARTED, "e2", "2026-11-23T10:30:00Z", "vm").q(VCPU, "4"))
        .send(0, &Ev::new(STOPPED, "e3", "2026-11-23T10:45:00Z", "vm"))
        .send(0, &Ev::new(STOPPED, "e4", "2026-11-23T10:50:00Z", "vm"));
    let ledger = check(&topic);
    assert_eq!(row(&ledger, "acc-1", "2026-11-23T10:00:00Z", "vm", VCPU), pair("7200.000000000000", "0.025000000000"));
    assert_eq!(ledger.breakdowns.len(), 1);
}

#[test]
fn a_resize_while_stopped_starts_the_resource() {
    let mut topic = Topic::new(1);
    topic
        .send(0, &Ev::new(RESIZED, "e1", "2026-11-23T10:00:00Z", "vm").q(VCPU, "3"))
        .send(0, &Ev::new(STOPPED, "e2", "2026-11-23T10:20:00Z", "vm"));
    let ledger = check(&topic);
    assert_eq!(row(&ledger, "acc-1", "2026-11-23T10:00:00Z", "vm", VCPU), pair("3600.000000000000", "0.012500000000"));
}

#[test]
fn running_resources_accrue_to_the_watermark_at_the_granularity() {
    let mut topic = Topic::new(1);
    topic
        .send(0, &Ev::new(STARTED, "e1", "2026-11-23T10:00:00Z", "vm").q(VCPU, "1"))
        .send(0, &Ev::new(RECORDED, "e2", "2026-11-23T10:37:30Z", "other").q(EGRESS, "1"));
    let ledger = check(&topic);
    // The watermark is 10:37:30; accrual stops at the whole minute, 10:37.
    assert_eq!(row(&ledger, "acc-1", "2026-11-23T10:00:00Z", "vm", VCPU), pair("2220.000000000000", "0.007708333333"));
    assert_eq!(ledger.progress.unwrap().accrued_to, Some(at("2026-11-23T10:37:00Z")));
}

#[test]
fn the_watermark_is_the_slowest_partition() {
    let mut topic = Topic::new(2);
    topic
        .send(0, &Ev::new(STARTED, "e1", "2026-11-23T10:00:00Z", "vm").q(VCPU, "1"))
        .send(1, &Ev::new(RECORDED, "e2", "2026-11-23T10:10:00Z", "x").q(EGRESS, "1"))
        .send(0, &Ev::new(RECORDED, "e3", "2026-11-23T10:50:00Z", "y").q(EGRESS, "1"));
    let ledger = check(&topic);
    assert_eq!(row(&ledger, "acc-1", "2026-11-23T10:00:00Z", "vm", VCPU), pair("600.000000000000", "0.002083333333"));
}

#[test]
fn an_empty_partition_does_not_hold_a_drain_back() {
    let mut topic = Topic::new(3);
    topic
        .send(1, &Ev::new(STARTED, "e1", "2026-11-23T10:00:00Z", "vm").q(VCPU, "1"))
        .send(1, &Ev::new(RECORDED, "e2", "2026-11-23T10:30:00Z", "x").q(EGRESS, "1"));
    let ledger = check(&topic);
    assert_eq!(row(&ledger, "acc-1", "2026-11-23T10:00:00Z", "vm", VCPU), pair("1800.000000000000", "0.006250000000"));
}

#[test]
fn a_window_is_rated_at_the_price_in_effect_at_its_start() {
    let mut topic = Topic::new(1);
    topic
        .send(0, &Ev::new(STARTED, "e1", "2026-11-30T23:30:00Z", "vm").q(VCPU, "1"))
        .send(0, &Ev::new(STOPPED, "e2", "2026-12-01T00:30:00Z", "vm"));
    let ledger = check(&topic);
    assert_eq!(row(&ledger, "acc-1", "2026-11-30T23:00:00Z", "vm", VCPU), pair("1800.000000000000", "0.006250000000"));
    assert_eq!(row(&ledger, "acc-1", "2026-12-01T00:00:00Z", "vm", VCPU), pair("1800.000000000000", "0.005500000000"));
    assert_eq!(total(&ledger, "acc-1", "2026-11-30T00:00:00Z", VCPU), pair("1800.000000000000", "0.006250000000"));
    assert_eq!(total(&ledger, "acc-1", "2026-12-01T00:00:00Z", VCPU), pair("1800.000000000000", "0.005500000000"));
}

#[test]
fn each_row_is_rounded_half_even_once_and_totals_sum_the_rows() {
    let mut topic = Topic::new(1);
    // 1 vCPU for 1 ms: 0.001 vCPU-s × 0.0125 / 3600 = 0.00000000347222…
    topic
        .send(0, &Ev::new(STARTED, "e1", "2026-11-23T10:00:00Z", "a").q(VCPU, "1"))
        .send(0, &Ev::new(STOPPED, "e2", "2026-11-23T10:00:00.001Z", "a"))
        .send(0, &Ev::new(STARTED, "e3", "2026-11-23T10:00:00Z", "b").q(VCPU, "1"))
        .send(0, &Ev::new(STOPPED, "e4", "2026-11-23T10:00:00.001Z", "b"));
    let ledger = check(&topic);
    assert_eq!(row(&ledger, "acc-1", "2026-11-23T10:00:00Z", "a", VCPU), pair("0.001000000000", "0.000000003472"));
    // The total is the sum of the rounded rows, not the rounded sum (…6944).
    assert_eq!(total(&ledger, "acc-1", "2026-11-23T00:00:00Z", VCPU), pair("0.002000000000", "0.000000006944"));
}

#[test]
fn events_at_the_same_millisecond_apply_in_id_order() {
    let mut topic = Topic::new(2);
    // "a" (stop) applies before "b" (resize): the resource runs from 10:30.
    topic
        .send(1, &Ev::new(RESIZED, "b", "2026-11-23T10:30:00Z", "vm").q(VCPU, "8"))
        .send(0, &Ev::new(STOPPED, "a", "2026-11-23T10:30:00Z", "vm"))
        .send(0, &Ev::new(STOPPED, "c", "2026-11-23T10:45:00Z", "vm"))
        .send(1, &Ev::new(RECORDED, "d", "2026-11-23T10:45:00Z", "x").q(EGRESS, "1"));
    let ledger = check(&topic);
    assert_eq!(row(&ledger, "acc-1", "2026-11-23T10:00:00Z", "vm", VCPU), pair("7200.000000000000", "0.025000000000"));
}

#[test]
fn an_event_on_an_hour_boundary_belongs_to_the_window_it_starts() {
    let mut topic = Topic::new(1);
    topic
        .send(0, &Ev::new(STARTED, "e1", "2026-11-23T11:00:00Z", "vm").q(VCPU, "1"))
        .send(0, &Ev::new(RECORDED, "e2", "2026-11-23T12:00:00Z", "vm").q(EGRESS, "2.5"))
        .send(0, &Ev::new(STOPPED, "e3", "2026-11-23T12:00:00Z", "vm"));
    let ledger = check(&topic);
    assert_eq!(row(&ledger, "acc-1", "2026-11-23T10:00:00Z", "vm", VCPU), None);
    assert_eq!(row(&ledger, "acc-1", "2026-11-23T11:00:00Z", "vm", VCPU), pair("3600.000000000000", "0.012500000000"));
    assert_eq!(row(&ledger, "acc-1", "2026-11-23T12:00:00Z", "vm", EGRESS), pair("2.500000000000", "0.025000000000"));
    assert_eq!(row(&ledger, "acc-1", "2026-11-23T12:00:00Z", "vm", VCPU), None);
}

#[test]
fn counters_sum_within_their_window() {
    let mut topic = Topic::new(1);
    topic
        .send(0, &Ev::new(RECORDED, "e1", "2026-11-23T10:05:00Z", "lb").q(EGRESS, "1.5"))
        .send(0, &Ev::new(RECORDED, "e2", "2026-11-23T10:55:00Z", "lb").q(EGRESS, "0.000000001"))
        .send(0, &Ev::new(RECORDED, "e3", "2026-11-23T11:05:00Z", "lb").q(EGRESS, "3"));
    let ledger = check(&topic);
    assert_eq!(row(&ledger, "acc-1", "2026-11-23T10:00:00Z", "lb", EGRESS), pair("1.500000001000", "0.015000000010"));
    assert_eq!(row(&ledger, "acc-1", "2026-11-23T11:00:00Z", "lb", EGRESS), pair("3.000000000000", "0.030000000000"));
}

#[test]
fn duplicates_count_once_wherever_they_land() {
    let mut topic = Topic::new(2);
    let event = Ev::new(RECORDED, "e1", "2026-11-23T10:05:00Z", "lb").q(EGRESS, "1");
    topic.send(0, &event).send(0, &event).send(1, &event);
    let ledger = check(&topic);
    assert_eq!(row(&ledger, "acc-1", "2026-11-23T10:00:00Z", "lb", EGRESS), pair("1.000000000000", "0.010000000000"));
    assert_eq!(ledger.outcomes.accepted, 1);
    assert_eq!(ledger.outcomes.duplicates, 2);
    assert!(ledger.rejections.is_empty());
}

/// Identity is `(source, id)` alone: a copy naming another resource is
/// still a copy, though that resource's events are another worker's.
#[test]
fn a_repeated_identity_is_a_duplicate_whatever_resource_it_names() {
    let mut topic = Topic::new(2);
    topic
        .send(0, &Ev::new(RECORDED, "e1", "2026-11-23T10:05:00Z", "lb-a").q(EGRESS, "1"))
        .send(1, &Ev::new(RECORDED, "e2", "2026-11-23T10:06:00Z", "lb-b").q(EGRESS, "4"))
        .send(1, &Ev::new(RECORDED, "e1", "2026-11-23T10:07:00Z", "lb-b").q(EGRESS, "2"))
        .send(0, &Ev::new(RECORDED, "e1", "2026-11-23T10:08:00Z", "lb-c").q(EGRESS, "8"));
    let ledger = check(&topic);
    assert_eq!(row(&ledger, "acc-1", "2026-11-23T10:00:00Z", "lb-a", EGRESS), pair("1.000000000000", "0.010000000000"));
    assert_eq!(row(&ledger, "acc-1", "2026-11-23T10:00:00Z", "lb-b", EGRESS), pair("4.000000000000", "0.040000000000"));
    assert_eq!(row(&ledger, "acc-1", "2026-11-23T10:00:00Z", "lb-c", EGRESS), None);
    assert_eq!(ledger.outcomes.accepted, 2);
    assert_eq!(ledger.outcomes.duplicates, 2);
    assert!(ledger.rejections.is_empty());
}

#[test]
fn late_is_more_than_allowed_lateness_behind_the_partition_clock() {
    let mut topic = Topic::new(1);
    topic
        .send(0, &Ev::new(RECORDED, "e1", "2026-11-23T12:00:00Z", "lb").q(EGRESS, "1"))
        .send(0, &Ev::new(RECORDED, "e2", "2026-11-23T11:00:00Z", "lb").q(EGRESS, "2"))
        .send(0, &Ev::new(RECORDED, "e3", "2026-11-23T10:59:59.999Z", "lb").q(EGRESS, "4"));
    let ledger = check(&topic);
    assert_eq!(row(&ledger, "acc-1", "2026-11-23T11:00:00Z", "lb", EGRESS), pair("2.000000000000", "0.020000000000"));
    assert_eq!(row(&ledger, "acc-1", "2026-11-23T10:00:00Z", "lb", EGRESS), None);
    assert_eq!(ledger.rejections[&(0, 2)].reason, Reason::Late);
    assert_eq!(ledger.rejections.len(), 1);
}

#[test]
fn a_late_repeat_of_a_counted_event_is_a_duplicate() {
    let mut topic = Topic::new(1);
    let event = Ev::new(RECORDED, "e1", "2026-11-23T10:00:00Z", "lb").q(EGRESS, "1");
    topic
        .send(0, &event)
        .send(0, &Ev::new(RECORDED, "e2", "2026-11-23T14:00:00Z", "lb").q(EGRESS, "1"))
        .send(0, &event);
    let ledger = check(&topic);
    assert!(ledger.rejections.is_empty());
    assert_eq!(ledger.outcomes.duplicates, 1);
}

#[test]
fn future_is_more_than_max_future_ahead_of_the_message_timestamp() {
    let mut topic = Topic::new(1);
    let stamp = at("2026-11-23T10:00:00Z");
    topic.raw(0, stamp, Ev::new(RECORDED, "e1", "2026-11-23T11:00:00Z", "lb").q(EGRESS, "1").json()).raw(
        0,
        stamp,
        Ev::new(RECORDED, "e2", "2026-11-23T11:00:00.001Z", "lb").q(EGRESS, "1").json(),
    );
    let ledger = check(&topic);
    assert_eq!(row(&ledger, "acc-1", "2026-11-23T11:00:00Z", "lb", EGRESS), pair("1.000000000000", "0.010000000000"));
    assert_eq!(ledger.rejections[&(0, 1)].reason, Reason::Future);
}

#[test]
fn rows_carry_the_metadata_of_the_latest_event_at_or_before_the_window_end() {
    let mut topic = Topic::new(1);
    topic
        .send(0, &Ev::new(STARTED, "e1", "2026-11-23T10:00:00Z", "vm").q(VCPU, "1").project("p1"))
        .send(0, &Ev::new(RESIZED, "e2", "2026-11-23T11:00:00Z", "vm").q(VCPU, "1").project("p2"))
        .send(0, &Ev::new(RESIZED, "e3", "2026-11-23T11:30:00Z", "vm").q(VCPU, "1").project("p3"))
        .send(0, &Ev::new(STOPPED, "e4", "2026-11-23T13:00:00Z", "vm").project("p4"));
    let ledger = check(&topic);
    let project = |window: &str| {
        ledger.breakdowns.iter().find(|(k, _)| k.window_start == at(window)).map(|(_, r)| r.meta.project_id.clone())
    };
    assert_eq!(project("2026-11-23T10:00:00Z").as_deref(), Some("p2"));
    assert_eq!(project("2026-11-23T11:00:00Z").as_deref(), Some("p3"));
    assert_eq!(project("2026-11-23T12:00:00Z").as_deref(), Some("p4"));
}

#[test]
fn bad_input_is_rejected_with_its_reason_and_payload() {
    let mut topic = Topic::new(1);
    let stamp = at("2026-11-23T10:00:00Z");
    topic
        .raw(0, stamp, b"{oops".to_vec())
        .raw(0, stamp, Ev::new("resource.exploded", "e1", "2026-11-23T10:00:00Z", "vm").json())
        .raw(0, stamp, Ev::new(STARTED, "e2", "2026-11-23T10:00:00Z", "vm").q("compute.tpu", "1").json())
        .raw(0, stamp, vec![b' '; (1 << 20) + 10]);
    let ledger = check(&topic);
    let reasons: Vec<Reason> = ledger.rejections.values().map(|r| r.reason).collect();
    assert_eq!(reasons, [Reason::MalformedJson, Reason::UnknownType, Reason::UnknownSku, Reason::TooLarge]);
    assert_eq!(ledger.rejections[&(0, 0)].payload, b"{oops");
    assert!(ledger.rejections[&(0, 3)].truncated);
    assert_eq!(ledger.rejections[&(0, 3)].payload.len(), 1 << 20);
}

#[test]
fn a_day_of_the_largest_quantity_is_exact() {
    let mut topic = Topic::new(1);
    topic
        .send(0, &Ev::new(STARTED, "e1", "2026-11-23T00:00:00Z", "vm").q(VCPU, "999999999999.999999999"))
        .send(0, &Ev::new(STOPPED, "e2", "2026-11-24T00:00:00Z", "vm"));
    let ledger = check(&topic);
    assert_eq!(
        total(&ledger, "acc-1", "2026-11-23T00:00:00Z", VCPU),
        pair("86399999999999999.999913600000", "299999999999.999999999712")
    );
}

#[test]
fn the_rows_emitted_are_every_upsert_before_the_tables_merge_them() {
    use std::sync::Arc;
    use tally_dataflows::checkpoint::Cadence;
    use tally_dataflows::memory::{self, RunShape};
    use tally_dataflows::settings::Settings;

    let mut topic = Topic::new(1);
    topic
        .send(0, &Ev::new(STARTED, "e1", "2026-11-23T10:30:00Z", "vm").q(VCPU, "4"))
        .send(0, &Ev::new(RESIZED, "e2", "2026-11-23T10:45:00Z", "vm").q(VCPU, "8"))
        .send(0, &Ev::new(STOPPED, "e3", "2026-11-23T11:15:00Z", "vm"));
    let ledger = check(&topic);
    let tables = ledger.breakdowns.len() + ledger.totals.len();
    assert_eq!(tables, 3);
    let messages = Arc::new(topic.messages.clone());
    let emitted = |epoch_starts: Vec<usize>| {
        let shape = RunShape { workers: 2, epoch_starts, cadence: Cadence::default(), rows_per_step: 1 };
        memory::rows_emitted(&topic.partitions, &messages, support::prices(), Settings::default(), &shape)
            .expect("no overflow")
    };
    // One epoch emits each row and total once; an epoch per event writes
    // the 10:00 row and the day's total again as later events change them.
    assert_eq!(emitted(Vec::new()), tables);
    assert!(emitted(vec![0, 1, 2]) > tables);
}
