//! Two `tally run` processes on loopback form one timely cluster (2 processes
//! × 2 workers) and bill a drain exactly as the oracle does.

mod support;

use std::process::Stdio;

use support::{Scratch, expected};
use tally::workload::{Generator, Workload};

#[test]
fn a_two_process_cluster_drains_exactly() {
    let scratch = Scratch::new("cluster");
    let workload =
        Workload { seed: 31, events: 20_000, fleet: 300, accounts: 25, partitions: 6, ..Workload::default() };
    let messages = scratch.produce(workload.partitions, Generator::new(workload.clone()).collect());
    scratch.run_ok(&["migrate"]);

    let ports: Vec<u16> =
        (0..2).map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()).collect();
    let hostfile = std::env::temp_dir().join(format!("{}.hosts", scratch.database));
    std::fs::write(&hostfile, ports.iter().map(|p| format!("127.0.0.1:{p}\n")).collect::<String>()).unwrap();
    let hostfile = hostfile.display().to_string();
    let processes: Vec<_> = (0..2)
        .map(|process| {
            let index = process.to_string();
            scratch
                .tally(&["run", "--drain", "--workers", "2", "--process", &index, "--hostfile", &hostfile])
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for child in processes {
        let output = child.wait_with_output().unwrap();
        assert!(output.status.success(), "a cluster process failed:\n{}", String::from_utf8_lossy(&output.stderr));
    }
    scratch.tables().assert_same(&expected(workload.partitions, &messages));
}
