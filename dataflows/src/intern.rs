//! Values that many events repeat, held once per worker: sources and account
//! ids too long to be held inline, metadata (project, region, labels) and
//! gauge quantities.
//!
//! An account has many resources and a resource many events, nearly all with
//! the metadata of the one before. Decoding each into fresh strings cost
//! five allocations per event, freed again on the worker that owns the
//! resource, and a byte-wise comparison there to find the resource's copy.
//! Interned, an event carries shared handles: the comparisons become pointer
//! comparisons, and resources of one account and project share one copy.
//! Ids are held inline where they fit instead: a handle that the worker
//! decoding an event counts up and the worker owning its resource counts
//! down moved the counter's cache line between the two for every event.
//!
//! Interning never changes a value, only whether equal values share memory,
//! so nothing downstream depends on it. The tables are bounded: when one
//! fills, values no one else holds any more are let go, and if most are
//! still held, the table starts afresh.

use std::hash::BuildHasher;
use std::sync::Arc;

use hashbrown::HashTable;
use hashbrown::hash_table::Entry;
use smol_str::SmolStr;

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
    /// Metadata by its fields as the message wrote them, labels unsorted:
    /// the same text always makes the same metadata, so most events are
    /// matched without their labels being sorted and written again.
    metas_as_written: Table<AsWritten>,
    shapes: Table<[(SkuId, Quantity)]>,
    /// Room for labels as JSON, reused from event to event.
    labels: Vec<u8>,
}

impl Interner {
    /// `source` inline, or its shared copy when it is too long: a cloud has
    /// a few dozen, and an event carried its own copy from the partition
    /// stage to the resource.
    pub fn source(&mut self, source: &str) -> SmolStr {
        inline_or_shared(&mut self.sources, source)
    }

    /// `account` inline, or its shared copy when it is too long.
    pub fn account(&mut self, account: &str) -> SmolStr {
        inline_or_shared(&mut self.accounts, account)
    }

    /// The shared copy of gauge `quantities`: held for every event of a
    /// resource's open windows, they were a hundred bytes each, and a
    /// fleet has few shapes.
    pub fn quantities(&mut self, quantities: &[(SkuId, Quantity)]) -> Quantities {
        Arc::clone(self.shapes.get(quantities, |held| held == quantities, || Arc::from(quantities)))
    }

    /// The shared copy of the metadata made of these fields, the labels as
    /// the JSON that `write_labels` writes. `labels_as_written`, the labels'
    /// text in the message, if known, must be what `write_labels` reads.
    pub fn meta(
        &mut self,
        project_id: &str,
        region: &str,
        labels_as_written: Option<&str>,
        write_labels: impl FnOnce(&mut Vec<u8>),
    ) -> Arc<Meta> {
        let Some(labels_text) = labels_as_written else {
            return meta_of_labels(&mut self.metas, &mut self.labels, project_id, region, write_labels);
        };
        let key = (project_id, region, labels_text);
        let (metas, labels) = (&mut self.metas, &mut self.labels);
        let written = self.metas_as_written.get(
            key,
            |held| (&*held.project_id, &*held.region, &*held.labels) == key,
            || {
                let meta = meta_of_labels(metas, labels, project_id, region, write_labels);
                let (project_id, region, labels) = (project_id.into(), region.into(), labels_text.into());
                Arc::new(AsWritten { project_id, region, labels, meta })
            },
        );
        Arc::clone(&written.meta)
    }
}

/// The longest text a `SmolStr` holds inline.
const INLINE: usize = 23;

/// `text` inline when it fits, with no handle to count; else the copy
/// `table` shares.
fn inline_or_shared(table: &mut Table<str>, text: &str) -> SmolStr {
    if text.len() <= INLINE {
        return SmolStr::new_inline(text);
    }
    SmolStr::from(Arc::clone(table.get(text, |held| held == text, || Arc::from(text))))
}

/// Metadata's fields as a message wrote them, and the metadata they make.
struct AsWritten {
    project_id: Box<str>,
    region: Box<str>,
    labels: Box<str>,
    meta: Arc<Meta>,
}

/// The shared copy in `metas` of the metadata made of these fields, the
/// labels written into `room`.
fn meta_of_labels(
    metas: &mut Table<Meta>,
    room: &mut Vec<u8>,
    project_id: &str,
    region: &str,
    write_labels: impl FnOnce(&mut Vec<u8>),
) -> Arc<Meta> {
    let mut labels = std::mem::take(room);
    labels.clear();
    write_labels(&mut labels);
    let text = std::str::from_utf8(&labels).expect("labels are written as JSON, which is UTF-8");
    let key = (project_id, region, text);
    let meta = metas.get(
        key,
        |held| (&*held.project_id, &*held.region, &*held.labels) == key,
        || {
            let (project_id, region, labels) = (project_id.to_owned(), region.to_owned(), text.to_owned());
            Arc::new(Meta { project_id, region, labels })
        },
    );
    let meta = Arc::clone(meta);
    *room = labels;
    meta
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
    /// The held value equal to `key`, or a new one made by `make`. A full
    /// table makes room before it looks: the entry it finds or makes is
    /// what it hands out.
    fn get<K: std::hash::Hash>(
        &mut self,
        key: K,
        equal: impl Fn(&T) -> bool,
        make: impl FnOnce() -> Arc<T>,
    ) -> &Arc<T> {
        if self.values.len() >= CAPACITY {
            self.make_room();
        }
        let hash = self.hasher.hash_one(key);
        let entry = match self.values.entry(hash, |(h, held)| *h == hash && equal(held), |(h, _)| *h) {
            Entry::Occupied(held) => held.into_mut(),
            Entry::Vacant(room) => room.insert((hash, make())).into_mut(),
        };
        &entry.1
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
        let a = interner.account(&long("acc-1"));
        assert!(std::ptr::eq(a.as_str(), interner.account(&long("acc-1")).as_str()));
        assert!(!std::ptr::eq(a.as_str(), interner.account(&long("acc-2")).as_str()));
        let labels = |json: &mut Vec<u8>| json.extend_from_slice(br#"{"team":"a"}"#);
        let meta = interner.meta("prj", "eu", None, labels);
        assert!(Arc::ptr_eq(&meta, &interner.meta("prj", "eu", None, labels)));
        assert_eq!(*meta, Meta { project_id: "prj".into(), region: "eu".into(), labels: r#"{"team":"a"}"#.into() });
        let one = [(SkuId(0), Quantity::from_nanos(1).unwrap())];
        let quantities = interner.quantities(&one);
        assert!(Arc::ptr_eq(&quantities, &interner.quantities(&one)));
        assert!(!Arc::ptr_eq(&quantities, &interner.quantities(&[(SkuId(1), Quantity::from_nanos(1).unwrap())])));
        // Fields are told apart, not run together.
        let moved = interner.meta("pr", "jeu", None, labels);
        assert_eq!(moved.project_id, "pr");
        assert!(!Arc::ptr_eq(&meta, &moved));
    }

    /// An id too long to be held inline.
    fn long(id: &str) -> String {
        format!("{id}-{}", "x".repeat(INLINE))
    }

    #[test]
    fn short_ids_are_held_inline_and_long_ones_shared() {
        let mut interner = Interner::default();
        let short = "a".repeat(INLINE);
        for id in [interner.account(&short), interner.source(&short)] {
            assert_eq!(id, short);
            assert!(!id.is_heap_allocated(), "{INLINE} bytes are held inline");
        }
        let long = long("acc");
        for id in [interner.account(&long), interner.source(&long)] {
            assert_eq!(id, long);
            assert!(id.is_heap_allocated());
        }
        assert_eq!(interner.accounts.values.len(), 1);
        assert_eq!(interner.sources.values.len(), 1);
    }

    #[test]
    fn metadata_as_written_is_the_metadata_its_labels_make() {
        let mut interner = Interner::default();
        let sorted = |json: &mut Vec<u8>| json.extend_from_slice(br#"{"a":"1","b":"2"}"#);
        let meta = interner.meta("prj", "eu", None, sorted);
        let written = [r#"{"b":"2","a":"1"}"#, r#" { "a" : "1", "b":"2" }"#];
        for text in written {
            let as_written = interner.meta("prj", "eu", Some(text), sorted);
            assert!(Arc::ptr_eq(&meta, &as_written), "{text} is the same metadata");
            let again = interner.meta("prj", "eu", Some(text), |_| panic!("known text is not written again"));
            assert!(Arc::ptr_eq(&meta, &again));
        }
        let elsewhere = interner.meta("prj", "us", Some(written[0]), sorted);
        assert_eq!(elsewhere.region, "us", "the same labels in another region are other metadata");
    }

    #[test]
    fn a_full_table_lets_go_of_values_no_one_holds() {
        let mut interner = Interner::default();
        let kept: Vec<SmolStr> = (0..CAPACITY / 4).map(|i| interner.account(&long(&format!("kept-{i}")))).collect();
        for i in 0..CAPACITY {
            interner.account(&long(&format!("passing-{i}")));
        }
        assert!(interner.accounts.values.len() <= CAPACITY, "the table stays bounded");
        let again = interner.account(&long("kept-7"));
        assert!(std::ptr::eq(kept[7].as_str(), again.as_str()), "values still held stay shared");
        assert_eq!(interner.account(&long("passing-3")), long("passing-3"));
    }

    #[test]
    fn a_table_of_values_all_still_held_starts_afresh() {
        let mut interner = Interner::default();
        let held: Vec<SmolStr> = (0..CAPACITY).map(|i| interner.account(&long(&format!("acc-{i}")))).collect();
        let newest = interner.account(&long("one-more"));
        assert_eq!(interner.accounts.values.len(), 1, "started afresh with the new value");
        assert_eq!(interner.account(&long("acc-5")), held[5], "an equal value, now another copy");
        assert!(std::ptr::eq(newest.as_str(), interner.account(&long("one-more")).as_str()));
    }
}
