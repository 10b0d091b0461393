//! Outages and topology changes on real services: ClickHouse unreachable, the
//! broker frozen, partitions added to a live topic. Results stay exact.

mod support;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use support::{PrivateBroker, Scratch, expected};
use tally::workload::{Generator, Produced, Workload};

/// A TCP forwarder to ClickHouse that can be switched off: while off, it
/// resets new and open connections, as a server going away would.
struct Switch {
    port: u16,
    up: Arc<AtomicBool>,
}

impl Switch {
    fn to(target: &'static str) -> Switch {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let up = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&up);
        thread::spawn(move || {
            for client in listener.incoming().flatten() {
                if !flag.load(Ordering::SeqCst) {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let Ok(server) = TcpStream::connect(target) else { continue };
                for (mut from, mut to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server.try_clone().unwrap(), client.try_clone().unwrap()),
                ] {
                    let flag = Arc::clone(&flag);
                    thread::spawn(move || {
                        let mut buffer = [0u8; 64 * 1024];
                        while let Ok(n) = from.read(&mut buffer) {
                            if n == 0 || !flag.load(Ordering::SeqCst) || to.write_all(&buffer[..n]).is_err() {
                                break;
                            }
                        }
                        let _ = to.shutdown(Shutdown::Both);
                        let _ = from.shutdown(Shutdown::Both);
                    });
                }
            }
        });
        Switch { port, up }
    }

    fn set(&self, up: bool) {
        self.up.store(up, Ordering::SeqCst);
    }
}

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

fn wait(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            panic!("tally did not finish within {limit:?}");
        }
        thread::sleep(Duration::from_millis(100));
    }
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
        if tables == expected {
            break;
        }
        assert!(run.alive(), "the live run exited");
        if Instant::now() > deadline {
            tables.assert_same(&expected);
        }
        thread::sleep(Duration::from_secs(1));
    }
}

/// A `tally` child process, killed when the test ends however it ends.
struct Running(Child);

impl Running {
    fn alive(&mut self) -> bool {
        self.0.try_wait().is_ok_and(|status| status.is_none())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
