//! `tally reconcile` on the real services: silent and successful after a clean
//! drain, from the topic and from an event file; after rows are corrupted in
//! ClickHouse, it names each one with its amounts and fails.

mod support;

use std::process::Output;

use support::Scratch;
use tally::sink::clickhouse::Warehouse;

fn reconcile(scratch: &Scratch, args: &[&str]) -> (Option<i32>, String) {
    let Output { status, stdout, stderr } =
        scratch.tally(&[&["reconcile"], args].concat()).output().expect("tally starts");
    let stdout = String::from_utf8_lossy(&stdout).into_owned();
    let stderr = String::from_utf8_lossy(&stderr);
    (status.code(), format!("{stdout}\n--- stderr ---\n{stderr}"))
}

fn execute(scratch: &Scratch, sql: &str) {
    let warehouse = Warehouse::new(&scratch.clickhouse());
    warehouse.block_on(warehouse.client().query(sql).execute()).unwrap_or_else(|e| panic!("{sql}: {e}"));
}

#[test]
fn reconcile_passes_a_clean_run_and_names_corrupted_rows() {
    let scratch = Scratch::new("reconcile");
    let workload = ["--events", "8000", "--seed", "41", "--partitions", "3", "--fleet", "300", "--accounts", "30"];
    let file = scratch.state.with_extension("jsonl");
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    let file = file.display().to_string();
    scratch.run_ok(&[&["gen", "--kafka"], &workload[..]].concat());
    scratch.run_ok(&[&["gen", "--out", &file], &workload[..]].concat());
    scratch.run_ok(&["migrate"]);
    scratch.run_ok(&["run", "--drain", "--workers", "2"]);

    for source in [&[][..], &["--events", &file][..]] {
        let (code, output) = reconcile(&scratch, source);
        assert_eq!(code, Some(0), "a clean run must reconcile:\n{output}");
        assert!(output.contains("reconciled 8000 messages") && output.contains(": 0 rows differ"), "{output}");
        assert!(output.contains("usage_breakdown: ") && output.contains("0 missing, 0 extra, 0 different"), "{output}");
    }

    // One breakdown's cost raised by a cent, one total gone (zero usage reads
    // as absent), and one row nobody billed.
    execute(
        &scratch,
        "INSERT INTO usage_breakdown SELECT account_id, window_start, resource_id, sku, project_id, region, labels, \
         usage, unit, cost + toDecimal128('0.01', 12), currency, version + 1 \
         FROM usage_breakdown FINAL WHERE usage != 0 ORDER BY account_id, window_start, resource_id, sku LIMIT 1",
    );
    execute(
        &scratch,
        "INSERT INTO account_totals SELECT account_id, day, sku, toDecimal128('0', 12), toDecimal128('0', 12), \
         currency, version + 1 FROM account_totals FINAL WHERE usage != 0 ORDER BY account_id, day, sku LIMIT 1",
    );
    execute(
        &scratch,
        "INSERT INTO usage_breakdown VALUES ('acct-forged', '2026-11-23 05:00:00', 'vm-forged', 'vm.small', 'p', \
         'r', '{}', 1, 'vcpu_hour', 2.5, 'USD', 1)",
    );
    let (code, output) = reconcile(&scratch, &[]);
    assert_eq!(code, Some(1), "corrupted rows must fail the check:\n{output}");
    assert!(output.contains(": 3 rows differ"), "{output}");
    assert!(output.contains("0 missing, 1 extra, 1 different"), "{output}");
    assert!(output.contains("account_totals: ") && output.contains("1 missing, 0 extra, 0 different"), "{output}");
    assert!(output.contains("extra     account acct-forged window 2026-11-23T05:00Z resource vm-forged"), "{output}");
    let different = output.split("different account ").nth(1).expect("the different row is shown");
    let mut lines = different.lines();
    let (key, expected, stored) = (lines.next().unwrap(), lines.next().unwrap(), lines.next().unwrap());
    let cost = |line: &str| -> f64 {
        let after = line.split("cost ").nth(1).unwrap_or_else(|| panic!("a cost in {line:?}"));
        after.split(' ').next().unwrap().parse().unwrap()
    };
    assert!((cost(stored) - cost(expected) - 0.01).abs() < 1e-9, "{key}\n{expected}\n{stored}");

    let (code, output) = reconcile(&scratch, &["--events", "/nonexistent/events.jsonl"]);
    assert_eq!(code, Some(2), "an unreadable log is not a difference:\n{output}");
    assert!(output.contains("could not check") && output.contains("/nonexistent/events.jsonl"), "{output}");
}
