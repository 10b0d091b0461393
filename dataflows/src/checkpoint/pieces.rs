//! Encodings in pieces: a snapshot grows a piece at a time, so that nothing
//! written is ever moved, and it is written out piece by piece.
//!
//! Encoded into one vector, a snapshot of tens of megabytes was copied at
//! every doubling, and each larger buffer came as fresh pages for the
//! kernel to zero: most of the time a checkpoint spent encoding. Pieces of
//! at most [`PIECE`] bytes are small enough for the allocator to reuse from
//! one checkpoint to the next.
//!
//! The resources, the largest state, are encoded compressed
//! ([`encode_compressed`]): each piece is compressed with LZ4 as soon as it
//! is full, so the encoding is never held uncompressed, and is written as a
//! block of its own, its compressed and its raw length first (four bytes
//! each, little-endian). Their keys, ids and sources repeat from resource
//! to resource; identities, random fingerprints, are not compressed. A
//! compressed encoding can also leave as it is made ([`Spill`]): its
//! blocks, once they add up to a chunk, are handed on and not held.

use std::borrow::Cow;

use bytes::Bytes;
use postcard::ser_flavors::Flavor;
use serde::Serialize;
use serde::de::DeserializeSeed;

/// An encoding, in pieces.
pub type Pieces = Vec<Bytes>;

/// The largest piece.
pub const PIECE: usize = 1 << 20;
/// The first piece: most parts and segments are small.
const FIRST_PIECE: usize = 4 << 10;
/// Writes up to this long are copied byte by byte.
const SHORT: usize = 16;

/// Encodes `value` with postcard, in pieces.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Pieces {
    encode_in(value, None, None)
}

/// Encodes `value` with postcard, in pieces compressed one at a time (see
/// the module docs); [`decompressed`] reads them back.
pub fn encode_compressed<T: Serialize + ?Sized>(value: &T) -> Pieces {
    encode_in(value, Some(Vec::new()), None)
}

/// Where a compressed encoding's blocks go as it is made: `write` is given
/// them, in order, as soon as they add up to `chunk_bytes` or more.
pub struct Spill<'a> {
    /// How many bytes of blocks a chunk holds at least.
    pub chunk_bytes: usize,
    /// Takes each chunk's blocks.
    pub write: &'a mut dyn FnMut(Pieces),
}

/// Encodes `value` as [`encode_compressed`] does, handing its blocks to
/// `spill` a chunk at a time; returns the blocks after the last chunk.
/// Chunks and the blocks returned, in that order, are the encoding.
pub fn encode_compressed_spilling<T: Serialize + ?Sized>(value: &T, spill: Spill<'_>) -> Pieces {
    encode_in(value, Some(Vec::new()), Some(spill))
}

/// Encodes `value` in pieces, compressed if given a scratch buffer, and
/// spilled if given where to.
fn encode_in<T: Serialize + ?Sized>(value: &T, compressed: Option<Vec<u8>>, spill: Option<Spill<'_>>) -> Pieces {
    postcard::serialize_with_flavor(value, InPieces::new(compressed, spill)).expect("plain data encodes")
}

/// Encodes in pieces what `write` writes: a postcard encoding made by
/// hand, for values postcard would walk a byte at a time. A fingerprint,
/// sixteen bytes, was sixteen calls through serde and the flavor: encoding
/// a checkpoint's identities took 2.9% of a worker's instructions in the
/// in-process bench, and written sixteen bytes at once, 1.3%.
pub fn encode_with(write: impl FnOnce(&mut Encoder<'_>)) -> Pieces {
    let mut encoder = Encoder(postcard::Serializer { output: InPieces::new(None, None) });
    write(&mut encoder);
    encoder.0.output.finalize().expect("plain data encodes")
}

/// Writes a postcard encoding a piece at a time (see [`encode_with`]).
pub struct Encoder<'a>(postcard::Serializer<InPieces<'a>>);

impl Encoder<'_> {
    /// Writes `value` as postcard encodes it.
    pub fn value<T: Serialize + ?Sized>(&mut self, value: &T) {
        value.serialize(&mut self.0).expect("plain data encodes");
    }

    /// Writes `bytes` as they are: how postcard encodes an array of bytes
    /// (a tuple, so no length).
    pub fn array(&mut self, bytes: &[u8]) {
        self.0.output.try_extend(bytes).expect("pieces take any bytes");
    }
}

/// `bytes`, an encoding already made, compressed as [`encode_compressed`]
/// compresses its pieces.
pub fn compress(bytes: &[u8]) -> Pieces {
    let mut scratch = Vec::new();
    bytes.chunks(PIECE).map(|piece| block(piece, &mut scratch)).collect()
}

/// The bytes of `compressed`, blocks written by [`encode_compressed`] or
/// [`compress`], joined.
pub fn decompressed(compressed: &[u8]) -> Result<Vec<u8>, Corrupt> {
    let mut raw = Vec::new();
    decompress_into(compressed, &mut raw)?;
    Ok(raw)
}

/// The bytes of the blocks of `compressed`, joined.
fn decompress_into(mut compressed: &[u8], raw: &mut Vec<u8>) -> Result<(), Corrupt> {
    while !compressed.is_empty() {
        decompress_block(&mut compressed, raw)?;
    }
    Ok(())
}

/// Appends the bytes of the first block of `compressed` to `raw`, and
/// moves `compressed` past it.
fn decompress_block(compressed: &mut &[u8], raw: &mut Vec<u8>) -> Result<(), Corrupt> {
    let (length, rest) = header_length(compressed)?;
    let (raw_length, rest) = header_length(rest)?;
    let block = rest.get(..length).ok_or(Corrupt::Truncated)?;
    // Checked before it is allocated: a block says how much room it takes.
    if raw_length > PIECE {
        return Err(Corrupt::Oversized(raw_length));
    }
    let at = raw.len();
    raw.resize(at + raw_length, 0);
    let written = lz4_flex::block::decompress_into(block, &mut raw[at..]).map_err(Corrupt::Block)?;
    if written != raw_length {
        return Err(Corrupt::Length { expected: raw_length, found: written });
    }
    *compressed = &rest[length..];
    Ok(())
}

/// Decodes a value with postcard, by `seed`, from `sequences` of whole
/// compressed blocks in turn (an encoding's chunks and the blocks after
/// them, see [`Spill`]), each sequence taken when the one before is read
/// and decompressed one block at a time.
///
/// A restore that read a worker's chunks first and decompressed its
/// resources whole held all of them and the raw encoding beside the
/// resources made: 1,076 bytes per resource at the restart's peak, against
/// 702 with its chunks read one at a time and decoded a block at a time
/// (`benches/recovery.sh 1000000 2500000`).
///
/// Nothing decoded this way may borrow from the encoding: strings are read
/// as owned strings (`deserialize_string`), never as borrowed ones
/// (`deserialize_str`).
pub fn decode_compressed<'a, S: DeserializeSeed<'a>, E: 'a>(
    sequences: impl Iterator<Item = Result<Cow<'a, [u8]>, E>> + 'a,
    seed: S,
) -> Result<S::Value, Undecodable<E>> {
    let blocks = FromBlocks {
        sequences,
        compressed: Cow::Borrowed(&[]),
        read: 0,
        block: Vec::new(),
        at: 0,
        spanning: Vec::new(),
        failure: None,
    };
    let mut deserializer = postcard::Deserializer::from_flavor(blocks);
    let decoded = seed.deserialize(&mut deserializer);
    let failure = deserializer.finalize().expect("finalizing reads nothing");
    match (decoded, failure) {
        (Ok(value), _) => Ok(value),
        (Err(_), Some(failure)) => Err(failure),
        (Err(error), None) => Err(Undecodable::Encoding(error)),
    }
}

/// Why [`decode_compressed`] read nothing.
#[derive(Debug, thiserror::Error)]
pub enum Undecodable<E> {
    /// A sequence of blocks cannot be had.
    #[error(transparent)]
    Unread(E),
    /// The blocks cannot be decompressed.
    #[error(transparent)]
    Compressed(Corrupt),
    /// The bytes are not an encoding of the value.
    #[error(transparent)]
    Encoding(postcard::Error),
    /// The value borrows from its encoding, which this decoding does not
    /// hold: a type the restore decodes must read its strings as owned.
    #[error("a decoded value borrows from the encoding")]
    Borrowed,
}

/// A postcard source reading compressed blocks one at a time: the current
/// block's bytes, and a scratch copy for a read that spans two blocks.
struct FromBlocks<'a, I, E> {
    sequences: I,
    /// The current sequence, and how much of it is read.
    compressed: Cow<'a, [u8]>,
    read: usize,
    block: Vec<u8>,
    /// Where in `block` the next read starts.
    at: usize,
    spanning: Vec<u8>,
    /// Why reading stopped, where postcard's errors cannot say it.
    failure: Option<Undecodable<E>>,
}

impl<'a, I: Iterator<Item = Result<Cow<'a, [u8]>, E>>, E> FromBlocks<'a, I, E> {
    /// Makes the next block with bytes in it the current one.
    fn next_block(&mut self) -> postcard::Result<()> {
        loop {
            while self.read == self.compressed.len() {
                match self.sequences.next() {
                    None => return Err(postcard::Error::DeserializeUnexpectedEnd),
                    Some(Err(unread)) => return Err(self.failed(Undecodable::Unread(unread))),
                    Some(Ok(sequence)) => (self.compressed, self.read) = (sequence, 0),
                }
            }
            self.block.clear();
            self.at = 0;
            let mut rest = &self.compressed[self.read..];
            if let Err(corrupt) = decompress_block(&mut rest, &mut self.block) {
                return Err(self.failed(Undecodable::Compressed(corrupt)));
            }
            self.read = self.compressed.len() - rest.len();
            if !self.block.is_empty() {
                return Ok(());
            }
        }
    }

    fn failed(&mut self, failure: Undecodable<E>) -> postcard::Error {
        self.failure = Some(failure);
        postcard::Error::DeserializeBadEncoding
    }
}

impl<'a, I, E> postcard::de_flavors::Flavor<'a> for FromBlocks<'a, I, E>
where
    I: Iterator<Item = Result<Cow<'a, [u8]>, E>> + 'a,
    E: 'a,
{
    type Remainder = Option<Undecodable<E>>;
    type Source = &'a [u8];

    // Inlined into postcard's reading of each varint, as its own slice
    // source is: a call per byte cost a restore a sixth more instructions.
    #[inline]
    fn pop(&mut self) -> postcard::Result<u8> {
        if self.at == self.block.len() {
            self.next_block()?;
        }
        self.at += 1;
        Ok(self.block[self.at - 1])
    }

    fn try_take_n(&mut self, _: usize) -> postcard::Result<&'a [u8]> {
        Err(self.failed(Undecodable::Borrowed))
    }

    #[inline]
    fn try_take_n_temp<'b>(&'b mut self, count: usize) -> postcard::Result<&'b [u8]>
    where
        'a: 'b,
    {
        if count <= self.block.len() - self.at {
            self.at += count;
            return Ok(&self.block[self.at - count..self.at]);
        }
        self.spanning.clear();
        let mut wanted = count;
        loop {
            let taken = wanted.min(self.block.len() - self.at);
            self.spanning.extend_from_slice(&self.block[self.at..self.at + taken]);
            self.at += taken;
            wanted -= taken;
            if wanted == 0 {
                return Ok(&self.spanning);
            }
            self.next_block()?;
        }
    }

    fn finalize(self) -> postcard::Result<Option<Undecodable<E>>> {
        Ok(self.failure)
    }
}

/// Why compressed bytes cannot be read back.
#[derive(Debug, thiserror::Error)]
pub enum Corrupt {
    /// A block or its lengths end early.
    #[error("a compressed block is cut short")]
    Truncated,
    /// A block is not LZ4.
    #[error("a compressed block cannot be decompressed: {0}")]
    Block(lz4_flex::block::DecompressError),
    /// A block says it holds more than a piece, which no encoding writes.
    #[error("a compressed block says it holds {0} bytes, more than a piece")]
    Oversized(usize),
    /// A block holds another length than its header says.
    #[error("a compressed block holds {found} bytes, its header says {expected}")]
    Length {
        /// The length its header says.
        expected: usize,
        /// The length it holds.
        found: usize,
    },
}

/// A length as a block's header writes it, and the bytes after it.
fn header_length(bytes: &[u8]) -> Result<(usize, &[u8]), Corrupt> {
    let (length, rest) = bytes.split_first_chunk::<4>().ok_or(Corrupt::Truncated)?;
    Ok((u32::from_le_bytes(*length) as usize, rest))
}

/// `raw` compressed as one block, with its header. Compressed in `scratch`,
/// room for the worst case, and copied out: the block keeps no more memory
/// than its bytes.
fn block(raw: &[u8], scratch: &mut Vec<u8>) -> Bytes {
    let bound = 8 + lz4_flex::block::get_maximum_output_size(raw.len());
    if scratch.len() < bound {
        scratch.resize(bound, 0);
    }
    let length = lz4_flex::block::compress_into(raw, &mut scratch[8..]).expect("the output holds the worst case");
    let header = |value: usize| u32::try_from(value).expect("a piece is at most a mebibyte").to_le_bytes();
    scratch[..4].copy_from_slice(&header(length));
    scratch[4..8].copy_from_slice(&header(raw.len()));
    Bytes::copy_from_slice(&scratch[..8 + length])
}

/// The pieces' bytes, joined.
pub fn joined(pieces: &[Bytes]) -> Vec<u8> {
    let mut joined = Vec::with_capacity(pieces.iter().map(Bytes::len).sum());
    for piece in pieces {
        joined.extend_from_slice(piece);
    }
    joined
}

struct InPieces<'a> {
    done: Pieces,
    /// The bytes of `done`.
    done_bytes: usize,
    current: Vec<u8>,
    /// Compressing, the scratch buffer blocks are compressed in.
    compressed: Option<Vec<u8>>,
    spill: Option<Spill<'a>>,
}

impl<'a> InPieces<'a> {
    /// An empty encoding, compressed if given a scratch buffer, and spilled
    /// if given where to.
    fn new(compressed: Option<Vec<u8>>, spill: Option<Spill<'a>>) -> InPieces<'a> {
        InPieces { done: Vec::new(), done_bytes: 0, current: Vec::new(), compressed, spill }
    }

    fn push_done(&mut self, piece: Bytes) {
        self.done_bytes += piece.len();
        self.done.push(piece);
        if let Some(spill) = self.spill.as_mut()
            && self.done_bytes >= spill.chunk_bytes
        {
            self.done_bytes = 0;
            (spill.write)(std::mem::take(&mut self.done));
        }
    }

    /// Starts a new piece, each twice the last up to [`PIECE`].
    fn next_piece(&mut self) {
        let size = (self.current.capacity() * 2).clamp(FIRST_PIECE, PIECE);
        if let Some(scratch) = self.compressed.as_mut() {
            // The piece is copied into its block: its buffer holds the next.
            if !self.current.is_empty() {
                let block = block(&self.current, scratch);
                self.push_done(block);
            }
            self.current.clear();
            self.current.reserve_exact(size);
            return;
        }
        let full = std::mem::replace(&mut self.current, Vec::with_capacity(size));
        if !full.is_empty() {
            self.push_done(Bytes::from(full));
        }
    }
}

impl Flavor for InPieces<'_> {
    type Output = Pieces;

    fn try_push(&mut self, byte: u8) -> postcard::Result<()> {
        if self.current.len() == self.current.capacity() {
            self.next_piece();
        }
        self.current.push(byte);
        Ok(())
    }

    fn try_extend(&mut self, mut data: &[u8]) -> postcard::Result<()> {
        // Most writes are a varint or a short string: copied byte by byte,
        // they cost less than a call to copy them.
        if data.len() <= SHORT && self.current.capacity() - self.current.len() >= data.len() {
            for &byte in data {
                self.current.push(byte);
            }
            return Ok(());
        }
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
            let last = match self.compressed.as_mut() {
                Some(scratch) => block(&self.current, scratch),
                None => Bytes::from(std::mem::take(&mut self.current)),
            };
            self.push_done(last);
        }
        Ok(self.done)
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::marker::PhantomData;

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

    #[test]
    fn compressed_pieces_read_back_as_the_encoding_and_are_smaller() {
        let strings: Vec<String> = (0..200_000).map(|i| format!("resource-{i}")).collect();
        let plain = postcard::to_stdvec(&strings).unwrap();
        let compressed = encode_compressed(&strings);
        assert!(compressed.len() > 2, "several pieces, each a block");
        let joined = joined(&compressed);
        assert!(joined.len() < plain.len() / 2, "{} of {}", joined.len(), plain.len());
        assert_eq!(decompressed(&joined).unwrap(), plain);
        assert_eq!(decompressed(&super::joined(&compress(&plain))).unwrap(), plain, "compressed after encoding");
        assert_eq!(decompressed(&[]).unwrap(), Vec::<u8>::new());
    }

    #[test]
    fn a_spilled_encoding_is_its_chunks_then_the_blocks_left() {
        let strings: Vec<String> = (0..200_000).map(|i| format!("resource-{i}")).collect();
        let whole = joined(&encode_compressed(&strings));
        let chunk_bytes = 64 << 10;
        let mut chunks: Vec<Vec<u8>> = Vec::new();
        let mut write = |chunk: Pieces| chunks.push(joined(&chunk));
        let left = joined(&encode_compressed_spilling(&strings, Spill { chunk_bytes, write: &mut write }));
        assert!(chunks.len() > 2, "{} chunks", chunks.len());
        assert!(chunks.iter().all(|chunk| chunk.len() >= chunk_bytes));
        assert!(left.len() < chunk_bytes, "fewer bytes than a chunk are left: {}", left.len());
        let in_turn: Vec<&[u8]> = chunks.iter().map(Vec::as_slice).chain([&left[..]]).collect();
        assert_eq!(in_turn.concat(), whole, "the same blocks, cut between them");
        let in_turn = in_turn.into_iter().map(|blocks| Ok::<_, Infallible>(Cow::Borrowed(blocks)));
        let decoded: Vec<String> = decode_compressed(in_turn, PhantomData).unwrap();
        assert_eq!(decoded, strings);
        let mut everything = Vec::new();
        let mut write = |chunk: Pieces| everything.push(joined(&chunk));
        let left = encode_compressed_spilling(&strings, Spill { chunk_bytes: 1, write: &mut write });
        assert!(left.is_empty(), "every block a chunk of its own");
        assert_eq!(everything.concat(), whole);
    }

    #[test]
    fn a_value_decodes_from_blocks_one_at_a_time_across_their_bounds() {
        // Strings of every length up to a few hundred bytes: in blocks of a
        // mebibyte, some straddle two, and so do some of their lengths.
        let strings: Vec<String> = (0..40_000).map(|i| "x".repeat(i % 300)).collect();
        let mut chunks: Vec<Vec<u8>> = Vec::new();
        let mut write = |chunk: Pieces| chunks.push(joined(&chunk));
        let left = joined(&encode_compressed_spilling(&strings, Spill { chunk_bytes: 1, write: &mut write }));
        assert!(chunks.len() > 4, "{} blocks", chunks.len());
        let sequences = || chunks.iter().map(Vec::as_slice).chain([&left[..]]);
        let in_turn = || sequences().map(|blocks| Ok::<_, Infallible>(Cow::Borrowed(blocks)));
        let decoded: Vec<String> = decode_compressed(in_turn(), PhantomData).unwrap();
        assert_eq!(decoded, strings);
        let owned_and_empty = sequences().flat_map(|blocks| [Cow::Owned(Vec::new()), Cow::Owned(blocks.to_vec())]);
        let decoded: Vec<String> = decode_compressed(owned_and_empty.map(Ok::<_, Infallible>), PhantomData).unwrap();
        assert_eq!(decoded, strings);

        type Strings = PhantomData<Vec<String>>;
        let cut = decode_compressed::<Strings, _>(in_turn().take(2), PhantomData);
        assert!(matches!(cut, Err(Undecodable::Encoding(postcard::Error::DeserializeUnexpectedEnd))), "{cut:?}");
        let unread =
            sequences().enumerate().map(|(i, blocks)| if i == 2 { Err("gone") } else { Ok(Cow::Borrowed(blocks)) });
        let unread = decode_compressed::<Strings, _>(unread, PhantomData);
        assert!(matches!(unread, Err(Undecodable::Unread("gone"))), "{unread:?}");
        let mut garbled = chunks[1].clone();
        garbled[8..].fill(0xff);
        let garbled_in_turn = [&chunks[0][..], &garbled[..]].into_iter().chain(sequences().skip(2));
        let garbled = decode_compressed::<Strings, _>(
            garbled_in_turn.map(|b| Ok::<_, Infallible>(Cow::Borrowed(b))),
            PhantomData,
        );
        assert!(matches!(garbled, Err(Undecodable::Compressed(_))), "{garbled:?}");
        let borrowing = decode_compressed::<PhantomData<Vec<smol_str::SmolStr>>, _>(in_turn(), PhantomData);
        assert!(matches!(borrowing, Err(Undecodable::Borrowed)), "{borrowing:?}");
    }

    #[test]
    fn compressed_bytes_cut_or_altered_are_refused() {
        let plain = postcard::to_stdvec(&(0..10_000u32).collect::<Vec<_>>()).unwrap();
        let compressed = joined(&compress(&plain));
        assert!(matches!(decompressed(&compressed[..3]), Err(Corrupt::Truncated)));
        assert!(matches!(decompressed(&compressed[..compressed.len() - 1]), Err(Corrupt::Truncated)));
        let mut longer = compressed.clone();
        longer[4..8].copy_from_slice(&(plain.len() as u32 + 1).to_le_bytes());
        assert!(matches!(decompressed(&longer), Err(Corrupt::Length { .. }) | Err(Corrupt::Block(_))));
        let mut oversized = compressed.clone();
        oversized[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(decompressed(&oversized), Err(Corrupt::Oversized(_))));
        let mut garbled = compressed;
        garbled[8..].fill(0xff);
        assert!(decompressed(&garbled).is_err());
    }
}
