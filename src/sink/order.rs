//! An insert's rows put in their table's `ORDER BY`. ClickHouse sorts every
//! block it is given unless it finds it sorted already: sorting them, and
//! applying the order to every column, was 19% of its CPU in a drain.
//!
//! The sort compares integers first: each account id is ranked among those
//! of the insert, and rows sorted by account and time; only the few rows of
//! one account and time are then sorted by their strings. Compared as the
//! rows' strings at every step, the sort cost tally about what it saved
//! ClickHouse, most of it reading rows scattered over the chunks they came
//! in. Ranking resource ids too was as fast, but their table of ranks, wider
//! keys and a second vector of the rows took some 80 bytes a row beside the
//! rows, where the keys now take 16.

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
pub fn sort<'a, T: Copy>(rows: &mut [T], place: impl Fn(T) -> Place<'a>) {
    let mut accounts = Ranks::default();
    // Keyed by account id, time and index first, then by the account's rank
    // in place of its id.
    let mut keys: Vec<u128> = rows
        .iter()
        .enumerate()
        .map(|(index, &row)| {
            let Place { account, time, .. } = place(row);
            key(accounts.id(account), time, index)
        })
        .collect();
    let ranks = accounts.ranks();
    for key in &mut keys {
        let (account, time, index) = parts(*key);
        *key = self::key(ranks[account as usize], time, index);
    }
    keys.sort_unstable();
    // Rows of one account and time are few (an account's resources, times
    // its SKUs), and are sorted by their resource and SKU among themselves.
    for run in keys.chunk_by_mut(|a, b| a >> 64 == b >> 64) {
        if run.len() > 1 {
            run.sort_unstable_by_key(|&key| {
                let index = parts(key).2;
                let Place { resource, sku, .. } = place(rows[index]);
                (resource, sku, index)
            });
        }
    }
    permute(rows, keys);
}

/// A row's key: account, time and its index, high bits to low.
fn key(account: u32, time: u32, index: usize) -> u128 {
    u128::from(account) << 96 | u128::from(time) << 64 | index as u128
}

fn parts(key: u128) -> (u32, u32, usize) {
    ((key >> 96) as u32, (key >> 64) as u32, key as u64 as usize)
}

/// Puts the row each key names at the key's place, following the cycles of
/// the permutation, so that no second vector of rows is needed.
fn permute<T: Copy>(rows: &mut [T], mut keys: Vec<u128>) {
    const MOVED: u128 = u128::MAX;
    for start in 0..rows.len() {
        if keys[start] == MOVED {
            continue;
        }
        let first = rows[start];
        let mut at = start;
        loop {
            let from = parts(keys[at]).2;
            keys[at] = MOVED;
            if from == start {
                rows[at] = first;
                break;
            }
            rows[at] = rows[from];
            at = from;
        }
    }
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
