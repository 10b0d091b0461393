//! What flows out: breakdown and total row upserts, rejections, and progress.
//!
//! Rows are absolute values keyed by their identity, never deltas, so writing
//! one twice is harmless. A row that changed back to zero usage is emitted as
//! zero so that the stored copy is corrected; readers filter `usage != 0`.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use smol_str::SmolStr;

use crate::event::{Message, Meta, Offset, Partition, Reason};
use crate::fixed::Amount;
use crate::prices::SkuId;
use crate::time::Millis;

/// Rejected payloads are stored up to this many bytes.
pub const MAX_STORED_PAYLOAD: usize = 1 << 20;

/// Identity of a `usage_breakdown` row.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct BreakdownKey {
    /// Billing account.
    pub account: SmolStr,
    /// Start of the hourly window.
    pub window_start: Millis,
    /// Resource id.
    pub resource: SmolStr,
    /// SKU.
    pub sku: SkuId,
}

/// One `usage_breakdown` row: a resource's usage of an SKU in a window.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BreakdownRow {
    /// Identity.
    pub key: BreakdownKey,
    /// Project, region and labels of the latest event at or before the window end.
    pub meta: Arc<Meta>,
    /// Unit-seconds for gauges, units for counters.
    pub usage: Amount,
    /// Rated at the price in effect at the window start.
    pub cost: Amount,
}

impl BreakdownRow {
    /// The row with nothing used: what a row that dropped back to nothing reads.
    pub fn zero(key: BreakdownKey) -> BreakdownRow {
        BreakdownRow { key, meta: Arc::default(), usage: Amount::ZERO, cost: Amount::ZERO }
    }
}

/// Identity of an `account_totals` row.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TotalKey {
    /// Billing account.
    pub account: SmolStr,
    /// Start of the UTC day.
    pub day: Millis,
    /// SKU.
    pub sku: SkuId,
}

/// One `account_totals` row: the exact sum of the day's breakdown rows.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TotalRow {
    /// Identity.
    pub key: TotalKey,
    /// Sum of the rows' usage.
    pub usage: Amount,
    /// Sum of the rows' cost.
    pub cost: Amount,
}

/// A change to the sums behind a total row, flowing from breakdowns to totals.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delta {
    /// Change in usage.
    pub usage: Amount,
    /// Change in cost.
    pub cost: Amount,
}

/// One `rejected_events` row: everything needed to replay the message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejection {
    /// Where the message was read.
    pub partition: Partition,
    /// Its offset there.
    pub offset: Offset,
    /// Why.
    pub reason: Reason,
    /// What was expected and what was found.
    pub detail: String,
    /// The message value, cut at [`MAX_STORED_PAYLOAD`].
    pub payload: Vec<u8>,
    /// True when `payload` was cut.
    pub truncated: bool,
    /// The message's Kafka timestamp.
    pub received_at: Millis,
}

impl Rejection {
    /// Rejects `message`, keeping its payload (cut to what can be stored).
    pub fn of(message: Message, reason: Reason, detail: String) -> Rejection {
        let mut payload = message.payload;
        let truncated = payload.len() > MAX_STORED_PAYLOAD;
        payload.truncate(MAX_STORED_PAYLOAD);
        Rejection {
            partition: message.partition,
            offset: message.offset,
            reason,
            detail,
            payload,
            truncated,
            received_at: message.timestamp,
        }
    }
}

/// Where event time stands after an epoch; the same on every worker.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// Minimum of the partition clocks that hold it back; `None` until every
    /// such partition has a clock.
    pub watermark: Option<Millis>,
    /// Running resources have accrued up to here: the watermark, truncated to
    /// the accrual granularity.
    pub accrued_to: Option<Millis>,
    /// Windows starting before this are final: their rows never change again.
    pub final_before: Option<Millis>,
}

impl Progress {
    /// Nothing known yet.
    pub const START: Progress = Progress { watermark: None, accrued_to: None, final_before: None };
}

/// Counts of what became of the events an epoch read, beyond rejections.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcomes {
    /// Counted into usage.
    pub accepted: u64,
    /// Repeats of an `(source, id)` already counted: ignored.
    pub duplicates: u64,
}

/// The tables' content after a run, as a reader sees it: the last value of
/// every row with `usage != 0`, every rejection, and where progress ended.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ledger {
    /// `usage_breakdown`.
    pub breakdowns: BTreeMap<BreakdownKey, BreakdownRow>,
    /// `account_totals`.
    pub totals: BTreeMap<TotalKey, TotalRow>,
    /// `rejected_events`, by partition and offset.
    pub rejections: BTreeMap<(Partition, Offset), Rejection>,
    /// Accepted and duplicate counts.
    pub outcomes: Outcomes,
    /// Progress after the last epoch.
    pub progress: Option<Progress>,
}

impl Ledger {
    /// How many rejections there are of each reason.
    pub fn rejections_by_reason(&self) -> BTreeMap<Reason, usize> {
        let mut counts = BTreeMap::new();
        for rejection in self.rejections.values() {
            *counts.entry(rejection.reason).or_default() += 1;
        }
        counts
    }
}
