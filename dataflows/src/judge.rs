//! Per-partition judgement: decode, `future`, the partition clock and `late`.
//!
//! Everything here depends only on the messages of one partition in offset
//! order, which Kafka keeps, so it is decided the same way on every run. It
//! runs on the worker that reads the partition, before any exchange.

use serde::{Deserialize, Serialize};

use crate::decode::{Invalid, decode};
use crate::event::{Event, Message, Offset, Partition, ReadAt, Reason};
use crate::identity::{Fingerprint, IdentityHash};
use crate::intern::Interner;
use crate::prices::PriceList;
use crate::routing::Routing;
use crate::rows::Rejection;
use crate::settings::Settings;
use crate::time::{Millis, Rfc3339};

/// What the source tells the dataflow, in partition order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SourceItem {
    /// The next message of a partition.
    Message(Message),
    /// A partition this worker reads, and what the source knows of it.
    Status {
        /// The partition.
        partition: Partition,
        /// Whether it is being read, idle, or read to its end.
        state: PartitionState,
    },
}

/// What the source knows of a partition, for the watermark.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum PartitionState {
    /// Being read: it holds the watermark back, even before its first event.
    #[default]
    Active,
    /// No message for `idle_timeout` in a live run: it stops holding the
    /// watermark back until its next message.
    Idle,
    /// Read to the end offset a drain run found at start. Its clock still
    /// holds the watermark (so that a drain's result does not depend on which
    /// partition finished first); without a clock it no longer holds it back.
    Exhausted,
}

/// The state of one partition: its clock and whether it is idle.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionClock {
    /// Greatest `time` among its well-formed, non-`future` events (duplicates
    /// included); `None` before the first.
    pub clock: Option<Millis>,
    /// What the source knows of it.
    pub state: PartitionState,
}

/// A partition's clock as reported to every worker after an epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClockReport {
    /// The partition.
    pub partition: Partition,
    /// Its clock.
    pub clock: PartitionClock,
}

/// A well-formed event's claim to be counted, on its way to deduplication.
/// An on-time event goes to the usage stage at once, by its own route, and
/// its claim to deduplication by its identity: the event, 128 bytes, is
/// exchanged once, and the claim decides whether it counts (see
/// [`crate::dataflow::dedup`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    /// The event's identity.
    pub identity: Fingerprint,
    /// Its event time.
    pub time: Millis,
    /// Where it was read.
    pub partition: Partition,
    /// Its offset there.
    pub offset: Offset,
    /// On time, and where its event went; or late.
    pub arrival: Arrival,
}

/// How a claim's event arrived.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Arrival {
    /// An on-time event, sent to the usage stage by this route (that of its
    /// resource).
    OnTime {
        /// The route of the event's resource.
        route: u64,
        /// Where the partition stage read it.
        read_at: ReadAt,
    },
    /// An event more than `allowed_lateness` behind its partition's clock:
    /// kept for `rejected_events` in case it is not a duplicate.
    Late(Box<LateCopy>),
}

/// A late message and why it is late, carried until deduplication decides.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LateCopy {
    /// The message as read.
    pub message: Message,
    /// The rejection detail, should it be rejected.
    pub detail: String,
}

/// The verdict on one message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Rejected here.
    Rejected(Rejection),
    /// On time: its event goes to usage, its claim to deduplication, which
    /// decides whether the event counts.
    OnTime(Event, Claim),
    /// Late: its claim goes to deduplication, which decides whether it is a
    /// duplicate or rejected.
    Late(Claim),
}

/// A message with its event decoded and identified, or why it cannot be.
/// That needs the message alone, not its partition's clock, so it is done as
/// messages arrive, while their epoch is still open, rather than when the
/// epoch's turn comes and its events wait for it.
#[derive(Debug)]
pub struct Decoded {
    /// The message as read.
    pub message: Message,
    event: Result<(Event, Fingerprint), Invalid>,
}

impl Decoded {
    /// Decodes `message`, fingerprinting its identity with `identities`.
    pub fn of(message: Message, (prices, identities): (&PriceList, IdentityHash), interner: &mut Interner) -> Decoded {
        let event = decode(&message.payload, prices, interner).map(|event| {
            let identity = identities.fingerprint(&event.order.source, &event.order.id);
            (event, identity)
        });
        Decoded { message, event }
    }
}

impl PartitionClock {
    /// Judges the partition's next message and advances the clock.
    ///
    /// A late event still claims: a repeat of an event already counted
    /// is a duplicate however late it comes, within the dedup horizon. Beyond
    /// the horizon no copy can be remembered, so it is rejected here.
    ///
    /// `final_before` is where finality stood after the previous epoch. An event
    /// on time for its own partition can still be aimed at a final window when
    /// its partition was idle while the others moved on (a live run only): that
    /// is late too, since final rows never change.
    ///
    /// An on-time event is marked as read at `read_at`, and its claim names
    /// the route of its resource under `routing`.
    pub fn judge(
        &mut self,
        decoded: Decoded,
        (read_at, routing): (ReadAt, Routing),
        settings: &Settings,
        final_before: Option<Millis>,
    ) -> Verdict {
        let Decoded { message, event } = decoded;
        let (mut event, identity) = match event {
            Ok(event) => event,
            Err(invalid) => {
                return Verdict::Rejected(Rejection::of(message, invalid.reason, invalid.detail));
            }
        };
        let time = event.time();
        if time > message.timestamp.saturating_add(settings.max_future) {
            let detail = format!(
                "time {} is more than max_future ahead of the message timestamp {}",
                Rfc3339(time),
                Rfc3339(message.timestamp)
            );
            return Verdict::Rejected(Rejection::of(message, Reason::Future, detail));
        }
        let behind = self.clock.map_or(0, |clock| clock.saturating_sub(time));
        self.clock = Some(self.clock.map_or(time, |clock| clock.max(time)));
        if behind > settings.dedup_horizon {
            let detail = behind_clock(time, self.clock, "the dedup horizon");
            return Verdict::Rejected(Rejection::of(message, Reason::Late, detail));
        }
        let late = behind > settings.allowed_lateness;
        if !late && final_before.is_some_and(|f| time < f) {
            let detail = format!("time {} is in a window that is already final", Rfc3339(time));
            return Verdict::Rejected(Rejection::of(message, Reason::Late, detail));
        }
        let (partition, offset) = (message.partition, message.offset);
        if late {
            let detail = behind_clock(time, self.clock, "allowed_lateness");
            let arrival = Arrival::Late(Box::new(LateCopy { message, detail }));
            return Verdict::Late(Claim { identity, time, partition, offset, arrival });
        }
        (event.read_by, event.read_nth) = read_at;
        let arrival = Arrival::OnTime { route: routing.route(&event.resource), read_at };
        Verdict::OnTime(event, Claim { identity, time, partition, offset, arrival })
    }
}

fn behind_clock(time: Millis, clock: Option<Millis>, bound: &str) -> String {
    let clock = clock.map_or_else(|| "none".to_owned(), |c| Rfc3339(c).to_string());
    format!("time {} is more than {bound} behind its partition's clock {clock}", Rfc3339(time))
}

/// The watermark after `reports`: the minimum clock of the partitions that
/// hold it back, never moving backwards from `previous`. An active partition
/// without a clock yet keeps it where it was.
pub fn watermark<'a>(clocks: impl IntoIterator<Item = &'a PartitionClock>, previous: Option<Millis>) -> Option<Millis> {
    let mut minimum: Option<Millis> = None;
    for partition in clocks {
        match (partition.state, partition.clock) {
            (PartitionState::Idle, _) | (PartitionState::Exhausted, None) => {}
            (PartitionState::Active, None) => return previous,
            (_, Some(c)) => minimum = Some(minimum.map_or(c, |m| m.min(c))),
        }
    }
    match (minimum, previous) {
        (Some(m), Some(p)) => Some(m.max(p)),
        (m, p) => m.or(p),
    }
}
