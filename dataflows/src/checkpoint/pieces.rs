//! Encodings in pieces: a snapshot grows a piece at a time, so that nothing
//! written is ever moved, and it is written out piece by piece.
//!
//! Encoded into one vector, a snapshot of tens of megabytes was copied at
//! every doubling, and each larger buffer came as fresh pages for the
//! kernel to zero: most of the time a checkpoint spent encoding. Pieces of
//! at most [`PIECE`] bytes are small enough for the allocator to reuse from
//! one checkpoint to the next.

use bytes::Bytes;
use postcard::ser_flavors::Flavor;
use serde::Serialize;

/// An encoding, in pieces.
pub type Pieces = Vec<Bytes>;

/// The largest piece.
pub const PIECE: usize = 1 << 20;
/// The first piece: most parts and segments are small.
const FIRST_PIECE: usize = 4 << 10;

/// Encodes `value` with postcard, in pieces.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Pieces {
    let flavor = InPieces { done: Vec::new(), current: Vec::new() };
    postcard::serialize_with_flavor(value, flavor).expect("plain data encodes")
}

/// The pieces' bytes, joined.
pub fn joined(pieces: &[Bytes]) -> Vec<u8> {
    let mut joined = Vec::with_capacity(pieces.iter().map(Bytes::len).sum());
    for piece in pieces {
        joined.extend_from_slice(piece);
    }
    joined
}

struct InPieces {
    done: Pieces,
    current: Vec<u8>,
}

impl InPieces {
    /// Starts a new piece, each twice the last up to [`PIECE`].
    fn next_piece(&mut self) {
        let size = (self.current.capacity() * 2).clamp(FIRST_PIECE, PIECE);
        let full = std::mem::replace(&mut self.current, Vec::with_capacity(size));
        if !full.is_empty() {
            self.done.push(Bytes::from(full));
        }
    }
}

impl Flavor for InPieces {
    type Output = Pieces;

    fn try_push(&mut self, byte: u8) -> postcard::Result<()> {
        if self.current.len() == self.current.capacity() {
            self.next_piece();
        }
        self.current.push(byte);
        Ok(())
    }

    fn try_extend(&mut self, mut data: &[u8]) -> postcard::Result<()> {
        while !data.is_empty() {
            if self.current.len() == self.current.capacity() {
                self.next_piece();
            }
            let (now, rest) = data.split_at(data.len().min(self.current.capacity() - self.current.len()));
            self.current.extend_from_slice(now);
            data = rest;
        }
        Ok(())
    }

    fn finalize(mut self) -> postcard::Result<Pieces> {
        if !self.current.is_empty() {
            self.done.push(Bytes::from(self.current));
        }
        Ok(self.done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_join_to_the_encoding_and_grow_to_the_largest_piece() {
        let strings: Vec<String> = (0..200_000).map(|i| format!("resource-{i}")).collect();
        let pieces = encode(&strings);
        assert_eq!(joined(&pieces), postcard::to_stdvec(&strings).unwrap());
        assert_eq!(pieces[0].len(), FIRST_PIECE);
        let sizes: Vec<usize> = pieces.iter().map(Bytes::len).collect();
        assert!(sizes[..sizes.len() - 1].windows(2).all(|pair| pair[0] <= pair[1]), "{sizes:?}");
        assert_eq!(sizes.iter().max(), Some(&PIECE));
        assert_eq!(encode(&Vec::<u8>::new()), [Bytes::from_static(&[0])], "an empty list is its length");
    }
}
