//! Writing to ClickHouse over HTTP (RowBinary, LZ4), retried until
//! acknowledged.
//!
//! A write either succeeds or is retried with backoff for as long as it takes:
//! while ClickHouse is away the writer blocks here, its epoch is not
//! acknowledged, and the workers stop at the next rows they hand over (see
//! [`crate::sink::inserter`]), so the source stops advancing behind them.
//!
//! Every insert of a pipeline carries a `query_id` beginning with
//! [`insert_prefix`]. An insert sent in full is carried out even when its
//! sender has been killed since, and may land after a restart has looked for
//! what earlier runs wrote; the restart first waits for those still running
//! (see [`await_earlier_inserts`]).

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use clickhouse::{Client, Compression, Row, RowWrite};

use tally_dataflows::checkpoint::Stale;
use tally_dataflows::prices::PriceList;
use tally_dataflows::rows::{BreakdownKey, TotalKey};
use tally_dataflows::time::{DAY, SECOND};

use crate::backoff;
use crate::config::ClickHouse;

/// A ClickHouse database, reached from a synchronous worker thread.
pub struct Warehouse {
    client: Client,
    url: String,
    /// The database, empty for the server's default one.
    database: String,
    runtime: tokio::runtime::Runtime,
}

/// What went wrong talking to ClickHouse.
#[derive(Debug, thiserror::Error)]
#[error("ClickHouse at {url}: {source}")]
pub struct WarehouseError {
    url: String,
    source: clickhouse::error::Error,
}

impl Warehouse {
    /// A client for the configured database (not contacted yet).
    pub fn new(config: &ClickHouse) -> Warehouse {
        Warehouse::with_database(config, Some(&config.database))
    }

    /// A client for `database`, or for the server's default one.
    pub fn with_database(config: &ClickHouse, database: Option<&str>) -> Warehouse {
        let mut client = Client::default()
            .with_url(&config.url)
            .with_user(&config.user)
            .with_password(&config.password)
            // The schema check asks 18.16 for a setting it lacks; the
            // migrations own the schema.
            .with_validation(false)
            // Named, not left to the crate's default: the benches' mock
            // (`test-util`) turns that off in any build that includes them,
            // so the tests would send inserts as the shipped binary does not.
            .with_compression(Compression::Lz4);
        if let Some(database) = database {
            client = client.with_database(database);
        }
        let database = database.unwrap_or_default().to_owned();
        Warehouse { client, url: config.url.clone(), database, runtime: crate::blocking_runtime() }
    }

    /// The client, for queries.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Runs `work` once, blocking.
    pub fn block_on<T>(&self, work: impl Future<Output = clickhouse::error::Result<T>>) -> Result<T, WarehouseError> {
        self.runtime.block_on(work).map_err(|source| WarehouseError { url: self.url.clone(), source })
    }

    /// Runs `attempt` until it succeeds, backing off between failures.
    pub fn retry<T, F, Fut>(&self, what: &str, mut attempt: F) -> T
    where
        F: FnMut(Client) -> Fut,
        Fut: Future<Output = clickhouse::error::Result<T>>,
    {
        let hint = " (is the server up and `tally migrate` applied?)";
        backoff::retry("ClickHouse", what, hint, || self.block_on(attempt(self.client.clone())))
    }

    /// Inserts the rows `rows` yields, of `pipeline`, into `table` in one
    /// statement, retrying until it succeeds (each attempt goes through a
    /// copy of `rows`). Every attempt has the same `query_id`, so that one
    /// still running in ClickHouse after its sender gave up holds the next
    /// back rather than running beside it.
    pub fn insert_all<'r, R: Row + RowWrite>(
        &self,
        pipeline: &str,
        table: &str,
        rows: impl Iterator<Item = R::Value<'r>> + Clone,
    ) {
        static INSERTS: AtomicU64 = AtomicU64::new(0);
        let insert_number = INSERTS.fetch_add(1, Ordering::Relaxed);
        let query_id =
            format!("{}{table}-{}-{insert_number}", insert_prefix(&self.database, pipeline), std::process::id());
        self.retry(table, |client| {
            let (query_id, rows) = (query_id.clone(), rows.clone());
            async move {
                let mut insert = client.insert::<R>(table).await?.with_setting("query_id", query_id);
                for row in rows {
                    insert.write(&row).await?;
                }
                insert.end().await
            }
        });
    }
}

/// How the `query_id` of every insert of `pipeline` into `database` begins.
pub fn insert_prefix(database: &str, pipeline: &str) -> String {
    format!("tally:{database}:{pipeline}:")
}

/// Waits until ClickHouse runs no insert of `pipeline`. Called before a run
/// looks at what earlier runs wrote, when none of its own has begun: an insert
/// a killed run sent in full is still carried out, and a row landing after the
/// restart looked for stale rows (see [`stale_rows`]) would never be written
/// again.
pub fn await_earlier_inserts(warehouse: &Warehouse, pipeline: &str) {
    let prefix = string_literal(&insert_prefix(&warehouse.database, pipeline));
    let sql = format!("SELECT count() FROM system.processes WHERE startsWith(query_id, {prefix})");
    let started = std::time::Instant::now();
    let mut next_warning = Duration::ZERO;
    loop {
        let running = warehouse.retry("list the inserts running", |client| {
            let sql = sql.clone();
            async move { client.query(&sql).fetch_one::<u64>().await }
        });
        if running == 0 {
            return;
        }
        // Said again every ten seconds: inserts that never end are another
        // run of this pipeline still writing, which must be stopped.
        let waited = started.elapsed();
        if waited >= next_warning {
            tracing::warn!(
                running,
                waited_seconds = waited.as_secs(),
                "inserts of another run of this pipeline are running; waiting for them to end"
            );
            next_warning = waited + Duration::from_secs(10);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `text` as a ClickHouse string literal.
fn string_literal(text: &str) -> String {
    format!("'{}'", text.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// Rows written with a version above `version`: by an incarnation whose epochs
/// no committed checkpoint covers (see [`crate::checkpoint`]).
pub fn stale_rows(warehouse: &Warehouse, version: u64, prices: &PriceList) -> Stale {
    let condition = format!("version > {version}");
    let breakdowns = warehouse.retry("find stale usage_breakdown rows", |client| {
        let sql = format!(
            "SELECT DISTINCT account_id, toUInt32(window_start), resource_id, sku FROM usage_breakdown WHERE {condition}"
        );
        async move { client.query(&sql).fetch_all::<(String, u32, String, String)>().await }
    });
    let totals = warehouse.retry("find stale account_totals rows", |client| {
        let sql = format!("SELECT DISTINCT account_id, toUInt16(day), sku FROM account_totals WHERE {condition}");
        async move { client.query(&sql).fetch_all::<(String, u16, String)>().await }
    });
    let sku = |name: &str| {
        let id = prices.lookup(name).map(|(id, _)| id);
        if id.is_none() {
            tracing::warn!(sku = name, "a stale row names an SKU the price list lacks; it cannot be rewritten");
        }
        id
    };
    Stale {
        breakdowns: breakdowns
            .into_iter()
            .filter_map(|(account, window, resource, name)| {
                Some(BreakdownKey {
                    account: account.into(),
                    window_start: i64::from(window) * SECOND,
                    resource: resource.into(),
                    sku: sku(&name)?,
                })
            })
            .collect(),
        totals: totals
            .into_iter()
            .filter_map(|(account, day, name)| {
                Some(TotalKey { account: account.into(), day: i64::from(day) * DAY, sku: sku(&name)? })
            })
            .collect(),
    }
}

/// Whether `pipeline_progress` holds a row for `pipeline`: whether the rows a
/// checkpoint accounts for can be in this database at all.
pub fn has_progress(warehouse: &Warehouse, pipeline: &str) -> bool {
    let sql = format!("SELECT count() FROM pipeline_progress WHERE pipeline = {}", string_literal(pipeline));
    let rows = warehouse.retry("read pipeline_progress", |client| {
        let sql = sql.clone();
        async move { client.query(&sql).fetch_one::<u64>().await }
    });
    rows > 0
}
