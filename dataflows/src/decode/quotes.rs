//! Where a message's quotes are, found sixteen bytes at a time.
//!
//! Scanning each string for its end a word at a time cost about 70
//! instructions a string, fifteen strings an event: a tenth of a worker's
//! instructions in the in-process bench. In a message with no backslash
//! and no control character, every string runs from a quote to the next
//! one, so one pass of SIMD comparisons over the whole message finds every
//! string's end at once, and the scanner looks each up in a few
//! instructions. A message with either (an escape, a tab or a line break
//! between tokens) gets no index, and the scanner reads it as before.

/// Messages up to this many bytes are indexed: the usual event is about
/// 350, and a longer one is scanned without an index.
const MAX_BYTES: usize = 1024;

/// A bit for each byte of a message that is a quote, 64 bytes to a word
/// (one more for a message of exactly [`MAX_BYTES`]: its empty tail).
pub(super) struct Quotes {
    words: [u64; MAX_BYTES / 64 + 1],
}

impl Quotes {
    /// Room for the quotes of one message, to be filled in place: returned
    /// by value, the index was copied, 136 bytes, for every message.
    pub(super) fn new() -> Quotes {
        Quotes { words: [0; MAX_BYTES / 64 + 1] }
    }

    /// Finds the quotes of `bytes` if it is at most [`MAX_BYTES`] long and
    /// has neither a backslash nor a byte below 0x20; `false` (and the
    /// index is not to be used) otherwise, and where SSE2 is not there to
    /// find them.
    pub(super) fn find(&mut self, bytes: &[u8]) -> bool {
        bytes.len() <= MAX_BYTES && mark(bytes, self)
    }

    /// The first quote at or after `from`, if there is one.
    #[inline(always)]
    pub(super) fn next(&self, from: usize) -> Option<usize> {
        let mut word = from / 64;
        let ahead = self.words.get(word)? >> (from % 64);
        if ahead != 0 {
            return Some(from + ahead.trailing_zeros() as usize);
        }
        loop {
            word += 1;
            let bits = *self.words.get(word)?;
            if bits != 0 {
                return Some(word * 64 + bits.trailing_zeros() as usize);
            }
        }
    }
}

/// Marks the quotes of `bytes` (at most [`MAX_BYTES`]) in `quotes`; false
/// if it has a backslash or a control character.
#[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
fn mark(bytes: &[u8], quotes: &mut Quotes) -> bool {
    use safe_arch::{
        bitor_m128i, cmp_eq_mask_i8_m128i, load_unaligned_m128i, min_u8_m128i, move_mask_i8_m128i, set_splat_i8_m128i,
    };
    let (quote, backslash) = (set_splat_i8_m128i(b'"' as i8), set_splat_i8_m128i(b'\\' as i8));
    // Every byte's minimum and every backslash found, checked once at the end.
    let (mut least, mut backslashes) = (set_splat_i8_m128i(-1), set_splat_i8_m128i(0));
    let mut word = |chunk: &[u8; 64]| {
        let mut found = 0;
        for (i, sixteen) in chunk.chunks_exact(16).enumerate() {
            let bytes = load_unaligned_m128i(sixteen.try_into().expect("sixteen bytes"));
            found |= u64::from(move_mask_i8_m128i(cmp_eq_mask_i8_m128i(bytes, quote)) as u16) << (16 * i);
            least = min_u8_m128i(least, bytes);
            backslashes = bitor_m128i(backslashes, cmp_eq_mask_i8_m128i(bytes, backslash));
        }
        found
    };
    let mut chunks = bytes.chunks_exact(64);
    for (slot, chunk) in quotes.words.iter_mut().zip(&mut chunks) {
        *slot = word(chunk.try_into().expect("64 bytes"));
    }
    let tail = chunks.remainder().len();
    quotes.words[bytes.len() / 64] = match bytes.last_chunk::<64>() {
        // The last 64 bytes, of which those before the tail were read already.
        Some(last) if tail > 0 => word(last) >> (64 - tail),
        Some(_) => 0,
        // Padded with spaces: neither a quote nor odd.
        None => {
            let mut padded = [b' '; 64];
            padded[..tail].copy_from_slice(bytes);
            word(&padded)
        }
    };
    let control = cmp_eq_mask_i8_m128i(min_u8_m128i(least, set_splat_i8_m128i(0x1f)), least);
    move_mask_i8_m128i(bitor_m128i(control, backslashes)) == 0
}

#[cfg(not(all(target_arch = "x86_64", target_feature = "sse2")))]
fn mark(_: &[u8], _: &mut Quotes) -> bool {
    false
}

#[cfg(all(test, target_arch = "x86_64", target_feature = "sse2"))]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn quotes_at_the_ends_of_words_and_messages_are_found() {
        for len in [1, 15, 16, 17, 63, 64, 65, 127, 128, 129, 1023, 1024] {
            for quoted in [0, len / 2, len - 1] {
                let mut bytes = vec![b'a'; len];
                bytes[quoted] = b'"';
                bytes[len - 1] = b'"';
                let mut quotes = Quotes::new();
                assert!(quotes.find(&bytes), "{len} bytes");
                assert_eq!(quotes.next(0), Some(quoted), "{len} bytes, a quote at {quoted}");
                assert_eq!(quotes.next(quoted + 1), (quoted + 1 < len).then_some(len - 1), "{len} bytes");
                assert_eq!(quotes.next(len), None, "{len} bytes");
            }
        }
        assert!(!Quotes::new().find(&[b'"'; MAX_BYTES + 1]), "longer than an index holds");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1024))]

        #[test]
        fn every_quote_is_found_in_a_message_without_odd_bytes(
            bytes in proptest::collection::vec(
                prop::sample::select(vec![b'a', b'"', b'"', b'\\', 0x00, 0x1f, 0x20, 0x7f, 0x80, 0xe9, 0xff, b'{', b':']),
                0..1100,
            ),
            odd_free in any::<bool>(),
        ) {
            let bytes: Vec<u8> =
                if odd_free { bytes.into_iter().filter(|&b| b != b'\\' && b >= 0x20).collect() } else { bytes };
            let indexable = bytes.len() <= MAX_BYTES && bytes.iter().all(|&b| b != b'\\' && b >= 0x20);
            let mut quotes = Quotes::new();
            prop_assert_eq!(quotes.find(&bytes), indexable);
            if indexable {
                for from in 0..=bytes.len() + 1 {
                    let next = bytes.iter().skip(from).position(|&b| b == b'"').map(|i| from + i);
                    prop_assert_eq!(quotes.next(from), next, "from {}", from);
                }
            }
        }
    }
}
