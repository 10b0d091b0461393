//! `tally run` processes on loopback forming one timely cluster: two
//! processes × two workers write exactly the rows one process with one worker
//! writes; a whole cluster killed mid-run and started again ends exact; and a
//! process that loses its peer stops by itself with its own exit status.

mod support;

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use support::{Running, Scratch, expected, free_port, wait};
use tally::workload::{Generator, Produced, Workload};

/// Exit status of a process that lost another process of its cluster.
const EXIT_PEER_LOST: i32 = 3;

fn workload(seed: u64, events: u64) -> Vec<Produced> {
    Generator::new(Workload { seed, events, fleet: 300, accounts: 25, partitions: 6, ..Workload::default() }).collect()
}

/// Starts `processes` processes of `threads` workers each, as one cluster.
fn cluster(scratch: &Scratch, processes: usize, threads: usize, extra: &[&str]) -> Vec<Running> {
    let hostfile = scratch.state.with_extension("hosts");
    std::fs::create_dir_all(hostfile.parent().unwrap()).unwrap();
    std::fs::write(&hostfile, (0..processes).map(|_| format!("127.0.0.1:{}\n", free_port())).collect::<String>())
        .unwrap();
    let hostfile = hostfile.display().to_string();
    let threads = threads.to_string();
    (0..processes)
        .map(|process| {
            let index = process.to_string();
            let args =
                [&["run", "--workers", &threads, "--process", &index, "--hostfile", &hostfile][..], extra].concat();
            Running(scratch.tally(&args).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap())
        })
        .collect()
}

fn finish(processes: Vec<Running>) {
    for mut running in processes {
        let status = wait(&mut running.0, Duration::from_secs(180));
        let mut log = String::new();
        if let Some(mut stderr) = running.0.stderr.take() {
            std::io::Read::read_to_string(&mut stderr, &mut log).unwrap();
        }
        assert!(status.success(), "a cluster process failed ({status}):\n{log}");
    }
}

#[test]
fn two_processes_of_two_workers_write_what_one_worker_writes() {
    let clustered = Scratch::new("cluster_2x2");
    let produced = workload(31, 20_000);
    let messages = clustered.produce(6, produced);
    clustered.run_ok(&["migrate"]);
    finish(cluster(&clustered, 2, 2, &["--drain"]));

    let mut single = Scratch::new("cluster_1x1");
    single.topic = clustered.topic.clone();
    single.run_ok(&["migrate"]);
    single.run_ok(&["run", "--drain", "--workers", "1"]);

    let (by_cluster, by_one) = (clustered.tables(), single.tables());
    let differences = by_cluster.0.differences(&by_one.0);
    assert_eq!(differences.count(), 0, "2 processes × 2 workers differ from 1 × 1:\n{differences}");
    assert!(by_one.breakdowns.len() > 1_000 && !by_one.rejections.is_empty());
    by_cluster.assert_same(&expected(6, &messages));
}

#[test]
fn a_whole_cluster_killed_mid_run_resumes_exactly() {
    let scratch = Scratch::new("cluster_restart");
    let produced = workload(32, 24_000);
    let (first, second) = produced.split_at(produced.len() / 2);
    scratch.produce(6, first.to_vec());
    scratch.run_ok(&["migrate"]);
    // A checkpoint every epoch, then every third.
    for (round, pause, epoch) in [(0, 2_500, "300ms"), (1, 4_000, "100ms")] {
        let processes =
            cluster(&scratch, 2, 2, &["--checkpoint-interval", "300ms", "--checkpoint-epoch-interval", epoch]);
        std::thread::sleep(Duration::from_millis(pause));
        drop(processes);
        if round == 0 {
            scratch.produce_more(second);
        }
    }
    assert!(scratch.state.exists(), "the killed cluster checkpointed nothing");
    finish(cluster(&scratch, 2, 2, &["--drain", "--checkpoint-epoch-interval", "50ms"]));
    scratch.tables().assert_same(&expected(6, &support::as_read(&produced)));
}

#[test]
fn a_process_that_loses_its_peer_stops_by_itself() {
    let scratch = Scratch::new("cluster_loss");
    scratch.produce(6, workload(33, 4_000));
    scratch.run_ok(&["migrate"]);
    let mut processes = cluster(&scratch, 2, 1, &[]);
    std::thread::sleep(Duration::from_secs(3));
    let lost: &mut Child = &mut processes[1].0;
    lost.kill().unwrap();
    lost.wait().unwrap();
    let survivor = &mut processes[0].0;
    let start = Instant::now();
    let status = wait(survivor, Duration::from_secs(30));
    let mut log = String::new();
    std::io::Read::read_to_string(survivor.stderr.as_mut().unwrap(), &mut log).unwrap();
    assert_eq!(status.code(), Some(EXIT_PEER_LOST), "after {:?}:\n{log}", start.elapsed());
    assert!(log.contains("lost the connection to another process of the cluster"), "{log}");
}
