//! The ClickHouse rows, in the tables' column order, borrowed from the
//! dataflow's rows so that encoding copies nothing.

use clickhouse::Row;
use serde::Serialize;
use tally_dataflows::event::{Offset, Partition};
use tally_dataflows::prices::PriceList;
use tally_dataflows::rows::{BreakdownRow, Rejection, TotalRow};
use tally_dataflows::time::{DAY, SECOND};

use super::order::Place;

/// `DateTime` as RowBinary: seconds since the Unix epoch. Event times are
/// checked to lie in 1970..2106 at decode, where this cannot fail.
fn datetime(millis: i64) -> u32 {
    u32::try_from(millis.div_euclid(SECOND)).expect("event times lie in 1970..2106")
}

/// `Date` as RowBinary: days since the Unix epoch.
fn day(millis: i64) -> u16 {
    u16::try_from(millis.div_euclid(DAY)).expect("event times lie in 1970..2106")
}

/// A `usage_breakdown` row.
#[derive(Row, Serialize)]
pub struct UsageBreakdown<'a> {
    account_id: &'a str,
    window_start: u32,
    resource_id: &'a str,
    sku: &'a str,
    project_id: &'a str,
    region: &'a str,
    labels: &'a str,
    usage: i128,
    unit: &'a str,
    cost: i128,
    currency: &'a str,
    version: u64,
}

impl<'a> UsageBreakdown<'a> {
    /// Where `row` sorts in the table's `ORDER BY (account_id, window_start,
    /// resource_id, sku)`.
    pub fn place(row: &'a BreakdownRow) -> Place<'a> {
        let key = &row.key;
        Place { account: &key.account, time: datetime(key.window_start), resource: &key.resource, sku: key.sku }
    }

    /// The stored form of `row` at `version`.
    pub fn of(row: &'a BreakdownRow, prices: &'a PriceList, version: u64) -> UsageBreakdown<'a> {
        let sku = prices.sku(row.key.sku);
        UsageBreakdown {
            account_id: &row.key.account,
            window_start: datetime(row.key.window_start),
            resource_id: &row.key.resource,
            sku: &sku.id,
            project_id: &row.meta.project_id,
            region: &row.meta.region,
            labels: &row.meta.labels,
            usage: row.usage.scaled(),
            unit: &sku.unit,
            cost: row.cost.scaled(),
            currency: &sku.currency,
            version,
        }
    }
}

/// An `account_totals` row.
#[derive(Row, Serialize)]
pub struct AccountTotal<'a> {
    account_id: &'a str,
    day: u16,
    sku: &'a str,
    usage: i128,
    cost: i128,
    currency: &'a str,
    version: u64,
}

impl<'a> AccountTotal<'a> {
    /// Where `row` sorts in the table's `ORDER BY (account_id, day, sku)`.
    pub fn place(row: &'a TotalRow) -> Place<'a> {
        Place { account: &row.key.account, time: u32::from(day(row.key.day)), resource: "", sku: row.key.sku }
    }

    /// The stored form of `row` at `version`.
    pub fn of(row: &'a TotalRow, prices: &'a PriceList, version: u64) -> AccountTotal<'a> {
        let sku = prices.sku(row.key.sku);
        AccountTotal {
            account_id: &row.key.account,
            day: day(row.key.day),
            sku: &sku.id,
            usage: row.usage.scaled(),
            cost: row.cost.scaled(),
            currency: &sku.currency,
            version,
        }
    }
}

/// A `rejected_events` row.
#[derive(Row, Serialize)]
pub struct RejectedEvent<'a> {
    topic: &'a str,
    partition: i32,
    offset: i64,
    reason: &'static str,
    detail: &'a str,
    #[serde(with = "serde_bytes")]
    payload: &'a [u8],
    truncated: u8,
    received_at: u32,
    version: u64,
}

impl<'a> RejectedEvent<'a> {
    /// Where `rejection` sorts in the table's `ORDER BY (topic, partition,
    /// offset)` among those of one topic.
    pub fn order(rejection: &Rejection) -> (Partition, Offset) {
        (rejection.partition, rejection.offset)
    }

    /// The stored form of `rejection`, read from `topic`, at `version`.
    pub fn of(rejection: &'a Rejection, topic: &'a str, version: u64) -> RejectedEvent<'a> {
        RejectedEvent {
            topic,
            partition: i32::try_from(rejection.partition).unwrap_or(i32::MAX),
            offset: rejection.offset,
            reason: rejection.reason.as_str(),
            detail: &rejection.detail,
            payload: &rejection.payload,
            truncated: u8::from(rejection.truncated),
            // Kafka timestamps outside DateTime's range are clamped to it.
            received_at: u32::try_from(rejection.received_at.div_euclid(SECOND).max(0)).unwrap_or(u32::MAX),
            version,
        }
    }
}

/// A `pipeline_progress` row.
#[derive(Clone, Row, Serialize)]
pub struct PipelineProgress<'a> {
    /// The pipeline's name (its topic).
    pub pipeline: &'a str,
    /// Watermark, seconds (0 before there is one).
    pub watermark: u32,
    /// Windows before this are final, seconds (0 before any is).
    pub final_before: u32,
    /// Last committed epoch.
    pub epoch: u64,
    /// Wall-clock time of the commit, seconds.
    pub committed_at: u32,
    /// Row version.
    pub version: u64,
}

impl PipelineProgress<'_> {
    /// Seconds of an optional event time, 0 when unknown.
    pub fn seconds(time: Option<i64>) -> u32 {
        time.map_or(0, datetime)
    }
}
