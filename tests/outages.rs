//! Outages and topology changes on real services: ClickHouse unreachable, the
//! broker frozen, partitions added to a live topic, a restart that routes
//! resources otherwise. Results stay exact.

mod support;

use std::process::Stdio;
use std::thread;
use std::time::{Duration, Instant};

use support::{PrivateBroker, Running, Scratch, Switch, as_read, expected, wait};
use tally::workload::{Generator, Produced, Workload};

fn generated(seed: u64, events: u64, partitions: u32) -> Vec<Produced> {
    Generator::new(Workload { seed, events, fleet: 300, accounts: 20, partitions, ..Workload::default() }).collect()
}

#[test]
fn clickhouse_away_stalls_the_run_and_loses_nothing() {
    let scratch = Scratch::new("clickhouse_away");
    let messages = scratch.produce(3, generated(21, 30_000, 3));
    scratch.run_ok(&["migrate"]);
    let switch = Switch::to("127.0.0.1:8123");
    let mut run = Running(
        scratch
            .tally(&["run", "--drain", "--workers", "2"])
            .env("TALLY_CLICKHOUSE_URL", format!("http://127.0.0.1:{}", switch.port))
            .env("TALLY_CHECKPOINT_INTERVAL", "200ms")
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    // Away from the start: nothing can be acknowledged, so the run cannot end.
    thread::sleep(Duration::from_secs(3));
    assert!(run.alive(), "tally finished while ClickHouse was away");
    // Then flapping, cutting connections mid-insert, before it stays up.
    for _ in 0..3 {
        switch.set(true);
        thread::sleep(Duration::from_millis(150));
        switch.set(false);
        thread::sleep(Duration::from_millis(1_000));
    }
    switch.set(true);
    let status = wait(&mut run.0, Duration::from_secs(120));
    assert!(status.success(), "tally run failed: {status}");
    scratch.tables().assert_same(&expected(3, &messages));
}

#[test]
fn a_frozen_broker_stalls_the_run_and_loses_nothing() {
    let broker = PrivateBroker::start();
    let scratch = Scratch::new("broker_frozen").on(&broker.address);
    let messages = scratch.produce(4, generated(22, 40_000, 4));
    scratch.run_ok(&["migrate"]);
    broker.freeze(true);
    let mut run = Running(
        scratch
            .tally(&["run", "--drain", "--workers", "2"])
            .env("TALLY_CHECKPOINT_INTERVAL", "200ms")
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    thread::sleep(Duration::from_secs(3));
    assert!(run.alive(), "tally finished while the broker was frozen");
    broker.freeze(false);
    thread::sleep(Duration::from_millis(300));
    broker.freeze(true);
    thread::sleep(Duration::from_secs(2));
    broker.freeze(false);
    let status = wait(&mut run.0, Duration::from_secs(120));
    assert!(status.success(), "tally run failed: {status}");
    scratch.tables().assert_same(&expected(4, &messages));
}

#[test]
fn a_live_run_picks_up_partitions_that_appear() {
    let scratch = Scratch::new("new_partitions");
    scratch.run_ok(&["migrate"]);
    let mut run = Running(
        scratch
            .tally(&["run", "--workers", "2"])
            .env("TALLY_CHECKPOINT_INTERVAL", "500ms")
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    // The topic does not exist yet: the live run waits for partitions to appear.
    thread::sleep(Duration::from_secs(2));
    let messages = scratch.produce(3, generated(23, 12_000, 3));
    let expected = expected(3, &messages);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let tables = scratch.tables();
        if tables.matches(&expected) {
            break;
        }
        assert!(run.alive(), "the live run exited");
        if Instant::now() > deadline {
            tables.assert_same(&expected);
        }
        thread::sleep(Duration::from_secs(1));
    }
}

/// A topic that appears under a live run was routed by hash (there were no
/// partitions to route by); restarted with as many workers, the run routes
/// by partition, and every worker must restore its resources from every
/// shard, not from its own alone.
#[test]
fn a_restart_that_routes_otherwise_restores_every_resource() {
    let scratch = Scratch::new("reroute");
    scratch.run_ok(&["migrate"]);
    let log = scratch.log("live");
    let mut live = Running(
        scratch
            .tally(&["run", "--workers", "2"])
            .env("TALLY_CHECKPOINT_INTERVAL", "500ms")
            .env("TALLY_LOG", "info")
            .stderr(log.stdio())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while log.tail().matches("state restored").count() < 2 {
        assert!(live.alive() && Instant::now() < deadline, "the live run did not start: {}", log.tail());
        thread::sleep(Duration::from_millis(100));
    }
    let produced = generated(29, 12_000, 4);
    let (first, second) = produced.split_at(produced.len() / 2);
    scratch.produce(4, first.to_vec());
    let checkpointed = |manifest: &serde_json::Value| -> i64 {
        manifest["offsets"].as_object().map_or(0, |offsets| offsets.values().filter_map(|o| o.as_i64()).sum())
    };
    while scratch.newest_manifest().map_or(0, |m| checkpointed(&m)) < first.len() as i64 {
        assert!(live.alive() && Instant::now() < deadline, "the first half was not checkpointed: {}", log.tail());
        thread::sleep(Duration::from_millis(200));
    }
    drop(live);
    assert_eq!(scratch.newest_manifest().unwrap()["routing"], serde_json::json!("Hashed"));
    scratch.produce_more(second);
    scratch.run_ok(&["run", "--drain", "--workers", "2"]);
    let routed = serde_json::json!({ "ByPartition": { "partitions": 4 } });
    assert_eq!(scratch.newest_manifest().unwrap()["routing"], routed);
    scratch.tables().assert_same(&expected(4, &as_read(&produced)));
}
