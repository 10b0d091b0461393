//! `tally run --drain` on the real broker and ClickHouse: a generated workload
//! with every kind of trouble, read back with FINAL, equals the oracle to the
//! last digit, with one worker and with two.

mod support;

use support::{Scratch, expected};
use tally::workload::{Generator, Workload};

fn workload(seed: u64) -> Workload {
    Workload { seed, events: 20_000, fleet: 400, accounts: 30, partitions: 4, ..Workload::default() }
}

fn drain_equals_the_oracle(name: &str, workers: &str) {
    let scratch = Scratch::new(name);
    let workload = workload(7);
    let messages = scratch.produce(workload.partitions, Generator::new(workload.clone()).collect());
    scratch.run_ok(&["migrate"]);
    scratch.run_ok(&["run", "--drain", "--workers", workers]);
    let expected = expected(workload.partitions, &messages);
    assert!(expected.rejections.len() > 20 && expected.breakdowns.len() > 1_000);
    scratch.tables().assert_same(&expected);
}

#[test]
fn one_worker_drain_equals_the_oracle() {
    drain_equals_the_oracle("one_worker", "1");
}

#[test]
fn two_worker_drain_equals_the_oracle() {
    drain_equals_the_oracle("two_workers", "2");
}

#[test]
fn draining_again_changes_nothing() {
    let scratch = Scratch::new("again");
    let workload = Workload { events: 5_000, ..workload(11) };
    let messages = scratch.produce(workload.partitions, Generator::new(workload.clone()).collect());
    scratch.run_ok(&["migrate"]);
    scratch.run_ok(&["run", "--drain"]);
    scratch.run_ok(&["migrate"]);
    scratch.run_ok(&["run", "--drain", "--workers", "2"]);
    scratch.tables().assert_same(&expected(workload.partitions, &messages));
}
