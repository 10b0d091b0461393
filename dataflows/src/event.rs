//! What flows in: Kafka messages, and the typed lifecycle events decoded from
//! them.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use smol_str::SmolStr;

use crate::fixed::Quantity;
use crate::prices::SkuId;
use crate::time::Millis;

/// Kafka partition number.
pub type Partition = u32;
/// Offset of a message in its partition.
pub type Offset = i64;

/// One message as read from a partition, in partition order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// The partition it was read from.
    pub partition: Partition,
    /// Its offset there.
    pub offset: Offset,
    /// Its Kafka timestamp (create or append time), the reference for `future`.
    pub timestamp: Millis,
    /// The value: one CloudEvent in structured JSON mode, or garbage.
    pub payload: Vec<u8>,
}

/// The four event types of the contract.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum EventKind {
    /// `resource.started`: gauge quantities set from `time` on.
    Started,
    /// `resource.resized`: gauge quantities replaced from `time` on.
    Resized,
    /// `resource.stopped`: all gauge quantities drop to zero.
    Stopped,
    /// `usage.recorded`: counter amounts consumed at `time`.
    Recorded,
}

impl EventKind {
    /// Parses the CloudEvents `type` attribute.
    pub fn parse(text: &str) -> Option<EventKind> {
        match text {
            "resource.started" => Some(EventKind::Started),
            "resource.resized" => Some(EventKind::Resized),
            "resource.stopped" => Some(EventKind::Stopped),
            "usage.recorded" => Some(EventKind::Recorded),
            _ => None,
        }
    }

    /// The CloudEvents `type` attribute.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Started => "resource.started",
            EventKind::Resized => "resource.resized",
            EventKind::Stopped => "resource.stopped",
            EventKind::Recorded => "usage.recorded",
        }
    }

    /// Whether this type sets gauge quantities (rather than recording counters).
    pub fn is_gauge(self) -> bool {
        !matches!(self, EventKind::Recorded)
    }
}

/// Descriptive attributes of a resource that breakdown rows carry.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Meta {
    /// `data.project_id`, empty when absent.
    pub project_id: String,
    /// `data.region`, empty when absent.
    pub region: String,
    /// `data.labels` as compact JSON with sorted keys; `{}` when absent.
    pub labels: String,
}

/// A resource: `(data.account_id, subject)`.
///
/// Ids of up to 23 bytes are held inline, longer ones shared: an event
/// decoded on one worker is rated on another, and a handle counted or
/// an allocation freed by both moved a cache line between the cores for
/// every event.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ResourceKey {
    /// The billing account.
    #[serde(deserialize_with = "owned_smol_str")]
    pub account: SmolStr,
    /// The resource id (`subject`).
    #[serde(deserialize_with = "owned_smol_str")]
    pub resource: SmolStr,
}

/// The order in which a resource's events apply: `(time, id)` with ids
/// compared byte-wise, and the source as the last tie-breaker, so that two
/// sources reusing an id still order the same way on every run.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct EventOrder {
    /// Event time.
    pub time: Millis,
    /// CloudEvents `id`. Boxed rather than a `String`: a resource keeps
    /// the ids of its open windows' events, and the capacity a `String`
    /// carries is eight bytes more for each.
    pub id: Box<str>,
    /// CloudEvents `source`: one of a few, inline when short.
    #[serde(deserialize_with = "owned_smol_str")]
    pub source: SmolStr,
}

/// Reads a string that need not outlive its encoding, as a restore decoding
/// one compressed block at a time reads it (`SmolStr`'s own `Deserialize`
/// asks to borrow it).
fn owned_smol_str<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<SmolStr, D::Error> {
    struct Owned;
    impl serde::de::Visitor<'_> for Owned {
        type Value = SmolStr;

        fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
            formatter.write_str("a string")
        }

        fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<SmolStr, E> {
            Ok(SmolStr::new(text))
        }
    }
    deserializer.deserialize_string(Owned)
}

/// The least order at a time, as a bound: every event at the time sorts
/// after it, every event before the time before it. A bound of its own
/// rather than an `EventOrder` with an empty id and source: recomputing a
/// window takes several, and need not make an id for each.
#[derive(Clone, Copy, Debug)]
pub struct FirstAt(pub Millis);

impl PartialEq<FirstAt> for EventOrder {
    fn eq(&self, _: &FirstAt) -> bool {
        false
    }
}

impl PartialOrd<FirstAt> for EventOrder {
    fn partial_cmp(&self, bound: &FirstAt) -> Option<std::cmp::Ordering> {
        Some(if self.time < bound.0 { std::cmp::Ordering::Less } else { std::cmp::Ordering::Greater })
    }
}

/// SKU quantities, sorted by SKU and unique. Shared: a fleet's resources
/// come in a few shapes, and a resource holds the gauge quantities of each
/// event of its open windows and those in force before them.
pub type Quantities = Arc<[(SkuId, Quantity)]>;

/// A well-formed, validated lifecycle event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Its place in its resource's history, and its identity `(source, id)`.
    pub order: EventOrder,
    /// Its type.
    pub kind: EventKind,
    /// The partition stage's worker that read it: with `read_nth`, what
    /// deduplication names a copy by to the usage stage (see [`ReadAt`]).
    /// Two fields rather than a struct: they fit in the room `kind`
    /// leaves, and an event stays 128 bytes.
    pub read_by: u16,
    /// How many messages that worker had read in the epoch before it.
    pub read_nth: u32,
    /// The resource it concerns.
    pub resource: ResourceKey,
    /// SKU quantities, sorted by SKU and unique; empty for `resource.stopped`.
    pub quantities: Quantities,
    /// Project, region and labels, shared with copies of this event.
    pub meta: Arc<Meta>,
}

impl Event {
    /// Event time.
    pub fn time(&self) -> Millis {
        self.order.time
    }

    /// Where the partition stage read it.
    pub fn read_at(&self) -> ReadAt {
        (self.read_by, self.read_nth)
    }
}

/// Where the partition stage read an event: the worker, and how many
/// messages it had read in the epoch before it. No two events of an epoch
/// share one; 0 and 0 until the partition stage sets it.
pub type ReadAt = (u16, u32);

/// Why an event was rejected: the contract's reasons.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Reason {
    /// Not JSON.
    MalformedJson,
    /// A field missing or of the wrong type or size.
    Schema,
    /// A `type` the contract does not define.
    UnknownType,
    /// An SKU the price list lacks, has no price for yet, or has of the other kind.
    UnknownSku,
    /// A quantity below zero.
    NegativeQuantity,
    /// A quantity with more than 9 fractional digits.
    Precision,
    /// A quantity of 10^12 or more, or a time outside 1970..2106.
    OutOfRange,
    /// A message over 1 MiB.
    TooLarge,
    /// More than `allowed_lateness` behind its partition's clock, or aimed at a final window.
    Late,
    /// More than `max_future` ahead of its Kafka timestamp.
    Future,
}

impl Reason {
    /// Every reason, in a fixed order.
    pub const ALL: [Reason; 10] = [
        Reason::MalformedJson,
        Reason::Schema,
        Reason::UnknownType,
        Reason::UnknownSku,
        Reason::NegativeQuantity,
        Reason::Precision,
        Reason::OutOfRange,
        Reason::TooLarge,
        Reason::Late,
        Reason::Future,
    ];

    /// The name stored in `rejected_events.reason`.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::MalformedJson => "malformed_json",
            Reason::Schema => "schema",
            Reason::UnknownType => "unknown_type",
            Reason::UnknownSku => "unknown_sku",
            Reason::NegativeQuantity => "negative_quantity",
            Reason::Precision => "precision",
            Reason::OutOfRange => "out_of_range",
            Reason::TooLarge => "too_large",
            Reason::Late => "late",
            Reason::Future => "future",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn an_order_is_below_the_first_at_a_time_as_below_the_least_order_then(
            time in -3i64..3, id in "[a-b]{0,2}", source in "[a-b]{0,2}", bound in -3i64..3,
        ) {
            let order = EventOrder { time, id: id.into(), source: source.into() };
            let least = EventOrder { time: bound, id: Box::default(), source: SmolStr::default() };
            prop_assert_eq!(order < FirstAt(bound), order < least);
            prop_assert_eq!(order >= FirstAt(bound), order >= least);
        }
    }
}
