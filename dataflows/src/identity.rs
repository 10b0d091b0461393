//! The identity deduplication goes by: `(source, id)`, held as a 128-bit
//! BLAKE3 fingerprint.
//!
//! Remembering every identity of the dedup horizon as two owned strings cost
//! more memory and time than anything else the pipeline keeps. A fingerprint
//! is 16 bytes, compares in one step, and routes without hashing again. Two
//! identities sharing a fingerprint would make one look like a copy of the
//! other: with a cryptographic hash that takes about 2^64 identities or that
//! much work to find, far beyond any horizon's worth of events.

use std::hash::{BuildHasherDefault, Hash, Hasher};

use serde::{Deserialize, Serialize};

/// A fingerprint of `(source, id)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Fingerprint([u8; 16]);

impl Fingerprint {
    /// The fingerprint of the identity `(source, id)`. The source's length
    /// comes first, so no two pairs hash the same bytes.
    pub fn of(source: &str, id: &str) -> Fingerprint {
        let mut hasher = blake3::Hasher::new();
        hasher.update(&(source.len() as u64).to_le_bytes());
        hasher.update(source.as_bytes());
        hasher.update(id.as_bytes());
        let mut bytes = [0; 16];
        hasher.finalize_xof().fill(&mut bytes);
        Fingerprint(bytes)
    }

    /// Where the identity is exchanged to: already uniform, so its first
    /// eight bytes serve as they are.
    pub fn route(&self) -> u64 {
        let mut low = [0; 8];
        low.copy_from_slice(&self.0[..8]);
        u64::from_le_bytes(low)
    }
}

impl Hash for Fingerprint {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.route());
    }
}

/// Hashes a [`Fingerprint`] for a hash table by taking its route: hashing a
/// uniform value again only costs time. Meant for fingerprints only.
#[derive(Default)]
pub struct FingerprintHasher(u64);

impl Hasher for FingerprintHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write_u64(&mut self, word: u64) {
        self.0 = word;
    }

    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(byte);
        }
    }
}

/// Builds [`FingerprintHasher`]s.
pub type BuildFingerprintHasher = BuildHasherDefault<FingerprintHasher>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_boundary_between_source_and_id_counts() {
        assert_ne!(Fingerprint::of("ab", "c"), Fingerprint::of("a", "bc"));
        assert_eq!(Fingerprint::of("a", "bc"), Fingerprint::of("a", "bc"));
    }

    #[test]
    fn fingerprints_are_stable_across_builds() {
        // A checkpoint holds fingerprints: the function must never change.
        assert_eq!(Fingerprint::of("//compute/eu-west", "evt-1").route(), 0x803d_9f20_d866_969b);
    }
}
