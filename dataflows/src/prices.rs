//! The price list: which SKUs exist, whether each is a gauge or a counter, and
//! its unit prices over time.
//!
//! Loaded once at start and shared read-only by every worker; SKUs are then
//! referred to by a dense [`SkuId`] (their position in id order), so that all
//! workers of a cluster that load the same file agree on every id.

use std::hash::BuildHasher;
use std::path::Path;

use hashbrown::HashTable;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::time::{Millis, parse_rfc3339};

/// Whether an SKU's quantities are levels over time or amounts at an instant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SkuKind {
    /// Set by `resource.*` events; usage is the integral over time (unit-seconds),
    /// priced per unit-hour.
    Gauge,
    /// Recorded by `usage.recorded` events; usage is the sum, priced per unit.
    Counter,
}

/// Dense index of an SKU in its [`PriceList`], which numbers its SKUs in the
/// order of their ids.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SkuId(pub u16);

/// A unit price from an instant on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Price {
    /// From when this price applies.
    pub effective_from: Millis,
    /// Per unit-hour for gauges, per unit for counters.
    pub unit_price: Decimal,
}

/// One SKU of the price list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sku {
    /// The SKU's name as events spell it, e.g. `compute.vcpu`.
    pub id: String,
    /// Gauge or counter.
    pub kind: SkuKind,
    /// Unit of usage, e.g. `vcpu` or `GiB`.
    pub unit: String,
    /// ISO 4217 currency of the prices.
    pub currency: String,
    /// Prices in strictly increasing `effective_from` order.
    pub prices: Vec<Price>,
}

impl Sku {
    /// The price in effect at `time`: the last one whose `effective_from` is
    /// not after it.
    pub fn price_at(&self, time: Millis) -> Option<&Price> {
        let after = self.prices.partition_point(|p| p.effective_from <= time);
        after.checked_sub(1).map(|i| &self.prices[i])
    }
}

/// A validated price list.
#[derive(Clone, Debug)]
pub struct PriceList {
    /// The file's `version` label, if it has one.
    pub version: Option<String>,
    skus: Vec<Sku>,
    /// The SKUs by the hash of their id: every quantity of every event is
    /// looked up by name, and an ordered map compared it with a name at each
    /// level of its tree.
    by_id: HashTable<SkuId>,
    /// The TOML it was read from: a checkpoint records it (see
    /// [`PriceList::earlier`]).
    text: String,
}

/// Why a price list was refused.
#[derive(Debug, thiserror::Error)]
pub enum PriceListError {
    /// The file could not be read.
    #[error("cannot read price list {path}: {source}")]
    Read {
        /// The path tried.
        path: String,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The TOML does not have the expected shape.
    #[error("price list is not valid TOML of the expected shape: {0}")]
    Syntax(String),
    /// A value is out of place.
    #[error("price list, sku {sku:?}: {problem}")]
    Invalid {
        /// The SKU concerned (empty when the problem is not about one SKU).
        sku: String,
        /// Expected versus found.
        problem: String,
    },
    /// A checkpoint's state does not read the same under this list.
    #[error(
        "price list, sku {sku:?} of the checkpoint's price list: {problem}. A checkpoint names SKUs by their \
         place in id order and holds usage admitted at their prices: a restore needs each of its SKUs at the \
         same place, of the same kind, priced from the same time or earlier (new SKUs sort after them)"
    )]
    Renumbered {
        /// The checkpoint's SKU.
        sku: String,
        /// What differs.
        problem: String,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PriceListFile {
    version: Option<String>,
    #[serde(default)]
    sku: Vec<SkuFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SkuFile {
    id: String,
    kind: SkuKind,
    unit: String,
    currency: String,
    prices: Vec<PriceFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PriceFile {
    effective_from: String,
    unit_price: String,
}

impl PriceList {
    /// Reads and validates a price list file.
    pub fn load(path: &Path) -> Result<PriceList, PriceListError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| PriceListError::Read { path: path.display().to_string(), source })?;
        PriceList::parse(&text)
    }

    /// Parses and validates price list TOML.
    pub fn parse(text: &str) -> Result<PriceList, PriceListError> {
        let file: PriceListFile = toml::from_str(text).map_err(|e| PriceListError::Syntax(e.to_string()))?;
        let mut skus = Vec::with_capacity(file.sku.len());
        for sku in file.sku {
            skus.push(validate_sku(sku)?);
        }
        skus.sort_by(|a, b| a.id.cmp(&b.id));
        if let Some(pair) = skus.windows(2).find(|pair| pair[0].id == pair[1].id) {
            return Err(invalid(&pair[0].id, "listed twice"));
        }
        if skus.is_empty() {
            return Err(invalid("", "the list has no [[sku]]"));
        }
        if skus.len() > usize::from(u16::MAX) {
            return Err(invalid("", format!("{} SKUs, at most {}", skus.len(), u16::MAX)));
        }
        let mut by_id = HashTable::with_capacity(skus.len());
        for (i, sku) in skus.iter().enumerate() {
            by_id.insert_unique(id_hash(&sku.id), SkuId(i as u16), |&SkuId(held)| id_hash(&skus[usize::from(held)].id));
        }
        Ok(PriceList { version: file.version, skus, by_id, text: text.to_owned() })
    }

    /// The TOML the list was read from.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The list a checkpoint recorded (`text`, see [`PriceList::text`]), for
    /// a restore under this one: `None` when both rate every SKU alike, so
    /// that the rows the checkpoint's state yields are the rows written.
    /// Refused when the checkpoint's state would read differently here.
    pub fn earlier(&self, text: &str) -> Result<Option<PriceList>, PriceListError> {
        let earlier = PriceList::parse(text)?;
        for (place, sku) in earlier.skus.iter().enumerate() {
            let renumbered = |problem: String| PriceListError::Renumbered { sku: sku.id.clone(), problem };
            let Some(now) = self.skus.get(place) else {
                return Err(renumbered(format!("this list has {} SKUs, it was number {}", self.skus.len(), place + 1)));
            };
            if now.id != sku.id {
                return Err(renumbered(format!("number {} is {:?} in this list", place + 1, now.id)));
            }
            if now.kind != sku.kind {
                return Err(renumbered(format!("a {:?} in this list, a {:?} in the checkpoint's", now.kind, sku.kind)));
            }
            if now.prices[0].effective_from > sku.prices[0].effective_from {
                return Err(renumbered("priced from a later time in this list".into()));
            }
        }
        let rates_otherwise = earlier.skus.iter().zip(&self.skus).any(|(then, now)| then.prices != now.prices);
        Ok(rates_otherwise.then_some(earlier))
    }

    /// Looks an SKU up by the name events use.
    pub fn lookup(&self, id: &str) -> Option<(SkuId, &Sku)> {
        let &sku_id = self.by_id.find(id_hash(id), |&held| self.sku(held).id == id)?;
        Some((sku_id, self.sku(sku_id)))
    }

    /// The SKU behind an id handed out by this list.
    pub fn sku(&self, id: SkuId) -> &Sku {
        &self.skus[usize::from(id.0)]
    }
}

/// Made of the list's own fields; the index follows from its SKUs.
impl PartialEq for PriceList {
    fn eq(&self, other: &PriceList) -> bool {
        (&self.version, &self.skus, &self.text) == (&other.version, &other.skus, &other.text)
    }
}

impl Eq for PriceList {}

fn id_hash(id: &str) -> u64 {
    foldhash::fast::FixedState::default().hash_one(id)
}

fn invalid(sku: &str, problem: impl Into<String>) -> PriceListError {
    PriceListError::Invalid { sku: sku.to_owned(), problem: problem.into() }
}

fn validate_sku(file: SkuFile) -> Result<Sku, PriceListError> {
    let id = file.id;
    if id.is_empty() || id.len() > 128 {
        return Err(invalid(&id, "id must be 1 to 128 bytes"));
    }
    if file.unit.is_empty() {
        return Err(invalid(&id, "unit must not be empty"));
    }
    if file.currency.len() != 3 || !file.currency.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(invalid(&id, format!("currency must be a 3-letter ISO 4217 code, found {:?}", file.currency)));
    }
    if file.prices.is_empty() {
        return Err(invalid(&id, "no prices"));
    }
    let mut prices = Vec::with_capacity(file.prices.len());
    for price in file.prices {
        let effective_from = parse_rfc3339(&price.effective_from).ok_or_else(|| {
            invalid(&id, format!("effective_from must be RFC 3339 with an offset, found {:?}", price.effective_from))
        })?;
        let unit_price: Decimal = price
            .unit_price
            .parse()
            .map_err(|_| invalid(&id, format!("unit_price must be a decimal string, found {:?}", price.unit_price)))?;
        if unit_price.is_sign_negative() && !unit_price.is_zero() {
            return Err(invalid(&id, format!("unit_price must not be negative, found {unit_price}")));
        }
        if let Some(last) = prices.last().map(|p: &Price| p.effective_from)
            && effective_from <= last
        {
            return Err(invalid(
                &id,
                format!(
                    "effective_from must strictly increase, found {} after {}",
                    price.effective_from,
                    crate::time::Rfc3339(last)
                ),
            ));
        }
        prices.push(Price { effective_from, unit_price });
    }
    Ok(Sku { id, kind: file.kind, unit: file.unit, currency: file.currency, prices })
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIST: &str = r#"
        version = "2026-11"
        [[sku]]
        id = "compute.vcpu"
        kind = "gauge"
        unit = "vcpu"
        currency = "EUR"
        prices = [
          { effective_from = "2026-01-01T00:00:00Z", unit_price = "0.0125" },
          { effective_from = "2026-12-01T00:00:00Z", unit_price = "0.0110" },
        ]
        [[sku]]
        id = "network.egress_gib"
        kind = "counter"
        unit = "GiB"
        currency = "EUR"
        prices = [{ effective_from = "2026-01-01T00:00:00Z", unit_price = "0.01" }]
    "#;

    #[test]
    fn finds_the_price_in_effect() {
        let list = PriceList::parse(LIST).unwrap();
        let (_, vcpu) = list.lookup("compute.vcpu").unwrap();
        let dec1 = parse_rfc3339("2026-12-01T00:00:00Z").unwrap();
        assert_eq!(vcpu.price_at(dec1).unwrap().unit_price.to_string(), "0.0110");
        assert_eq!(vcpu.price_at(dec1 - 1).unwrap().unit_price.to_string(), "0.0125");
        assert!(vcpu.price_at(parse_rfc3339("2025-12-31T23:59:59Z").unwrap()).is_none());
        assert_eq!(list.lookup("network.egress_gib").unwrap().1.kind, SkuKind::Counter);
        assert!(list.lookup("gpu").is_none());
    }

    proptest::proptest! {
        #[test]
        fn an_sku_is_found_by_its_id_and_nothing_else_is(
            ids in proptest::collection::btree_set("[a-c.]{1,4}", 1..12), asked in "[a-c.]{0,5}",
        ) {
            let list: String = ids.iter().map(|id| format!(
                "[[sku]]\nid = {id:?}\nkind = \"counter\"\nunit = \"u\"\ncurrency = \"EUR\"\n\
                 prices = [{{ effective_from = \"2026-01-01T00:00:00Z\", unit_price = \"1\" }}]\n"
            )).collect();
            let list = PriceList::parse(&list).unwrap();
            for (place, id) in ids.iter().enumerate() {
                let (sku_id, sku) = list.lookup(id).unwrap();
                proptest::prop_assert_eq!((usize::from(sku_id.0), &sku.id), (place, id));
            }
            proptest::prop_assert_eq!(list.lookup(&asked).is_some(), ids.contains(&asked));
        }
    }

    #[test]
    fn a_checkpoints_list_is_kept_aside_only_when_it_rates_otherwise() {
        let list = PriceList::parse(LIST).unwrap();
        assert_eq!(list.earlier(LIST).unwrap(), None);
        let relabelled = LIST.replace("version = \"2026-11\"", "version = \"2026-12\"\n# the same prices");
        assert_eq!(list.earlier(&relabelled).unwrap(), None, "a label or a comment changes no price");
        let repriced = LIST.replace("0.0125", "0.02");
        assert_eq!(list.earlier(&repriced).unwrap(), Some(PriceList::parse(&repriced).unwrap()));
        let added = format!(
            "{LIST}\n[[sku]]\nid = \"storage.snapshot_gib\"\nkind = \"gauge\"\nunit = \"GiB\"\ncurrency = \"EUR\"\n\
             prices = [{{ effective_from = \"2026-01-01T00:00:00Z\", unit_price = \"0.001\" }}]"
        );
        let grown = PriceList::parse(&added).unwrap();
        assert_eq!(grown.earlier(LIST).unwrap(), None, "a new SKU sorting after the others");
        let shrunk = list.earlier(&added).unwrap_err().to_string();
        assert!(shrunk.contains("\"storage.snapshot_gib\"") && shrunk.contains("has 2 SKUs"), "{shrunk}");
    }

    #[test]
    fn a_checkpoints_list_whose_skus_read_otherwise_is_refused() {
        let list = PriceList::parse(LIST).unwrap();
        let renamed = list.earlier(&LIST.replace("network.egress_gib", "network.egress")).unwrap_err().to_string();
        assert!(renamed.contains("number 2 is \"network.egress_gib\""), "{renamed}");
        let retyped = list.earlier(&LIST.replace("\"counter\"", "\"gauge\"")).unwrap_err().to_string();
        assert!(retyped.contains("a Counter in this list, a Gauge"), "{retyped}");
        let egress_from_february = LIST.replace(
            "\"2026-01-01T00:00:00Z\", unit_price = \"0.01\"",
            "\"2026-02-01T00:00:00Z\", unit_price = \"0.01\"",
        );
        let later = PriceList::parse(&egress_from_february).unwrap();
        let priced_later = later.earlier(LIST).unwrap_err().to_string();
        assert!(priced_later.contains("priced from a later time"), "{priced_later}");
    }

    fn refusal(text: &str) -> String {
        PriceList::parse(text).unwrap_err().to_string()
    }

    #[test]
    fn refuses_bad_lists_clearly() {
        let kind = refusal(&LIST.replace("\"counter\"", "\"meter\""));
        assert!(kind.contains("meter"), "{kind}");
        let twice = refusal(&LIST.replace("network.egress_gib", "compute.vcpu"));
        assert!(twice.contains("listed twice"), "{twice}");
        let unsorted = refusal(&LIST.replace("2026-12-01", "2025-12-01"));
        assert!(unsorted.contains("strictly increase"), "{unsorted}");
        let duplicate = refusal(&LIST.replace("2026-12-01", "2026-01-01"));
        assert!(duplicate.contains("strictly increase"), "{duplicate}");
        let decimal = refusal(&LIST.replace("0.0125", "zero"));
        assert!(decimal.contains("decimal string"), "{decimal}");
        let negative = refusal(&LIST.replace("0.0125", "-0.01"));
        assert!(negative.contains("negative"), "{negative}");
        let currency = refusal(&LIST.replace("\"EUR\"", "\"euro\""));
        assert!(currency.contains("ISO 4217"), "{currency}");
        assert!(refusal("").contains("no [[sku]]"));
    }
}
