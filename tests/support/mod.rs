//! Shared by the integration tests: the real broker and ClickHouse started by
//! `deploy/local/up.sh`, a fresh topic and database per test, `tally` run as a
//! child process, and the tables read back for comparison with the oracle.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clickhouse::Row;
use serde::Deserialize;
use tally::config::ClickHouse;
use tally::sink::clickhouse::Warehouse;
use tally::workload::Produced;
use tally_dataflows::event::Message;
use tally_dataflows::oracle;
use tally_dataflows::prices::PriceList;
use tally_dataflows::rows::Ledger;
use tally_dataflows::settings::Settings;
use tally_dataflows::time::{DAY, SECOND};

pub const BROKERS: &str = "127.0.0.1:9092";
pub const CLICKHOUSE_URL: &str = "http://127.0.0.1:8123";

/// Fails the test with a clear message unless both services answer.
pub fn require_services() {
    let broker = std::net::TcpStream::connect_timeout(&BROKERS.parse().unwrap(), Duration::from_secs(2));
    assert!(broker.is_ok(), "no Kafka broker on {BROKERS}: start the services with deploy/local/up.sh");
    let clickhouse = std::net::TcpStream::connect_timeout(&"127.0.0.1:8123".parse().unwrap(), Duration::from_secs(2));
    assert!(clickhouse.is_ok(), "no ClickHouse on {CLICKHOUSE_URL}: start the services with deploy/local/up.sh");
}

/// A topic and a database of this test's own.
pub struct Scratch {
    pub topic: String,
    pub database: String,
    pub brokers: String,
    /// The checkpoint store's directory.
    pub state: PathBuf,
}

impl Scratch {
    pub fn new(name: &str) -> Scratch {
        require_services();
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos();
        let tag = format!("{name}_{}_{}", std::process::id(), nanos % 1_000_000_000);
        let state = std::env::temp_dir().join("tally-tests").join(&tag);
        Scratch { topic: format!("events-{tag}"), database: format!("test_{tag}"), brokers: BROKERS.into(), state }
    }

    /// The same, on another broker.
    pub fn on(mut self, brokers: &str) -> Scratch {
        self.brokers = brokers.into();
        self
    }

    pub fn clickhouse(&self) -> ClickHouse {
        ClickHouse { url: CLICKHOUSE_URL.into(), database: self.database.clone(), ..ClickHouse::default() }
    }

    /// Produces `messages` to a new topic with `partitions` partitions and
    /// returns them as the partitions hold them (offsets from 0).
    pub fn produce(&self, partitions: u32, messages: Vec<Produced>) -> Vec<Message> {
        tally::produce::ensure_topic(&self.brokers, &self.topic, partitions).expect("topic created");
        let total = messages.len() as u64;
        tally::produce::produce(&self.brokers, &self.topic, messages.clone().into_iter(), total).expect("produced");
        let mut offsets: BTreeMap<u32, i64> = BTreeMap::new();
        messages
            .into_iter()
            .map(|m| {
                let offset = offsets.entry(m.partition).or_default();
                *offset += 1;
                Message {
                    partition: m.partition,
                    offset: *offset - 1,
                    timestamp: m.timestamp,
                    payload: m.payload.into_bytes(),
                }
            })
            .collect()
    }

    /// `tally` with this test's topic and database in its environment.
    pub fn tally(&self, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_tally"));
        command
            .args(args)
            .env("TALLY_KAFKA_BROKERS", &self.brokers)
            .env("TALLY_KAFKA_TOPIC", &self.topic)
            .env("TALLY_CLICKHOUSE_URL", CLICKHOUSE_URL)
            .env("TALLY_CLICKHOUSE_DATABASE", &self.database)
            .env("TALLY_CHECKPOINT_INTERVAL", "1s")
            .env("TALLY_CHECKPOINT_URL", format!("file://{}", self.state.display()))
            .env_remove("TALLY_FAULT")
            .env("TALLY_LOG", "warn");
        command
    }

    /// Runs `tally` to completion and asserts it succeeded.
    pub fn run_ok(&self, args: &[&str]) -> Output {
        let output = self.tally(args).output().expect("tally starts");
        assert!(
            output.status.success(),
            "tally {args:?} failed ({}):\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        output
    }

    /// The tables as a reader sees them with FINAL.
    pub fn tables(&self) -> Tables {
        Tables::read(&Warehouse::new(&self.clickhouse()))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let server = Warehouse::with_database(&self.clickhouse(), None);
            let _ =
                server.block_on(server.client().query(&format!("DROP DATABASE IF EXISTS {}", self.database)).execute());
            let _ = std::fs::remove_dir_all(&self.state);
        }
    }
}

#[derive(Row, Deserialize)]
struct BreakdownStored {
    account_id: String,
    window_start: u32,
    resource_id: String,
    sku: String,
    project_id: String,
    region: String,
    labels: String,
    usage: i128,
    unit: String,
    cost: i128,
    currency: String,
}

#[derive(Row, Deserialize)]
struct TotalStored {
    account_id: String,
    day: u16,
    sku: String,
    usage: i128,
    cost: i128,
    currency: String,
}

#[derive(Row, Deserialize)]
struct RejectionStored {
    partition: i32,
    offset: i64,
    reason: String,
    #[serde(with = "serde_bytes")]
    payload: Vec<u8>,
}

/// A breakdown row's identity: account, window start (seconds), resource, SKU.
pub type BreakdownId = (String, u32, String, String);
/// A breakdown row's content: usage, cost, project, region, labels, unit, currency.
pub type BreakdownValue = (i128, i128, String, String, String, String, String);

/// Rows keyed and valued as strings and integers, comparable between
/// ClickHouse and the oracle.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Tables {
    /// `usage_breakdown`.
    pub breakdowns: BTreeMap<BreakdownId, BreakdownValue>,
    /// (account, day, sku) → (usage, cost, currency)
    pub totals: BTreeMap<(String, u16, String), (i128, i128, String)>,
    /// (partition, offset) → (reason, payload)
    pub rejections: BTreeMap<(i32, i64), (String, Vec<u8>)>,
}

impl Tables {
    fn read(warehouse: &Warehouse) -> Tables {
        let client = warehouse.client();
        let breakdowns: Vec<BreakdownStored> = warehouse
            .block_on(
                client
                    .query(
                        "SELECT account_id, window_start, resource_id, sku, project_id, region, labels, usage, unit, cost, currency \
                         FROM usage_breakdown FINAL WHERE usage != 0",
                    )
                    .fetch_all(),
            )
            .expect("usage_breakdown readable");
        let totals: Vec<TotalStored> = warehouse
            .block_on(
                client
                    .query(
                        "SELECT account_id, day, sku, usage, cost, currency FROM account_totals FINAL WHERE usage != 0",
                    )
                    .fetch_all(),
            )
            .expect("account_totals readable");
        let rejections: Vec<RejectionStored> = warehouse
            .block_on(client.query("SELECT partition, offset, reason, payload FROM rejected_events FINAL").fetch_all())
            .expect("rejected_events readable");
        Tables {
            breakdowns: breakdowns
                .into_iter()
                .map(|r| {
                    (
                        (r.account_id, r.window_start, r.resource_id, r.sku),
                        (r.usage, r.cost, r.project_id, r.region, r.labels, r.unit, r.currency),
                    )
                })
                .collect(),
            totals: totals.into_iter().map(|r| ((r.account_id, r.day, r.sku), (r.usage, r.cost, r.currency))).collect(),
            rejections: rejections.into_iter().map(|r| ((r.partition, r.offset), (r.reason, r.payload))).collect(),
        }
    }

    /// The oracle's ledger in the same form.
    pub fn of(ledger: &Ledger, prices: &PriceList) -> Tables {
        let mut tables = Tables::default();
        for row in ledger.breakdowns.values() {
            let sku = prices.sku(row.key.sku);
            tables.breakdowns.insert(
                (
                    row.key.account.clone(),
                    (row.key.window_start / SECOND) as u32,
                    row.key.resource.clone(),
                    sku.id.clone(),
                ),
                (
                    row.usage.scaled(),
                    row.cost.scaled(),
                    row.meta.project_id.clone(),
                    row.meta.region.clone(),
                    row.meta.labels.clone(),
                    sku.unit.clone(),
                    sku.currency.clone(),
                ),
            );
        }
        for row in ledger.totals.values() {
            let sku = prices.sku(row.key.sku);
            tables.totals.insert(
                (row.key.account.clone(), (row.key.day / DAY) as u16, sku.id.clone()),
                (row.usage.scaled(), row.cost.scaled(), sku.currency.clone()),
            );
        }
        for rejection in ledger.rejections.values() {
            tables.rejections.insert(
                (rejection.partition as i32, rejection.offset),
                (rejection.reason.as_str().to_owned(), rejection.payload.clone()),
            );
        }
        tables
    }

    /// Asserts equality, naming the first differences rather than dumping all.
    pub fn assert_same(&self, expected: &Tables) {
        fn diff<K: Ord + std::fmt::Debug, V: PartialEq + std::fmt::Debug>(
            what: &str,
            actual: &BTreeMap<K, V>,
            expected: &BTreeMap<K, V>,
        ) {
            let missing: Vec<_> = expected.iter().filter(|(k, _)| !actual.contains_key(k)).take(5).collect();
            let extra: Vec<_> = actual.iter().filter(|(k, _)| !expected.contains_key(k)).take(5).collect();
            let different: Vec<_> = expected
                .iter()
                .filter_map(|(k, v)| actual.get(k).filter(|a| *a != v).map(|a| (k, v, a)))
                .take(5)
                .collect();
            assert!(
                missing.is_empty() && extra.is_empty() && different.is_empty(),
                "{what}: {} expected, {} stored\nmissing: {missing:?}\nextra: {extra:?}\ndifferent (expected, stored): {different:?}",
                expected.len(),
                actual.len()
            );
        }
        diff("usage_breakdown", &self.breakdowns, &expected.breakdowns);
        diff("account_totals", &self.totals, &expected.totals);
        diff("rejected_events", &self.rejections, &expected.rejections);
    }
}

/// The shipped price list.
pub fn prices() -> Arc<PriceList> {
    Arc::new(PriceList::parse(tally::config::DEFAULT_PRICES).unwrap())
}

/// What the oracle says the tables hold after reading `messages`.
pub fn expected(partitions: u32, messages: &[Message]) -> Tables {
    let prices = prices();
    let all: Vec<u32> = (0..partitions).collect();
    let ledger = oracle::run(&all, messages.to_vec(), &prices, &Settings::default()).expect("no overflow");
    Tables::of(&ledger, &prices)
}

/// Path of a file under the repository.
pub fn repo(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// A broker of the test's own (same build as deploy/local/up.sh's, memory
/// storage, its own port), to freeze and thaw without disturbing other tests.
pub struct PrivateBroker {
    pub address: String,
    process: std::process::Child,
}

impl PrivateBroker {
    pub fn start() -> PrivateBroker {
        let state = std::env::var("TALLY_LOCAL_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|_| PathBuf::from(std::env::var("HOME").expect("HOME is set")).join(".tally-local"));
        let binary = state.join("bin/nisshi");
        assert!(binary.exists(), "no broker binary at {}: run deploy/local/up.sh", binary.display());
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let address = format!("127.0.0.1:{port}");
        let url = format!("tcp://{address}");
        let process = Command::new(binary)
            .args(["broker", "--listener-url", &url, "--advertised-listener-url", &url])
            .args(["--group-initial-rebalance-delay", "0s", "--storage-engine", "memory://nisshi/"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("the broker starts");
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(&address).is_err() {
            assert!(std::time::Instant::now() < deadline, "private broker on {address} did not answer");
            std::thread::sleep(Duration::from_millis(50));
        }
        PrivateBroker { address, process }
    }

    /// Freezes (SIGSTOP) or thaws (SIGCONT) the broker: an outage that keeps its data.
    pub fn freeze(&self, frozen: bool) {
        let signal = if frozen { "-STOP" } else { "-CONT" };
        let status = Command::new("kill").args([signal, &self.process.id().to_string()]).status().unwrap();
        assert!(status.success());
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        self.freeze(false);
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}
