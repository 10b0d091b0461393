//! The dataflow equals the oracle on random event streams, for 1, 2 and 4
//! workers and random epoch cuts, and after a crash restored from its last
//! checkpoint under another worker count.
//!
//! Streams have lifecycles with resizes, stops and restarts, counters, a
//! resource's events on the partition a producer keying by resource id
//! picks (so that routing by partition bills them where they are read) or
//! on any, duplicates (also across partitions), disorder within and beyond the
//! lateness bound, future events, every class of bad input, same-millisecond
//! ties, events on hour boundaries and quantities near 10^12, across a day
//! boundary and a price change. Settings vary too.
//!
//! One constraint keeps the comparison exact: a copy of an event that is late
//! on its partition is sent to that same partition (see the dedup module: the
//! read order of a late copy and an on-time copy on different partitions is
//! the one thing epochs can reorder, and only its rejection entry depends on it).

mod support;

use std::collections::BTreeMap;

use proptest::prelude::*;
use proptest::test_runner::{RngAlgorithm, TestRng};
use support::{Ev, Topic, agree, at};
use tally_dataflows::checkpoint::Cadence;
use tally_dataflows::dataflow::ROWS_PER_STEP;
use tally_dataflows::identity::IdentityHash;
use tally_dataflows::memory::Crash;
use tally_dataflows::memory::RunShape;
use tally_dataflows::routing::kafka_partition;
use tally_dataflows::settings::Settings;
use tally_dataflows::time::{DAY, HOUR, MINUTE, Millis, SECOND};

const QUANTITIES: [&str; 8] = ["0", "1", "2.5", "0.000000001", "16", "123456.789", "999999999999.999999999", "4"];
const GAUGES: [&str; 4] = ["compute.vcpu", "compute.ram_gib", "storage.disk_gib", "compute.gpu_a100"];
const COUNTERS: [&str; 2] = ["network.egress_gib", "api.requests"];

struct Emission {
    emit_at: Millis,
    partition: u32,
    payload: Vec<u8>,
    /// Index of the original when this is a repeat of another emission.
    copy_of: Option<usize>,
}

fn pick<'a, T>(rng: &mut TestRng, items: &'a [T]) -> &'a T {
    &items[rng.random_range(0..items.len())]
}

fn event_time(rng: &mut TestRng, start: Millis, span: Millis) -> Millis {
    match rng.random_range(0..4) {
        // On an hour boundary.
        0 => start + rng.random_range(0..span / HOUR) * HOUR,
        // On a quarter hour: ties between events are likely.
        1 => start + rng.random_range(0..span / (15 * MINUTE)) * 15 * MINUTE,
        _ => start + rng.random_range(0..span),
    }
}

fn quantities(rng: &mut TestRng, skus: &[&str]) -> Vec<(String, String)> {
    let count = rng.random_range(0..=2);
    let mut chosen: BTreeMap<String, String> = BTreeMap::new();
    for _ in 0..count {
        chosen.insert(pick(rng, skus).to_string(), pick(rng, &QUANTITIES).to_string());
    }
    chosen.into_iter().collect()
}

fn bad_payload(rng: &mut TestRng, time: Millis) -> Vec<u8> {
    let good = Ev::new("resource.started", "bad", "2026-11-30T21:00:00Z", "vm-bad").q("compute.vcpu", "1");
    let mut good = Ev { time, ..good };
    good.id = format!("bad-{}", rng.random_range(0..u32::MAX));
    let text = String::from_utf8(good.json()).unwrap();
    match rng.random_range(0..8) {
        0 => b"{\"specversion\": \"1.0\", \"id\": ".to_vec(),
        1 => text.replace("resource.started", "resource.deleted").into_bytes(),
        2 => text.replace("compute.vcpu", "compute.tpu").into_bytes(),
        3 => text.replace("\"1\"", "\"-1\"").into_bytes(),
        4 => text.replace("\"1\"", "\"1.0000000001\"").into_bytes(),
        5 => text.replace("\"1\"", "\"1000000000000\"").into_bytes(),
        6 => text.replace("\"account_id\"", "\"acct\"").into_bytes(),
        _ => vec![0xff; rng.random_range(0..64)],
    }
}

/// A random topic and settings from a seed.
fn scenario(seed: &[u8; 32]) -> (Topic, Settings) {
    let mut rng = TestRng::from_seed(RngAlgorithm::ChaCha, seed);
    let lateness = *pick(&mut rng, &[30 * MINUTE, HOUR]);
    let mut settings = Settings::new(lateness, HOUR, *pick(&mut rng, &[SECOND, MINUTE, 15 * MINUTE]));
    if rng.random_bool(0.3) {
        settings.dedup_horizon = lateness + 10 * MINUTE;
    }
    let partitions = rng.random_range(1..=4u32);
    let keyed = rng.random_bool(0.5);
    let start = at("2026-11-30T21:00:00Z");
    let span = 6 * HOUR;

    let mut emissions: Vec<Emission> = Vec::new();
    let emit = |emissions: &mut Vec<Emission>, rng: &mut TestRng, time: Millis, payload: Vec<u8>, key: Option<&str>| {
        // Mostly sent soon after the event; some within the lateness bound;
        // a few beyond it.
        let delay = match rng.random_range(0..10) {
            0..=5 => rng.random_range(0..5 * SECOND),
            6..=8 => rng.random_range(0..lateness),
            _ => rng.random_range(lateness..3 * lateness),
        };
        let drawn = rng.random_range(0..partitions);
        let keyed_by = key.filter(|_| keyed);
        let partition = keyed_by.map_or(drawn, |key| kafka_partition(key.as_bytes(), partitions));
        emissions.push(Emission { emit_at: time + delay, partition, payload, copy_of: None });
    };

    let resources = rng.random_range(1..=6);
    for r in 0..resources {
        let account = format!("acc-{}", rng.random_range(0..3));
        let subject = format!("vm-{r}");
        let steps = rng.random_range(1..=8);
        for step in 0..steps {
            let time = event_time(&mut rng, start, span);
            let kind = *pick(&mut rng, &["resource.started", "resource.resized", "resource.stopped", "usage.recorded"]);
            let mut event = Ev::new(kind, &format!("{r}-{step}"), "2026-11-30T21:00:00Z", &subject).account(&account);
            event.time = time;
            event.quantities = match kind {
                "usage.recorded" => quantities(&mut rng, &COUNTERS),
                "resource.stopped" => Vec::new(),
                _ => quantities(&mut rng, &GAUGES),
            };
            if rng.random_bool(0.5) {
                event = event.project(&format!("prj-{}", rng.random_range(0..3)));
            }
            emit(&mut emissions, &mut rng, time, event.json(), Some(&subject));
        }
    }
    for _ in 0..rng.random_range(0..4) {
        let time = event_time(&mut rng, start, span);
        let payload = bad_payload(&mut rng, time);
        emit(&mut emissions, &mut rng, time, payload, None);
    }
    // Events from a clock running ahead: more than max_future past their append.
    for i in 0..rng.random_range(0..2) {
        let sent = event_time(&mut rng, start, span);
        let mut event = Ev::new("usage.recorded", &format!("future-{i}"), "2026-11-30T21:00:00Z", "lb")
            .q("network.egress_gib", "1");
        event.time = sent + HOUR + rng.random_range(1..HOUR);
        emissions.push(Emission {
            emit_at: sent,
            partition: rng.random_range(0..partitions),
            payload: event.json(),
            copy_of: None,
        });
    }
    // Repeats, some long after, some on another partition.
    let originals = emissions.len();
    for i in 0..originals {
        if rng.random_bool(0.08) {
            let extra = if rng.random_bool(0.8) { rng.random_range(0..MINUTE) } else { rng.random_range(0..4 * HOUR) };
            let partition = rng.random_range(0..partitions);
            let original = &emissions[i];
            emissions.push(Emission {
                emit_at: original.emit_at + extra,
                partition,
                payload: original.payload.clone(),
                copy_of: Some(i),
            });
        }
    }

    let mut order: Vec<usize> = (0..emissions.len()).collect();
    order.sort_by_key(|&i| (emissions[i].emit_at, i));
    keep_copies_of_late_events_on_their_partition(&mut emissions, &order, &settings);

    let mut topic = Topic::new(partitions);
    for i in order {
        let e = &emissions[i];
        topic.raw(e.partition, e.emit_at, e.payload.clone());
    }
    (topic, settings)
}

/// Walks the read order keeping each partition's clock, and moves every copy
/// of an event that was late on its partition to that partition.
fn keep_copies_of_late_events_on_their_partition(emissions: &mut [Emission], order: &[usize], settings: &Settings) {
    let prices = support::prices();
    let mut clocks: BTreeMap<u32, Millis> = BTreeMap::new();
    let mut late = vec![false; emissions.len()];
    let mut interner = tally_dataflows::intern::Interner::default();
    for &i in order {
        if let Some(original) = emissions[i].copy_of
            && late[original]
        {
            emissions[i].partition = emissions[original].partition;
        }
        let Ok(event) = tally_dataflows::decode::decode(&emissions[i].payload, &prices, &mut interner) else {
            continue;
        };
        if event.time() > emissions[i].emit_at + settings.max_future {
            continue;
        }
        let clock = clocks.entry(emissions[i].partition).or_insert(event.time());
        late[i] = *clock - event.time() > settings.allowed_lateness;
        *clock = (*clock).max(event.time());
    }
}

fn cuts(rng: &mut TestRng, messages: usize) -> Vec<usize> {
    let mut starts: Vec<usize> =
        (0..rng.random_range(0..=messages.min(12))).map(|_| rng.random_range(0..messages.max(1))).collect();
    starts.sort_unstable();
    starts.dedup();
    starts
}

fn cadence(rng: &mut TestRng) -> Cadence {
    Cadence::every(*pick(rng, &[1, 2, 3]))
}

/// How the crashed run fingerprinted identities: under a key of its
/// store's, or with BLAKE3, as a store of a format before 10 did.
fn identities(rng: &mut TestRng) -> IdentityHash {
    if rng.random_bool(0.5) { IdentityHash::SipHash(rng.random()) } else { IdentityHash::Blake3 }
}

/// Rows per step of the usage stage: an epoch's rows in many steps, in a
/// few, or in one.
fn step(rng: &mut TestRng) -> usize {
    *pick(rng, &[1, 3, 16, ROWS_PER_STEP])
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn the_dataflow_equals_the_oracle(seed in any::<[u8; 32]>()) {
        let (topic, settings) = scenario(&seed);
        let mut rng = TestRng::from_seed(RngAlgorithm::ChaCha, &seed);
        let n = topic.messages.len();
        let shapes: Vec<RunShape> = [1, 2, 4]
            .into_iter()
            .map(|workers| RunShape { workers, epoch_starts: cuts(&mut rng, n), cadence: cadence(&mut rng), rows_per_step: step(&mut rng) })
            .chain([RunShape { workers: 2, epoch_starts: Vec::new(), cadence: Cadence::default(), rows_per_step: ROWS_PER_STEP }])
            .collect();
        agree(&topic, settings, &shapes);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(192))]

    /// A run killed after any epoch, with rows of epochs after its last
    /// checkpoint already written, and restored under another worker count and
    /// other cuts, ends with the tables the oracle computes.
    #[test]
    fn a_crashed_and_restored_run_equals_the_oracle(seed in any::<[u8; 32]>()) {
        let (topic, settings) = scenario(&seed);
        let mut rng = TestRng::from_seed(RngAlgorithm::ChaCha, &seed);
        let n = topic.messages.len();
        let every = *pick(&mut rng, &[1, 2, 3]);
        let first =
            RunShape { workers: *pick(&mut rng, &[1, 2, 4]), epoch_starts: cuts(&mut rng, n), cadence: Cadence::every(every), rows_per_step: step(&mut rng) };
        let last_epoch = first.epoch_starts.iter().filter(|&&i| i > 0 && i < n).count() as u64 + 1;
        // A checkpoint the first run's cadence takes: a multiple of `every`, or its last epoch.
        let checkpointed: Vec<u64> = (0..=last_epoch).filter(|e| e % every == 0 || *e == last_epoch).collect();
        let checkpoint = rng.random_bool(0.85).then(|| *pick(&mut rng, &checkpointed));
        let written_through = rng.random_range(checkpoint.unwrap_or(0)..=last_epoch);
        let second =
            RunShape { workers: *pick(&mut rng, &[1, 2, 3, 4]), epoch_starts: cuts(&mut rng, n), cadence: cadence(&mut rng), rows_per_step: step(&mut rng) };
        let crash = Crash { checkpoint, written_through, identities: identities(&mut rng) };
        support::agree_after_crash(&topic, settings, &first, crash, &second);
    }

    /// A run restored under raised prices rates every row open at its
    /// checkpoint with them: with every window still open then, it ends
    /// with the tables the oracle computes under the raised prices alone.
    /// With windows final by then, those keep their costs, and every total
    /// is still the sum of its rows.
    #[test]
    fn a_run_restored_under_other_prices_rates_its_open_rows_with_them(seed in any::<[u8; 32]>()) {
        let (topic, settings) = scenario(&seed);
        let mut rng = TestRng::from_seed(RngAlgorithm::ChaCha, &seed);
        let n = topic.messages.len();
        let first = RunShape { workers: *pick(&mut rng, &[1, 2, 4]), epoch_starts: cuts(&mut rng, n), cadence: Cadence::every(1), rows_per_step: step(&mut rng) };
        let last_epoch = first.epoch_starts.iter().filter(|&&i| i > 0 && i < n).count() as u64 + 1;
        let checkpoint = rng.random_range(0..=last_epoch);
        let written_through = rng.random_range(checkpoint..=last_epoch);
        let crash = Crash { checkpoint: Some(checkpoint), written_through, identities: identities(&mut rng) };
        let second = RunShape { workers: *pick(&mut rng, &[1, 2, 3, 4]), epoch_starts: cuts(&mut rng, n), cadence: cadence(&mut rng), rows_per_step: step(&mut rng) };
        let ledger = support::run_repriced(&topic, settings, &first, crash, &second, support::raised_prices());
        support::assert_totals_sum_rows(&ledger);
        let never_final = Settings::new(60 * DAY, settings.max_future, settings.accrual_granularity);
        support::agree_after_repricing(&topic, never_final, &first, crash, &second);
    }
}

/// Guards the generator itself: across the seeds the property test draws from,
/// every kind of trouble the streams should have does occur.
#[test]
fn the_generated_streams_cover_every_kind_of_trouble() {
    let prices = support::prices();
    let mut reasons = BTreeMap::new();
    let (mut duplicates, mut huge_rows, mut day_two_rows) = (0, 0, 0);
    for s in 0..256u32 {
        let mut seed = [0u8; 32];
        seed[..4].copy_from_slice(&s.to_le_bytes());
        let (topic, settings) = scenario(&seed);
        let ledger = tally_dataflows::oracle::run(&topic.partitions, topic.messages, &prices, &settings).unwrap();
        for (reason, n) in ledger.rejections_by_reason() {
            *reasons.entry(reason).or_insert(0) += n;
        }
        duplicates += ledger.outcomes.duplicates;
        huge_rows += ledger.breakdowns.values().filter(|r| r.usage.scaled() > 10i128.pow(27)).count();
        day_two_rows += ledger.breakdowns.keys().filter(|k| k.window_start >= at("2026-12-01T00:00:00Z")).count();
    }
    for reason in tally_dataflows::event::Reason::ALL {
        if reason != tally_dataflows::event::Reason::TooLarge {
            assert!(reasons.get(&reason).is_some_and(|&n| n > 10), "{reason} rarely generated: {reasons:?}");
        }
    }
    assert!(duplicates > 100 && huge_rows > 50 && day_two_rows > 100, "{duplicates} {huge_rows} {day_two_rows}");
}
