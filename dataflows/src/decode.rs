//! Decode and validate: message bytes to a typed [`Event`], or the reason it is
//! rejected.
//!
//! This is a pure function of the bytes and the price list, so every worker and
//! every replay judges a message the same way. Arbitrary bytes never panic.
//! The rules are checked in a fixed order (size, JSON, envelope, type, time,
//! subject, data, quantities, labels) and the first broken one names the reason.
//! Events of the usual shape are read by a fast path (see [`scan`]); the
//! general parser reads everything else.

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;

use serde::Deserialize;
use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;
use smallvec::SmallVec;
use smol_str::SmolStr;

use crate::event::{Event, EventKind, EventOrder, Reason, ResourceKey};
use crate::fixed::{Quantity, QuantityError};
use crate::intern::Interner;
use crate::prices::{PriceList, SkuId, SkuKind};
use crate::time::{self, Rfc3339};

/// Messages larger than this are rejected as `too_large`.
pub const MAX_MESSAGE_BYTES: usize = 1 << 20;
/// Longest `subject` accepted, in bytes.
pub const MAX_SUBJECT_BYTES: usize = 256;
/// Longest `data.account_id` accepted, in bytes.
pub const MAX_ACCOUNT_BYTES: usize = 128;

/// A message that is not an acceptable event, with the reason and a detail
/// saying what was expected and what was found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Invalid {
    /// The contract's reason.
    pub reason: Reason,
    /// For the operator reading `rejected_events`.
    pub detail: String,
}

fn invalid(reason: Reason, detail: impl Into<String>) -> Invalid {
    Invalid { reason, detail: detail.into() }
}

#[derive(Default, Deserialize)]
struct RawEvent<'a> {
    #[serde(borrow)]
    specversion: Option<Text<'a>>,
    #[serde(borrow)]
    id: Option<Text<'a>>,
    #[serde(borrow)]
    source: Option<Text<'a>>,
    #[serde(borrow, rename = "type")]
    kind: Option<Text<'a>>,
    #[serde(borrow)]
    time: Option<Text<'a>>,
    #[serde(borrow)]
    subject: Option<Text<'a>>,
    #[serde(borrow)]
    data: Option<RawData<'a>>,
}

#[derive(Default, Deserialize)]
struct RawData<'a> {
    #[serde(borrow)]
    account_id: Option<Text<'a>>,
    #[serde(borrow)]
    quantities: Option<Quantities<'a>>,
    #[serde(borrow)]
    project_id: Option<Text<'a>>,
    #[serde(borrow)]
    region: Option<Text<'a>>,
    #[serde(borrow)]
    labels: Option<Pairs<'a>>,
    /// The labels' text in the message, when the fast path read them (empty
    /// when there are none): an object of plain strings, no key repeated,
    /// that [`scan::labels`] reads again if they must be written.
    #[serde(skip)]
    labels_text: Option<&'a str>,
}

/// `data.quantities`: read as pairs only when the type needs them (a
/// `resource.stopped` ignores whatever it carries), unless the fast path
/// has read them already.
enum Quantities<'a> {
    Raw(&'a RawValue),
    /// As the fast path read them: plain strings, no name repeated, on the
    /// stack when there are a few, as an event's nearly always are.
    Scanned(SmallVec<[(&'a str, &'a str); 4]>),
}

impl<'de: 'a, 'a> Deserialize<'de> for Quantities<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        <&'a RawValue>::deserialize(deserializer).map(Quantities::Raw)
    }
}

/// A JSON object of strings, in document order, refusing repeated keys (a map
/// type would silently keep the last one).
struct Pairs<'a>(Vec<(Text<'a>, Text<'a>)>);

impl<'de: 'a, 'a> Deserialize<'de> for Pairs<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct PairsVisitor<'a>(PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for PairsVisitor<'a> {
            type Value = Pairs<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object of string values")
            }
            fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Pairs<'a>, M::Error> {
                let mut pairs: Vec<(Text<'a>, Text<'a>)> = Vec::with_capacity(map.size_hint().unwrap_or(4));
                while let Some((key, value)) = map.next_entry::<Text<'a>, Text<'a>>()? {
                    if pairs.iter().any(|(k, _)| k.0 == key.0) {
                        return Err(serde::de::Error::custom(format!("key {:?} repeated", key.0)));
                    }
                    pairs.push((key, value));
                }
                Ok(Pairs(pairs))
            }
        }
        deserializer.deserialize_map(PairsVisitor(PhantomData))
    }
}

/// A JSON string borrowed from the message unless it has escapes: serde's
/// own `Cow<str>` copies unless it is a field's whole type (an
/// `Option<Cow<str>>` field copies, `borrow` or not).
struct Text<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TextVisitor<'a>(PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for TextVisitor<'a> {
            type Value = Text<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: serde::de::Error>(self, text: &'de str) -> Result<Text<'a>, E> {
                Ok(Text(Cow::Borrowed(text)))
            }
            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Text<'a>, E> {
                Ok(Text(Cow::Owned(text.to_owned())))
            }
            fn visit_string<E: serde::de::Error>(self, text: String) -> Result<Text<'a>, E> {
                Ok(Text(Cow::Owned(text)))
            }
        }
        deserializer.deserialize_str(TextVisitor(PhantomData))
    }
}

/// Writes labels as compact JSON with sorted keys.
fn labels_json(mut pairs: Vec<(Text<'_>, Text<'_>)>, json: &mut Vec<u8>) {
    struct Sorted<'p, 'a>(&'p [(Text<'a>, Text<'a>)]);
    impl serde::Serialize for Sorted<'_, '_> {
        fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            serializer.collect_map(self.0.iter().map(|(k, v)| (&*k.0, &*v.0)))
        }
    }
    pairs.sort_unstable_by(|(a, _), (b, _)| a.0.cmp(&b.0));
    serde_json::to_writer(json, &Sorted(&pairs)).expect("a map of strings always serializes");
}

/// Decodes and validates one message value against the price list; the
/// event shares the values `interner` holds.
pub fn decode(payload: &[u8], prices: &PriceList, interner: &mut Interner) -> Result<Event, Invalid> {
    if payload.len() > MAX_MESSAGE_BYTES {
        return Err(invalid(
            Reason::TooLarge,
            format!("message is {} bytes, at most {MAX_MESSAGE_BYTES}", payload.len()),
        ));
    }
    // Checked once as a whole: parsing from bytes validates every string
    // on its own, and invalid UTF-8 anywhere is no JSON. Checked with SIMD,
    // and again by the standard library only to say where it is broken.
    let text = simdutf8::basic::from_utf8(payload).or_else(|_| {
        std::str::from_utf8(payload)
            .map_err(|e| invalid(Reason::MalformedJson, format!("the message is not UTF-8: {e}")))
    })?;
    // Read in place and validated by reference: an event's fields are 400
    // bytes before validation, and moving them between the two steps was
    // a memcpy or two of that size per event.
    let mut raw = RawEvent::default();
    if scan::event(text, &mut raw).is_none() {
        raw = parse(text)?;
    }
    validate(&mut raw, prices, interner)
}

/// The general parser, for any JSON: it decides what the fast path leaves.
fn parse(text: &str) -> Result<RawEvent<'_>, Invalid> {
    serde_json::from_str(text).map_err(|e| {
        if e.is_data() { invalid(Reason::Schema, e.to_string()) } else { invalid(Reason::MalformedJson, e.to_string()) }
    })
}

/// Checks the fields of an event in the contract's order and builds it.
fn validate(raw: &mut RawEvent<'_>, prices: &PriceList, interner: &mut Interner) -> Result<Event, Invalid> {
    let specversion = required(raw.specversion.take(), "specversion")?;
    if specversion != "1.0" {
        return Err(invalid(Reason::Schema, format!("specversion must be \"1.0\", found {specversion:?}")));
    }
    let id = non_empty(raw.id.take(), "id")?;
    let source = non_empty(raw.source.take(), "source")?;
    let kind_text = required(raw.kind.take(), "type")?;
    let kind = EventKind::parse(&kind_text).ok_or_else(|| {
        invalid(Reason::UnknownType, format!("type {kind_text:?} is not one of the four event types"))
    })?;
    let time_text = required(raw.time.take(), "time")?;
    let time = time::parse_rfc3339(&time_text)
        .ok_or_else(|| invalid(Reason::Schema, format!("time must be RFC 3339 with an offset, found {time_text:?}")))?;
    if !(time::EARLIEST..time::LATEST).contains(&time) {
        return Err(invalid(Reason::OutOfRange, format!("time {time_text} is outside 1970-01-01 .. 2106-01-01")));
    }
    let subject = required(raw.subject.take(), "subject")?;
    check_length(&subject, "subject", MAX_SUBJECT_BYTES)?;
    let data = raw.data.as_mut().ok_or_else(|| invalid(Reason::Schema, "data: missing"))?;
    let account = required(data.account_id.take(), "data.account_id")?;
    check_length(&account, "data.account_id", MAX_ACCOUNT_BYTES)?;

    let quantities = match (kind, &data.quantities) {
        (EventKind::Stopped, _) => SmallVec::new(),
        (_, None) => {
            return Err(invalid(Reason::Schema, format!("data.quantities: missing, required for {}", kind.as_str())));
        }
        (_, Some(Quantities::Scanned(pairs))) => quantities(pairs.iter().copied(), kind, time, prices)?,
        (_, Some(Quantities::Raw(raw))) => {
            let Pairs(pairs) = serde_json::from_str(raw.get())
                .map_err(|e| invalid(Reason::Schema, format!("data.quantities: {e}")))?;
            quantities(pairs.iter().map(|(name, text)| (&*name.0, &*text.0)), kind, time, prices)?
        }
    };
    // A resource keeps its gauge quantities; counters are summed at once.
    let quantities = if kind.is_gauge() { interner.quantities(&quantities) } else { Arc::from(&quantities[..]) };
    let project_id = data.project_id.take().map_or(Cow::Borrowed(""), |Text(text)| text);
    let region = data.region.take().map_or(Cow::Borrowed(""), |Text(text)| text);
    let meta =
        interner.meta(&project_id, &region, data.labels_text, |json| match (data.labels.take(), data.labels_text) {
            (Some(Pairs(pairs)), _) => labels_json(pairs, json),
            (None, Some(text)) if !text.is_empty() => labels_json(scan::labels(text), json),
            (None, _) => json.extend_from_slice(b"{}"),
        });
    Ok(Event {
        order: EventOrder { time, id: id.into_owned().into_boxed_str(), source: interner.source(&source) },
        kind,
        read_by: 0,
        read_nth: 0,
        resource: ResourceKey { account: interner.account(&account), resource: SmolStr::new(subject) },
        quantities,
        meta,
    })
}

// This and the two checks below are inlined: called for nearly every field
// of every event, each result (a text, or an error with its detail) went
// through memory.
#[inline(always)]
fn required<'a>(value: Option<Text<'a>>, field: &str) -> Result<Cow<'a, str>, Invalid> {
    value.map(|Text(text)| text).ok_or_else(|| invalid(Reason::Schema, format!("{field}: missing")))
}

#[inline(always)]
fn non_empty<'a>(value: Option<Text<'a>>, field: &str) -> Result<Cow<'a, str>, Invalid> {
    let value = required(value, field)?;
    if value.is_empty() {
        return Err(invalid(Reason::Schema, format!("{field}: must not be empty")));
    }
    Ok(value)
}

#[inline(always)]
fn check_length(value: &str, field: &str, max: usize) -> Result<(), Invalid> {
    if value.is_empty() || value.len() > max {
        return Err(invalid(Reason::Schema, format!("{field}: must be 1 to {max} bytes, found {}", value.len())));
    }
    Ok(())
}

/// An event's quantities as validated, sorted by SKU: on the stack until
/// they are shared or summed.
type Validated = SmallVec<[(SkuId, Quantity); 4]>;

fn quantities<'a>(
    pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
    kind: EventKind,
    time: time::Millis,
    prices: &PriceList,
) -> Result<Validated, Invalid> {
    let expected = if kind.is_gauge() { SkuKind::Gauge } else { SkuKind::Counter };
    let window = time::window_start(time);
    let mut quantities = Validated::new();
    for (name, text) in pairs {
        let (sku_id, sku) = prices
            .lookup(name)
            .ok_or_else(|| invalid(Reason::UnknownSku, format!("sku {name:?} is not in the price list")))?;
        if sku.kind != expected {
            return Err(invalid(
                Reason::UnknownSku,
                format!("sku {name:?} is a {:?} but {} carries {:?} SKUs", sku.kind, kind.as_str(), expected),
            ));
        }
        if sku.price_at(window).is_none() {
            return Err(invalid(
                Reason::UnknownSku,
                format!("sku {name:?} has no price in effect at window {}", Rfc3339(window)),
            ));
        }
        let quantity = Quantity::parse(text).map_err(|e| {
            let (reason, rule) = match e {
                QuantityError::Syntax => (Reason::Schema, "a decimal string"),
                QuantityError::Negative => (Reason::NegativeQuantity, "not negative"),
                QuantityError::Precision => (Reason::Precision, "at most 9 fractional digits"),
                QuantityError::OutOfRange => (Reason::OutOfRange, "below 10^12"),
            };
            invalid(reason, format!("data.quantities.{name} must be {rule}, found {text:?}"))
        })?;
        quantities.push((sku_id, quantity));
    }
    quantities.sort_unstable_by_key(|&(sku, _)| sku);
    Ok(quantities)
}

mod quotes;
mod scan;
#[cfg(test)]
mod tests;
