//! A worker's resources as a checkpoint holds them: each distinct metadata
//! once, in a table, and every event and folded past naming it by its place
//! there. Formats before 6 also held the rows last emitted, which a
//! resource now recomputes (see [`super::Emitted`]); they are read and
//! dropped.
//!
//! A resource's events nearly all carry the metadata of the one before, and the resources of one account and project share it (see
//! [`crate::intern`]). Written out at each use, it was about half of a
//! checkpoint's usage part; restored from the table, resources share it
//! again as they did before the checkpoint.
//!
//! Metadata is told apart by its allocation, not its value: equal copies
//! held apart (decoded on different workers) take a place each, which costs
//! bytes, never correctness.

use std::borrow::Borrow;
use std::cell::Cell;
use std::fmt;
use std::sync::Arc;

use serde::de::{Deserialize, DeserializeSeed, Deserializer, Error as _, SeqAccess, Visitor};
use serde::ser::{Serialize, SerializeSeq, SerializeTuple, Serializer};

use super::sorted::SortedMap;
use super::{Counted, Entry, Held, Resource, Resources};
use crate::checkpoint::pieces::{self, Pieces, Spill};
use crate::event::{EventKind, EventOrder, Meta, Quantities, ResourceKey};
use crate::fixed::{Amount, Quantity};
use crate::intern::Interner;
use crate::prices::SkuId;
use crate::time::Millis;

/// Encodes `resources` with their metadata in a table. A checkpoint holds
/// that encoding compressed ([`Stored::compressed`], [`encode_letting_go`]).
pub struct Stored<'a>(pub &'a Resources);

impl Stored<'_> {
    /// The encoding, compressed as a checkpoint holds it.
    pub fn compressed(&self) -> Pieces {
        pieces::encode_compressed(self)
    }
}

impl Serialize for Stored<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let places = Places::gather(self.0.iter().map(Held::resource));
        write(&places, Entries::new(self.0.iter(), self.0.len(), &places), serializer)
    }
}

/// A copy of a worker's resources, taken for a snapshot: their handles
/// without the map's spare room, sharing the resources with the worker
/// until the worker changes them.
///
/// The handles are copied in pieces of [`COPIED_PIECE`], and the encoding
/// lets go of each piece once it has written it, so that the resources of
/// a piece written are the worker's alone again.
pub struct Copied {
    pieces: Vec<Vec<Held>>,
    len: usize,
}

/// Handles in a piece of a [`Copied`]: 128 KiB each.
const COPIED_PIECE: usize = 16_384;

impl Copied {
    /// How many resources were copied.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether none were.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn resources(&self) -> impl Iterator<Item = &Resource> {
        self.pieces.iter().flatten().map(Held::resource)
    }
}

/// The handles of `resources`, copied for a snapshot.
pub fn copied(resources: &Resources) -> Copied {
    let mut entries = resources.iter().cloned();
    let pieces = std::iter::from_fn(|| Some(entries.by_ref().take(COPIED_PIECE).collect::<Vec<_>>()))
        .take_while(|piece| !piece.is_empty())
        .collect();
    Copied { pieces, len: resources.len() }
}

/// Encodes `resources` as [`Stored::compressed`] encodes the map they were
/// copied from, letting go of each resource once it is written; given a
/// spill, its blocks leave a chunk at a time and those after the last chunk
/// are returned.
///
/// The worker copies a resource it changes while a snapshot still holds it.
/// Let go as soon as written, a resource the snapshot has passed is the
/// worker's alone again, and one the worker copied meanwhile is freed.
pub fn encode_letting_go(resources: Copied, spill: Option<Spill<'_>>) -> Pieces {
    let places = Places::gather(resources.resources());
    let letting_go = LettingGo(Cell::new(Some(resources)), &places);
    match spill {
        Some(spill) => pieces::encode_compressed_spilling(&letting_go, spill),
        None => pieces::encode_compressed(&letting_go),
    }
}

struct LettingGo<'p>(Cell<Option<Copied>>, &'p Places);

impl Serialize for LettingGo<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let Copied { pieces, len } = self.0.take().expect("a snapshot is encoded once");
        // Flattened, a piece is dropped as soon as the next one is begun.
        write(self.1, Entries::new(pieces.into_iter().flatten(), len, self.1), serializer)
    }
}

/// Writes the metadata table, then the resources.
fn write<S: Serializer>(places: &Places, resources: impl Serialize, serializer: S) -> Result<S::Ok, S::Error> {
    let mut pair = serializer.serialize_tuple(2)?;
    pair.serialize_element(&places.table)?;
    pair.serialize_element(&resources)?;
    pair.end()
}

/// Places in the metadata table, by allocation.
#[derive(Default)]
struct Places {
    place: foldhash::HashMap<*const Meta, u32>,
    table: Vec<Arc<Meta>>,
}

impl Places {
    /// The table of every metadata `resources` hold.
    fn gather<'r>(resources: impl Iterator<Item = &'r Resource>) -> Places {
        let mut places = Places::default();
        for resource in resources {
            resource.base_meta.iter().for_each(|meta| places.add(meta));
            resource.events.entries().iter().for_each(|(_, entry)| places.add(&entry.meta));
            for (_, counted) in resource.counted.entries() {
                places.add(&counted.latest.1);
                counted.at_start.iter().for_each(|held| places.add(&held.1));
            }
        }
        places
    }

    fn add(&mut self, meta: &Arc<Meta>) {
        let next = u32::try_from(self.table.len()).expect("fewer than 2^32 distinct metadata per worker");
        self.place.entry(Arc::as_ptr(meta)).or_insert_with(|| {
            self.table.push(Arc::clone(meta));
            next
        });
    }

    fn of(&self, meta: &Arc<Meta>) -> u32 {
        self.place[&Arc::as_ptr(meta)]
    }
}

/// How one resource is written: its gauge quantities in force, the place of
/// its folded past's metadata, its gauge events and its windows of counters.
type Written<'r> = (&'r [(SkuId, Quantity)], Option<u32>, EventsWritten<'r>, CountedWritten<'r>);
/// How one resource is read back (the same layout, owned).
type Read = (Vec<(SkuId, Quantity)>, Option<u32>, Vec<EventRead>, Vec<CountedRead>);
type EventRead = (EventOrder, (EventKind, Vec<(SkuId, Quantity)>, u32));
type CountedRead = (Millis, (Vec<(SkuId, i128)>, Millis, (EventOrder, u32), Option<(EventOrder, u32)>));
/// A row last emitted, as formats 3 to 5 held it.
type RowRead = ((Millis, SkuId), (Amount, Amount, u32));

struct EventsWritten<'r>(&'r [(EventOrder, Entry)], &'r Places);
struct CountedWritten<'r>(&'r [(Millis, Counted)], &'r Places);

impl Serialize for EventsWritten<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let places = self.1;
        serializer.collect_seq(self.0.iter().map(|(order, e)| (order, (e.kind, &e.quantities, places.of(&e.meta)))))
    }
}

impl Serialize for CountedWritten<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let places = self.1;
        serializer.collect_seq(self.0.iter().map(|(window, c)| {
            let at_start = c.at_start.as_deref().map(|(order, meta)| (order, places.of(meta)));
            (window, (&c.sums, c.first, (&c.latest.0, places.of(&c.latest.1)), at_start))
        }))
    }
}

/// The `len` resources `I` yields, each with its key, written in that
/// order and dropped once written.
struct Entries<'p, I> {
    entries: Cell<Option<I>>,
    len: usize,
    places: &'p Places,
}

impl<'p, I> Entries<'p, I> {
    fn new(entries: I, len: usize, places: &'p Places) -> Self {
        Entries { entries: Cell::new(Some(entries)), len, places }
    }
}

impl<I, K> Serialize for Entries<'_, I>
where
    I: Iterator<Item = K>,
    K: Borrow<Held>,
{
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let entries = self.entries.take().expect("resources are written once");
        let places = self.places;
        let mut seq = serializer.serialize_seq(Some(self.len))?;
        for held in entries {
            let held: &Held = held.borrow();
            let (key, r) = (held.key(), held.resource());
            let written: Written<'_> = (
                &r.base[..],
                r.base_meta.as_ref().map(|meta| places.of(meta)),
                EventsWritten(r.events.entries(), places),
                CountedWritten(r.counted.entries(), places),
            );
            seq.serialize_element(&(key, written))?;
        }
        seq.end()
    }
}

/// Resources read back from what [`Stored`] wrote, sharing their metadata
/// and gauge quantities.
pub struct Loaded(pub Vec<(ResourceKey, Resource)>);

impl<'de> Deserialize<'de> for Loaded {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let (table, read) = <(Vec<Meta>, Vec<(ResourceKey, Read)>)>::deserialize(deserializer)?;
        Loaded::of(table, read).map_err(D::Error::custom)
    }
}

/// Reads what [`Stored`] wrote as it goes, each resource made as soon as it
/// is read and put `into` the map if its key passes `keep`; the value is
/// how many were read. A restore reads a worker's resources so, from one
/// compressed block at a time, and holds nothing of those it drops.
pub struct Loading<'r, F> {
    /// Whether a resource is kept.
    pub keep: F,
    /// Where the resources kept go.
    pub into: &'r mut Resources,
}

impl<'de, F: Fn(&ResourceKey) -> bool> DeserializeSeed<'de> for Loading<'_, F> {
    type Value = usize;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<usize, D::Error> {
        deserializer.deserialize_tuple(2, self)
    }
}

impl<'de, F: Fn(&ResourceKey) -> bool> Visitor<'de> for Loading<'_, F> {
    type Value = usize;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("a metadata table, then resources")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<usize, A::Error> {
        let table: Vec<Meta> = seq.next_element()?.ok_or_else(|| A::Error::invalid_length(0, &self))?;
        let table: Vec<Arc<Meta>> = table.into_iter().map(Arc::new).collect();
        let each = EachResource { table: &table, loading: self };
        seq.next_element_seed(each)?.ok_or_else(|| A::Error::custom("no resources after the metadata table"))
    }
}

/// The resources after the metadata table, made and kept or dropped one
/// by one.
struct EachResource<'t, 'r, F> {
    table: &'t [Arc<Meta>],
    loading: Loading<'r, F>,
}

impl<'de, F: Fn(&ResourceKey) -> bool> DeserializeSeed<'de> for EachResource<'_, '_, F> {
    type Value = usize;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<usize, D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de, F: Fn(&ResourceKey) -> bool> Visitor<'de> for EachResource<'_, '_, F> {
    type Value = usize;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("resources")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<usize, A::Error> {
        let Loading { keep, into } = self.loading;
        // Room for the count the encoding gives, up to a bound (a garbled
        // count must not take memory it never fills), for the first part
        // read only: a restore under another worker count reads every
        // worker's part and keeps some of each.
        if into.is_empty() {
            into.reserve(seq.size_hint().unwrap_or(0).min(1 << 20));
        }
        // Gauge quantities read back are shared, as decoding shares them.
        let mut shapes = Interner::default();
        let mut read = 0;
        while let Some((key, resource)) = seq.next_element::<(ResourceKey, Read)>()? {
            read += 1;
            if keep(&key) {
                let resource = made(self.table, &mut shapes, resource).map_err(A::Error::custom)?;
                into.insert(key, resource);
            }
        }
        Ok(read)
    }
}

impl Loaded {
    /// The resources `read` describes, their metadata at places in `table`.
    fn of(table: Vec<Meta>, read: Vec<(ResourceKey, Read)>) -> Result<Loaded, String> {
        let table: Vec<Arc<Meta>> = table.into_iter().map(Arc::new).collect();
        let mut shapes = Interner::default();
        let mut resources = Vec::with_capacity(read.len());
        for (key, resource) in read {
            resources.push((key, made(&table, &mut shapes, resource)?));
        }
        Ok(Loaded(resources))
    }
}

/// The resource `read` describes, its metadata at places in `table`.
fn made(table: &[Arc<Meta>], shapes: &mut Interner, read: Read) -> Result<Resource, String> {
    let (base, base_meta, events, counted) = read;
    let meta = |place: u32| {
        let found = usize::try_from(place).ok().and_then(|p| table.get(p));
        found.cloned().ok_or_else(|| format!("metadata place {place} of {}", table.len()))
    };
    let sorted = |what: &str| format!("{what} not sorted by key");
    let events = events
        .into_iter()
        .map(|(order, (kind, quantities, place))| {
            if !kind.is_gauge() {
                return Err("a counter event among the gauge events".to_string());
            }
            Ok((order, Entry { kind, quantities: shapes.quantities(&quantities), meta: meta(place)? }))
        })
        .collect::<Result<Vec<_>, String>>()?;
    let counted = counted
        .into_iter()
        .map(|(window, (sums, first, (order, place), at_start))| {
            let at_start = match at_start {
                Some((order, place)) => Some(Box::new((order, meta(place)?))),
                None => None,
            };
            Ok((window, Counted { sums, first, latest: (order, meta(place)?), at_start }))
        })
        .collect::<Result<Vec<_>, String>>()?;
    Ok(Resource {
        base: shapes.quantities(&base),
        base_meta: base_meta.map(meta).transpose()?,
        events: SortedMap::from_sorted(events).ok_or_else(|| sorted("events"))?,
        counted: SortedMap::from_sorted(counted).ok_or_else(|| sorted("windows of counters"))?,
    })
}

impl Resource {
    /// A resource as formats 2 to 4 held it, every event one by one.
    fn of_events(base: Quantities, base_meta: Option<Arc<Meta>>, events: Vec<(EventOrder, Entry)>) -> Option<Resource> {
        let events = SortedMap::from_sorted(events)?;
        let mut resource = Resource { base, base_meta, ..Resource::default() };
        let (gauges, counters): (Vec<_>, Vec<_>) =
            events.into_entries().into_iter().partition(|(_, entry)| entry.kind.is_gauge());
        resource.events = SortedMap::from_sorted(gauges)?;
        for (order, entry) in counters {
            resource.count(order, &entry.quantities, entry.meta);
        }
        Some(resource)
    }
}

/// How format 5 wrote a resource: as [`Read`], and the rows last emitted.
type ReadFormat5 = (Vec<(SkuId, Quantity)>, Option<u32>, Vec<EventRead>, Vec<CountedRead>, Vec<RowRead>);

/// How formats 3 and 4 wrote a resource: every event in one list, and the
/// rows last emitted.
type ReadFormat4 = (Vec<(SkuId, Quantity)>, Option<u32>, Vec<EventRead>, Vec<RowRead>);

/// How format 2 wrote a resource: as [`Read`], with the metadata itself at
/// each place.
type ReadFormat2 = (
    Vec<(SkuId, Quantity)>,
    Option<Meta>,
    Vec<(EventOrder, (EventKind, Vec<(SkuId, Quantity)>, Meta))>,
    Vec<RowFormat2>,
);
type RowFormat2 = ((Millis, SkuId), (Amount, Amount, Meta));

impl Loaded {
    /// Reads a usage part as checkpoint format 5 wrote it, dropping the rows.
    pub fn from_format_5(bytes: &[u8]) -> Result<Loaded, postcard::Error> {
        let (table, read): (Vec<Meta>, Vec<(ResourceKey, ReadFormat5)>) = postcard::from_bytes(bytes)?;
        let read = read
            .into_iter()
            .map(|(key, (base, base_meta, events, counted, _rows))| (key, (base, base_meta, events, counted)))
            .collect();
        Loaded::of(table, read).map_err(|_| postcard::Error::SerdeDeCustom)
    }

    /// Reads a usage part as checkpoint format 2 wrote it (each use of
    /// metadata written out), sharing equal metadata as interning would.
    pub fn from_format_2(bytes: &[u8]) -> Result<Loaded, postcard::Error> {
        let read: Vec<(ResourceKey, ReadFormat2)> = postcard::from_bytes(bytes)?;
        let mut shared: foldhash::HashMap<Meta, Arc<Meta>> = foldhash::HashMap::default();
        let mut meta = |meta: Meta| Arc::clone(shared.entry(meta).or_insert_with_key(|meta| Arc::new(meta.clone())));
        let mut shapes = Interner::default();
        let mut resources = Vec::with_capacity(read.len());
        for (key, (base, base_meta, events, _rows)) in read {
            let events = events
                .into_iter()
                .map(|(order, (kind, quantities, m))| {
                    (order, Entry { kind, quantities: shapes.quantities(&quantities), meta: meta(m) })
                })
                .collect();
            let base = shapes.quantities(&base);
            let resource =
                Resource::of_events(base, base_meta.map(&mut meta), events).ok_or(postcard::Error::SerdeDeCustom)?;
            resources.push((key, resource));
        }
        Ok(Loaded(resources))
    }

    /// Reads a usage part as checkpoint formats 3 and 4 wrote it (every
    /// event held one by one, counters too), summing the counters per window.
    pub fn from_format_4(bytes: &[u8]) -> Result<Loaded, postcard::Error> {
        let (table, read): (Vec<Meta>, Vec<(ResourceKey, ReadFormat4)>) = postcard::from_bytes(bytes)?;
        let table: Vec<Arc<Meta>> = table.into_iter().map(Arc::new).collect();
        let meta = |place: u32| usize::try_from(place).ok().and_then(|p| table.get(p)).cloned();
        let mut shapes = Interner::default();
        let mut resources = Vec::with_capacity(read.len());
        for (key, (base, base_meta, events, _rows)) in read {
            let events = events
                .into_iter()
                .map(|(order, (kind, quantities, place))| {
                    Some((order, Entry { kind, quantities: shapes.quantities(&quantities), meta: meta(place)? }))
                })
                .collect::<Option<Vec<_>>>();
            let base = shapes.quantities(&base);
            let base_meta = match base_meta {
                Some(place) => Some(meta(place).ok_or(postcard::Error::SerdeDeCustom)?),
                None => None,
            };
            let resource = events
                .and_then(|events| Resource::of_events(base, base_meta, events))
                .ok_or(postcard::Error::SerdeDeCustom)?;
            resources.push((key, resource));
        }
        Ok(Loaded(resources))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loaded(table: Vec<Meta>, resources: Vec<(ResourceKey, Read)>) -> Result<Loaded, postcard::Error> {
        postcard::from_bytes(&postcard::to_stdvec(&(table, resources)).unwrap())
    }

    fn order(time: Millis, id: &str) -> EventOrder {
        EventOrder { time, id: id.into(), source: "s".into() }
    }

    #[test]
    fn an_empty_state_round_trips() {
        let Loaded(resources) =
            postcard::from_bytes(&postcard::to_stdvec(&Stored(&Resources::default())).unwrap()).unwrap();
        assert!(resources.is_empty());
    }

    // postcard keeps no message for an error of the data's own: each case
    // is checked against the same data made whole, which reads back.

    #[test]
    fn a_place_outside_the_table_is_refused() {
        let with_place = |place| vec![(ResourceKey::default(), (Vec::new(), Some(place), Vec::new(), Vec::new()))];
        assert!(loaded(vec![Meta::default()], with_place(0)).is_ok());
        assert!(matches!(loaded(vec![Meta::default()], with_place(1)), Err(postcard::Error::SerdeDeCustom)));
    }

    #[test]
    fn events_out_of_order_are_refused() {
        let with_events = |first, second| {
            let event = |order| (order, (EventKind::Started, Vec::new(), 0));
            vec![(ResourceKey::default(), (Vec::new(), None, vec![event(first), event(second)], Vec::new()))]
        };
        assert!(loaded(vec![Meta::default()], with_events(order(1, "a"), order(2, "b"))).is_ok());
        let reversed = loaded(vec![Meta::default()], with_events(order(2, "b"), order(1, "a")));
        assert!(matches!(reversed, Err(postcard::Error::SerdeDeCustom)));
        let twice = loaded(vec![Meta::default()], with_events(order(1, "a"), order(1, "a")));
        assert!(matches!(twice, Err(postcard::Error::SerdeDeCustom)));
    }

    #[test]
    fn a_usage_part_of_format_5_reads_without_its_rows() {
        let table = vec![Meta::default(), Meta { project_id: "p".into(), ..Meta::default() }];
        let event = (order(1, "a"), (EventKind::Started, vec![(SkuId(0), Quantity::parse("2").unwrap())], 1));
        let counted = vec![(0, (vec![(SkuId(1), 5)], 0, (order(0, "b"), 0), Some((order(0, "b"), 0))))];
        let row: RowRead = ((0, SkuId(0)), (Amount::from_scaled(7).unwrap(), Amount::from_scaled(1).unwrap(), 1));
        let format_5: Vec<(ResourceKey, ReadFormat5)> =
            vec![(ResourceKey::default(), (Vec::new(), Some(1), vec![event.clone()], counted.clone(), vec![row]))];
        let Loaded(read) = Loaded::from_format_5(&postcard::to_stdvec(&(&table, format_5)).unwrap()).unwrap();
        let Loaded(expected) =
            loaded(table, vec![(ResourceKey::default(), (Vec::new(), Some(1), vec![event], counted))]).unwrap();
        assert_eq!(read, expected);
        assert_eq!(read[0].1.counted.entries().len(), 1);
    }

    #[test]
    fn counters_are_read_as_windows_only() {
        let with = |kind, windows: &[Millis]| {
            let event = (order(1, "a"), (kind, Vec::new(), 0));
            let counted = windows.iter().map(|&w| (w, (Vec::new(), w, (order(w, "b"), 0), None))).collect();
            vec![(ResourceKey::default(), (Vec::new(), None, vec![event], counted))]
        };
        assert!(loaded(vec![Meta::default()], with(EventKind::Started, &[0, 3_600_000])).is_ok());
        let counter = loaded(vec![Meta::default()], with(EventKind::Recorded, &[0, 3_600_000]));
        assert!(matches!(counter, Err(postcard::Error::SerdeDeCustom)), "a counter among the gauge events");
        let reversed = loaded(vec![Meta::default()], with(EventKind::Started, &[3_600_000, 0]));
        assert!(matches!(reversed, Err(postcard::Error::SerdeDeCustom)), "windows out of order");
    }
}
