use super::*;
use crate::checkpoint::pieces;
use crate::prices::PriceList;
use crate::time::parse_rfc3339;

fn prices() -> PriceList {
    PriceList::parse(include_str!("../../../schemas/prices.toml")).unwrap()
}

fn at(text: &str) -> Millis {
    parse_rfc3339(text).unwrap()
}

fn key() -> ResourceKey {
    ResourceKey { account: "acc".into(), resource: "vm".into() }
}

fn event(prices: &PriceList, id: &str, time: &str, kind: EventKind, vcpu: Option<&str>) -> Event {
    let (sku, _) = prices.lookup("compute.vcpu").unwrap();
    Event {
        order: EventOrder { time: at(time), id: id.into(), source: "s".into() },
        kind,
        read_by: 0,
        read_nth: 0,
        resource: key(),
        quantities: vcpu.map(|q| vec![(sku, Quantity::parse(q).unwrap())]).unwrap_or_default().into(),
        meta: Arc::new(Meta { project_id: id.into(), ..Meta::default() }),
    }
}

/// What a resource's rows were last emitted from, as the usage stage keeps
/// it: the resource then and the accrual point then.
#[derive(Default)]
struct LastEmitted(Resource, Option<Millis>);

impl LastEmitted {
    /// `resource`'s rows of the windows in `from..=through` that differ from
    /// the rows last emitted; they are the rows last emitted from then on.
    fn refresh(
        &mut self,
        resource: &Resource,
        (from, through): (Millis, Millis),
        accrued_to: Option<Millis>,
        prices: &PriceList,
    ) -> Vec<RowChange> {
        let emitted = Emitted { windows: self.0.windows((from, through), self.1).unwrap(), prices };
        let mut changes = Vec::new();
        resource
            .refresh(&key(), emitted, ((from, through), accrued_to), prices, |change| changes.push(change))
            .unwrap();
        *self = LastEmitted(resource.clone(), accrued_to);
        changes
    }
}

fn usage_of(changes: &[RowChange]) -> Vec<(Millis, String)> {
    changes.iter().map(|c| (c.row.key.window_start, c.row.usage.to_string())).collect()
}

#[test]
fn a_resource_holding_nothing_before_the_boundary_is_left_as_it_is_by_a_fold() {
    let prices = prices();
    let mut resource = Resource::default();
    resource.insert(event(&prices, "a", "2026-11-23T10:10:00Z", EventKind::Started, Some("1")));
    let (ten, eleven, noon) = (at("2026-11-23T10:00:00Z"), at("2026-11-23T11:00:00Z"), at("2026-11-23T12:00:00Z"));
    assert!(!resource.holds_before(ten), "its event is at 10:00 or later");
    let mut folded = resource.clone();
    folded.fold(ten);
    assert_eq!(folded, resource, "so a fold there changes nothing");
    assert!(resource.holds_before(eleven), "an event before 11:00");
    resource.fold(eleven);
    assert!(!resource.holds_before(noon), "folded: the past is in the base, no event is left");
    let mut again = resource.clone();
    again.fold(noon);
    assert_eq!(again, resource);
}

#[test]
fn refresh_emits_only_changed_rows_and_corrections_to_zero() {
    let prices = prices();
    let mut resource = Resource::default();
    resource.insert(event(&prices, "a", "2026-11-23T10:00:00Z", EventKind::Started, Some("1")));
    let ten = at("2026-11-23T10:00:00Z");
    let (mut last, accrued) = (LastEmitted::default(), Some(at("2026-11-23T10:30:00Z")));
    let first = last.refresh(&resource, (ten, ten), accrued, &prices);
    assert_eq!(usage_of(&first), [(ten, "1800.000000000000".to_owned())]);
    let again = last.refresh(&resource, (ten, ten), accrued, &prices);
    assert!(again.is_empty(), "an unchanged row is not emitted again");
    // A stop arriving out of order at the start takes the usage back to zero.
    resource.insert(event(&prices, "0", "2026-11-23T10:00:00Z", EventKind::Stopped, None));
    resource.insert(event(&prices, "b", "2026-11-23T10:00:00Z", EventKind::Stopped, None));
    let corrected = last.refresh(&resource, (ten, ten), accrued, &prices);
    assert_eq!(usage_of(&corrected), [(ten, "0.000000000000".to_owned())]);
    assert_eq!(corrected[0].delta.usage.to_string(), "-1800.000000000000");
    assert!(corrected[0].delta.cost.scaled() < 0);
}

#[test]
fn folding_keeps_what_later_windows_need_and_forgets_the_rest() {
    let prices = prices();
    let mut folded = Resource::default();
    let mut whole = Resource::default();
    for (id, time, kind, vcpu) in [
        ("a", "2026-11-23T08:10:00Z", EventKind::Started, Some("2")),
        ("b", "2026-11-23T09:20:00Z", EventKind::Resized, Some("3")),
        ("c", "2026-11-23T11:40:00Z", EventKind::Resized, Some("5")),
    ] {
        folded.insert(event(&prices, id, time, kind, vcpu));
        whole.insert(event(&prices, id, time, kind, vcpu));
    }
    folded.fold(at("2026-11-23T11:00:00Z"));
    assert!(folded.has_folded_past());
    assert_eq!(folded.first_event_time(), Some(at("2026-11-23T11:40:00Z")));
    let window = at("2026-11-23T11:00:00Z");
    let accrued = Some(at("2026-11-23T12:00:00Z"));
    let from_folded = LastEmitted::default().refresh(&folded, (window, window), accrued, &prices);
    let from_whole = LastEmitted::default().refresh(&whole, (window, window), accrued, &prices);
    assert_eq!(from_folded, from_whole);
    // 3 vCPU × 40 min + 5 vCPU × 20 min.
    assert_eq!(usage_of(&from_folded), [(window, "13200.000000000000".to_owned())]);
    assert_eq!(from_folded[0].row.meta.project_id, "c");
}

#[test]
fn a_stopped_resource_becomes_dormant_once_folded() {
    let prices = prices();
    let mut resource = Resource::default();
    resource.insert(event(&prices, "a", "2026-11-23T08:10:00Z", EventKind::Started, Some("2")));
    resource.insert(event(&prices, "b", "2026-11-23T08:20:00Z", EventKind::Stopped, None));
    assert!(!resource.is_running());
    resource.fold(at("2026-11-23T09:00:00Z"));
    assert!(resource.is_dormant());
}

#[test]
fn events_with_equal_metadata_share_one_copy_inserted_and_restored() {
    let prices = prices();
    let mut resource = Resource::default();
    let with_project = |id: &str, time: &str, kind, vcpu| {
        let mut event = event(&prices, id, time, kind, vcpu);
        event.meta = Arc::new(Meta { project_id: "p".into(), ..Meta::default() });
        event
    };
    resource.insert(with_project("a", "2026-11-23T10:00:00Z", EventKind::Started, Some("1")));
    resource.insert(with_project("b", "2026-11-23T10:20:00Z", EventKind::Resized, Some("2")));
    resource.insert(event(&prices, "c", "2026-11-23T10:40:00Z", EventKind::Resized, Some("3")));
    let shared = |r: &Resource| {
        let metas: Vec<&Arc<Meta>> = r.events.entries().iter().map(|(_, e)| &e.meta).collect();
        (Arc::ptr_eq(metas[0], metas[1]), Arc::ptr_eq(metas[1], metas[2]))
    };
    assert_eq!(shared(&resource), (true, false), "equal metadata is held once, different metadata apart");

    // A second resource holding the first one's copy, as interning makes it,
    // in its folded past.
    let mut other = Resource::default();
    let mut started = with_project("d", "2026-11-23T09:30:00Z", EventKind::Started, Some("1"));
    started.meta = Arc::clone(&resource.events.entries()[0].1.meta);
    other.insert(started);
    other.fold(at("2026-11-23T10:00:00Z"));
    let other_key = ResourceKey { account: "acc".into(), resource: "vm-2".into() };
    let resources: Resources = [(key(), resource), (other_key.clone(), other)].into_iter().collect();

    let bytes = postcard::to_stdvec(&Stored(&resources)).unwrap();
    let Loaded(loaded) = postcard::from_bytes(&bytes).unwrap();
    let restored: Resources = loaded.into_iter().collect();
    assert_eq!(restored, resources);
    assert_eq!(shared(&restored[&key()]), (true, false), "restored, equal metadata is held once again");
    let first = &restored[&key()].events.entries()[0].1.meta;
    let other = &restored[&other_key];
    assert!(Arc::ptr_eq(first, other.base_meta.as_ref().unwrap()), "and once across resources");
    let first = &restored[&key()].events.entries()[0].1.quantities;
    assert!(Arc::ptr_eq(first, &other.base), "equal gauge quantities are held once across resources");
}

/// Two resources with events and a folded past, sharing metadata: what the
/// format-2 fixture was written from, with the rows then emitted.
fn format_2_fixture_resources() -> Resources {
    let prices = prices();
    let shared = Arc::new(Meta { project_id: "p".into(), region: "eu".into(), labels: r#"{"team":"a"}"#.into() });
    let with = |id: &str, time: &str, kind, vcpu, meta: &Arc<Meta>| {
        let mut event = event(&prices, id, time, kind, vcpu);
        event.meta = Arc::clone(meta);
        event
    };
    let mut first = Resource::default();
    first.insert(with("a", "2026-11-23T09:10:00Z", EventKind::Started, Some("2"), &shared));
    first.insert(with("b", "2026-11-23T10:20:00Z", EventKind::Resized, Some("4"), &shared));
    first.insert(event(&prices, "c", "2026-11-23T10:40:00Z", EventKind::Resized, Some("3")));
    let mut second = Resource::default();
    second.insert(with("d", "2026-11-23T10:05:00Z", EventKind::Started, Some("1"), &shared));
    let second_key = ResourceKey { account: "acc".into(), resource: "vm-2".into() };
    first.fold(at("2026-11-23T10:00:00Z"));
    [(key(), first), (second_key, second)].into_iter().collect()
}

#[test]
fn a_snapshot_letting_go_writes_what_stored_writes_and_leaves_the_resources_unshared() {
    let resources = format_2_fixture_resources();
    let copy = copied(&resources);
    assert!(resources.iter().all(|held| held.holders() == 2), "the copy shares the resources");
    let letting_go = pieces::joined(&encode_letting_go(copy, None));
    assert_eq!(letting_go, pieces::joined(&Stored(&resources).compressed()));
    assert!(resources.iter().all(|held| held.holders() == 1), "the snapshot let go of every resource");
    let plain = pieces::decompressed(&letting_go).unwrap();
    assert_eq!(plain, postcard::to_stdvec(&Stored(&resources)).unwrap());
    let Loaded(loaded) = postcard::from_bytes(&plain).unwrap();
    assert_eq!(loaded.into_iter().collect::<Resources>(), resources);
}

#[test]
fn a_snapshot_copied_in_pieces_writes_every_resource_once() {
    let prices = prices();
    let resources: Resources = (0..40_000)
        .map(|i| {
            let mut resource = Resource::default();
            resource.insert(event(&prices, &format!("e{i}"), "2026-11-23T10:05:00Z", EventKind::Started, Some("1")));
            (ResourceKey { account: "acc".into(), resource: format!("vm-{i}").into() }, resource)
        })
        .collect();
    let copy = copied(&resources);
    assert_eq!(copy.len(), resources.len());
    let letting_go = pieces::joined(&encode_letting_go(copy, None));
    assert_eq!(letting_go, pieces::joined(&Stored(&resources).compressed()));
    assert!(resources.iter().all(|held| held.holders() == 1), "the snapshot let go of every resource");
    assert!(copied(&Resources::default()).is_empty());
}

#[test]
fn a_usage_part_of_format_2_reads_as_it_was_written_and_shares_metadata() {
    // Written by the encoding of format 2 from these resources, with their
    // rows, which are dropped.
    let Loaded(loaded) = Loaded::from_format_2(include_bytes!("format_2_usage.bin")).unwrap();
    let loaded: Resources = loaded.into_iter().collect();
    assert_eq!(loaded, format_2_fixture_resources());
    let second = &loaded[&ResourceKey { account: "acc".into(), resource: "vm-2".into() }];
    let first = &loaded[&key()];
    let meta = &second.events.entries()[0].1.meta;
    assert!(Arc::ptr_eq(meta, first.base_meta.as_ref().unwrap()), "equal metadata shared across resources");
    // And it writes out as this format and reads back the same.
    let Loaded(again) = postcard::from_bytes(&postcard::to_stdvec(&Stored(&loaded)).unwrap()).unwrap();
    assert_eq!(again.into_iter().collect::<Resources>(), loaded);
}

/// Gauges and counters (two at one time, one at a window's start) and a
/// past folded: what the format-4 fixture was written from, with the rows
/// then emitted, when a resource still held every counter event.
fn format_4_fixture_resources() -> Resources {
    let prices = prices();
    let (egress, _) = prices.lookup("network.egress_gib").unwrap();
    let (requests, _) = prices.lookup("api.requests").unwrap();
    let counter = |id: &str, time: &str, quantities: Vec<(SkuId, &str)>| {
        let mut event = event(&prices, id, time, EventKind::Recorded, None);
        event.quantities = quantities.into_iter().map(|(sku, q)| (sku, Quantity::parse(q).unwrap())).collect();
        event
    };
    let mut first = Resource::default();
    first.insert(event(&prices, "a", "2026-11-23T09:10:00Z", EventKind::Started, Some("2")));
    first.insert(counter("b", "2026-11-23T09:30:00Z", vec![(egress, "1.5")]));
    first.insert(counter("c", "2026-11-23T10:00:00Z", vec![(egress, "2"), (requests, "10")]));
    first.insert(counter("d", "2026-11-23T10:15:00Z", vec![(requests, "5")]));
    first.insert(counter("e", "2026-11-23T10:15:00Z", vec![(egress, "0.25")]));
    first.insert(event(&prices, "f", "2026-11-23T10:20:00Z", EventKind::Resized, Some("4")));
    let mut second = Resource::default();
    second.insert(counter("g", "2026-11-23T10:05:00Z", vec![(requests, "7")]));
    second.insert(counter("h", "2026-11-23T11:00:00Z", vec![(requests, "1")]));
    let second_key = ResourceKey { account: "acc".into(), resource: "bucket".into() };
    first.fold(at("2026-11-23T10:00:00Z"));
    [(key(), first), (second_key, second)].into_iter().collect()
}

#[test]
fn a_usage_part_of_format_4_reads_with_its_counters_summed_per_window() {
    // Written by the encoding of format 4, which held every counter event,
    // from these resources, with their rows, which are dropped.
    let Loaded(loaded) = Loaded::from_format_4(include_bytes!("format_4_usage.bin")).unwrap();
    let loaded: Resources = loaded.into_iter().collect();
    assert_eq!(loaded, format_4_fixture_resources());
    let first = &loaded[&key()];
    assert_eq!(first.entries_held(), 2, "the resize and the 10:00 window's three counters; the rest folded away");
    let Loaded(again) = postcard::from_bytes(&postcard::to_stdvec(&Stored(&loaded)).unwrap()).unwrap();
    assert_eq!(again.into_iter().collect::<Resources>(), loaded);
}

/// The metadata of a window is that of the latest event up to its end,
/// inclusive: a counter exactly at the end belongs to the next window's sums
/// but names the window before, and a gauge later in event order at that
/// time wins over it.
#[test]
fn a_counter_at_a_window_end_names_the_window_before() {
    let prices = prices();
    let (egress, _) = prices.lookup("network.egress_gib").unwrap();
    let counter = |id: &str, time: &str| {
        let mut event = event(&prices, id, time, EventKind::Recorded, None);
        event.quantities = [(egress, Quantity::parse("1").unwrap())].into();
        event
    };
    let (ten, eleven) = (at("2026-11-23T10:00:00Z"), at("2026-11-23T11:00:00Z"));
    let mut resource = Resource::default();
    resource.insert(counter("a", "2026-11-23T10:10:00Z"));
    resource.insert(counter("c", "2026-11-23T11:00:00Z"));
    resource.insert(counter("b", "2026-11-23T11:00:00Z"));
    let mut last = LastEmitted::default();
    let rows = last.refresh(&resource, (ten, eleven), None, &prices);
    let metas: Vec<(Millis, &str)> = rows.iter().map(|c| (c.row.key.window_start, &*c.row.meta.project_id)).collect();
    assert_eq!(metas, [(ten, "c"), (eleven, "c")]);
    assert_eq!(usage_of(&rows), [(ten, "1.000000000000".to_owned()), (eleven, "2.000000000000".to_owned())]);
    resource.insert(event(&prices, "d", "2026-11-23T11:00:00Z", EventKind::Started, Some("1")));
    let rows = last.refresh(&resource, (ten, ten), None, &prices);
    assert_eq!(rows[0].row.meta.project_id, "d", "the gauge's id sorts after the counters'");
    resource.fold(eleven);
    assert_eq!(resource.base_meta.as_ref().unwrap().project_id, "a", "the folded past's latest event");
}

#[test]
fn two_windows_are_read_side_by_side_by_sku() {
    let usage = |sku, scaled| (SkuId(sku), Amount::from_scaled(scaled).unwrap());
    let old = vec![usage(1, 10), usage(3, 30)];
    let new = vec![usage(0, 5), usage(3, 31), usage(4, 40)];
    let read: Vec<(u16, i128, i128)> =
        side_by_side(old, new).map(|(sku, old, new)| (sku.0, old.scaled(), new.scaled())).collect();
    assert_eq!(read, [(0, 0, 5), (1, 10, 0), (3, 30, 31), (4, 0, 40)]);
    assert_eq!(side_by_side(Vec::new(), Vec::new()).count(), 0);
}

proptest::proptest! {
    /// What the usage stage relies on when it plans a resource's refresh
    /// before the epoch's events go in: the least earliest change of the
    /// events, each on the resource without any of them, is at or before
    /// the least that inserting them one by one returns.
    #[test]
    fn the_earliest_change_before_any_event_goes_in_covers_inserting_them_in_turn(
        held in proptest::collection::vec((0i64..240, 0u8..4), 0..6),
        arriving in proptest::collection::vec((0i64..240, 0u8..4), 1..6),
    ) {
        let prices = prices();
        let kinds = [EventKind::Started, EventKind::Resized, EventKind::Stopped, EventKind::Recorded];
        let event_at = |n: usize, (minutes, kind): (i64, u8)| {
            let kind = kinds[usize::from(kind)];
            let mut event = event(&prices, &format!("{n}"), "2026-11-23T08:00:00Z", kind, None);
            event.order.time += minutes * 60_000;
            if kind != EventKind::Stopped {
                let sku = if kind == EventKind::Recorded { "network.egress_gib" } else { "compute.vcpu" };
                event.quantities = [(prices.lookup(sku).unwrap().0, Quantity::parse("2").unwrap())].into();
            }
            event
        };
        let mut resource = Resource::default();
        for (n, held) in held.into_iter().enumerate() {
            resource.insert(event_at(n, held));
        }
        let arriving: Vec<Event> = arriving.into_iter().enumerate().map(|(n, e)| event_at(100 + n, e)).collect();
        let planned = arriving.iter().map(|event| resource.earliest_change(event)).min().unwrap();
        let inserted = arriving.into_iter().map(|event| resource.insert(event)).min().unwrap();
        proptest::prop_assert!(planned <= inserted, "planned {planned}, inserting returned {inserted}");
    }
}

#[test]
fn a_window_of_counters_holds_room_for_the_skus_it_saw_only() {
    let prices = prices();
    let sku = |name: &str| prices.lookup(name).unwrap().0;
    let order = |id: &str| EventOrder { time: at("2026-11-23T10:15:00Z"), id: id.into(), source: "s".into() };
    let one = |name: &str| [(sku(name), Quantity::parse("3").unwrap())];
    let window = at("2026-11-23T10:00:00Z");
    let mut counted = Counted::of(order("a"), &one("network.egress_gib"), Arc::default(), window);
    assert_eq!((counted.sums.len(), counted.sums.capacity()), (1, 1));
    counted.insert(order("b"), &one("network.egress_gib"), Arc::default(), window);
    counted.insert(order("c"), &one("api.requests"), Arc::default(), window);
    assert_eq!((counted.sums.len(), counted.sums.capacity()), (2, 2));
}

#[test]
fn the_largest_counter_quantities_are_summed_exactly() {
    let prices = prices();
    let (egress, _) = prices.lookup("network.egress_gib").unwrap();
    let largest = Quantity::parse("999999999999.999999999").unwrap();
    let mut resource = Resource::default();
    for id in ["a", "b"] {
        let mut event = event(&prices, id, "2026-11-23T10:10:00Z", EventKind::Recorded, None);
        event.quantities = [(egress, largest)].into();
        resource.insert(event);
    }
    let counted = resource.counted.get(&at("2026-11-23T10:00:00Z")).unwrap();
    assert_eq!(counted.sums, [(egress, 2 * 999_999_999_999_999_999_999_000)]);
}
