use super::*;
use crate::event::Meta;
use crate::prices::PriceList;

fn prices() -> PriceList {
    PriceList::parse(include_str!("../../../schemas/prices.toml")).unwrap()
}

const STARTED: &str = r#"{
  "specversion": "1.0",
  "id": "01JD8Z6Q4W3V",
  "source": "compute/eu-central-1",
  "type": "resource.started",
  "time": "2026-11-23T10:15:00.250Z",
  "subject": "vm-8f2a",
  "data": {
    "account_id": "acc-000042",
    "quantities": { "compute.vcpu": "4", "compute.ram_gib": "16" },
    "project_id": "prj-7",
    "region": "eu-central-1",
    "labels": { "team": "ml", "env": "prod" }
  }
}"#;

fn reason_of(text: &str) -> Reason {
    decode(text.as_bytes(), &prices(), &mut Interner::default()).unwrap_err().reason
}

#[test]
fn decodes_the_contract_example() {
    let list = prices();
    let event = decode(STARTED.as_bytes(), &list, &mut Interner::default()).unwrap();
    assert_eq!(event.kind, EventKind::Started);
    assert_eq!(&*event.order.id, "01JD8Z6Q4W3V");
    assert_eq!(Rfc3339(event.time()).to_string(), "2026-11-23T10:15:00.250Z");
    assert_eq!(&*event.resource.account, "acc-000042");
    assert_eq!(&*event.resource.resource, "vm-8f2a");
    assert_eq!(event.meta.labels, r#"{"env":"prod","team":"ml"}"#);
    let named: Vec<_> = event.quantities.iter().map(|&(sku, q)| (list.sku(sku).id.as_str(), q.to_string())).collect();
    assert_eq!(named, [("compute.ram_gib", "16.000000000".to_owned()), ("compute.vcpu", "4.000000000".to_owned())]);
}

#[test]
fn optional_fields_default_and_stopped_needs_no_quantities() {
    let text = r#"{"specversion":"1.0","id":"a","source":"s","type":"resource.stopped",
        "time":"2026-11-23T10:15:00Z","subject":"vm","data":{"account_id":"acc","project_id":null}}"#;
    let event = decode(text.as_bytes(), &prices(), &mut Interner::default()).unwrap();
    assert!(event.quantities.is_empty());
    assert_eq!(*event.meta, Meta { project_id: String::new(), region: String::new(), labels: "{}".into() });
}

#[test]
fn stopped_ignores_whatever_quantities_it_carries() {
    let text = r#"{"specversion":"1.0","id":"a","source":"s","type":"resource.stopped",
        "time":"2026-11-23T10:15:00Z","subject":"vm","data":{"account_id":"acc","quantities":[1,2]}}"#;
    assert!(decode(text.as_bytes(), &prices(), &mut Interner::default()).unwrap().quantities.is_empty());
}

#[test]
fn every_reason_is_reachable() {
    assert_eq!(reason_of("{not json"), Reason::MalformedJson);
    assert_eq!(reason_of(&format!("{STARTED} trailing")), Reason::MalformedJson);
    assert_eq!(reason_of("[1,2]"), Reason::Schema);
    assert_eq!(reason_of(&STARTED.replace("\"1.0\"", "\"0.3\"")), Reason::Schema);
    assert_eq!(reason_of(&STARTED.replace("\"01JD8Z6Q4W3V\"", "42")), Reason::Schema);
    assert_eq!(reason_of(&STARTED.replace("\"01JD8Z6Q4W3V\"", "\"\"")), Reason::Schema);
    assert_eq!(reason_of(&STARTED.replace("\"vm-8f2a\"", &format!("\"{}\"", "v".repeat(257)))), Reason::Schema);
    assert_eq!(reason_of(&STARTED.replace("acc-000042", &"a".repeat(129))), Reason::Schema);
    assert_eq!(reason_of(&STARTED.replace("\"account_id\"", "\"account\"")), Reason::Schema);
    assert_eq!(reason_of(&STARTED.replace("2026-11-23T10:15:00.250Z", "yesterday")), Reason::Schema);
    assert_eq!(reason_of(&STARTED.replace("\"4\"", "4")), Reason::Schema);
    assert_eq!(reason_of(&STARTED.replace("\"4\"", "\"4e2\"")), Reason::Schema);
    assert_eq!(reason_of(&STARTED.replace("\"ml\"", "1")), Reason::Schema);
    assert_eq!(reason_of(&STARTED.replace("\"compute.ram_gib\"", "\"compute.vcpu\"")), Reason::Schema);
    assert_eq!(reason_of(&STARTED.replace("resource.started", "resource.deleted")), Reason::UnknownType);
    assert_eq!(reason_of(&STARTED.replace("compute.vcpu", "compute.tpu")), Reason::UnknownSku);
    assert_eq!(reason_of(&STARTED.replace("compute.vcpu", "network.egress_gib")), Reason::UnknownSku);
    assert_eq!(reason_of(&STARTED.replace("2026-11-23", "2025-11-23")), Reason::UnknownSku);
    assert_eq!(reason_of(&STARTED.replace("\"4\"", "\"-4\"")), Reason::NegativeQuantity);
    assert_eq!(reason_of(&STARTED.replace("\"4\"", "\"4.0000000001\"")), Reason::Precision);
    assert_eq!(reason_of(&STARTED.replace("\"4\"", "\"1000000000000\"")), Reason::OutOfRange);
    assert_eq!(reason_of(&STARTED.replace("2026-11-23T10:15:00.250Z", "2106-01-01T00:00:00Z")), Reason::OutOfRange);
    let large = STARTED.replace("\"ml\"", &format!("\"{}\"", "x".repeat(MAX_MESSAGE_BYTES)));
    assert_eq!(reason_of(&large), Reason::TooLarge);
}

#[test]
fn details_say_what_was_expected_and_found() {
    let err = decode(STARTED.replace("\"4\"", "\"4.0000000001\"").as_bytes(), &prices(), &mut Interner::default())
        .unwrap_err();
    assert_eq!(err.detail, "data.quantities.compute.vcpu must be at most 9 fractional digits, found \"4.0000000001\"");
    let err =
        decode(STARTED.replace("resource.started", "vm.exploded").as_bytes(), &prices(), &mut Interner::default())
            .unwrap_err();
    assert!(err.detail.contains("vm.exploded"), "{}", err.detail);
}

mod arbitrary_bytes {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode(&bytes, &prices(), &mut Interner::default());
        }

        #[test]
        fn mutated_events_never_panic(
            edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..8)
        ) {
            let mut bytes = STARTED.as_bytes().to_vec();
            for (at, byte, action) in edits {
                if bytes.is_empty() { break; }
                let i = at.index(bytes.len());
                match action {
                    0 => bytes[i] = byte,
                    1 => { bytes.remove(i); }
                    _ => bytes.insert(i, byte),
                }
            }
            match decode(&bytes, &prices(), &mut Interner::default()) {
                Ok(event) => prop_assert!(!event.order.id.is_empty()),
                Err(e) => prop_assert!(!e.detail.is_empty()),
            }
        }
    }
}

#[test]
fn the_published_schema_names_what_the_decoder_checks() {
    let schema: serde_json::Value = serde_json::from_str(include_str!("../../../schemas/event.v1.json")).unwrap();
    let types: Vec<&str> =
        schema["properties"]["type"]["enum"].as_array().unwrap().iter().map(|t| t.as_str().unwrap()).collect();
    for kind in [EventKind::Started, EventKind::Resized, EventKind::Stopped, EventKind::Recorded] {
        assert!(types.contains(&kind.as_str()), "{kind:?} missing from the schema");
    }
    assert_eq!(types.len(), 4);
    let required: Vec<&str> = schema["required"].as_array().unwrap().iter().map(|t| t.as_str().unwrap()).collect();
    let example: serde_json::Value = serde_json::from_str(STARTED).unwrap();
    for field in required {
        let mut without = example.clone();
        without.as_object_mut().unwrap().remove(field);
        let err = decode(without.to_string().as_bytes(), &prices(), &mut Interner::default()).unwrap_err();
        assert_eq!(err.reason, Reason::Schema, "removing {field}");
    }
}

#[test]
fn invalid_utf8_is_malformed_json_wherever_it_is() {
    // A byte never in UTF-8, an overlong encoding, a surrogate, and a
    // sequence cut short, each named where it starts.
    for broken in [&[0xff][..], &[0xc0, 0x80], &[0xed, 0xa0, 0x80], &[0xe2, 0x82]] {
        for at in [0, STARTED.len() / 2, STARTED.len() - 1, STARTED.len()] {
            let mut bytes = STARTED.as_bytes().to_vec();
            bytes.splice(at..at, broken.iter().copied());
            let rejected = decode(&bytes, &prices(), &mut Interner::default()).unwrap_err();
            assert_eq!(rejected.reason, Reason::MalformedJson, "{broken:x?} at {at}: {}", rejected.detail);
            assert!(rejected.detail.ends_with(&format!("from index {at}")), "{}", rejected.detail);
        }
    }
}

#[test]
fn text_in_any_script_is_utf8() {
    let labelled = STARTED.replace(r#""labels": {"#, r#""labels": {"équipe":"données ✓ 𝄞","#);
    assert_ne!(labelled, STARTED);
    let event = decode(labelled.as_bytes(), &prices(), &mut Interner::default()).unwrap();
    assert!(event.meta.labels.contains("données ✓ 𝄞"), "{}", event.meta.labels);
}

#[test]
fn escaped_strings_decode_to_their_text() {
    let escaped = STARTED
        .replace(r#""id": "01JD8Z6Q4W3V""#, r#""id": "01JD\u0038Z6Q4W3V""#)
        .replace(r#""compute.vcpu": "4""#, r#""compute\u002evcpu": "\u0034""#)
        .replace(r#""team": "ml""#, r#""t\u00e9am": "m\"l""#);
    let list = prices();
    let event = decode(escaped.as_bytes(), &list, &mut Interner::default()).unwrap();
    assert_eq!(&*event.order.id, "01JD8Z6Q4W3V");
    assert_eq!(event.meta.labels, r#"{"env":"prod","téam":"m\"l"}"#);
    let vcpu = list.lookup("compute.vcpu").unwrap().0;
    assert!(event.quantities.iter().any(|&(sku, q)| sku == vcpu && q.to_string() == "4.000000000"));
}

#[test]
fn events_share_their_metadata_and_equal_labels_in_any_order() {
    let (list, mut interner) = (prices(), Interner::default());
    let first = decode(STARTED.as_bytes(), &list, &mut interner).unwrap();
    let reordered = STARTED
        .replace(r#""id": "01JD8Z6Q4W3V""#, r#""id": "01JD8Z6Q4W3W""#)
        .replace(r#"{ "team": "ml", "env": "prod" }"#, r#"{ "env": "prod", "team": "ml" }"#);
    let second = decode(reordered.as_bytes(), &list, &mut interner).unwrap();
    assert_eq!(first.resource.account, second.resource.account);
    assert!(Arc::ptr_eq(&first.meta, &second.meta));
    let other_region = STARTED.replace(r#""region": "eu-central-1""#, r#""region": "us-east-1""#);
    let third = decode(other_region.as_bytes(), &list, &mut interner).unwrap();
    assert!(!Arc::ptr_eq(&first.meta, &third.meta));
    assert_eq!(third.meta.region, "us-east-1");
    assert_eq!(third.meta.labels, first.meta.labels);
}

mod fast_path {
    use super::*;
    use proptest::prelude::*;

    const RECORDED: &str = r#"{"specversion":"1.0","id":"e-2","source":"net","type":"usage.recorded","time":"2026-11-23T10:15:00Z",
        "subject":"vm-8f2a","datacontenttype":"application/json","data":{"account_id":"acc-000042",
        "quantities":{"network.egress_gib":"0.5"},"region":"eu-central-1"}}"#;

    /// Decodes `text` with the general parser alone.
    fn general(text: &str, prices: &PriceList) -> Result<Event, Invalid> {
        validate(&mut parse(text)?, prices, &mut Interner::default())
    }

    /// What the fast path reads of `text`, if it reads it.
    fn scanned(text: &str) -> Option<RawEvent<'_>> {
        let mut raw = RawEvent::default();
        scan::event(text, &mut raw).map(|()| raw)
    }

    #[test]
    fn events_of_the_usual_shape_take_it() {
        let stopped = r#"{"specversion":"1.0","id":"e-3","source":"s","type":"resource.stopped","time":"2026-11-23T11:00:00Z","subject":"vm","data":{"account_id":"acc"}}"#;
        for text in [STARTED, RECORDED, stopped, "{}", " { } "] {
            assert!(scanned(text).is_some(), "{text}");
        }
    }

    #[test]
    fn anything_else_is_left_to_the_general_parser() {
        let edits = [
            (r#""id": "01JD8Z6Q4W3V""#, r#""id": "01JD\u0038Z6Q4W3V""#),
            (r#""id": "01JD8Z6Q4W3V""#, r#""i\u0064": "01JD8Z6Q4W3V""#),
            (r#""id": "01JD8Z6Q4W3V""#, r#""id": null"#),
            (r#""id": "01JD8Z6Q4W3V""#, r#""id": 7"#),
            (r#""id": "01JD8Z6Q4W3V""#, "\"id\": \"01JD\t8Z\""),
            (r#""id": "01JD8Z6Q4W3V""#, r#""id": "a", "id": "b""#),
            (r#""id": "01JD8Z6Q4W3V""#, r#""id": "a", "extension": {"x": 1}"#),
            (r#""team": "ml""#, r#""team": "ml", "team": "ai""#),
            (r#""compute.vcpu": "4""#, r#""compute.vcpu": 4"#),
            ("\n}", "\n} x"),
            ("\n}", "\n}}"),
        ];
        for (from, to) in edits {
            let text = STARTED.replacen(from, to, 1);
            assert_ne!(text, STARTED);
            assert!(scanned(&text).is_none(), "{text}");
        }
        assert!(scanned(r#"["1.0"]"#).is_none());
    }

    /// Pieces of JSON that an edit puts where a value or key was.
    const VALUES: &[&str] = &[
        r#""1.0""#,
        r#""2026-11-23T10:15:00Z""#,
        r#""resource.started""#,
        r#""usage.recorded""#,
        r#""resource.stopped""#,
        r#""compute.vcpu""#,
        r#""4""#,
        r#""-1""#,
        r#""1e3""#,
        r#""""#,
        r#""acc-7""#,
        r#""é""#,
        r#""a\"b""#,
        r#""\u0041""#,
        "\"tab\there\"",
        "null",
        "7",
        "-0.5e2",
        "true",
        "[]",
        r#"["a", {}]"#,
        "{}",
        r#"{"compute.vcpu": "2"}"#,
        r#"{"a": "1", "a": "2"}"#,
        r#"{"a": 1}"#,
        r#"{"a": "1" "b": "2"}"#,
        "\"unterminated",
        "{",
    ];
    const KEYS: &[&str] = &[
        "specversion",
        "id",
        "source",
        "type",
        "time",
        "subject",
        "data",
        "account_id",
        "quantities",
        "project_id",
        "region",
        "labels",
        "compute.vcpu",
        "storage.disk_gib",
        "team",
        "x",
        "i\\u0064",
        "",
        "types",
        "dat",
        "regions",
        "account_i",
    ];
    const SPACES: &[&str] = &["", " ", "\n  ", "\t", "\r\n"];

    /// A JSON value as members to edit.
    #[derive(Clone, Debug)]
    enum Json {
        Text(String),
        Object(Vec<(String, Json)>),
    }

    impl Json {
        fn to_compact(&self) -> String {
            let mut text = String::new();
            self.write("", &mut text);
            text
        }

        fn write(&self, space: &str, out: &mut String) {
            match self {
                Json::Text(text) => out.push_str(text),
                Json::Object(members) => {
                    out.push('{');
                    for (i, (key, value)) in members.iter().enumerate() {
                        if i > 0 {
                            out.push(',');
                        }
                        out.push_str(&format!("{space}\"{key}\"{space}:{space}"));
                        value.write(space, out);
                    }
                    out.push_str(space);
                    out.push('}');
                }
            }
        }
    }

    /// The objects an edit may change: the event, `data` and its two maps.
    const OBJECTS: &[&[&str]] = &[&[], &["data"], &["data", "quantities"], &["data", "labels"]];

    fn object_at<'j>(json: &'j mut Json, path: &[&str]) -> Option<&'j mut Vec<(String, Json)>> {
        let Json::Object(members) = json else { return None };
        match path.split_first() {
            None => Some(members),
            Some((first, rest)) => members.iter_mut().find(|(k, _)| k == first).and_then(|(_, v)| object_at(v, rest)),
        }
    }

    fn document(text: &str) -> Json {
        fn of(value: serde_json::Value) -> Json {
            match value {
                serde_json::Value::Object(map) => Json::Object(map.into_iter().map(|(k, v)| (k, of(v))).collect()),
                other => Json::Text(other.to_string()),
            }
        }
        of(serde_json::from_str(text).unwrap())
    }

    /// Applies one edit to one of the objects of `json` (the event itself
    /// when an earlier edit took the one aimed at away).
    fn edit(json: &mut Json, (target, action, at, pick): (usize, u8, prop::sample::Index, usize)) {
        let path = OBJECTS[target % OBJECTS.len()];
        let path = if object_at(json, path).is_some() { path } else { &[] };
        let members = object_at(json, path).expect("the document is an object");
        let value = || Json::Text(VALUES[pick % VALUES.len()].to_owned());
        let key = KEYS[pick % KEYS.len()].to_owned();
        if members.is_empty() {
            members.push((key, value()));
            return;
        }
        let i = at.index(members.len());
        match action {
            0 => drop(members.remove(i)),
            1 => members.insert(i, members[i].clone()),
            2 => members[i].1 = value(),
            3 => members.insert(i, (key, value())),
            _ => members[i].0 = key,
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2048))]

        #[test]
        fn it_reads_what_the_general_parser_reads(
            base in prop::sample::select(vec![STARTED, RECORDED]),
            edits in proptest::collection::vec(
                (any::<usize>(), 0u8..5, any::<prop::sample::Index>(), any::<usize>()),
                0..5,
            ),
            space in prop::sample::select(SPACES.to_vec()),
            tail in prop::sample::select(vec!["", " ", "\n", "x", "}", "{}"]),
        ) {
            let mut json = document(base);
            for e in edits {
                edit(&mut json, e);
            }
            let mut text = String::new();
            json.write(space, &mut text);
            text.push_str(tail);
            let list = prices();
            if let Some(mut raw) = scanned(&text) {
                let fast = validate(&mut raw, &list, &mut Interner::default());
                prop_assert_eq!(fast, general(&text, &list), "{}", text);
            }
        }

        #[test]
        fn metadata_met_again_is_what_the_general_parser_reads(
            events in proptest::collection::vec(
                (
                    0usize..2,
                    0usize..2,
                    proptest::collection::vec((0usize..3, 0usize..3), 0..4),
                    prop::sample::select(SPACES.to_vec()),
                ),
                1..16,
            )
        ) {
            // One interner for all: metadata as written is matched to
            // metadata seen before, in other orders and spacings too.
            let list = prices();
            let mut interner = Interner::default();
            for (project, region, labels, space) in events {
                let repeated = labels.iter().enumerate().any(|(i, (key, _))| labels[..i].iter().any(|(k, _)| k == key));
                let labels: Vec<String> = labels
                    .iter()
                    .map(|&(key, value)| format!(r#"{space}"{}"{space}:"{}""#, ["a", "b", "c"][key], ["1", "2", "x"][value]))
                    .collect();
                let text = RECORDED
                    .replace(r#""region":"eu-central-1""#, &format!(r#""region":"{}""#, ["eu", "us"][region]))
                    .replace("}}", &format!(r#","project_id":"p{project}","labels":{{{}}}}}}}"#, labels.join(",")));
                prop_assert_eq!(scanned(&text).is_some(), !repeated, "the fast path reads it: {}", text);
                prop_assert_eq!(decode(text.as_bytes(), &list, &mut interner), general(&text, &list), "{}", text);
            }
        }

        #[test]
        fn a_plain_run_ends_at_the_first_quote_backslash_or_control_character(
            bytes in proptest::collection::vec(
                prop::sample::select(vec![b'a', b'"', b'\\', 0x00, 0x1f, 0x20, 0x7f, 0x80, 0xc3, 0xff, b'!', b'#', b']']),
                0..40,
            )
        ) {
            let first = bytes.iter().position(|&b| b == b'"' || b == b'\\' || b < 0x20).unwrap_or(bytes.len());
            prop_assert_eq!(scan::plain_run(&bytes), first);
        }

        #[test]
        fn it_reads_what_the_general_parser_reads_of_mutated_bytes(
            base in prop::sample::select(vec![STARTED, RECORDED]),
            compact in any::<bool>(),
            edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..6)
        ) {
            // Compact, a message has its quotes indexed (see `quotes`).
            let base = if compact { document(base).to_compact() } else { base.to_owned() };
            let mut bytes = base.into_bytes();
            for (at, byte, action) in edits {
                let i = at.index(bytes.len());
                match action {
                    0 => bytes[i] = byte,
                    1 => { bytes.remove(i); }
                    _ => bytes.insert(i, byte),
                }
            }
            let list = prices();
            if let Ok(text) = std::str::from_utf8(&bytes) && let Some(mut raw) = scanned(text) {
                prop_assert_eq!(validate(&mut raw, &list, &mut Interner::default()), general(text, &list), "{}", text);
            }
        }
    }
}
