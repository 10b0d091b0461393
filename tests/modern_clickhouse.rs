//! The migrations and views also work on a current ClickHouse: chdb (PyPI)
//! embeds ClickHouse 26.9; `deploy/local/up.sh` installs it.

use std::process::Command;

#[test]
fn migrations_and_views_run_on_a_current_clickhouse() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/schemas/clickhouse");
    let mut files: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path().display().to_string()).collect();
    files.sort();
    let output = Command::new("python3")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/modern_clickhouse.py"))
        .args(&files)
        .output()
        .expect("python3 runs (deploy/local/up.sh installs what this test needs)");
    assert!(
        output.status.success(),
        "a current ClickHouse refused the migrations (is chdb installed? deploy/local/up.sh installs it):\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}
