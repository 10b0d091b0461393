//! An insert's rows put in their table's `ORDER BY`. ClickHouse sorts every
//! block it is given unless it finds it sorted already: sorting them, and
//! applying the order to every column, was 19% of its CPU in a drain.
//!
//! The sort compares integers: each account and resource id is ranked among
//! those of the insert first. Compared as the rows' strings at every step,
//! the sort cost tally about what it saved ClickHouse, most of it reading
//! rows scattered over the chunks they came in.

use tally_dataflows::prices::SkuId;

/// A row's place in its table's order: by account, time, resource and SKU,
/// strings by their bytes as ClickHouse compares them. SKU ids are numbered
/// in the order of their names (see [`SkuId`]).
#[derive(Clone, Copy, Debug)]
pub struct Place<'a> {
    /// Billing account.
    pub account: &'a str,
    /// The time column, as stored.
    pub time: u32,
    /// Resource id; the same for every row of a table without one.
    pub resource: &'a str,
    /// SKU.
    pub sku: SkuId,
}

/// Sorts `rows`, stably, by the place `place` gives each.
pub fn sort<'a, T: Copy>(rows: &mut Vec<T>, place: impl Fn(T) -> Place<'a>) {
    let mut accounts = Ranks::default();
    let mut resources = Ranks::default();
    // Keyed by the ids first, then by the ranks in place of the ids.
    let mut keys: Vec<(u64, u64, usize)> = rows
        .iter()
        .enumerate()
        .map(|(index, &row)| {
            let Place { account, time, resource, sku } = place(row);
            let account_time = u64::from(accounts.id(account)) << 32 | u64::from(time);
            let resource_sku = u64::from(resources.id(resource)) << 16 | u64::from(sku.0);
            (account_time, resource_sku, index)
        })
        .collect();
    let (accounts, resources) = (accounts.ranks(), resources.ranks());
    for (account_time, resource_sku, _) in &mut keys {
        let (account, resource) = ((*account_time >> 32) as usize, (*resource_sku >> 16) as usize);
        *account_time = u64::from(accounts[account]) << 32 | (*account_time & u64::from(u32::MAX));
        *resource_sku = u64::from(resources[resource]) << 16 | (*resource_sku & u64::from(u16::MAX));
    }
    // The index last: rows of one place keep the order they came in.
    keys.sort_unstable();
    *rows = keys.into_iter().map(|(_, _, index)| rows[index]).collect();
}

/// Strings numbered as they are first seen, then ranked by their bytes. The
/// map's order is never read.
#[derive(Default)]
struct Ranks<'a> {
    ids: foldhash::HashMap<&'a str, u32>,
    strings: Vec<&'a str>,
}

impl<'a> Ranks<'a> {
    fn id(&mut self, string: &'a str) -> u32 {
        let Ranks { ids, strings } = self;
        *ids.entry(string).or_insert_with(|| {
            strings.push(string);
            u32::try_from(strings.len() - 1).expect("an insert holds fewer than 2^32 rows")
        })
    }

    /// The rank of each id's string among all of them.
    fn ranks(self) -> Vec<u32> {
        let mut by_string: Vec<u32> = (0..self.strings.len()).map(|id| id as u32).collect();
        by_string.sort_unstable_by_key(|&id| self.strings[id as usize]);
        let mut ranks = vec![0; by_string.len()];
        for (rank, id) in by_string.into_iter().enumerate() {
            ranks[id as usize] = rank as u32;
        }
        ranks
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// Ids that share prefixes, differ in length only, and hold bytes past
    /// ASCII, where an order by anything but bytes would show.
    fn id() -> impl Strategy<Value = String> {
        proptest::sample::select(vec!["", "a", "a\0", "ab", "abc", "b", "B", "é", "ab\u{7f}", "zz", "acc-10", "acc-9"])
            .prop_map(String::from)
    }

    proptest! {
        #[test]
        fn rows_sort_as_their_strings_compare_by_bytes_and_keep_their_order_within_a_place(
            places in proptest::collection::vec((id(), 0u32..4, id(), 0u16..3), 0..200),
        ) {
            let places: Vec<Place<'_>> = places
                .iter()
                .map(|(account, time, resource, sku)| Place { account, time: *time, resource, sku: SkuId(*sku) })
                .collect();
            let mut rows: Vec<usize> = (0..places.len()).collect();
            sort(&mut rows, |row| places[row]);
            let mut expected: Vec<usize> = (0..places.len()).collect();
            let bytes = |row: usize| {
                let Place { account, time, resource, sku } = places[row];
                (account.as_bytes(), time, resource.as_bytes(), sku)
            };
            expected.sort_by_key(|&row| bytes(row));
            prop_assert_eq!(rows, expected);
        }
    }
}
