//! Values that many events repeat, held once per worker: sources, account
//! ids, metadata (project, region, labels) and gauge quantities.
//!
//! An account has many resources and a resource many events, nearly all with
//! the metadata of the one before. Decoding each into fresh strings cost
//! five allocations per event, freed again on the worker that owns the
//! resource, and a byte-wise comparison there to find the resource's copy.
//! Interned, an event carries shared handles: the comparisons become pointer
//! comparisons, and resources of one account and project share one copy.
//!
//! Interning never changes a value, only whether equal values share memory,
//! so nothing downstream depends on it. The tables are bounded: when one
//! fills, values no one else holds any more are let go, and if most are
//! still held, the table starts afresh.

use std::hash::BuildHasher;
use std::sync::Arc;

use hashbrown::HashTable;

use crate::event::{Meta, Quantities};
use crate::fixed::Quantity;
use crate::prices::SkuId;

/// Distinct values a table holds before it lets go of some.
const CAPACITY: usize = 1 << 16;

/// One worker's interned values.
#[derive(Default)]
pub struct Interner {
    sources: Table<str>,
    accounts: Table<str>,
    metas: Table<Meta>,
    shapes: Table<[(SkuId, Quantity)]>,
    /// Room for labels as JSON, reused from event to event.
    labels: Vec<u8>,
}

impl Interner {
    /// The shared copy of `source`: a cloud has a few dozen, and an event
    /// carried its own copy from the partition stage to the resource.
    pub fn source(&mut self, source: &str) -> Arc<str> {
        self.sources.get(source, |held| held == source, || Arc::from(source))
    }

    /// The shared copy of `account`.
    pub fn account(&mut self, account: &str) -> Arc<str> {
        self.accounts.get(account, |held| held == account, || Arc::from(account))
    }

    /// The shared copy of gauge `quantities`: held for every event of a
    /// resource's open windows, they were a hundred bytes each, and a
    /// fleet has few shapes.
    pub fn quantities(&mut self, quantities: &[(SkuId, Quantity)]) -> Quantities {
        self.shapes.get(quantities, |held| held == quantities, || Arc::from(quantities))
    }

    /// The shared copy of the metadata made of these fields, the labels as
    /// the JSON that `write_labels` writes.
    pub fn meta(&mut self, project_id: &str, region: &str, write_labels: impl FnOnce(&mut Vec<u8>)) -> Arc<Meta> {
        let mut labels = std::mem::take(&mut self.labels);
        labels.clear();
        write_labels(&mut labels);
        let text = std::str::from_utf8(&labels).expect("labels are written as JSON, which is UTF-8");
        let key = (project_id, region, text);
        let meta = self.metas.get(
            key,
            |held| (&*held.project_id, &*held.region, &*held.labels) == key,
            || {
                let (project_id, region, labels) = (project_id.to_owned(), region.to_owned(), text.to_owned());
                Arc::new(Meta { project_id, region, labels })
            },
        );
        self.labels = labels;
        meta
    }
}

/// Shared values by the hash of what they are made of.
struct Table<T: ?Sized> {
    values: HashTable<(u64, Arc<T>)>,
    hasher: foldhash::fast::RandomState,
}

impl<T: ?Sized> Default for Table<T> {
    fn default() -> Self {
        Table { values: HashTable::new(), hasher: foldhash::fast::RandomState::default() }
    }
}

impl<T: ?Sized> Table<T> {
    /// The held value equal to `key`, or a new one made by `make`.
    fn get<K: std::hash::Hash>(&mut self, key: K, equal: impl Fn(&T) -> bool, make: impl FnOnce() -> Arc<T>) -> Arc<T> {
        let hash = self.hasher.hash_one(key);
        if let Some((_, held)) = self.values.find(hash, |(h, held)| *h == hash && equal(held)) {
            return Arc::clone(held);
        }
        if self.values.len() >= CAPACITY {
            self.make_room();
        }
        let value = make();
        self.values.insert_unique(hash, (hash, Arc::clone(&value)), |(h, _)| *h);
        value
    }

    /// Lets go of the values only the table holds; starts afresh when most
    /// are still held elsewhere, so that room is made at most once per
    /// `CAPACITY / 2` new values.
    fn make_room(&mut self) {
        self.values.retain(|(_, held)| Arc::strong_count(held) > 1);
        if self.values.len() > CAPACITY / 2 {
            self.values.clear();
        }
        self.values.shrink_to_fit(|(h, _)| *h);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_values_share_one_copy() {
        let mut interner = Interner::default();
        let a = interner.account("acc-1");
        assert!(Arc::ptr_eq(&a, &interner.account("acc-1")));
        assert!(!Arc::ptr_eq(&a, &interner.account("acc-2")));
        let labels = |json: &mut Vec<u8>| json.extend_from_slice(br#"{"team":"a"}"#);
        let meta = interner.meta("prj", "eu", labels);
        assert!(Arc::ptr_eq(&meta, &interner.meta("prj", "eu", labels)));
        assert_eq!(*meta, Meta { project_id: "prj".into(), region: "eu".into(), labels: r#"{"team":"a"}"#.into() });
        let one = [(SkuId(0), Quantity::from_nanos(1).unwrap())];
        let quantities = interner.quantities(&one);
        assert!(Arc::ptr_eq(&quantities, &interner.quantities(&one)));
        assert!(!Arc::ptr_eq(&quantities, &interner.quantities(&[(SkuId(1), Quantity::from_nanos(1).unwrap())])));
        // Fields are told apart, not run together.
        let moved = interner.meta("pr", "jeu", labels);
        assert_eq!(moved.project_id, "pr");
        assert!(!Arc::ptr_eq(&meta, &moved));
    }

    #[test]
    fn a_full_table_lets_go_of_values_no_one_holds() {
        let mut interner = Interner::default();
        let kept: Vec<Arc<str>> = (0..CAPACITY / 4).map(|i| interner.account(&format!("kept-{i}"))).collect();
        for i in 0..CAPACITY {
            interner.account(&format!("passing-{i}"));
        }
        assert!(interner.accounts.values.len() <= CAPACITY, "the table stays bounded");
        assert!(Arc::ptr_eq(&kept[7], &interner.account("kept-7")), "values still held stay shared");
        assert_eq!(&*interner.account("passing-3"), "passing-3");
    }

    #[test]
    fn a_table_of_values_all_still_held_starts_afresh() {
        let mut interner = Interner::default();
        let held: Vec<Arc<str>> = (0..CAPACITY).map(|i| interner.account(&format!("acc-{i}"))).collect();
        let newest = interner.account("one-more");
        assert_eq!(interner.accounts.values.len(), 1, "started afresh with the new value");
        assert_eq!(&*interner.account("acc-5"), &*held[5], "an equal value, now another copy");
        assert!(Arc::ptr_eq(&newest, &interner.account("one-more")));
    }
}
