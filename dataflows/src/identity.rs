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
        let length = (source.len() as u64).to_le_bytes();
        let hash = match Block::of(&[&length, source.as_bytes(), id.as_bytes()]) {
            Some(block) => blake3::hash(block.bytes()),
            None => {
                let mut hasher = blake3::Hasher::new();
                hasher.update(&length).update(source.as_bytes()).update(id.as_bytes());
                hasher.finalize()
            }
        };
        let (fingerprint, _) = hash.as_bytes().split_first_chunk::<16>().expect("a hash is 32 bytes");
        Fingerprint(*fingerprint)
    }

    /// Where the identity is exchanged to: already uniform, so its first
    /// eight bytes serve as they are.
    pub fn route(&self) -> u64 {
        let mut low = [0; 8];
        low.copy_from_slice(&self.0[..8]);
        u64::from_le_bytes(low)
    }
}

/// Pieces joined into one BLAKE3 block on the stack, when they fit: an
/// identity nearly always does, and one call over one slice costs a fraction
/// of the streaming hasher's buffering, piece by piece.
struct Block {
    bytes: [u8; 64],
    len: usize,
}

impl Block {
    fn of(pieces: &[&[u8]]) -> Option<Block> {
        let mut block = Block { bytes: [0; 64], len: 0 };
        for piece in pieces {
            let end = block.len + piece.len();
            block.bytes.get_mut(block.len..end)?.copy_from_slice(piece);
            block.len = end;
        }
        Some(block)
    }

    fn bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
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

    #[test]
    fn an_identity_hashes_the_same_in_one_block_or_streamed() {
        let streamed = |source: &str, id: &str| {
            let mut hasher = blake3::Hasher::new();
            hasher.update(&(source.len() as u64).to_le_bytes());
            hasher.update(source.as_bytes());
            hasher.update(id.as_bytes());
            let mut bytes = [0; 16];
            hasher.finalize_xof().fill(&mut bytes);
            Fingerprint(bytes)
        };
        let source = "compute/eu-central-1";
        // Around the block's 64 bytes: 8 for the length, 20 for the source.
        for id_length in [0, 1, 24, 35, 36, 37, 64, 200] {
            let id = "e".repeat(id_length);
            assert_eq!(Fingerprint::of(source, &id), streamed(source, &id), "an id of {id_length} bytes");
        }
    }
}
