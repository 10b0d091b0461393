//! A map kept as a vector sorted by key, for the few events and rows one
//! resource holds. A B-tree allocates room for eleven entries in every node,
//! several times what a resource with one or two events needs; with millions
//! of running resources that room was most of the memory.

/// Entries sorted by key, each key once, capacity kept within an eighth of
/// the length.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SortedMap<K, V>(Vec<(K, V)>);

impl<K, V> Default for SortedMap<K, V> {
    fn default() -> Self {
        SortedMap(Vec::new())
    }
}

impl<K: Ord, V> SortedMap<K, V> {
    /// Index of the first entry whose key is not below `key`, which may be
    /// a bound of another type the keys order against.
    fn lower_bound<Q>(&self, key: &Q) -> usize
    where
        K: PartialOrd<Q>,
    {
        self.0.partition_point(|(k, _)| k < key)
    }

    fn find(&self, key: &K) -> Result<usize, usize> {
        // A resource's events and rows mostly come in key order: one
        // comparison with the last key places them.
        match self.0.last() {
            Some((last, _)) if last < key => return Err(self.0.len()),
            None => return Err(0),
            _ => {}
        }
        let index = self.lower_bound(key);
        match self.0.get(index) {
            Some((k, _)) if k == key => Ok(index),
            _ => Err(index),
        }
    }

    /// The map of `entries`, if they are sorted by key, each key once.
    pub fn from_sorted(entries: Vec<(K, V)>) -> Option<Self> {
        entries.windows(2).all(|pair| pair[0].0 < pair[1].0).then_some(SortedMap(entries))
    }

    /// The value at `key`.
    pub fn get(&self, key: &K) -> Option<&V> {
        self.find(key).ok().map(|index| &self.0[index].1)
    }

    /// The value at `key`, to change.
    pub fn get_mut(&mut self, key: &K) -> Option<&mut V> {
        self.find(key).ok().map(|index| &mut self.0[index].1)
    }

    /// Sets the value at `key`, replacing any.
    pub fn insert(&mut self, key: K, value: V) {
        match self.find(&key) {
            Ok(index) => self.0[index].1 = value,
            Err(index) => {
                // Room for an eighth more: a resource's events arrive one
                // by one, and room for exactly one more reallocated the
                // vector on every insert once a window held a few dozen.
                self.0.reserve_exact((self.0.len() / 8).max(1));
                self.0.insert(index, (key, value));
            }
        }
    }

    /// Entries with keys below `key`.
    pub fn below<Q>(&self, key: &Q) -> &[(K, V)]
    where
        K: PartialOrd<Q>,
    {
        &self.0[..self.lower_bound(key)]
    }

    /// Entries with keys from `from` up to, not including, `to`.
    pub fn between<Q>(&self, from: &Q, to: &Q) -> &[(K, V)]
    where
        K: PartialOrd<Q>,
    {
        let start = self.lower_bound(from);
        &self.0[start..self.lower_bound(to).max(start)]
    }

    /// Entries with keys from `key` on.
    pub fn at_or_after<Q>(&self, key: &Q) -> &[(K, V)]
    where
        K: PartialOrd<Q>,
    {
        &self.0[self.lower_bound(key)..]
    }

    /// Removes and returns the entries with keys below `key`, in order.
    pub fn take_below<Q>(&mut self, key: &Q) -> Vec<(K, V)>
    where
        K: PartialOrd<Q>,
    {
        let split = self.lower_bound(key);
        let kept = self.0.split_off(split);
        let taken = std::mem::replace(&mut self.0, kept);
        self.0.shrink_to_fit();
        taken
    }

    /// Every entry, in key order.
    pub fn entries(&self) -> &[(K, V)] {
        &self.0
    }

    /// Every entry, in key order, taken.
    pub fn into_entries(self) -> Vec<(K, V)> {
        self.0
    }

    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn behaves_as_a_btree_map() {
        let mut sorted = SortedMap::default();
        let mut btree = BTreeMap::new();
        for (i, key) in [5, 1, 5, 3, 7, 1].into_iter().enumerate() {
            sorted.insert(key, i);
            btree.insert(key, i);
        }
        let pairs = |m: &BTreeMap<i32, usize>| m.iter().map(|(k, v)| (*k, *v)).collect::<Vec<_>>();
        assert_eq!(sorted.entries(), pairs(&btree).as_slice());
        assert_eq!(sorted.get(&5), btree.get(&5));
        *sorted.get_mut(&5).unwrap() += 10;
        *btree.get_mut(&5).unwrap() += 10;
        assert_eq!(sorted.get_mut(&4), None);
        assert_eq!(sorted.below(&5), &pairs(&btree)[..2]);
        assert_eq!(sorted.between(&3, &7), &pairs(&btree)[1..3]);
        assert_eq!(sorted.between(&7, &3), &[]);
        assert_eq!(sorted.at_or_after(&6), &pairs(&btree)[3..]);
        assert_eq!(SortedMap::from_sorted(sorted.entries().to_vec()).as_ref(), Some(&sorted));
        assert_eq!(SortedMap::from_sorted(vec![(1, 0), (1, 1)]), None, "a key twice");
        assert_eq!(SortedMap::from_sorted(vec![(2, 0), (1, 1)]), None, "out of order");
        assert_eq!(sorted.take_below(&5), pairs(&btree)[..2].to_vec());
        assert_eq!(sorted.entries(), &pairs(&btree)[2..]);
    }
}
