//! Shared by the integration tests: the real broker and ClickHouse started by
//! `deploy/local/up.sh`, a fresh topic and database per test, `tally` run as a
//! child process, and the tables read back for comparison with the oracle.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tally::config::{ClickHouse, Kafka};
use tally::sink::clickhouse::Warehouse;
use tally::workload::Produced;
use tally_dataflows::event::Message;
use tally_dataflows::fixed::Amount;
use tally_dataflows::oracle;
use tally_dataflows::prices::PriceList;
use tally_dataflows::rows::{Ledger, TotalKey, TotalRow};
use tally_dataflows::settings::Settings;
use tally_dataflows::time::Millis;

pub const BROKERS: &str = "127.0.0.1:9092";
pub const CLICKHOUSE_URL: &str = "http://127.0.0.1:8123";

/// Fails the test with a clear message unless both services answer.
pub fn require_services() {
    let broker = std::net::TcpStream::connect_timeout(&BROKERS.parse().unwrap(), Duration::from_secs(2));
    assert!(broker.is_ok(), "no Kafka broker on {BROKERS}: start the services with deploy/local/up.sh");
    let clickhouse = std::net::TcpStream::connect_timeout(&"127.0.0.1:8123".parse().unwrap(), Duration::from_secs(2));
    assert!(clickhouse.is_ok(), "no ClickHouse on {CLICKHOUSE_URL}: start the services with deploy/local/up.sh");
}

/// A topic, a database and a directory of this test's own. The checkpoint
/// store is `state`; files beside it (`state.with_extension(…)`) share its
/// directory and go with it.
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
        let directory = std::env::temp_dir().join("tally-tests").join(&tag);
        std::fs::create_dir_all(&directory).expect("a directory of the test's own");
        let state = directory.join("state");
        Scratch { topic: format!("events-{tag}"), database: format!("test_{tag}"), brokers: BROKERS.into(), state }
    }

    /// The same, on another broker.
    pub fn on(mut self, brokers: &str) -> Scratch {
        self.brokers = brokers.into();
        self
    }

    pub fn kafka(&self) -> Kafka {
        Kafka { brokers: self.brokers.clone(), topic: self.topic.clone(), ..Kafka::default() }
    }

    pub fn clickhouse(&self) -> ClickHouse {
        ClickHouse { url: CLICKHOUSE_URL.into(), database: self.database.clone(), ..ClickHouse::default() }
    }

    /// Produces `messages` to a new topic with `partitions` partitions and
    /// returns them as the partitions hold them (offsets from 0).
    pub fn produce(&self, partitions: u32, messages: Vec<Produced>) -> Vec<Message> {
        tally::produce::ensure_topic(&self.kafka(), partitions).expect("topic created");
        self.produce_more(&messages);
        as_read(&messages)
    }

    /// Produces `messages` after what the topic already holds.
    pub fn produce_more(&self, messages: &[Produced]) {
        let total = messages.len() as u64;
        tally::produce::produce(&self.kafka(), messages.iter().cloned(), total, tally::produce::Pace::Unpaced, |_| {})
            .expect("produced");
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
            .env("TALLY_METRICS_LISTEN", "127.0.0.1:0")
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

    /// A file for the stderr of the run called `name`, kept when the test
    /// fails.
    pub fn log(&self, name: &str) -> Log {
        let directory = self.state.with_extension("logs");
        std::fs::create_dir_all(&directory).expect("a directory for logs");
        Log { path: directory.join(format!("{name}.log")) }
    }

    /// The tables as a reader sees them with FINAL.
    pub fn tables(&self) -> Tables {
        Tables::read(&Warehouse::new(&self.clickhouse()))
    }

    /// The newest checkpoint manifest in the file store, if any.
    pub fn newest_manifest(&self) -> Option<serde_json::Value> {
        let newest = std::fs::read_dir(self.state.join(&self.topic).join("manifests"))
            .ok()?
            .flatten()
            .map(|e| e.path())
            .max()?;
        serde_json::from_slice(&std::fs::read(newest).ok()?).ok()
    }

    /// Deletes the messages of `partition` before `offset`, as retention
    /// would.
    pub fn delete_before(&self, partition: i32, offset: i64) {
        use rdkafka::admin::{AdminClient, AdminOptions};
        use rdkafka::client::DefaultClientContext;

        let admin: AdminClient<DefaultClientContext> = self.kafka().client_config(&[]).create().unwrap();
        let mut before = rdkafka::TopicPartitionList::new();
        before.add_partition_offset(&self.topic, partition, rdkafka::Offset::Offset(offset)).unwrap();
        let deleted = tally::blocking_runtime().block_on(admin.delete_records(&before, &AdminOptions::new())).unwrap();
        let result = deleted.elements_for_topic(&self.topic)[0].error();
        assert!(result.is_ok(), "deleting records of partition {partition}: {result:?}");
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let server = Warehouse::with_database(&self.clickhouse(), None);
            let _ =
                server.block_on(server.client().query(&format!("DROP DATABASE IF EXISTS {}", self.database)).execute());
            let _ = std::fs::remove_dir_all(self.state.parent().expect("the test's own directory"));
        }
    }
}

/// Where a child's stderr goes, for a failing test to show.
pub struct Log {
    pub path: PathBuf,
}

impl Log {
    pub fn stdio(&self) -> std::process::Stdio {
        std::fs::File::create(&self.path).expect("a log file").into()
    }

    /// The last lines written, with the file's name.
    pub fn tail(&self) -> String {
        let text = std::fs::read_to_string(&self.path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(20)..].join("\n");
        format!("{} ends:\n{tail}", self.path.display())
    }
}

/// The tables as stored or expected, compared as `tally reconcile` compares
/// them, failing a test with the differences.
#[derive(Debug, Default)]
pub struct Tables(pub tally::reconcile::tables::Tables);

impl Tables {
    fn read(warehouse: &Warehouse) -> Tables {
        Tables(tally::reconcile::tables::Tables::read(warehouse).expect("the tables are readable"))
    }

    /// Asserts equality, naming the first differences rather than dumping all.
    pub fn assert_same(&self, expected: &Tables) {
        let differences = self.0.differences(&expected.0);
        assert!(differences.count() == 0, "ClickHouse differs from the oracle:\n{differences}");
    }

    /// Whether the tables hold what `expected` says, as [`Tables::assert_same`] checks.
    pub fn matches(&self, expected: &Tables) -> bool {
        self.0.differences(&expected.0).count() == 0
    }
}

impl std::ops::Deref for Tables {
    type Target = tally::reconcile::tables::Tables;

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

/// The shipped price list.
pub fn prices() -> Arc<PriceList> {
    Arc::new(PriceList::parse(tally::config::DEFAULT_PRICES).unwrap())
}

/// What the oracle says the tables hold after reading `messages`.
pub fn expected(partitions: u32, messages: &[Message]) -> Tables {
    as_tables(oracle_ledger(partitions, messages, &prices()), messages)
}

/// What the tables hold after reading `messages` when the run was restarted
/// under the `raised` price list with the windows before `final_before`
/// final: those keep the rows of the first prices, the others are rated with
/// `raised`, and every total is the sum of its rows.
pub fn expected_repriced(partitions: u32, messages: &[Message], raised: &PriceList, final_before: Millis) -> Tables {
    let mut ledger = oracle_ledger(partitions, messages, &prices());
    let repriced = oracle_ledger(partitions, messages, raised);
    ledger.breakdowns.retain(|key, _| key.window_start < final_before);
    ledger.breakdowns.extend(repriced.breakdowns.into_iter().filter(|(key, _)| key.window_start >= final_before));
    ledger.totals.clear();
    for row in ledger.breakdowns.values() {
        let key = TotalKey::of(&row.key);
        let total =
            ledger.totals.entry(key.clone()).or_insert(TotalRow { key, usage: Amount::ZERO, cost: Amount::ZERO });
        total.usage = total.usage.checked_add(row.usage).expect("in range");
        total.cost = total.cost.checked_add(row.cost).expect("in range");
    }
    as_tables(ledger, messages)
}

fn oracle_ledger(partitions: u32, messages: &[Message], prices: &PriceList) -> Ledger {
    let all: Vec<u32> = (0..partitions).collect();
    oracle::run(&all, messages.to_vec(), prices, &Settings::default()).expect("no overflow")
}

/// The tables `ledger` makes, the rejections that depend on the order
/// partitions interleave in named.
fn as_tables(ledger: Ledger, messages: &[Message]) -> Tables {
    let mut tables = tally::reconcile::tables::Tables::of(&ledger, &prices());
    let identity = |m: &Message| {
        let event: serde_json::Value = serde_json::from_slice(&m.payload).ok()?;
        Some((event.get("source")?.as_str()?.to_owned(), event.get("id")?.as_str()?.to_owned()))
    };
    let mut partitions_of: BTreeMap<(String, String), BTreeSet<u32>> = BTreeMap::new();
    for message in messages {
        if let Some(identity) = identity(message) {
            partitions_of.entry(identity).or_default().insert(message.partition);
        }
    }
    tables.order_dependent = messages
        .iter()
        .filter(|m| identity(m).is_some_and(|i| partitions_of[&i].len() > 1))
        .map(|m| (m.partition as i32, m.offset))
        .collect();
    Tables(tables)
}

/// `messages`, produced in this order to an empty topic, as its partitions
/// hold them (offsets from 0).
pub fn as_read(messages: &[Produced]) -> Vec<Message> {
    let mut offsets: BTreeMap<u32, i64> = BTreeMap::new();
    messages
        .iter()
        .map(|m| {
            let offset = offsets.entry(m.partition).or_default();
            *offset += 1;
            Message {
                partition: m.partition,
                offset: *offset - 1,
                timestamp: m.timestamp,
                payload: m.payload.clone().into_bytes(),
            }
        })
        .collect()
}

/// Path of a file under the repository.
pub fn repo(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// A broker of the test's own (same build as deploy/local/up.sh's, its own
/// port), to freeze, thaw or restart without disturbing other tests.
pub struct PrivateBroker {
    pub address: String,
    /// With SQLite storage in this directory, the broker survives a restart.
    storage: Option<PathBuf>,
    /// Flags beyond listener and storage.
    flags: Vec<String>,
    process: std::process::Child,
}

impl PrivateBroker {
    /// A broker with memory storage.
    pub fn start() -> PrivateBroker {
        let port = free_port();
        PrivateBroker::spawn(format!("127.0.0.1:{port}"), None, Vec::new())
    }

    /// A broker that serves only TLS (with `certificate` and `key`) and
    /// requires SASL/SCRAM-SHA-512 login as `user`.
    pub fn start_secured(
        storage: PathBuf,
        user: &str,
        password: &str,
        certificate: &Path,
        key: &Path,
    ) -> PrivateBroker {
        std::fs::create_dir_all(&storage).unwrap();
        let address = format!("127.0.0.1:{}", free_port());
        // Users are created through a broker that does not require them yet.
        let open = PrivateBroker::spawn(address.clone(), Some(storage.clone()), Vec::new());
        let status = Command::new(nisshi())
            .args([
                "user",
                "create",
                "--broker",
                &format!("tcp://{address}"),
                "--mechanism",
                "scram512",
                user,
                password,
            ])
            .stdout(std::process::Stdio::null())
            .status()
            .expect("nisshi user create runs");
        assert!(status.success(), "nisshi could not create user {user}");
        drop(open);
        let flags =
            ["--authentication", "--cert", &certificate.display().to_string(), "--key", &key.display().to_string()]
                .map(str::to_owned)
                .to_vec();
        PrivateBroker::spawn(address, Some(storage), flags)
    }

    /// A broker keeping its data in SQLite under `storage`, so that it can be
    /// killed and restarted.
    pub fn start_persistent(storage: PathBuf) -> PrivateBroker {
        std::fs::create_dir_all(&storage).unwrap();
        PrivateBroker::spawn(format!("127.0.0.1:{}", free_port()), Some(storage), Vec::new())
    }

    fn spawn(address: String, storage: Option<PathBuf>, flags: Vec<String>) -> PrivateBroker {
        let url = format!("tcp://{address}");
        let mut command = Command::new(nisshi());
        command.args(["broker", "--listener-url", &url, "--advertised-listener-url", &url]);
        command.args(&flags);
        command.args(["--group-initial-rebalance-delay", "0s"]);
        match &storage {
            // nisshi takes SQLite paths relative to its working directory.
            Some(dir) => command.current_dir(dir).args(["--storage-engine", "sqlite://nisshi.db"]),
            None => command.args(["--storage-engine", "memory://nisshi/"]),
        };
        let process = command
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("the broker starts");
        wait_for_port(&address, "private broker");
        PrivateBroker { address, storage, flags, process }
    }

    /// Kills the broker (SIGKILL) and starts it again on the same port and storage.
    pub fn restart(&mut self) {
        assert!(self.storage.is_some(), "only a persistent broker keeps its data across a restart");
        self.process.kill().unwrap();
        self.process.wait().unwrap();
        let restarted = PrivateBroker::spawn(self.address.clone(), self.storage.clone(), self.flags.clone());
        *self = restarted;
    }

    /// Freezes (SIGSTOP) or thaws (SIGCONT) the broker: an outage that keeps its data.
    pub fn freeze(&self, frozen: bool) {
        let signal = if frozen { "-STOP" } else { "-CONT" };
        let status = Command::new("kill").args([signal, &self.process.id().to_string()]).status().unwrap();
        assert!(status.success());
    }
}

/// The state folder of `deploy/local/up.sh`.
pub fn local_dir() -> PathBuf {
    std::env::var("TALLY_LOCAL_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(std::env::var("HOME").expect("HOME is set")).join(".tally-local"))
}

fn nisshi() -> PathBuf {
    let binary = local_dir().join("bin/nisshi");
    assert!(binary.exists(), "no broker binary at {}: run deploy/local/up.sh", binary.display());
    binary
}

/// A self-signed certificate for 127.0.0.1 and its key (PEM) in `dir`.
pub fn self_signed(dir: &Path) -> (PathBuf, PathBuf) {
    std::fs::create_dir_all(dir).unwrap();
    let (certificate, key) = (dir.join("server.crt"), dir.join("server.key"));
    let status = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&certificate)
        .stderr(std::process::Stdio::null())
        .status()
        .expect("openssl runs (deploy/local/up.sh installs it)");
    assert!(status.success(), "openssl could not make a certificate");
    (certificate, key)
}

/// A port nothing listens on now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Waits until something answers on `address`.
pub fn wait_for_port(address: &str, what: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(address).is_err() {
        assert!(std::time::Instant::now() < deadline, "{what} on {address} did not answer");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// An S3 server of the test's own (moto, installed by deploy/local/up.sh) with
/// one bucket, for `s3://` checkpoint stores.
pub struct S3Server {
    pub endpoint: String,
    process: std::process::Child,
}

impl S3Server {
    pub fn start(bucket: &str) -> S3Server {
        let port = free_port();
        let process = Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start moto_server ({e}): run deploy/local/up.sh"));
        let address = format!("127.0.0.1:{port}");
        wait_for_port(&address, "moto_server");
        let endpoint = format!("http://{address}");
        let status = Command::new("curl")
            .args(["-sf", "-X", "PUT", &format!("{endpoint}/{bucket}"), "-o", "/dev/null"])
            .status()
            .unwrap();
        assert!(status.success(), "cannot create bucket {bucket} on {endpoint}");
        S3Server { endpoint, process }
    }

    /// The environment `tally` reads S3 settings from.
    pub fn environment(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT", self.endpoint.clone()),
            ("AWS_ALLOW_HTTP", "true".into()),
            ("AWS_ACCESS_KEY_ID", "tally".into()),
            ("AWS_SECRET_ACCESS_KEY", "tally".into()),
            ("AWS_REGION", "us-east-1".into()),
        ]
    }

    /// The objects of `bucket` whose keys begin with `prefix`, in key order.
    pub fn objects(&self, bucket: &str, prefix: &str) -> Vec<Vec<u8>> {
        let get = |url: String| {
            let output = Command::new("curl").args(["-sf", &url]).output().unwrap();
            assert!(output.status.success(), "cannot GET {url}");
            output.stdout
        };
        let mut keys = Vec::new();
        let mut after = String::new();
        loop {
            let listing = get(format!("{}/{bucket}?list-type=2&prefix={prefix}&start-after={after}", self.endpoint));
            let listing = String::from_utf8(listing).expect("an XML listing");
            let page: Vec<String> = listing
                .split("<Key>")
                .skip(1)
                .map(|rest| rest.split("</Key>").next().expect("a closed key").to_owned())
                .collect();
            let Some(last) = page.last() else { break };
            after = last.clone();
            keys.extend(page);
        }
        keys.sort();
        keys.into_iter().map(|key| get(format!("{}/{bucket}/{key}", self.endpoint))).collect()
    }

    /// Freezes (SIGSTOP) or thaws (SIGCONT) the server: an outage that keeps its objects.
    pub fn freeze(&self, frozen: bool) {
        let signal = if frozen { "-STOP" } else { "-CONT" };
        let status = Command::new("kill").args([signal, &self.process.id().to_string()]).status().unwrap();
        assert!(status.success());
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.freeze(false);
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        // Thawed first, so that the kill takes; it may be gone already.
        let _ = Command::new("kill")
            .args(["-CONT", &self.process.id().to_string()])
            .stderr(std::process::Stdio::null())
            .status();
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

/// A `tally` child process, killed when the test ends however it ends.
pub struct Running(pub std::process::Child);

impl Running {
    pub fn alive(&mut self) -> bool {
        self.0.try_wait().is_ok_and(|status| status.is_none())
    }

    /// Freezes (SIGSTOP) or thaws (SIGCONT) the run, as [`PrivateBroker::freeze`] does the broker.
    pub fn freeze(&self, frozen: bool) {
        let signal = if frozen { "-STOP" } else { "-CONT" };
        let status = Command::new("kill").args([signal, &self.0.id().to_string()]).status().unwrap();
        assert!(status.success());
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits for `child` to exit, killing it and failing after `limit`.
pub fn wait(child: &mut std::process::Child, limit: Duration) -> std::process::ExitStatus {
    let start = std::time::Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            panic!("tally did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A TCP forwarder to ClickHouse that can be switched off: while off, it
/// resets new and open connections, as a server going away would.
pub struct Switch {
    pub port: u16,
    up: Arc<AtomicBool>,
}

impl Switch {
    pub fn to(target: &'static str) -> Switch {
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

    pub fn set(&self, up: bool) {
        self.up.store(up, Ordering::SeqCst);
    }
}
