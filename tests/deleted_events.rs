//! Events the broker deleted before tally read them (retention shorter than
//! tally's lag, or deleted records) stop the run with an error naming the
//! partition and the offsets: reading on past them would bill too little,
//! silently.

mod support;

use std::process::ExitStatus;
use std::thread;
use std::time::{Duration, Instant};

use support::{Log, Running, Scratch, as_read, expected, wait};
use tally::workload::{Generator, Produced, Workload};

fn events(seed: u64, events: u64, partitions: u32) -> Vec<Produced> {
    let workload = Workload { seed, events, fleet: 100, accounts: 10, partitions, ..Workload::default() };
    Generator::new(workload).collect()
}

fn failed_with(status: ExitStatus, stderr: &str, message: &str) {
    assert!(!status.success(), "tally succeeded:\n{stderr}");
    assert!(stderr.contains(message), "tally's error does not say {message:?}:\n{stderr}");
}

/// Waits for a run writing its stderr to `log` to exit, and checks it
/// failed with `message`.
fn stopped_with(run: &mut Running, log: &Log, message: &str) {
    let status = wait(&mut run.0, Duration::from_secs(60));
    failed_with(status, &std::fs::read_to_string(&log.path).unwrap(), message);
}

/// A new pipeline bills a topic from offset 0; a topic that no longer holds
/// it is refused, and the workers of the other partitions stop too.
#[test]
fn a_topic_whose_beginning_is_gone_is_refused_by_every_worker() {
    let scratch = Scratch::new("beginning_gone");
    scratch.produce(2, events(41, 2_000, 2));
    scratch.delete_before(1, 300);
    scratch.run_ok(&["migrate"]);
    let log = scratch.log("live");
    let mut live = Running(scratch.tally(&["run", "--workers", "2"]).stderr(log.stdio()).spawn().unwrap());
    stopped_with(&mut live, &log, "partition 1 now starts at offset 300, but tally reads offset 0 next");
    assert!(scratch.tables().0.totals.is_empty(), "nothing is billed from a partial topic");
}

/// Events appended after a drain and deleted before the next one: the next
/// run refuses to resume, and what the first one billed stays as it was.
#[test]
fn a_checkpoint_whose_next_events_are_gone_is_not_resumed() {
    let scratch = Scratch::new("resume_gone");
    let produced = events(42, 3_000, 1);
    let (first, second) = produced.split_at(1_000);
    scratch.produce(1, first.to_vec());
    scratch.run_ok(&["migrate"]);
    scratch.run_ok(&["run", "--drain"]);
    scratch.produce_more(second);
    scratch.delete_before(0, 1_500);
    let output = scratch.tally(&["run", "--drain"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    failed_with(output.status, &stderr, "partition 0 now starts at offset 1500, but tally reads offset 1000 next");
    scratch.tables().assert_same(&expected(1, &as_read(first)));
}

/// A live run paused (SIGSTOP) while the events after its position are
/// appended and deleted: once it runs again, its next fetch finds the offset
/// gone, and it stops instead of jumping to where the partition now starts.
#[test]
fn events_deleted_under_a_live_run_stop_it() {
    let scratch = Scratch::new("deleted_live");
    let produced = events(43, 2_000, 1);
    let (first, second) = produced.split_at(800);
    scratch.produce(1, first.to_vec());
    scratch.run_ok(&["migrate"]);
    let log = scratch.log("live");
    let mut live = Running(scratch.tally(&["run"]).stderr(log.stdio()).spawn().unwrap());
    let start = Instant::now();
    let read = |scratch: &Scratch| scratch.newest_manifest().and_then(|m| m["offsets"]["0"].as_i64());
    while read(&scratch) != Some(first.len() as i64) {
        assert!(live.alive(), "the live run exited; {}", log.tail());
        assert!(start.elapsed() < Duration::from_secs(60), "the live run did not checkpoint its first events");
        thread::sleep(Duration::from_millis(100));
    }
    live.freeze(true);
    // Longer than a live fetch waits at the broker: the one in flight comes
    // back empty, and no other is sent until the process runs again.
    thread::sleep(Duration::from_millis(1_500));
    scratch.produce_more(second);
    scratch.delete_before(0, produced.len() as i64);
    live.freeze(false);
    stopped_with(&mut live, &log, "partition 0 now starts at offset 2000, but tally reads offset 800 next");
}
