//! The metrics endpoint of a live `tally run`, scraped as Prometheus would:
//! every metric the contract names is there and moves as events flow, the lag
//! rises while ClickHouse is away and returns to zero after, and `/healthz`
//! and `/ready` answer.

mod support;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Stdio;
use std::time::{Duration, Instant};

use support::{Running, Scratch, Switch, free_port};
use tally::workload::{Generator, Workload};
use tally_dataflows::time::HOUR;

/// One scrape: every sample by its name and labels, as written.
#[derive(Debug)]
struct Scrape(BTreeMap<String, f64>);

impl Scrape {
    fn parse(text: &str) -> Scrape {
        let samples = text
            .lines()
            .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
            .map(|line| {
                let (name, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("a sample line: {line:?}"));
                (name.to_owned(), value.parse().unwrap_or_else(|_| panic!("a number in {line:?}")))
            })
            .collect();
        Scrape(samples)
    }

    /// The sum of every sample of `name`, whatever its labels, if any.
    fn value(&self, name: &str) -> Option<f64> {
        let values: Vec<f64> = self
            .0
            .iter()
            .filter(|(sample, _)| *sample == name || sample.starts_with(&format!("{name}{{")))
            .map(|(_, v)| *v)
            .collect();
        (!values.is_empty()).then(|| values.iter().sum())
    }

    /// The same; panics when there is none.
    fn total(&self, name: &str) -> f64 {
        self.value(name).unwrap_or_else(|| panic!("no sample {name} in the scrape:\n{self:#?}"))
    }

    fn is(&self, name: &str, test: impl Fn(f64) -> bool) -> bool {
        self.value(name).is_some_and(test)
    }

    fn sample(&self, name_and_labels: &str) -> f64 {
        *self.0.get(name_and_labels).unwrap_or_else(|| panic!("no sample {name_and_labels} in the scrape:\n{self:#?}"))
    }
}

fn get(address: &str, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(address).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split(' ').nth(1)?.parse().ok()?;
    let body = response.split_once("\r\n\r\n").map(|(_, body)| body.to_owned())?;
    Some((status, body))
}

/// Scrapes until `done` holds, failing after `limit`.
fn scrape_until(address: &str, what: &str, limit: Duration, done: impl Fn(&Scrape) -> bool) -> Scrape {
    let start = Instant::now();
    loop {
        if let Some((200, body)) = get(address, "/metrics") {
            let scrape = Scrape::parse(&body);
            if done(&scrape) {
                return scrape;
            }
            assert!(start.elapsed() < limit, "{what} not seen within {limit:?}; last scrape:\n{scrape:#?}");
        }
        assert!(start.elapsed() < limit, "{what} not seen within {limit:?}: no metrics endpoint at {address}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn every_metric_moves_during_a_live_run() {
    let scratch = Scratch::new("metrics");
    let now = tally::unix_millis();
    let batch = |seed: u64, start: i64| {
        let workload = Workload {
            seed,
            events: 6_000,
            fleet: 200,
            accounts: 20,
            partitions: 3,
            start: start - start.rem_euclid(HOUR),
            duplicate_rate: 0.05,
            malformed_rate: 0.02,
            ..Workload::default()
        };
        Generator::new(workload).collect::<Vec<_>>()
    };
    let first = batch(5, now - 12 * HOUR);
    let second = batch(6, now - 6 * HOUR);
    scratch.produce(3, first.clone());
    scratch.run_ok(&["migrate"]);
    let clickhouse = Switch::to("127.0.0.1:8123");
    clickhouse.set(true);
    let address = format!("127.0.0.1:{}", free_port());
    let _run = Running(
        scratch
            .tally(&["run", "--workers", "2"])
            .env("TALLY_METRICS_LISTEN", &address)
            .env("TALLY_CLICKHOUSE_URL", format!("http://127.0.0.1:{}", clickhouse.port))
            .env("TALLY_CHECKPOINT_INTERVAL", "300ms")
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );

    let read_all = |count: usize| move |s: &Scrape| s.is("tally_partition_next_offset", |v| v as usize == count);
    let before = scrape_until(&address, "the first batch read and committed", Duration::from_secs(60), |s| {
        read_all(first.len())(s)
            && s.is("tally_partition_end_offset", |v| v as usize == first.len())
            && s.is("tally_checkpoint_committed_epoch", |v| v > 0.0)
    });
    assert_eq!(get(&address, "/healthz").map(|(status, _)| status), Some(200));
    assert_eq!(get(&address, "/ready").map(|(status, _)| status), Some(200));

    clickhouse.set(false);
    // What arrives once the source has run its epochs in flight ahead of
    // ClickHouse stays unread: that is lag.
    let (early, late) = second.split_at(second.len() / 2);
    scratch.produce_more(early);
    std::thread::sleep(Duration::from_secs(3));
    scratch.produce_more(late);
    let stalled = scrape_until(&address, "lag while ClickHouse is away", Duration::from_secs(60), |s| {
        s.is("tally_partition_lag", |v| v > 0.0) && s.is("tally_checkpoint_age_seconds", |v| v > 2.0)
    });
    clickhouse.set(true);
    // Workers come back from the outage each at its own retry (backoff up to
    // 30 s), and progress follows the data by an epoch: wait until every
    // metric has moved, failing with the last scrape if one never does.
    let families = [
        "tally_partition_next_offset",
        "tally_partition_end_offset",
        "tally_watermark_seconds",
        "tally_final_before_seconds",
        "tally_epoch",
        "tally_epoch_duration_seconds_count",
        "tally_checkpoint_committed_epoch",
        "tally_sink_insert_duration_seconds_count",
        "tally_sink_insert_duration_seconds_sum",
        "tally_freshness_seconds_count",
        "tally_freshness_seconds_sum",
    ];
    let samples = [
        r#"tally_events_total{outcome="accepted",reason=""}"#,
        r#"tally_events_total{outcome="duplicate",reason=""}"#,
        r#"tally_events_total{outcome="rejected",reason="malformed_json"}"#,
        r#"tally_checkpoint_duration_seconds_count{stage="shard"}"#,
        r#"tally_checkpoint_duration_seconds_count{stage="commit"}"#,
        r#"tally_sink_rows_total{table="usage_breakdown"}"#,
        r#"tally_sink_rows_total{table="account_totals"}"#,
        r#"tally_sink_rows_total{table="rejected_events"}"#,
    ];
    let all_moved = |s: &Scrape| {
        families.iter().all(|name| s.is(name, |v| v > before.total(name)))
            && samples.iter().all(|sample| s.0.get(*sample).is_some_and(|v| *v > before.sample(sample)))
    };
    let total = first.len() + second.len();
    let after =
        scrape_until(&address, "everything read and committed, every metric moved", Duration::from_secs(120), |s| {
            read_all(total)(s)
                && s.is("tally_partition_end_offset", |v| v as usize == total)
                && s.is("tally_partition_lag", |v| v == 0.0)
                && s.is("tally_checkpoint_age_seconds", |v| v < 2.0)
                && all_moved(s)
        });
    assert!(after.total("tally_checkpoint_bytes") > 0.0);
    assert!(stalled.total("tally_partition_lag") > 0.0);
    // The second batch waited out the outage: its freshness shows it.
    let slowest = after.total("tally_freshness_seconds_sum") - before.total("tally_freshness_seconds_sum");
    assert!(slowest > 0.0);
    assert_eq!(get(&address, "/nowhere").map(|(status, _)| status), Some(404));
}
