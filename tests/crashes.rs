//! Exactly once across crashes, on the real broker and ClickHouse: `tally run`
//! killed with SIGKILL at random moments and aborted at every fault point of
//! the commit protocol, restarted each time under a varying worker count and
//! insert size, then drained; the broker restarted and ClickHouse away mid-run; an S3
//! checkpoint store that stalls. ClickHouse `FINAL` equals the oracle exactly.
//!
//! The random moments come from a seed printed by each test; set
//! `TALLY_CRASH_SEED` to replay one.

mod support;

use std::os::unix::process::ExitStatusExt;
use std::thread;
use std::time::{Duration, Instant};

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use support::{PrivateBroker, Running, S3Server, Scratch, Switch, as_read, expected, expected_repriced, wait};
use tally::fault::Fault;
use tally::sink::clickhouse::{Warehouse, insert_prefix};
use tally::workload::{Generator, Produced, Workload};
use tally_dataflows::time::MINUTE;

/// A workload with every kind of trouble, at higher rates than usual.
fn troubled(seed: u64, events: u64, partitions: u32) -> Vec<Produced> {
    Generator::new(Workload {
        seed,
        events,
        fleet: 400,
        accounts: 25,
        partitions,
        counter_interval: 2 * MINUTE,
        duplicate_rate: 0.05,
        late_rate: 0.01,
        malformed_rate: 0.01,
        future_rate: 0.005,
        ..Workload::default()
    })
    .collect()
}

fn seed() -> u64 {
    let seed = std::env::var("TALLY_CRASH_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 % 1_000_000
    });
    eprintln!("TALLY_CRASH_SEED={seed}");
    seed
}

/// `messages` cut into `count` runs of consecutive messages.
fn chunks(messages: &[Produced], count: usize) -> Vec<&[Produced]> {
    let size = messages.len().div_ceil(count);
    messages.chunks(size).collect()
}

#[test]
fn kills_at_random_moments_and_at_every_fault_point_lose_and_double_nothing() {
    let scratch = Scratch::new("crashes");
    let seed = seed();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let produced = troubled(seed, 48_000, 4);
    let random_kills = 10;
    let mut pieces = chunks(&produced, random_kills + Fault::ALL.len() + 1).into_iter();
    scratch.produce(4, pieces.next().unwrap().to_vec());
    scratch.run_ok(&["migrate"]);

    // Checkpoints every epoch, every third or every fourth.
    let epoch_intervals = ["100ms", "40ms", "25ms"];
    // An epoch's rows in many inserts, in a few, or in one per table.
    let rows_per_insert = ["30", "500", "131072"];
    // A usage snapshot in chunks of a block each, of a few blocks, or held
    // whole in the shard.
    let chunk_bytes = ["1", "4096", "8388608"];
    for kill in 0..random_kills {
        let workers = rng.random_range(1..=3u32).to_string();
        let log = scratch.log(&format!("kill-{kill}"));
        let mut run = Running(
            scratch
                .tally(&["run", "--workers", &workers])
                .env("TALLY_CHECKPOINT_INTERVAL", "100ms")
                .env("TALLY_CHECKPOINT_EPOCH_INTERVAL", epoch_intervals[kill % epoch_intervals.len()])
                .env("TALLY_CLICKHOUSE_ROWS_PER_INSERT", rows_per_insert[rng.random_range(0..rows_per_insert.len())])
                .env("TALLY_CHECKPOINT_CHUNK_BYTES", chunk_bytes[rng.random_range(0..chunk_bytes.len())])
                .stderr(log.stdio())
                .spawn()
                .unwrap(),
        );
        thread::sleep(Duration::from_millis(rng.random_range(50..1_200)));
        // More input while it runs, so that kills land mid-epoch too.
        scratch.produce_more(pieces.next().unwrap());
        thread::sleep(Duration::from_millis(rng.random_range(0..800)));
        assert!(run.alive(), "tally exited before kill {kill}; {}", log.tail());
        run.0.kill().unwrap();
        run.0.wait().unwrap();
    }
    for (index, (fault, name)) in Fault::ALL.into_iter().enumerate() {
        scratch.produce_more(pieces.next().unwrap());
        let workers = rng.random_range(1..=3u32).to_string();
        let log = scratch.log(name);
        let mut run = scratch
            .tally(&["run", "--drain", "--workers", &workers])
            .env("TALLY_FAULT", name)
            .env("TALLY_CHECKPOINT_INTERVAL", "100ms")
            .env("TALLY_CHECKPOINT_EPOCH_INTERVAL", epoch_intervals[index % epoch_intervals.len()])
            .env("TALLY_CLICKHOUSE_ROWS_PER_INSERT", rows_per_insert[index % rows_per_insert.len()])
            .env("TALLY_CHECKPOINT_CHUNK_BYTES", chunk_bytes[index % 2])
            .stderr(log.stdio())
            .spawn()
            .unwrap();
        let status = wait(&mut run, Duration::from_secs(60));
        assert_eq!(status.signal(), Some(6), "{fault:?} was not reached: tally exited with {status}; {}", log.tail());
    }
    for piece in pieces {
        scratch.produce_more(piece);
    }
    scratch.run_ok(&["run", "--drain", "--workers", "2"]);
    scratch.tables().assert_same(&expected(4, &as_read(&produced)));
}

/// A row the crashed incarnation wrote past its checkpoint, whose value the
/// replay brings back to what it was at the checkpoint: the replay has no
/// change to write for it, yet the stored row must not keep the crashed value.
#[test]
fn a_row_written_past_the_checkpoint_is_rewritten_even_when_the_replay_leaves_it_unchanged() {
    let scratch = Scratch::new("stale_rows");
    let vcpu = r#""compute.vcpu": "2""#;
    let egress = r#""network.egress_gib": "1""#;
    let before = vec![
        event(0, "a", "resource.started", "2026-11-20T10:00:00Z", "vm-1", vcpu),
        event(0, "b", "usage.recorded", "2026-11-20T10:10:00Z", "lb-1", egress),
        event(1, "c", "usage.recorded", "2026-11-20T10:10:00Z", "lb-2", egress),
    ];
    // Moves the watermark to 10:40: vm-1 accrues 40 minutes, not 10.
    let ahead = vec![
        event(0, "d", "usage.recorded", "2026-11-20T10:40:00Z", "lb-1", egress),
        event(1, "e", "usage.recorded", "2026-11-20T10:40:00Z", "lb-2", egress),
    ];
    // vm-1 stopped at 10:10 (on time): back to the 10 minutes of the checkpoint.
    let after = vec![event(0, "f", "resource.stopped", "2026-11-20T10:10:00Z", "vm-1", "")];
    scratch.produce(2, before.clone());
    scratch.run_ok(&["migrate"]);
    scratch.run_ok(&["run", "--drain", "--workers", "1", "--checkpoint-interval", "10s"]);
    let committed = newest_manifest_version(&scratch).expect("the first drain committed a checkpoint");

    scratch.produce_more(&ahead);
    let log = scratch.log("crashed");
    let mut crashed = scratch
        .tally(&["run", "--drain", "--workers", "1", "--checkpoint-interval", "10s"])
        .env("TALLY_FAULT", "after-sink-write")
        .stderr(log.stdio())
        .spawn()
        .unwrap();
    let status = wait(&mut crashed, Duration::from_secs(60));
    assert_eq!(status.signal(), Some(6), "the fault point was not reached: {status}; {}", log.tail());
    assert_eq!(newest_manifest_version(&scratch), Some(committed), "the crash came before the next checkpoint");
    let written = count(
        &scratch,
        &format!("SELECT count() FROM usage_breakdown WHERE resource_id = 'vm-1' AND version > {committed}"),
    );
    assert!(written > 0, "the crashed run wrote vm-1's accrual past the checkpoint");

    scratch.produce_more(&after);
    scratch.run_ok(&["run", "--drain", "--workers", "2", "--checkpoint-interval", "10s"]);
    let all: Vec<Produced> = [before, ahead, after].concat();
    scratch.tables().assert_same(&expected(2, &as_read(&all)));
    let incarnations: serde_json::Value =
        serde_json::from_slice(&std::fs::read(scratch.state.join(&scratch.topic).join("incarnation.json")).unwrap())
            .unwrap();
    let floor = incarnations["latest"].as_u64().unwrap() << 20;
    for table in ["usage_breakdown", "account_totals"] {
        let left = count(
            &scratch,
            &format!("SELECT count() FROM {table} FINAL WHERE version > {committed} AND version < {floor}"),
        );
        assert_eq!(left, 0, "{table}: rows of the crashed incarnation past its checkpoint outlived the restore");
    }
}

/// One CloudEvent on `partition`, appended a second after its time.
fn event(partition: u32, id: &str, kind: &str, time: &str, subject: &str, quantities: &str) -> Produced {
    let data = match kind {
        "resource.stopped" => r#"{"account_id": "acc-1"}"#.to_owned(),
        _ => format!(r#"{{"account_id": "acc-1", "quantities": {{{quantities}}}}}"#),
    };
    let payload = format!(
        r#"{{"specversion": "1.0", "id": "{id}", "source": "test", "type": "{kind}", "time": "{time}", "subject": "{subject}", "data": {data}}}"#
    );
    let timestamp = tally_dataflows::time::parse_rfc3339(time).expect("an RFC 3339 time") + 1_000;
    Produced { partition, key: subject.into(), timestamp, payload }
}

#[test]
fn a_broker_restart_and_clickhouse_away_for_30s_mid_run_lose_nothing() {
    let scratch = Scratch::new("restarts");
    let mut broker = PrivateBroker::start_persistent(scratch.state.with_extension("broker"));
    let scratch = scratch.on(&broker.address);
    let produced = troubled(32, 24_000, 3);
    let (first, second) = produced.split_at(produced.len() / 2);
    scratch.produce(3, first.to_vec());
    scratch.run_ok(&["migrate"]);
    let clickhouse = Switch::to("127.0.0.1:8123");
    clickhouse.set(true);
    let log = scratch.log("live");
    let mut run = Running(
        scratch
            .tally(&["run", "--workers", "2"])
            .env("TALLY_CLICKHOUSE_URL", format!("http://127.0.0.1:{}", clickhouse.port))
            .env("TALLY_CHECKPOINT_INTERVAL", "200ms")
            .stderr(log.stdio())
            .spawn()
            .unwrap(),
    );
    thread::sleep(Duration::from_secs(1));
    broker.restart();
    scratch.produce_more(second);
    thread::sleep(Duration::from_secs(1));
    clickhouse.set(false);
    thread::sleep(Duration::from_secs(30));
    assert!(run.alive(), "tally gave up while ClickHouse was away; {}", log.tail());
    clickhouse.set(true);
    thread::sleep(Duration::from_secs(2));
    run.0.kill().unwrap();
    run.0.wait().unwrap();
    drop(run);
    scratch.run_ok(&["run", "--drain", "--workers", "2"]);
    scratch.tables().assert_same(&expected(3, &as_read(&produced)));
}

#[test]
fn an_s3_checkpoint_store_that_stalls_then_a_kill_lose_nothing() {
    let s3 = S3Server::start("tally-checkpoints");
    let scratch = Scratch::new("s3_store");
    let produced = troubled(33, 24_000, 3);
    let messages = scratch.produce(3, produced);
    scratch.run_ok(&["migrate"]);
    let url = format!("s3://tally-checkpoints/pipelines/{}", scratch.topic);
    let with_s3 = |mut command: std::process::Command| {
        command.env("TALLY_CHECKPOINT_URL", &url).envs(s3.environment());
        command
    };
    let mut live = with_s3(scratch.tally(&["run", "--workers", "2"]));
    let log = scratch.log("live");
    // Chunks too: they are written while the snapshot is encoded.
    live.env("TALLY_CHECKPOINT_INTERVAL", "200ms").env("TALLY_CHECKPOINT_CHUNK_BYTES", "4096");
    let mut run = Running(live.stderr(log.stdio()).spawn().unwrap());
    thread::sleep(Duration::from_millis(700));
    s3.freeze(true);
    thread::sleep(Duration::from_secs(4));
    assert!(run.alive(), "tally gave up while the checkpoint store was away; {}", log.tail());
    s3.freeze(false);
    thread::sleep(Duration::from_secs(1));
    run.0.kill().unwrap();
    run.0.wait().unwrap();
    let output = with_s3(scratch.tally(&["run", "--drain", "--workers", "3"])).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    scratch.tables().assert_same(&expected(3, &messages));
}

/// An insert a killed run sent in full is carried out by ClickHouse all the
/// same, and may land after the next run started. That run has nothing new to
/// write for the row, so it must wait for the insert and write the row again.
#[test]
fn an_insert_of_a_killed_run_landing_after_the_restart_is_written_over() {
    let scratch = Scratch::new("late_insert");
    let messages = scratch.produce(2, troubled(35, 3_000, 2));
    scratch.run_ok(&["migrate"]);
    scratch.run_ok(&["run", "--drain", "--workers", "2"]);
    // A row altered as a run past the checkpoint would have altered it, with
    // a version above the checkpoint's, landing two seconds from now.
    let query_id = format!("{}killed-run", insert_prefix(&scratch.database, &scratch.topic));
    let late_insert = "INSERT INTO usage_breakdown SELECT account_id, window_start, resource_id, sku, project_id, \
         region, labels, usage + 1, unit, cost + 1, currency, (SELECT max(version) FROM pipeline_progress) + 1 \
         FROM (SELECT * FROM usage_breakdown FINAL ORDER BY account_id, window_start, resource_id, sku LIMIT 1) \
         WHERE sleep(2) = 0";
    let clickhouse = scratch.clickhouse();
    let landing = {
        let query_id = query_id.clone();
        thread::spawn(move || {
            let warehouse = Warehouse::new(&clickhouse);
            let insert = warehouse.client().query(late_insert).with_setting("query_id", query_id);
            warehouse.block_on(insert.execute()).expect("the late insert is carried out");
        })
    };
    let running = format!("SELECT count() FROM system.processes WHERE query_id = '{query_id}'");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while count(&scratch, &running) == 0 {
        assert!(std::time::Instant::now() < deadline, "the late insert did not start");
        thread::sleep(Duration::from_millis(10));
    }
    scratch.run_ok(&["run", "--drain", "--workers", "2"]);
    landing.join().expect("the late insert landed");
    scratch.tables().assert_same(&expected(2, &messages));
}

/// Shard uploads run on threads of their own, so a checkpoint can be
/// committed after the workers have moved several epochs on, the more so
/// while the store is slow. Its manifest must still hold the partition
/// clocks and progress as of its own epoch: a restart from one that lost them
/// judges lateness and accrual from nothing.
#[test]
fn every_manifest_holds_the_clocks_of_the_partitions_it_read_even_behind_a_slow_store() {
    let s3 = S3Server::start("tally-checkpoints");
    let scratch = Scratch::new("manifest_clocks");
    let produced = troubled(36, 20_000, 3);
    let mut pieces = chunks(&produced, 40).into_iter();
    scratch.produce(3, pieces.next().unwrap().to_vec());
    scratch.run_ok(&["migrate"]);
    let prefix = format!("pipelines/{}", scratch.topic);
    let with_s3 = |args: &[&str]| {
        let cadence =
            ["--checkpoint-interval", "20ms", "--checkpoint-epoch-interval", "5ms", "--checkpoint-keep", "100000"];
        let mut command = scratch.tally(&[args, &cadence[..]].concat());
        command.env("TALLY_CHECKPOINT_URL", format!("s3://tally-checkpoints/{prefix}")).envs(s3.environment());
        command
    };
    let mut live = Running(with_s3(&["run", "--workers", "2"]).spawn().unwrap());
    thread::scope(|scope| {
        // Messages in every epoch, each recording new clocks, while the
        // store stalls twice.
        scope.spawn(|| pieces.for_each(|piece| scratch.produce_more(piece)));
        for _ in 0..2 {
            thread::sleep(Duration::from_millis(500));
            s3.freeze(true);
            thread::sleep(Duration::from_millis(700));
            s3.freeze(false);
        }
    });
    // How many checkpoints land while the store stalls depends on the
    // machine (as few as 9 were seen): the live run goes on until more than
    // ten have, so that the check below always reads many.
    let manifests = || s3.objects("tally-checkpoints", &format!("{prefix}/{}/manifests/", scratch.topic));
    let start = Instant::now();
    while manifests().len() <= 10 {
        assert!(live.alive(), "the live run exited");
        assert!(start.elapsed() < Duration::from_secs(30), "the live run committed {} checkpoints", manifests().len());
        thread::sleep(Duration::from_millis(100));
    }
    assert!(live.alive(), "the live run exited");
    drop(live);
    let output = with_s3(&["run", "--drain", "--workers", "2"]).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let manifests = manifests();
    assert!(manifests.len() > 10, "the runs committed {} checkpoints", manifests.len());
    for manifest in manifests {
        let manifest: serde_json::Value = serde_json::from_slice(&manifest).expect("a manifest is JSON");
        let clocks = manifest["shared"]["clocks"].as_object().expect("clocks");
        for (partition, offset) in manifest["offsets"].as_object().expect("offsets") {
            assert!(
                offset.as_i64() == Some(0) || clocks.contains_key(partition),
                "the manifest of epoch {} read partition {partition} but holds no clock for it: {}",
                manifest["epoch"],
                manifest["shared"]
            );
        }
    }
    scratch.tables().assert_same(&expected(3, &as_read(&produced)));
}

fn newest_manifest_version(scratch: &Scratch) -> Option<u64> {
    scratch.newest_manifest()?["version"].as_u64()
}

/// Epochs far shorter than the checkpoint interval: the drain's last epoch is
/// almost never one the cadence checkpoints, and must be checkpointed anyway.
#[test]
fn a_drain_ends_with_everything_it_read_checkpointed_whatever_the_cadence() {
    let scratch = Scratch::new("drain_checkpointed");
    let produced = troubled(34, 6_000, 3);
    let (first, second) = produced.split_at(produced.len() / 2);
    scratch.produce(3, first.to_vec());
    scratch.run_ok(&["migrate"]);
    let cadence = ["--checkpoint-interval", "1h", "--checkpoint-epoch-interval", "5ms"];
    for (workers, upto) in [("2", first.len()), ("3", produced.len())] {
        if upto == produced.len() {
            scratch.produce_more(second);
        }
        scratch.run_ok(&[&["run", "--drain", "--workers", workers][..], &cadence[..]].concat());
        let manifest = scratch.newest_manifest().expect("the drain committed a checkpoint");
        let read: i64 = manifest["offsets"].as_object().unwrap().values().map(|o| o.as_i64().unwrap()).sum();
        assert_eq!(read, upto as i64, "the last checkpoint is after every message read");
    }
    scratch.tables().assert_same(&expected(3, &as_read(&produced)));
}

/// A restart under a price list that prices differently rates every row
/// still open with it, and every total stays the sum of its rows; a list
/// under which the checkpoint's SKUs would read otherwise is refused,
/// naming the SKU, and changes nothing.
#[test]
fn a_restart_under_other_prices_rates_the_open_rows_with_them() {
    let scratch = Scratch::new("repriced");
    let produced = troubled(35, 6_000, 2);
    let (first, second) = produced.split_at(produced.len() / 2);
    scratch.produce(2, first.to_vec());
    scratch.run_ok(&["migrate"]);
    scratch.run_ok(&["run", "--drain", "--workers", "2"]);
    let manifest = scratch.newest_manifest().expect("the drain committed a checkpoint");
    let final_before = manifest["shared"]["progress"]["final_before"].as_i64().expect("some windows are final");
    let lists = scratch.state.with_extension("prices");
    std::fs::create_dir_all(&lists).unwrap();
    let sku = |id: &str| {
        format!(
            "[[sku]]\nid = \"{id}\"\nkind = \"gauge\"\nunit = \"GiB\"\ncurrency = \"EUR\"\n\
             prices = [{{ effective_from = \"2026-01-01T00:00:00Z\", unit_price = \"0.001\" }}]\n"
        )
    };
    let renumbered = lists.join("renumbered.toml");
    std::fs::write(&renumbered, format!("{}\n{}", tally::config::DEFAULT_PRICES, sku("aaa.first"))).unwrap();
    let refused = scratch.tally(&["run", "--drain", "--pricing-file", renumbered.to_str().unwrap()]).output().unwrap();
    let message = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "a renumbering list is refused: {message}");
    assert!(message.contains("sku \"api.requests\" of the checkpoint's price list"), "{message}");
    assert_eq!(scratch.newest_manifest(), Some(manifest), "and nothing is checkpointed");

    let raised = tally::config::DEFAULT_PRICES.replace("unit_price = \"", "unit_price = \"1");
    let appended = format!("{raised}\n{}", sku("zzz.last"));
    let raised_file = lists.join("raised.toml");
    std::fs::write(&raised_file, &appended).unwrap();
    // First with nothing new to read, then with the rest: the first restart
    // rates the open rows, and the second finds them rated.
    let raised = tally_dataflows::prices::PriceList::parse(&appended).unwrap();
    scratch.run_ok(&["run", "--drain", "--workers", "2", "--pricing-file", raised_file.to_str().unwrap()]);
    scratch.tables().assert_same(&expected_repriced(2, &as_read(first), &raised, final_before));
    scratch.produce_more(second);
    scratch.run_ok(&["run", "--drain", "--workers", "3", "--pricing-file", raised_file.to_str().unwrap()]);
    scratch.tables().assert_same(&expected_repriced(2, &as_read(&produced), &raised, final_before));
}

fn count(scratch: &Scratch, sql: &str) -> u64 {
    let warehouse = Warehouse::new(&scratch.clickhouse());
    warehouse.block_on(warehouse.client().query(sql).fetch_one::<u64>()).expect("ClickHouse answers")
}
