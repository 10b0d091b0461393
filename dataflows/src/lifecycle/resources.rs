//! A worker's resources by key.
//!
//! Hashed: a B-tree compared key strings a dozen times or more per lookup.
//! Their order, which changes from run to run, reaches only the order of an
//! epoch's rows (each row once per epoch, all at one version) and of a
//! snapshot's entries (restore files each by its key); the totals stage
//! sorts what it sums. The hasher is seeded per process, as the standard
//! one, and several times faster on short strings.
//!
//! Each resource sits behind a shared handle ([`Held`]), with its key, so
//! that a snapshot is a copy of the handles ([`super::Copied`]), not of the
//! resources: a checkpoint encodes that copy on a thread of its own while
//! the usage stage goes on, and a resource the stage changes before the
//! snapshot has written it is copied then, once, the others never.
//!
//! The key is held in the resource's allocation, not in the table: a slot
//! is then a handle of eight bytes instead of a key and a handle of 56. A
//! table stays between about half and seven eighths full, so the slots were
//! a hundred bytes a resource and more; the table grows by doubling and
//! held both sizes while it moved; and a snapshot copied every key. The
//! handle counts holders only (`triomphe`): with std's weak count beside
//! it, a resource, its key and the counts were 136 bytes, which the
//! allocator serves from blocks of 160; they are 128.

use std::fmt;
use std::hash::BuildHasher;
use std::ops::Index;

use hashbrown::HashTable;
use hashbrown::hash_table::Entry;
use triomphe::Arc;

use super::Resource;
use crate::event::ResourceKey;

/// A worker's resources, each with its key.
#[derive(Clone, Default)]
pub struct Resources {
    table: HashTable<Held>,
    hasher: foldhash::fast::RandomState,
}

/// A resource with its key, shared by the map and the snapshots that
/// hold it.
#[derive(Clone, Debug)]
pub struct Held(Arc<Keyed>);

#[derive(Clone, Debug)]
struct Keyed {
    key: ResourceKey,
    resource: Resource,
}

impl Held {
    fn new(key: ResourceKey, resource: Resource) -> Held {
        Held(Arc::new(Keyed { key, resource }))
    }

    /// The resource's account and id.
    pub fn key(&self) -> &ResourceKey {
        &self.0.key
    }

    /// Its state.
    pub fn resource(&self) -> &Resource {
        &self.0.resource
    }

    /// Its state, to change: copied first while a snapshot holds it.
    pub fn resource_mut(&mut self) -> &mut Resource {
        &mut Arc::make_mut(&mut self.0).resource
    }

    /// How many hold it: one when the map alone does.
    pub fn holders(&self) -> usize {
        Arc::count(&self.0)
    }
}

impl Resources {
    /// How many resources there are.
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// How many resources fit before the table grows.
    pub fn capacity(&self) -> usize {
        self.table.capacity()
    }

    /// Room for `additional` more resources.
    pub fn reserve(&mut self, additional: usize) {
        let hasher = &self.hasher;
        self.table.reserve(additional, |held| hasher.hash_one(held.key()));
    }

    /// Gives back room down to what `at_least` resources need.
    pub fn shrink_to(&mut self, at_least: usize) {
        let hasher = &self.hasher;
        self.table.shrink_to(at_least, |held| hasher.hash_one(held.key()));
    }

    /// The resource of `key`, if any.
    pub fn get(&self, key: &ResourceKey) -> Option<&Resource> {
        self.table.find(self.hasher.hash_one(key), |held| *held.key() == *key).map(|held| held.resource())
    }

    /// The resource of `key`, made empty if there is none.
    pub fn get_or_default(&mut self, key: &ResourceKey) -> &mut Held {
        let hasher = &self.hasher;
        let entry =
            self.table.entry(hasher.hash_one(key), |held| *held.key() == *key, |held| hasher.hash_one(held.key()));
        entry.or_insert_with(|| Held::new(key.clone(), Resource::default())).into_mut()
    }

    /// Sets the resource of `key`, replacing any it had.
    pub fn insert(&mut self, key: ResourceKey, resource: Resource) {
        let hasher = &self.hasher;
        let hash = hasher.hash_one(&key);
        let entry = self.table.entry(hash, |held| *held.key() == key, |held| hasher.hash_one(held.key()));
        let new = Held::new(key, resource);
        match entry {
            Entry::Occupied(mut held) => *held.get_mut() = new,
            Entry::Vacant(room) => {
                room.insert(new);
            }
        }
    }

    /// The resources with their keys, in the table's order.
    pub fn iter(&self) -> impl Iterator<Item = &Held> {
        self.table.iter()
    }

    /// The same, to change, in the same order while no key comes or goes.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut Held> {
        self.table.iter_mut()
    }

    /// Keeps the resources for which `keep` is true.
    pub fn retain(&mut self, keep: impl FnMut(&mut Held) -> bool) {
        self.table.retain(keep);
    }
}

impl Index<&ResourceKey> for Resources {
    type Output = Resource;

    fn index(&self, key: &ResourceKey) -> &Resource {
        self.get(key).expect("a resource of this key")
    }
}

impl FromIterator<(ResourceKey, Resource)> for Resources {
    fn from_iter<I: IntoIterator<Item = (ResourceKey, Resource)>>(entries: I) -> Resources {
        let mut resources = Resources::default();
        for (key, resource) in entries {
            resources.insert(key, resource);
        }
        resources
    }
}

/// Equal when they hold the same keys with equal resources, whatever the
/// order and the room.
impl PartialEq for Resources {
    fn eq(&self, other: &Resources) -> bool {
        self.len() == other.len() && self.iter().all(|held| other.get(held.key()) == Some(held.resource()))
    }
}

impl Eq for Resources {}

impl fmt::Debug for Resources {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.debug_map().entries(self.iter().map(|held| (held.key(), held.resource()))).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: usize) -> ResourceKey {
        ResourceKey { account: format!("acc-{}", i % 7).into(), resource: format!("vm-{i}").into() }
    }

    #[test]
    fn resources_are_found_by_key_through_growth_and_shrinking() {
        let mut resources = Resources::default();
        for i in 0..10_000 {
            resources.get_or_default(&key(i));
        }
        assert_eq!(resources.len(), 10_000);
        assert!(resources.iter().all(|held| resources.get(held.key()).is_some()));
        resources.retain(|held| held.key().resource.ends_with('0'));
        resources.shrink_to(resources.len());
        assert_eq!(resources.len(), 1_000);
        assert!(resources.capacity() < 4_000, "room given back");
        assert!((0..10_000).all(|i| resources.get(&key(i)).is_some() == (i % 10 == 0)));
        let found = resources.get_or_default(&key(20));
        assert_eq!(*found.key(), key(20));
        assert_eq!(resources.len(), 1_000, "a key held is found, not made again");
    }

    #[test]
    fn a_resource_with_its_key_and_count_fills_a_block_of_128_bytes() {
        let count = std::mem::size_of::<usize>();
        assert!(std::mem::size_of::<Keyed>() + count <= 128, "a resource's allocation outgrew its size class");
    }

    #[test]
    fn inserting_a_key_again_replaces_its_resource() {
        let mut resources: Resources = [(key(1), Resource::default())].into_iter().collect();
        let first = resources.get_or_default(&key(1)).clone();
        assert_eq!(first.holders(), 2);
        resources.insert(key(1), Resource::default());
        assert_eq!(resources.len(), 1);
        assert_eq!(first.holders(), 1, "a new resource in its place");
        assert_eq!(resources.get_or_default(&key(1)).holders(), 1);
        assert_eq!(resources, [(key(1), Resource::default())].into_iter().collect());
        assert_ne!(resources, [(key(2), Resource::default())].into_iter().collect());
    }
}
