//! `tally run --drain` on the real broker and ClickHouse: a generated workload
//! with every kind of trouble, read back with FINAL, equals the oracle to the
//! last digit, with one worker and with two, and in small inserts.

mod support;

use support::{Scratch, expected};
use tally::sink::clickhouse::Warehouse;
use tally::workload::{Generator, Workload};

fn workload(seed: u64) -> Workload {
    Workload { seed, events: 20_000, fleet: 400, accounts: 30, partitions: 4, ..Workload::default() }
}

/// Drains a generated workload with `tally run --drain` and `flags`, checks
/// ClickHouse against the oracle, and returns the run's log: JSON lines, the
/// sink's at debug level.
fn drain_equals_the_oracle(name: &str, flags: &[&str]) -> String {
    let scratch = Scratch::new(name);
    let workload = workload(7);
    let messages = scratch.produce(workload.partitions, Generator::new(workload.clone()).collect());
    scratch.run_ok(&["migrate"]);
    let run = scratch
        .tally(&[&["run", "--drain"], flags].concat())
        .env("TALLY_LOG", "warn,tally::sink=debug")
        .env("TALLY_LOG_FORMAT", "json")
        .output()
        .expect("tally starts");
    let log = String::from_utf8_lossy(&run.stderr).into_owned();
    assert!(run.status.success(), "tally run {flags:?} failed ({}):\n{log}", run.status);
    let expected = expected(workload.partitions, &messages);
    assert!(expected.rejections.len() > 20 && expected.breakdowns.len() > 1_000);
    scratch.tables().assert_same(&expected);
    log
}

#[test]
fn one_worker_drain_equals_the_oracle() {
    let log = drain_equals_the_oracle("one_worker", &["--workers", "1"]);
    assert!(!log.contains(r#""last":false"#), "an epoch's rows in one insert per table:\n{log}");
}

#[test]
fn two_worker_drain_equals_the_oracle() {
    drain_equals_the_oracle("two_workers", &["--workers", "2"]);
}

/// An epoch's rows in inserts of a hundred, written as they are made.
#[test]
fn a_drain_in_small_inserts_equals_the_oracle() {
    let log = drain_equals_the_oracle("small_inserts", &["--workers", "2", "--clickhouse-rows-per-insert", "100"]);
    assert!(log.contains(r#""ends":0"#), "an epoch's rows in several inserts:\n{log}");
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

/// The checkpoint store remembers a drain, but the database is new: the
/// checkpoint's rows are not there, so the run bills the topic from its start.
#[test]
fn a_new_database_is_billed_from_the_beginning_despite_a_checkpoint() {
    let scratch = Scratch::new("new_database");
    let workload = Workload { events: 5_000, ..workload(12) };
    let messages = scratch.produce(workload.partitions, Generator::new(workload.clone()).collect());
    scratch.run_ok(&["migrate"]);
    scratch.run_ok(&["run", "--drain"]);
    let server = Warehouse::with_database(&scratch.clickhouse(), None);
    server.block_on(server.client().query(&format!("DROP DATABASE {}", scratch.database)).execute()).unwrap();
    scratch.run_ok(&["migrate"]);
    scratch.run_ok(&["run", "--drain", "--workers", "2"]);
    scratch.tables().assert_same(&expected(workload.partitions, &messages));
}

/// A generated topic keeps its messages whatever their timestamps: the
/// workloads are stamped days back, and a persistent broker's retention
/// sweep deleted them under a live run once they were a week old.
#[test]
fn a_generated_topic_keeps_every_message() {
    use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
    use rdkafka::client::DefaultClientContext;

    let scratch = Scratch::new("retention");
    let workload = Workload { events: 10, ..workload(15) };
    scratch.produce(workload.partitions, Generator::new(workload).collect());
    let admin: AdminClient<DefaultClientContext> = scratch.kafka().client_config(&[]).create().unwrap();
    let described = tally::blocking_runtime()
        .block_on(admin.describe_configs([&ResourceSpecifier::Topic(&scratch.topic)], &AdminOptions::new()))
        .unwrap();
    let topic = described.into_iter().next().unwrap().unwrap();
    let retention = topic.get("retention.ms").and_then(|entry| entry.value.as_deref());
    assert_eq!(retention, Some("-1"), "the topic's retention, as the broker describes it");
}

/// Pipelines sharing one checkpoint URL keep their state apart.
#[test]
fn two_topics_share_a_checkpoint_url() {
    let first = Scratch::new("shared_store_a");
    let mut second = Scratch::new("shared_store_b");
    second.state.clone_from(&first.state);
    for (scratch, seed) in [(&first, 13), (&second, 14)] {
        let workload = Workload { events: 4_000, ..workload(seed) };
        let messages = scratch.produce(workload.partitions, Generator::new(workload.clone()).collect());
        scratch.run_ok(&["migrate"]);
        scratch.run_ok(&["run", "--drain"]);
        scratch.tables().assert_same(&expected(workload.partitions, &messages));
    }
}

/// Workers finish their partitions at different epochs: the one with little to
/// read stops early, while exchanged data still reaches its operators.
#[test]
fn workers_that_finish_at_different_epochs_checkpoint_every_epoch() {
    let scratch = Scratch::new("skewed");
    let workload = Workload { events: 30_000, partitions: 2, ..workload(15) };
    let mut kept = 0;
    let skewed: Vec<_> = Generator::new(workload)
        .filter(|m| {
            kept += 1;
            m.partition == 0 || kept % 50 == 0
        })
        .collect();
    let messages = scratch.produce(2, skewed);
    scratch.run_ok(&["migrate"]);
    scratch.run_ok(&["run", "--drain", "--workers", "2", "--checkpoint-interval", "1ms"]);
    scratch.tables().assert_same(&expected(2, &messages));
    scratch.run_ok(&["run", "--drain", "--workers", "3"]);
    scratch.tables().assert_same(&expected(2, &messages));
}
