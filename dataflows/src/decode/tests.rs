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
    assert_eq!(event.order.id, "01JD8Z6Q4W3V");
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
    for at in [0, STARTED.len() / 2, STARTED.len() - 1] {
        let mut bytes = STARTED.as_bytes().to_vec();
        bytes.insert(at, 0xff);
        let rejected = decode(&bytes, &prices(), &mut Interner::default()).unwrap_err();
        assert_eq!(rejected.reason, Reason::MalformedJson, "0xff at {at}: {}", rejected.detail);
    }
}

#[test]
fn escaped_strings_decode_to_their_text() {
    let escaped = STARTED
        .replace(r#""id": "01JD8Z6Q4W3V""#, r#""id": "01JD\u0038Z6Q4W3V""#)
        .replace(r#""compute.vcpu": "4""#, r#""compute\u002evcpu": "\u0034""#)
        .replace(r#""team": "ml""#, r#""t\u00e9am": "m\"l""#);
    let list = prices();
    let event = decode(escaped.as_bytes(), &list, &mut Interner::default()).unwrap();
    assert_eq!(event.order.id, "01JD8Z6Q4W3V");
    assert_eq!(event.meta.labels, r#"{"env":"prod","téam":"m\"l"}"#);
    let vcpu = list.lookup("compute.vcpu").unwrap().0;
    assert!(event.quantities.iter().any(|&(sku, q)| sku == vcpu && q.to_string() == "4.000000000"));
}

#[test]
fn events_share_their_account_and_metadata_and_equal_labels_in_any_order() {
    let (list, mut interner) = (prices(), Interner::default());
    let first = decode(STARTED.as_bytes(), &list, &mut interner).unwrap();
    let reordered = STARTED
        .replace(r#""id": "01JD8Z6Q4W3V""#, r#""id": "01JD8Z6Q4W3W""#)
        .replace(r#"{ "team": "ml", "env": "prod" }"#, r#"{ "env": "prod", "team": "ml" }"#);
    let second = decode(reordered.as_bytes(), &list, &mut interner).unwrap();
    assert!(Arc::ptr_eq(&first.resource.account, &second.resource.account));
    assert!(Arc::ptr_eq(&first.meta, &second.meta));
    let other_region = STARTED.replace(r#""region": "eu-central-1""#, r#""region": "us-east-1""#);
    let third = decode(other_region.as_bytes(), &list, &mut interner).unwrap();
    assert!(!Arc::ptr_eq(&first.meta, &third.meta));
    assert_eq!(third.meta.region, "us-east-1");
    assert_eq!(third.meta.labels, first.meta.labels);
}
