//! Shared by the dataflow's tests: events written as the contract shows them,
//! and the check that the dataflow and the oracle agree.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::json;
use tally_dataflows::checkpoint::{Cadence, Recovery};
use tally_dataflows::dataflow::{ROWS_PER_STEP, Streams, billing};
use tally_dataflows::event::{Message, Partition, Reason};
use tally_dataflows::fixed::Amount;
use tally_dataflows::judge::SourceItem;
use tally_dataflows::memory::{self, Crash, RunShape};
use tally_dataflows::oracle;
use tally_dataflows::prices::PriceList;
use tally_dataflows::routing::Routing;
use tally_dataflows::rows::{Ledger, TotalKey};
use tally_dataflows::settings::Settings;
use tally_dataflows::time::{Millis, parse_rfc3339};
use timely::dataflow::StreamVec;

/// The default price list shipped under `schemas/`.
pub fn prices() -> Arc<PriceList> {
    Arc::new(PriceList::parse(include_str!("../../../schemas/prices.toml")).expect("the shipped price list is valid"))
}

/// The billing dataflow over `source` under the shipped prices and the
/// default settings, routing resources by hash as a run of one worker
/// does.
pub fn billing_by_default(
    source: StreamVec<'_, u64, SourceItem>,
    recovery: Recovery,
    rows_per_step: usize,
) -> Streams<'_> {
    billing(source, prices(), (Settings::default(), Routing::default()), recovery, rows_per_step)
}

/// Milliseconds of an RFC 3339 time.
pub fn at(text: &str) -> Millis {
    parse_rfc3339(text).unwrap_or_else(|| panic!("bad time {text}"))
}

/// One event, in the contract's JSON.
#[derive(Clone, Debug)]
pub struct Ev {
    pub kind: &'static str,
    pub id: String,
    pub source: String,
    pub time: Millis,
    pub account: String,
    pub subject: String,
    pub quantities: Vec<(String, String)>,
    pub project: Option<String>,
    pub labels: Vec<(String, String)>,
}

impl Ev {
    pub fn new(kind: &'static str, id: &str, time: &str, subject: &str) -> Ev {
        Ev {
            kind,
            id: id.into(),
            source: "compute/eu-central-1".into(),
            time: at(time),
            account: "acc-1".into(),
            subject: subject.into(),
            quantities: Vec::new(),
            project: None,
            labels: Vec::new(),
        }
    }

    pub fn q(mut self, sku: &str, quantity: &str) -> Ev {
        self.quantities.push((sku.into(), quantity.into()));
        self
    }

    pub fn account(mut self, account: &str) -> Ev {
        self.account = account.into();
        self
    }

    pub fn project(mut self, project: &str) -> Ev {
        self.project = Some(project.into());
        self
    }

    pub fn json(&self) -> Vec<u8> {
        let mut data = json!({ "account_id": self.account });
        if self.kind != "resource.stopped" {
            let quantities: serde_json::Map<String, serde_json::Value> =
                self.quantities.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
            data["quantities"] = json!(quantities);
        }
        if let Some(project) = &self.project {
            data["project_id"] = json!(project);
        }
        if !self.labels.is_empty() {
            let labels: serde_json::Map<String, serde_json::Value> =
                self.labels.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
            data["labels"] = json!(labels);
        }
        let time = tally_dataflows::time::Rfc3339(self.time).to_string();
        serde_json::to_vec(&json!({
            "specversion": "1.0",
            "id": self.id,
            "source": self.source,
            "type": self.kind,
            "time": time,
            "subject": self.subject,
            "data": data,
        }))
        .unwrap()
    }
}

/// Messages in read order, with offsets numbered per partition.
#[derive(Default)]
pub struct Topic {
    pub partitions: Vec<Partition>,
    pub messages: Vec<Message>,
    next_offset: BTreeMap<Partition, i64>,
}

impl Topic {
    pub fn new(partitions: u32) -> Topic {
        Topic { partitions: (0..partitions).collect(), ..Topic::default() }
    }

    /// Appends raw bytes to a partition, stamped with `timestamp`.
    pub fn raw(&mut self, partition: Partition, timestamp: Millis, payload: Vec<u8>) -> &mut Topic {
        let offset = self.next_offset.entry(partition).or_default();
        self.messages.push(Message { partition, offset: *offset, timestamp, payload });
        *offset += 1;
        self
    }

    /// Appends an event to a partition, stamped with its own time.
    pub fn send(&mut self, partition: Partition, event: &Ev) -> &mut Topic {
        self.raw(partition, event.time, event.json())
    }
}

/// Shapes every check runs the dataflow under: 1, 2 and 4 workers; one epoch
/// (its rows sent one at a time), an epoch per message (checkpointing every
/// other one), and a few cuts in between (rows sent two at a time).
pub fn shapes(messages: usize) -> Vec<RunShape> {
    let mut shapes = Vec::new();
    for workers in [1, 2, 4] {
        shapes.push(RunShape { workers, epoch_starts: Vec::new(), cadence: Cadence::default(), rows_per_step: 1 });
        shapes.push(RunShape {
            workers,
            epoch_starts: (0..messages).collect(),
            cadence: Cadence::every(2),
            rows_per_step: ROWS_PER_STEP,
        });
        shapes.push(RunShape {
            workers,
            epoch_starts: (0..messages).step_by(3).collect(),
            cadence: Cadence::default(),
            rows_per_step: 2,
        });
    }
    shapes
}

/// Asserts that the dataflow's tables equal the oracle's (rows, totals, each
/// rejection's partition, offset, reason and payload, the outcome counts and
/// where progress ended), and returns the oracle's.
pub fn agree(topic: &Topic, settings: Settings, shapes: &[RunShape]) -> Ledger {
    let prices = prices();
    let expected = oracle::run(&topic.partitions, topic.messages.clone(), &prices, &settings).expect("no overflow");
    for shape in shapes {
        let actual = memory::run(&topic.partitions, topic.messages.clone(), Arc::clone(&prices), settings, shape)
            .expect("no overflow");
        assert_same(&expected, &actual, shape);
    }
    expected
}

/// Asserts that a run shaped as `first`, crashed as `crash` says and restored
/// into a run shaped as `second`, leaves the tables the oracle computes.
pub fn agree_after_crash(topic: &Topic, settings: Settings, first: &RunShape, crash: Crash, second: &RunShape) {
    let prices = prices();
    let expected = oracle::run(&topic.partitions, topic.messages.clone(), &prices, &settings).expect("no overflow");
    let actual = memory::run_with_crash(
        &topic.partitions,
        topic.messages.clone(),
        (prices.clone(), prices),
        settings,
        first,
        crash,
        second,
    )
    .expect("no overflow");
    let described = second.clone();
    let context = format!("{first:?} crashed at {crash:?}, restored as");
    assert_same_in(&expected, &actual, &described, &context);
}

/// The shipped price list with every unit price raised: `0.0125` reads
/// `10.0125`.
pub fn raised_prices() -> Arc<PriceList> {
    let text = include_str!("../../../schemas/prices.toml").replace("unit_price = \"", "unit_price = \"1");
    Arc::new(PriceList::parse(&text).expect("still a valid list"))
}

/// Runs as [`agree_after_crash`] does, the restored run under `prices`
/// instead, and returns the tables.
pub fn run_repriced(
    topic: &Topic,
    settings: Settings,
    first: &RunShape,
    crash: Crash,
    second: &RunShape,
    prices: Arc<PriceList>,
) -> Ledger {
    let lists = (self::prices(), prices);
    memory::run_with_crash(&topic.partitions, topic.messages.clone(), lists, settings, first, crash, second)
        .expect("no overflow")
}

/// Asserts that a run restored under other prices than it was checkpointed
/// with ends with the tables the oracle computes under those prices: when
/// no window was final at the checkpoint, every row is rated as if the
/// new prices had always been in force.
pub fn agree_after_repricing(topic: &Topic, settings: Settings, first: &RunShape, crash: Crash, second: &RunShape) {
    let prices = raised_prices();
    let expected = oracle::run(&topic.partitions, topic.messages.clone(), &prices, &settings).expect("no overflow");
    let actual = run_repriced(topic, settings, first, crash, second, prices);
    let context = format!("{first:?} crashed at {crash:?}, restored under raised prices as");
    assert_same_in(&expected, &actual, second, &context);
}

/// Asserts that every total is the sum of its day's breakdown rows.
pub fn assert_totals_sum_rows(ledger: &Ledger) {
    let mut sums: BTreeMap<TotalKey, (Amount, Amount)> = BTreeMap::new();
    for row in ledger.breakdowns.values() {
        let sum = sums.entry(TotalKey::of(&row.key)).or_insert((Amount::ZERO, Amount::ZERO));
        *sum = (sum.0.checked_add(row.usage).unwrap(), sum.1.checked_add(row.cost).unwrap());
    }
    let totals: BTreeMap<TotalKey, (Amount, Amount)> = ledger
        .totals
        .values()
        .filter(|total| !total.usage.is_zero() || !total.cost.is_zero())
        .map(|total| (total.key.clone(), (total.usage, total.cost)))
        .collect();
    sums.retain(|_, (usage, cost)| !usage.is_zero() || !cost.is_zero());
    assert_eq!(totals, sums);
}

/// Like [`agree`] under [`shapes`] with the default settings.
pub fn check(topic: &Topic) -> Ledger {
    agree(topic, Settings::default(), &shapes(topic.messages.len()))
}

fn rejection_view(ledger: &Ledger) -> BTreeMap<(Partition, i64), (Reason, Vec<u8>, bool)> {
    ledger.rejections.iter().map(|(k, r)| (*k, (r.reason, r.payload.clone(), r.truncated))).collect()
}

pub fn assert_same(expected: &Ledger, actual: &Ledger, shape: &RunShape) {
    assert_same_in(expected, actual, shape, "run as");
}

fn assert_same_in(expected: &Ledger, actual: &Ledger, shape: &RunShape, context: &str) {
    let shape = format!("{context} {} workers, epochs starting at {:?}", shape.workers, shape.epoch_starts);
    for (key, row) in &expected.breakdowns {
        assert_eq!(actual.breakdowns.get(key), Some(row), "breakdown {key:?} under {shape}");
    }
    assert_eq!(
        expected.breakdowns.len(),
        actual.breakdowns.len(),
        "extra breakdown rows under {shape}: {:?}",
        actual.breakdowns.keys().filter(|k| !expected.breakdowns.contains_key(k)).collect::<Vec<_>>()
    );
    assert_eq!(expected.totals, actual.totals, "totals under {shape}");
    assert_eq!(rejection_view(expected), rejection_view(actual), "rejections under {shape}");
    assert_eq!(expected.outcomes, actual.outcomes, "outcomes under {shape}");
    assert_eq!(expected.progress, actual.progress, "progress under {shape}");
}

/// Usage and cost of a breakdown row, as decimal strings.
pub fn row(ledger: &Ledger, account: &str, window: &str, resource: &str, sku: &str) -> Option<(String, String)> {
    let prices = prices();
    let (sku_id, _) = prices.lookup(sku).expect("known sku");
    ledger
        .breakdowns
        .iter()
        .find(|(k, _)| {
            *k.account == *account && k.window_start == at(window) && *k.resource == *resource && k.sku == sku_id
        })
        .map(|(_, r)| (r.usage.to_string(), r.cost.to_string()))
}

/// Usage and cost of a total row, as decimal strings.
pub fn total(ledger: &Ledger, account: &str, day: &str, sku: &str) -> Option<(String, String)> {
    let prices = prices();
    let (sku_id, _) = prices.lookup(sku).expect("known sku");
    ledger
        .totals
        .iter()
        .find(|(k, _)| *k.account == *account && k.day == at(day) && k.sku == sku_id)
        .map(|(_, r)| (r.usage.to_string(), r.cost.to_string()))
}

pub fn pair(usage: &str, cost: &str) -> Option<(String, String)> {
    Some((usage.to_owned(), cost.to_owned()))
}
