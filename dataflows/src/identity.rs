//! The identity deduplication goes by: `(source, id)`, held as a 128-bit
//! fingerprint.
//!
//! Remembering every identity of the dedup horizon as two owned strings cost
//! more memory and time than anything else the pipeline keeps. A fingerprint
//! is 16 bytes, compares in one step, and routes without hashing again. Two
//! identities sharing a fingerprint would make one look like a copy of the
//! other, so the hash must make that practically impossible, by chance or on
//! purpose:
//!
//! - [`IdentityHash::SipHash`], SipHash-2-4 with 128-bit output under a key
//!   drawn at random when a deployment starts without a checkpoint and kept
//!   in its checkpoints: by chance two identities share a fingerprint with
//!   odds of 2^-128, and finding two that do takes knowing the key. It costs
//!   18 ns an identity where BLAKE3 costs 100 (one compression of a block),
//!   which was 7% of the time an event took a worker (BENCHMARKS.md).
//! - [`IdentityHash::Blake3`], unkeyed: what checkpoints before format 10
//!   hold, and what a deployment restored from one keeps using, since its
//!   remembered identities are BLAKE3 fingerprints.

use std::fmt;
use std::hash::{BuildHasherDefault, Hash, Hasher};

use serde::{Deserialize, Serialize};
use siphasher::sip128::{Hasher128, SipHasher24};

/// A fingerprint of `(source, id)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Fingerprint([u8; 16]);

/// How a deployment's identities become fingerprints: fixed for as long as
/// its checkpoints hold fingerprints made so.
#[derive(Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum IdentityHash {
    /// BLAKE3 truncated to 128 bits: the identities of checkpoints before
    /// format 10.
    #[default]
    Blake3,
    /// SipHash-2-4, 128 bits, under this key.
    SipHash([u64; 2]),
}

impl IdentityHash {
    /// The fingerprint of the identity `(source, id)`. The source's length
    /// comes first, so no two pairs hash the same bytes.
    pub fn fingerprint(&self, source: &str, id: &str) -> Fingerprint {
        let length = (source.len() as u64).to_le_bytes();
        match self {
            IdentityHash::Blake3 => blake3_fingerprint(&length, source, id),
            IdentityHash::SipHash([key0, key1]) => {
                let mut hasher = SipHasher24::new_with_keys(*key0, *key1);
                // One slice where the pieces fit a block: the same bytes,
                // so the same hash, without the streaming hasher carrying
                // each piece's tail into the next.
                match Block::of(&[&length, source.as_bytes(), id.as_bytes()]) {
                    Some(block) => hasher.write(block.bytes()),
                    None => {
                        hasher.write(&length);
                        hasher.write(source.as_bytes());
                        hasher.write(id.as_bytes());
                    }
                }
                Fingerprint(hasher.finish128().as_bytes())
            }
        }
    }
}

/// Names the hash without its key, which is the state's secret.
impl fmt::Debug for IdentityHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IdentityHash::Blake3 => f.write_str("Blake3"),
            IdentityHash::SipHash(_) => f.write_str("SipHash(keyed)"),
        }
    }
}

/// A key for [`IdentityHash::SipHash`], drawn from the operating system: a
/// deployment's at its first start.
pub fn draw_key() -> Result<[u64; 2], getrandom::Error> {
    Ok([getrandom::u64()?, getrandom::u64()?])
}

fn blake3_fingerprint(length: &[u8; 8], source: &str, id: &str) -> Fingerprint {
    let hash = match Block::of(&[length, source.as_bytes(), id.as_bytes()]) {
        Some(block) => blake3::hash(block.bytes()),
        None => {
            let mut hasher = blake3::Hasher::new();
            hasher.update(length).update(source.as_bytes()).update(id.as_bytes());
            hasher.finalize()
        }
    };
    let (fingerprint, _) = hash.as_bytes().split_first_chunk::<16>().expect("a hash is 32 bytes");
    Fingerprint(*fingerprint)
}

impl Fingerprint {
    /// The fingerprint's bytes.
    pub fn bytes(&self) -> &[u8; 16] {
        &self.0
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

    const KEYED: IdentityHash = IdentityHash::SipHash([0x0123_4567_89ab_cdef, 0xfedc_ba98_7654_3210]);

    #[test]
    fn the_boundary_between_source_and_id_counts() {
        for hash in [IdentityHash::Blake3, KEYED] {
            assert_ne!(hash.fingerprint("ab", "c"), hash.fingerprint("a", "bc"), "{hash:?}");
            assert_eq!(hash.fingerprint("a", "bc"), hash.fingerprint("a", "bc"), "{hash:?}");
        }
    }

    #[test]
    fn fingerprints_are_stable_across_builds() {
        // A checkpoint holds fingerprints: the functions must never change.
        assert_eq!(IdentityHash::Blake3.fingerprint("//compute/eu-west", "evt-1").route(), 0x803d_9f20_d866_969b);
        assert_eq!(KEYED.fingerprint("//compute/eu-west", "evt-1").route(), 0xc725_5d02_a759_9467);
    }

    #[test]
    fn another_key_makes_other_fingerprints() {
        let other = IdentityHash::SipHash([0x0123_4567_89ab_cdef, 0xfedc_ba98_7654_3211]);
        let identity = ("//compute/eu-west", "evt-1");
        let prints = [IdentityHash::Blake3, KEYED, other].map(|hash| hash.fingerprint(identity.0, identity.1));
        assert!(prints[0] != prints[1] && prints[1] != prints[2] && prints[0] != prints[2]);
    }

    #[test]
    fn the_key_stays_out_of_logs() {
        assert_eq!(format!("{KEYED:?}"), "SipHash(keyed)");
    }

    #[test]
    fn an_identity_hashes_the_same_in_one_block_or_streamed() {
        let pieces = |source: &str, id: &str| [(source.len() as u64).to_le_bytes().to_vec(), source.into(), id.into()];
        let blake3_streamed = |source: &str, id: &str| {
            let mut hasher = blake3::Hasher::new();
            for piece in pieces(source, id) {
                hasher.update(&piece);
            }
            let mut bytes = [0; 16];
            hasher.finalize_xof().fill(&mut bytes);
            Fingerprint(bytes)
        };
        let siphash_streamed = |source: &str, id: &str| {
            let mut hasher = SipHasher24::new_with_keys(0x0123_4567_89ab_cdef, 0xfedc_ba98_7654_3210);
            for piece in pieces(source, id) {
                hasher.write(&piece);
            }
            Fingerprint(hasher.finish128().as_bytes())
        };
        let source = "compute/eu-central-1";
        // Around the block's 64 bytes: 8 for the length, 20 for the source.
        for id_length in [0, 1, 24, 35, 36, 37, 64, 200] {
            let id = "e".repeat(id_length);
            let one_block = IdentityHash::Blake3.fingerprint(source, &id);
            assert_eq!(one_block, blake3_streamed(source, &id), "an id of {id_length} bytes");
            assert_eq!(KEYED.fingerprint(source, &id), siphash_streamed(source, &id), "an id of {id_length} bytes");
        }
    }
}
