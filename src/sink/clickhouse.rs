//! Writing to ClickHouse over HTTP (RowBinary, LZ4), retried until
//! acknowledged.
//!
//! A write either succeeds or is retried with backoff for as long as it takes:
//! while ClickHouse is away the writer blocks here, its epoch is not
//! acknowledged, and the worker stops at the next epoch it hands over (see
//! `sink::writer`), so the source stops advancing behind it.

use std::future::Future;

use clickhouse::{Client, Row, RowWrite};

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
            .with_validation(false);
        if let Some(database) = database {
            client = client.with_database(database);
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a single-threaded tokio runtime starts");
        Warehouse { client, url: config.url.clone(), runtime }
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

    /// Inserts `rows` into `table` in one statement, retrying until it succeeds.
    pub fn insert_all<R: Row + RowWrite>(&self, table: &str, rows: &[R::Value<'_>]) {
        if rows.is_empty() {
            return;
        }
        self.retry(table, |client| async move {
            let mut insert = client.insert::<R>(table).await?;
            for row in rows {
                insert.write(row).await?;
            }
            insert.end().await
        });
    }
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
    let quoted = pipeline.replace('\\', "\\\\").replace('\'', "\\'");
    let sql = format!("SELECT count() FROM pipeline_progress WHERE pipeline = '{quoted}'");
    let rows = warehouse.retry("read pipeline_progress", |client| {
        let sql = sql.clone();
        async move { client.query(&sql).fetch_one::<u64>().await }
    });
    rows > 0
}
