//! Which worker a key goes to.
//!
//! Every keyed exchange routes by a 64-bit value, and the worker of `w`
//! that owns a value is the value modulo `w` ([`crate::checkpoint::owner`]):
//! timely's exchange, a restore filing checkpointed state, and a run of any
//! other worker count all agree on it.
//!
//! Resources are routed by [`Routing`]: the contract asks producers to key
//! messages by resource id, and Kafka's default partitioner then puts all
//! of a resource's events on one partition, which one worker reads. Routed to
//! that worker, an event is billed where it was read and does not cross
//! to another core, or between the processes of a cluster. Where a resource's
//! events arrive on other partitions, as the contract allows, they cross
//! as before: routing decides where work happens, never what it computes.

use std::hash::{BuildHasher, Hash};

use serde::{Deserialize, Serialize};

use crate::event::{Partition, ResourceKey};

/// The route of any key: a hash that every process of a cluster computes
/// the same way (a fixed seed, not one per process). foldhash rather than
/// the standard SipHash, which was 1.5% of a drain's samples: every event
/// and every day total is routed by its key strings.
pub fn route<K: Hash + ?Sized>(key: &K) -> u64 {
    foldhash::quality::FixedState::with_seed(ROUTE_SEED).hash_one(key)
}

/// Any constant does; it must only be the same in every process.
const ROUTE_SEED: u64 = 0x7a11_7a11_7a11_7a11;

/// How one run routes resources. Every worker of a run must route the same
/// way; a run restored from a checkpoint taken under another routing files
/// the state by its own (see [`crate::checkpoint::Restored::add_shard`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Routing {
    /// By a hash of `(account, resource)`.
    #[default]
    Hashed,
    /// To the worker reading the partition that Kafka's default partitioner
    /// (the Java client's, murmur2) picks for the resource id as the key,
    /// out of `partitions`. Worker `w` of `n` reads the partitions `p` with
    /// `p mod n == w`.
    ByPartition {
        /// The topic's partitions when the run started.
        partitions: u32,
    },
}

impl Routing {
    /// The routing for a run of `workers` over a topic of `partitions`:
    /// by partition when each worker reads as many partitions as every
    /// other, so that each owns as many resources as it reads; by hash
    /// otherwise, which spreads the resources evenly whatever the reading.
    pub fn for_run(partitions: u32, workers: usize) -> Routing {
        let even = workers > 0 && partitions > 0 && (partitions as usize).is_multiple_of(workers);
        if even { Routing::ByPartition { partitions } } else { Routing::Hashed }
    }

    /// The route of a resource's events and state.
    pub fn route(&self, key: &ResourceKey) -> u64 {
        match *self {
            Routing::Hashed => route(key),
            Routing::ByPartition { partitions } => u64::from(kafka_partition(key.resource.as_bytes(), partitions)),
        }
    }
}

/// The partition Kafka's default partitioner picks for a message with `key`
/// out of `partitions` (at least one): murmur2 of the key, its sign bit
/// cleared, modulo the count, as the Java client computes it.
pub fn kafka_partition(key: &[u8], partitions: u32) -> Partition {
    (murmur2(key) & 0x7fff_ffff) % partitions.max(1)
}

/// Kafka's murmur2 (`org.apache.kafka.common.utils.Utils.murmur2`), in
/// unsigned arithmetic: Java's `int` wraps as `u32` does.
fn murmur2(data: &[u8]) -> u32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    #[expect(clippy::cast_possible_truncation, reason = "Java hashes the length as an int")]
    let mut hash = SEED ^ data.len() as u32;
    let mut words = data.chunks_exact(4);
    for word in &mut words {
        let mut k = u32::from_le_bytes([word[0], word[1], word[2], word[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        hash = hash.wrapping_mul(M) ^ k;
    }
    let tail = words.remainder();
    if !tail.is_empty() {
        for (i, &byte) in tail.iter().enumerate() {
            hash ^= u32::from(byte) << (8 * i);
        }
        hash = hash.wrapping_mul(M);
    }
    hash ^= hash >> 13;
    hash = hash.wrapping_mul(M);
    hash ^ (hash >> 15)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::owner;

    #[test]
    fn murmur2_is_the_java_clients() {
        // Kafka's own test vectors (`UtilsTest.testMurmur2`), as Java's ints.
        let cases: [(&[u8], i32); 6] = [
            (b"21", -973_932_308),
            (b"foobar", -790_332_482),
            (b"a-little-bit-long-string", -985_981_536),
            (b"a-little-bit-longer-string", -1_486_304_829),
            (b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58_897_971),
            (b"abc", 479_470_107),
        ];
        for (key, java) in cases {
            assert_eq!(murmur2(key), java.cast_unsigned(), "key {:?}", String::from_utf8_lossy(key));
        }
    }

    #[test]
    fn a_resource_routed_by_partition_goes_to_the_worker_reading_its_key_s_partition() {
        let routing = Routing::for_run(8, 4);
        assert_eq!(routing, Routing::ByPartition { partitions: 8 });
        for serial in 0..200 {
            let key =
                ResourceKey { account: format!("acc-{}", serial % 7).into(), resource: format!("vm-{serial}").into() };
            let partition = kafka_partition(key.resource.as_bytes(), 8);
            assert!(partition < 8);
            assert_eq!(owner(routing.route(&key), 4), partition as usize % 4);
        }
    }

    #[test]
    fn uneven_reading_routes_by_hash() {
        assert_eq!(Routing::for_run(6, 4), Routing::Hashed);
        assert_eq!(Routing::for_run(0, 2), Routing::Hashed);
        assert_eq!(Routing::for_run(2, 4), Routing::Hashed);
        assert_eq!(Routing::for_run(1, 1), Routing::ByPartition { partitions: 1 });
    }
}
