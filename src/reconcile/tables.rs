//! The three tables in one comparable form, read from ClickHouse with `FINAL`
//! or computed by the oracle, and what differs between the two.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use clickhouse::Row;
use serde::Deserialize;
use tally_dataflows::fixed::Amount;
use tally_dataflows::prices::PriceList;
use tally_dataflows::rows::Ledger;
use tally_dataflows::time::{DAY, SECOND};

use crate::sink::clickhouse::{Warehouse, WarehouseError};

/// A breakdown row's identity: account, window start (Unix seconds),
/// resource, SKU.
pub type BreakdownId = (String, u32, String, String);
/// A breakdown row's content: usage, cost (both × 10^12), project, region,
/// labels, unit, currency.
pub type BreakdownValue = (i128, i128, String, String, String, String, String);
/// A total's identity: account, day (days since 1970), SKU.
pub type TotalId = (String, u16, String);
/// A total's content: usage, cost (both × 10^12), currency.
pub type TotalValue = (i128, i128, String);
/// A rejection's identity: partition, offset.
pub type RejectionId = (i32, i64);
/// A rejection's content: reason, stored payload.
pub type RejectionValue = (String, Vec<u8>);

/// Rows keyed and valued as strings and integers, comparable between
/// ClickHouse and the oracle. Rows with zero usage are left out on both sides
/// (a reader filters them; see the contract).
#[derive(Clone, Debug, Default)]
pub struct Tables {
    /// `usage_breakdown`.
    pub breakdowns: BTreeMap<BreakdownId, BreakdownValue>,
    /// `account_totals`.
    pub totals: BTreeMap<TotalId, TotalValue>,
    /// `rejected_events`.
    pub rejections: BTreeMap<RejectionId, RejectionValue>,
    /// Messages whose `(source, id)` also appears on another partition: when
    /// one copy is late, whether it or its twin is read first depends on how
    /// the partitions interleave, so its `late` rejection may or may not be
    /// there (README: copies on different partitions). The money never varies.
    pub order_dependent: BTreeSet<RejectionId>,
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

impl Tables {
    /// The tables as a reader sees them with `FINAL`.
    pub fn read(warehouse: &Warehouse) -> Result<Tables, WarehouseError> {
        let client = warehouse.client();
        let breakdowns: Vec<BreakdownStored> = warehouse.block_on(
            client
                .query(
                    "SELECT account_id, window_start, resource_id, sku, project_id, region, labels, usage, unit, cost, \
                     currency FROM usage_breakdown FINAL WHERE usage != 0",
                )
                .fetch_all(),
        )?;
        let totals: Vec<TotalStored> = warehouse.block_on(
            client
                .query("SELECT account_id, day, sku, usage, cost, currency FROM account_totals FINAL WHERE usage != 0")
                .fetch_all(),
        )?;
        let rejections: Vec<RejectionStored> = warehouse.block_on(
            client.query("SELECT partition, offset, reason, payload FROM rejected_events FINAL").fetch_all(),
        )?;
        Ok(Tables {
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
            order_dependent: BTreeSet::new(),
        })
    }

    /// The oracle's ledger in the same form.
    pub fn of(ledger: &Ledger, prices: &PriceList) -> Tables {
        let mut tables = Tables::default();
        for row in ledger.breakdowns.values() {
            let sku = prices.sku(row.key.sku);
            let window = u32::try_from(row.key.window_start / SECOND).unwrap_or(u32::MAX);
            tables.breakdowns.insert(
                (row.key.account.to_string(), window, row.key.resource.to_string(), sku.id.clone()),
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
            let day = u16::try_from(row.key.day / DAY).unwrap_or(u16::MAX);
            tables.totals.insert(
                (row.key.account.to_string(), day, sku.id.clone()),
                (row.usage.scaled(), row.cost.scaled(), sku.currency.clone()),
            );
        }
        for rejection in ledger.rejections.values() {
            let partition = i32::try_from(rejection.partition).unwrap_or(i32::MAX);
            tables.rejections.insert(
                (partition, rejection.offset),
                (rejection.reason.as_str().to_owned(), rejection.payload.clone()),
            );
        }
        tables
    }

    /// What differs between these tables (stored) and `expected`, leaving
    /// out only the order-dependent `late` rejections `expected` names.
    pub fn differences(&self, expected: &Tables) -> Differences {
        let varies = |key: &RejectionId| {
            let late_or_absent =
                |side: &BTreeMap<RejectionId, RejectionValue>| side.get(key).is_none_or(|(reason, _)| reason == "late");
            expected.order_dependent.contains(key)
                && late_or_absent(&self.rejections)
                && late_or_absent(&expected.rejections)
        };
        let rejections = |side: &Tables| -> BTreeMap<RejectionId, RejectionValue> {
            side.rejections.iter().filter(|(k, _)| !varies(k)).map(|(k, v)| (*k, v.clone())).collect()
        };
        Differences {
            breakdowns: Diff::between(&self.breakdowns, &expected.breakdowns),
            totals: Diff::between(&self.totals, &expected.totals),
            rejections: Diff::between(&rejections(self), &rejections(expected)),
        }
    }
}

/// How one table differs: keys only expected, only stored, and stored with
/// another value (expected, stored).
#[derive(Debug)]
pub struct Diff<K, V> {
    /// Rows expected.
    pub expected: usize,
    /// Rows stored.
    pub stored: usize,
    /// Expected but not stored.
    pub missing: Vec<(K, V)>,
    /// Stored but not expected.
    pub extra: Vec<(K, V)>,
    /// Stored with another value: key, expected, stored.
    pub different: Vec<(K, V, V)>,
}

impl<K: Ord + Clone, V: PartialEq + Clone> Diff<K, V> {
    fn between(stored: &BTreeMap<K, V>, expected: &BTreeMap<K, V>) -> Diff<K, V> {
        let missing = expected.iter().filter(|(k, _)| !stored.contains_key(k)).map(|(k, v)| (k.clone(), v.clone()));
        let extra = stored.iter().filter(|(k, _)| !expected.contains_key(k)).map(|(k, v)| (k.clone(), v.clone()));
        let different = expected
            .iter()
            .filter_map(|(k, v)| stored.get(k).filter(|s| *s != v).map(|s| (k.clone(), v.clone(), s.clone())));
        Diff {
            expected: expected.len(),
            stored: stored.len(),
            missing: missing.collect(),
            extra: extra.collect(),
            different: different.collect(),
        }
    }

    /// How many rows differ.
    pub fn count(&self) -> usize {
        self.missing.len() + self.extra.len() + self.different.len()
    }
}

/// Every difference between ClickHouse and the recomputation.
#[derive(Debug)]
pub struct Differences {
    /// `usage_breakdown`.
    pub breakdowns: Diff<BreakdownId, BreakdownValue>,
    /// `account_totals`.
    pub totals: Diff<TotalId, TotalValue>,
    /// `rejected_events`.
    pub rejections: Diff<RejectionId, RejectionValue>,
}

/// Rows of each kind a report shows per table.
const SHOWN: usize = 20;

impl Differences {
    /// How many rows differ in all.
    pub fn count(&self) -> usize {
        self.breakdowns.count() + self.totals.count() + self.rejections.count()
    }
}

impl fmt::Display for Differences {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        section(f, "usage_breakdown", &self.breakdowns, breakdown_key, breakdown_value)?;
        section(f, "account_totals", &self.totals, total_key, total_value)?;
        section(
            f,
            "rejected_events",
            &self.rejections,
            |(p, o)| format!("partition {p} offset {o}"),
            |(reason, payload)| format!("reason {reason}, {} payload bytes", payload.len()),
        )
    }
}

fn section<K, V>(
    f: &mut fmt::Formatter<'_>,
    table: &str,
    diff: &Diff<K, V>,
    key: impl Fn(&K) -> String,
    value: impl Fn(&V) -> String,
) -> fmt::Result {
    writeln!(
        f,
        "{table}: {} expected, {} stored: {} missing, {} extra, {} different",
        diff.expected,
        diff.stored,
        diff.missing.len(),
        diff.extra.len(),
        diff.different.len()
    )?;
    for (k, v) in diff.missing.iter().take(SHOWN) {
        writeln!(f, "  missing   {}: {}", key(k), value(v))?;
    }
    for (k, v) in diff.extra.iter().take(SHOWN) {
        writeln!(f, "  extra     {}: {}", key(k), value(v))?;
    }
    for (k, expected, stored) in diff.different.iter().take(SHOWN) {
        writeln!(f, "  different {}:\n    expected {}\n    stored   {}", key(k), value(expected), value(stored))?;
    }
    let hidden = [diff.missing.len(), diff.extra.len(), diff.different.len()]
        .iter()
        .map(|n| n.saturating_sub(SHOWN))
        .sum::<usize>();
    if hidden > 0 {
        writeln!(f, "  … and {hidden} more")?;
    }
    Ok(())
}

fn amount(scaled: i128) -> String {
    Amount::from_scaled(scaled).map_or_else(|| format!("{scaled}e-12"), |a| a.to_string())
}

fn breakdown_key((account, window, resource, sku): &BreakdownId) -> String {
    let start = chrono::DateTime::from_timestamp(i64::from(*window), 0)
        .map_or_else(|| window.to_string(), |t| t.format("%Y-%m-%dT%H:%MZ").to_string());
    format!("account {account} window {start} resource {resource} sku {sku}")
}

fn breakdown_value((usage, cost, project, region, labels, unit, currency): &BreakdownValue) -> String {
    format!(
        "usage {} {unit}, cost {} {currency}, project {project}, region {region}, labels {labels}",
        amount(*usage),
        amount(*cost)
    )
}

fn total_key((account, day, sku): &TotalId) -> String {
    let date = chrono::DateTime::from_timestamp(i64::from(*day) * 86_400, 0)
        .map_or_else(|| day.to_string(), |t| t.format("%Y-%m-%d").to_string());
    format!("account {account} day {date} sku {sku}")
}

fn total_value((usage, cost, currency): &TotalValue) -> String {
    format!("usage {}, cost {} {currency}", amount(*usage), amount(*cost))
}
