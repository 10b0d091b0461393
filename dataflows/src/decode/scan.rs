//! The fast path of decoding: events of the usual shape, read in one pass
//! over the text.
//!
//! Decoding was the largest cost of a drain (a third of the workers'
//! samples; nearly half of their instructions in the in-process bench, two
//! thirds of that in serde_json's generic parsing: a visitor per field, an
//! `Option` per value, the quantities read twice). Nearly every event is an object of plain
//! strings, with `data`, `data.quantities` and `data.labels` objects of plain
//! strings. This path reads exactly those and gives up on anything else: an
//! escape, a control character, `null`, a number, an array, a repeated
//! field, trailing text. Giving up decides nothing: the general parser then
//! reads the message and names what is wrong with it, or decodes it. So
//! whenever this path reads an event, it reads what the general parser
//! reads (a property test holds the two to that), and rejections keep the
//! general parser's wording.

use std::borrow::Cow;

use smallvec::SmallVec;

use super::quotes::Quotes;
use super::{Quantities, RawData, RawEvent, Text};

/// Reads the fields of `text` into `event` (its default) if it is an event
/// of the usual shape; `None` otherwise, leaving `event` partly read.
pub(super) fn event<'a>(text: &'a str, event: &mut RawEvent<'a>) -> Option<()> {
    let mut quotes = Quotes::new();
    let quotes = quotes.find(text.as_bytes()).then_some(&quotes);
    let mut cursor = Cursor { text, at: 0, quotes };
    cursor.members(
        |cursor| cursor.key(&EVENT_KEYS),
        |cursor, key| {
            let slot = match key {
                Some(EventKey::SpecVersion) => &mut event.specversion,
                Some(EventKey::Id) => &mut event.id,
                Some(EventKey::Source) => &mut event.source,
                Some(EventKey::Type) => &mut event.kind,
                Some(EventKey::Time) => &mut event.time,
                Some(EventKey::Subject) => &mut event.subject,
                Some(EventKey::Data) => {
                    // Read in place: the data is a large part of the event.
                    return match &mut event.data {
                        Some(_) => None,
                        data => cursor.data(data.insert(RawData::default())),
                    };
                }
                None => return cursor.string().map(drop),
            };
            put(slot, Text(Cow::Borrowed(cursor.string()?)))
        },
    )?;
    cursor.skip_whitespace();
    (cursor.at == text.len()).then_some(())
}

/// The members of an event the fast path reads.
#[derive(Clone, Copy)]
enum EventKey {
    SpecVersion,
    Id,
    Source,
    Type,
    Time,
    Subject,
    Data,
}

const EVENT_KEYS: [(Known, EventKey); 7] = [
    (Known::of("specversion"), EventKey::SpecVersion),
    (Known::of("id"), EventKey::Id),
    (Known::of("source"), EventKey::Source),
    (Known::of("type"), EventKey::Type),
    (Known::of("time"), EventKey::Time),
    (Known::of("subject"), EventKey::Subject),
    (Known::of("data"), EventKey::Data),
];

/// The members of `data` the fast path reads.
#[derive(Clone, Copy)]
enum DataKey {
    AccountId,
    ProjectId,
    Region,
    Quantities,
    Labels,
}

const DATA_KEYS: [(Known, DataKey); 5] = [
    (Known::of("account_id"), DataKey::AccountId),
    (Known::of("quantities"), DataKey::Quantities),
    (Known::of("project_id"), DataKey::ProjectId),
    (Known::of("region"), DataKey::Region),
    (Known::of("labels"), DataKey::Labels),
];

/// A key the fast path knows, as the bytes that follow its opening quote:
/// its name and the closing quote, in two little-endian words, and which
/// of their bytes those are. Read as any string and then compared, a key
/// cost a scan for its end and a comparison of strings, about a hundred
/// instructions; matched against these, two masked comparisons per
/// candidate.
#[derive(Clone, Copy)]
struct Known {
    words: [u64; 2],
    masks: [u64; 2],
    name: &'static str,
}

impl Known {
    /// `name` is plain (no quote, backslash or control character) and
    /// shorter than 16 bytes.
    const fn of(name: &'static str) -> Known {
        let bytes = name.as_bytes();
        assert!(bytes.len() < 16);
        let (mut words, mut masks) = ([0u64; 2], [0u64; 2]);
        let mut i = 0;
        while i <= bytes.len() {
            let byte = if i < bytes.len() { bytes[i] } else { b'"' };
            assert!(byte != b'\\' && byte >= 0x20 && (byte != b'"' || i == bytes.len()));
            words[i / 8] |= (byte as u64) << (8 * (i % 8));
            masks[i / 8] |= 0xff << (8 * (i % 8));
            i += 1;
        }
        Known { words, masks, name }
    }
}

/// Sets a field read for the first time; a repeated field is the general
/// parser's to reject.
fn put<T>(slot: &mut Option<T>, value: T) -> Option<()> {
    match slot {
        Some(_) => None,
        None => {
            *slot = Some(value);
            Some(())
        }
    }
}

struct Cursor<'a, 'q> {
    text: &'a str,
    at: usize,
    /// The text's quotes, when every string in it runs to the next quote.
    quotes: Option<&'q Quotes>,
}

impl<'a> Cursor<'a, '_> {
    fn skip_whitespace(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.text.as_bytes().get(self.at) {
            self.at += 1;
        }
    }

    /// The next byte that is not whitespace, consumed.
    fn next(&mut self) -> Option<u8> {
        self.skip_whitespace();
        let byte = *self.text.as_bytes().get(self.at)?;
        self.at += 1;
        Some(byte)
    }

    fn expect(&mut self, byte: u8) -> Option<()> {
        // Most messages are compact: the byte is right there. Looking past
        // whitespace first, three times for each member of an object, was
        // a tenth of decoding (630 instructions an event).
        if self.text.as_bytes().get(self.at) == Some(&byte) {
            self.at += 1;
            return Some(());
        }
        (self.next()? == byte).then_some(())
    }

    /// A string without escapes or control characters, borrowed. Inlined:
    /// fifteen are read an event, and the calls cost 70 instructions.
    #[inline(always)]
    fn string(&mut self) -> Option<&'a str> {
        self.expect(b'"')?;
        let start = self.at;
        self.at = match self.quotes {
            Some(quotes) => quotes.next(start)?,
            None => start + plain_run(&self.text.as_bytes()[start..]),
        };
        match *self.text.as_bytes().get(self.at)? {
            b'"' => {
                let string = self.text.get(start..self.at)?;
                self.at += 1;
                Some(string)
            }
            _ => None,
        }
    }

    /// The key at the cursor, if it is one of `known` (`None` if another):
    /// what [`Cursor::string`] would read, without scanning for its end
    /// when it is known and 16 bytes of text follow its opening quote.
    fn key<K: Copy>(&mut self, known: &[(Known, K)]) -> Option<Option<K>> {
        self.expect(b'"')?;
        if let Some(ahead) = self.text.as_bytes().get(self.at..self.at + 16) {
            let word = |i: usize| u64::from_le_bytes(ahead[8 * i..8 * i + 8].try_into().expect("eight bytes"));
            let (first, second) = (word(0), word(1));
            for &(name, key) in known {
                if first & name.masks[0] == name.words[0] && second & name.masks[1] == name.words[1] {
                    self.at += name.name.len() + 1;
                    return Some(Some(key));
                }
            }
        }
        self.at -= 1;
        let key = self.string()?;
        Some(known.iter().find(|(name, _)| name.name == key).map(|&(_, key)| key))
    }

    /// An object: `key` reads each key, and `member` the value after it.
    fn members<K>(
        &mut self,
        mut key: impl FnMut(&mut Self) -> Option<K>,
        mut member: impl FnMut(&mut Self, K) -> Option<()>,
    ) -> Option<()> {
        self.expect(b'{')?;
        self.skip_whitespace();
        if self.text.as_bytes().get(self.at) == Some(&b'}') {
            self.at += 1;
            return Some(());
        }
        loop {
            let key = key(self)?;
            self.expect(b':')?;
            member(self, key)?;
            match self.next()? {
                b',' => {}
                b'}' => return Some(()),
                _ => return None,
            }
        }
    }

    /// `data`, read into `data` (its default).
    fn data(&mut self, data: &mut RawData<'a>) -> Option<()> {
        self.members(
            |cursor| cursor.key(&DATA_KEYS),
            |cursor, key| {
                let slot = match key {
                    Some(DataKey::AccountId) => &mut data.account_id,
                    Some(DataKey::ProjectId) => &mut data.project_id,
                    Some(DataKey::Region) => &mut data.region,
                    Some(DataKey::Quantities) => {
                        let mut pairs = SmallVec::new();
                        cursor.strings(|name, text| {
                            let repeated = pairs.iter().any(|&(held, _)| held == name);
                            (!repeated).then(|| pairs.push((name, text)))
                        })?;
                        return put(&mut data.quantities, Quantities::Scanned(pairs));
                    }
                    Some(DataKey::Labels) => {
                        // Only the text is kept: labels are written out only
                        // when metadata is met for the first time.
                        let start = cursor.at;
                        let mut keys: SmallVec<[&str; 8]> = SmallVec::new();
                        cursor.strings(|key, _| (!keys.contains(&key)).then(|| keys.push(key)))?;
                        return put(&mut data.labels_text, cursor.text.get(start..cursor.at)?);
                    }
                    None => return cursor.string().map(drop),
                };
                put(slot, Text(Cow::Borrowed(cursor.string()?)))
            },
        )?;
        // No labels are written as nothing, which no labels object is.
        data.labels_text.get_or_insert("");
        Some(())
    }

    /// An object of strings, each key and value given to `pair`, which
    /// gives up by returning `None`.
    fn strings(&mut self, mut pair: impl FnMut(&'a str, &'a str) -> Option<()>) -> Option<()> {
        self.members(Cursor::string, |cursor, key| pair(key, cursor.string()?))
    }
}

/// The labels of `text`, an object of plain strings with no key repeated
/// that the fast path read.
pub(super) fn labels(text: &str) -> Vec<(Text<'_>, Text<'_>)> {
    let mut pairs = Vec::new();
    Cursor { text, at: 0, quotes: None }
        .strings(|key, value| {
            pairs.push((Text(Cow::Borrowed(key)), Text(Cow::Borrowed(value))));
            Some(())
        })
        .expect("labels the fast path read");
    pairs
}

/// How many bytes at the start of `bytes` may stand in a string as they
/// are: up to the first quote, backslash or control character. Eight bytes
/// at a time: strings are most of an event's bytes.
pub(super) fn plain_run(bytes: &[u8]) -> usize {
    const ONES: u64 = u64::from_ne_bytes([1; 8]);
    const HIGH: u64 = u64::from_ne_bytes([0x80; 8]);
    // Marks the bytes below `n` (n <= 0x80); a mark can be wrong only above
    // a right one, so the lowest mark is exact.
    let below = |word: u64, n: u8| word.wrapping_sub(ONES * u64::from(n)) & !word & HIGH;
    let mut at = 0;
    while let Some(chunk) = bytes.get(at..at + 8) {
        let word = u64::from_le_bytes(chunk.try_into().expect("eight bytes"));
        let marks =
            below(word ^ (ONES * u64::from(b'"')), 1) | below(word ^ (ONES * u64::from(b'\\')), 1) | below(word, 0x20);
        if marks != 0 {
            return at + marks.trailing_zeros() as usize / 8;
        }
        at += 8;
    }
    at + bytes[at..].iter().position(|&b| b == b'"' || b == b'\\' || b < 0x20).unwrap_or(bytes.len() - at)
}
