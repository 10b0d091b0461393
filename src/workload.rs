//! A realistic synthetic workload, seeded and reproducible: a fleet of
//! resources across accounts that start, resize, stop and are replaced, record
//! counters while they run, and reach the bus the way real producers deliver
//! them (out of order, some late, some repeated, some broken, a few from a
//! clock running ahead).
//!
//! It is a discrete-event simulation in event time; deliveries are held until
//! no earlier append can follow, so messages come out in append order with
//! bounded memory (the fleet plus the disorder window).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};

use rand::{Rng, RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tally_dataflows::event::Partition;
use tally_dataflows::routing::kafka_partition;
use tally_dataflows::time::{HOUR, MINUTE, Millis, Rfc3339, SECOND};

/// What to generate.
#[derive(Clone, Debug)]
pub struct Workload {
    /// Seed of every random choice: the same seed gives the same messages.
    pub seed: u64,
    /// Messages to produce, troubles included.
    pub events: u64,
    /// Billing accounts.
    pub accounts: u32,
    /// Resources running at any time.
    pub fleet: u32,
    /// Partitions of the topic.
    pub partitions: u32,
    /// Event time of the first event.
    pub start: Millis,
    /// Mean time between counter records of a running resource.
    pub counter_interval: Millis,
    /// Mean lifetime of a resource.
    pub mean_lifetime: Millis,
    /// Fraction of events delivered twice.
    pub duplicate_rate: f64,
    /// Fraction of events delivered more than `lateness` after their time.
    pub late_rate: f64,
    /// Fraction of messages that are broken.
    pub malformed_rate: f64,
    /// Fraction of events stamped more than an hour after their append.
    pub future_rate: f64,
    /// The allowed lateness the workload is aimed at.
    pub lateness: Millis,
}

impl Default for Workload {
    fn default() -> Workload {
        Workload {
            seed: 1,
            events: 100_000,
            accounts: 200,
            fleet: 2_000,
            partitions: 4,
            start: 1_795_392_000_000, // 2026-11-23T00:00:00Z
            counter_interval: 5 * MINUTE,
            mean_lifetime: 6 * HOUR,
            duplicate_rate: 0.02,
            late_rate: 0.002,
            malformed_rate: 0.001,
            future_rate: 0.0005,
            lateness: HOUR,
        }
    }
}

/// One message for the topic.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Produced {
    /// Target partition: the resource's, as Kafka's default partitioner picks it
    /// for the resource id as the key.
    pub partition: Partition,
    /// Message key: the resource id.
    pub key: String,
    /// Append time, used as the Kafka timestamp.
    pub timestamp: Millis,
    /// The value.
    pub payload: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Action {
    Start,
    Resize,
    Record,
    Stop,
}

struct Resource {
    account: u32,
    serial: u64,
    running: bool,
}

/// Generates the workload's messages in append order.
pub struct Generator {
    config: Workload,
    rng: ChaCha8Rng,
    resources: Vec<Resource>,
    schedule: BinaryHeap<Reverse<(Millis, u64, usize, Action)>>,
    deliveries: Deliveries,
    next_serial: u64,
    sequence: u64,
    emitted: u64,
    now: Millis,
}

impl Generator {
    /// A generator for `config`.
    pub fn new(config: Workload) -> Generator {
        let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
        let mut generator = Generator {
            resources: Vec::with_capacity(config.fleet as usize),
            schedule: BinaryHeap::new(),
            deliveries: Deliveries::default(),
            next_serial: 0,
            sequence: 0,
            emitted: 0,
            now: config.start,
            rng: ChaCha8Rng::seed_from_u64(rng.next_u64()),
            config,
        };
        for slot in 0..generator.config.fleet as usize {
            let account = generator.rng.random_range(0..generator.config.accounts.max(1));
            let serial = generator.serial();
            generator.resources.push(Resource { account, serial, running: false });
            let at = generator.config.start + generator.rng.random_range(0..10 * MINUTE);
            generator.plan(at, slot, Action::Start);
        }
        generator
    }

    fn serial(&mut self) -> u64 {
        self.next_serial += 1;
        self.next_serial
    }

    fn plan(&mut self, at: Millis, slot: usize, action: Action) {
        self.sequence += 1;
        self.schedule.push(Reverse((at, self.sequence, slot, action)));
    }

    fn exponential(&mut self, mean: Millis) -> Millis {
        let uniform: f64 = self.rng.random_range(f64::EPSILON..1.0);
        (-uniform.ln() * mean as f64) as Millis + 1
    }

    /// Latest possible delivery delay: nothing appended before `now - this`
    /// can still be pending.
    fn max_delay(&self) -> Millis {
        2 * self.config.lateness
    }

    fn deliver(&mut self, time: Millis, partition: Partition, key: String, payload: String) {
        let roll: f64 = self.rng.random_range(0.0..1.0);
        let delay = if roll < self.config.late_rate {
            self.rng.random_range(self.config.lateness + MINUTE..self.max_delay())
        } else if roll < 0.05 {
            self.rng.random_range(0..self.config.lateness / 2)
        } else {
            self.rng.random_range(0..2 * SECOND)
        };
        let produced = Produced { partition, key, timestamp: time + delay, payload };
        if self.rng.random_bool(self.config.duplicate_rate) {
            let mut copy = produced.clone();
            copy.timestamp += self.rng.random_range(0..30 * SECOND);
            if self.rng.random_bool(0.1) {
                copy.partition = self.rng.random_range(0..self.config.partitions);
            }
            self.push(copy);
        }
        self.push(produced);
    }

    fn push(&mut self, produced: Produced) {
        self.sequence += 1;
        self.deliveries.push(self.sequence, produced);
    }

    fn step(&mut self) {
        let Some(Reverse((at, _, slot, action))) = self.schedule.pop() else { return };
        self.now = at;
        if self.rng.random_bool(self.config.malformed_rate) {
            let payload = self.malformed(at);
            let partition = self.rng.random_range(0..self.config.partitions);
            self.deliver(at, partition, "broken".into(), payload);
        }
        let gauges = match action {
            Action::Start => {
                self.resources[slot].running = true;
                let lifetime = self.exponential(self.config.mean_lifetime);
                self.plan(at + lifetime, slot, Action::Stop);
                let next = self.exponential(self.config.counter_interval);
                self.plan(at + next, slot, Action::Record);
                let resize = self.exponential(4 * self.config.mean_lifetime);
                self.plan(at + resize, slot, Action::Resize);
                Some(("resource.started", self.shape()))
            }
            Action::Resize if self.resources[slot].running => {
                let resize = self.exponential(4 * self.config.mean_lifetime);
                self.plan(at + resize, slot, Action::Resize);
                Some(("resource.resized", self.shape()))
            }
            Action::Record if self.resources[slot].running => {
                let next = self.exponential(self.config.counter_interval);
                self.plan(at + next, slot, Action::Record);
                let egress = format!("{}.{:03}", self.rng.random_range(0..20), self.rng.random_range(0..1000));
                let requests = self.rng.random_range(1..50_000).to_string();
                let quantities = format!(r#"{{"network.egress_gib":"{egress}","api.requests":"{requests}"}}"#);
                Some(("usage.recorded", quantities))
            }
            Action::Stop => {
                self.resources[slot].running = false;
                let gap = self.rng.random_range(SECOND..5 * MINUTE);
                self.plan(at + gap, slot, Action::Start);
                Some(("resource.stopped", String::new()))
            }
            Action::Resize | Action::Record => None,
        };
        if let Some((kind, quantities)) = gauges {
            // A producer whose clock runs ahead stamps the event in the future.
            let stamped = if self.rng.random_bool(self.config.future_rate) {
                at + HOUR + self.rng.random_range(MINUTE..HOUR)
            } else {
                at
            };
            let (partition, key, payload) = self.event(slot, stamped, kind, &quantities);
            self.deliver(at, partition, key, payload);
        }
        if action == Action::Stop {
            // The slot's next resource is a new one, possibly in another account.
            let serial = self.serial();
            let account = self.rng.random_range(0..self.config.accounts.max(1));
            self.resources[slot] = Resource { account, serial, running: false };
        }
    }

    fn shape(&mut self) -> String {
        const SHAPES: [(u32, u32); 6] = [(1, 2), (2, 4), (2, 8), (4, 16), (8, 32), (16, 64)];
        let (vcpu, ram) = SHAPES[self.rng.random_range(0..SHAPES.len())];
        let disk = self.rng.random_range(1..=20) * 10;
        if self.rng.random_bool(0.02) {
            format!(
                r#"{{"compute.vcpu":"{vcpu}","compute.ram_gib":"{ram}","storage.disk_gib":"{disk}","compute.gpu_a100":"1"}}"#
            )
        } else {
            format!(r#"{{"compute.vcpu":"{vcpu}","compute.ram_gib":"{ram}","storage.disk_gib":"{disk}"}}"#)
        }
    }

    fn event(&mut self, slot: usize, stamped: Millis, kind: &str, quantities: &str) -> (Partition, String, String) {
        let resource = &self.resources[slot];
        let (account, serial) = (resource.account, resource.serial);
        let subject = format!("vm-{serial:08x}");
        let partition = kafka_partition(subject.as_bytes(), self.config.partitions);
        let id = format!("{:016x}{:08x}", self.rng.next_u64(), self.sequence);
        let region = ["eu-central-1", "eu-west-1", "us-east-1"][(account % 3) as usize];
        let project = account % 7;
        let team = ["ml", "web", "data", "infra"][(serial % 4) as usize];
        let quantities = if quantities.is_empty() { String::new() } else { format!(r#","quantities":{quantities}"#) };
        let payload = format!(
            r#"{{"specversion":"1.0","id":"{id}","source":"compute/{region}","type":"{kind}","time":"{time}","subject":"{subject}","data":{{"account_id":"acc-{account:06}"{quantities},"project_id":"prj-{project}","region":"{region}","labels":{{"team":"{team}"}}}}}}"#,
            time = Rfc3339(stamped),
        );
        (partition, subject, payload)
    }

    fn malformed(&mut self, at: Millis) -> String {
        let time = Rfc3339(at);
        match self.rng.random_range(0..6) {
            0 => r#"{"specversion":"1.0","id":"#.to_owned(),
            1 => format!(
                r#"{{"specversion":"1.0","id":"x{at}","source":"s","type":"resource.exploded","time":"{time}","subject":"vm","data":{{"account_id":"acc"}}}}"#
            ),
            2 => format!(
                r#"{{"specversion":"1.0","id":"x{at}","source":"s","type":"usage.recorded","time":"{time}","subject":"vm","data":{{"account_id":"acc","quantities":{{"quantum.qubits":"1"}}}}}}"#
            ),
            3 => format!(
                r#"{{"specversion":"1.0","id":"x{at}","source":"s","type":"usage.recorded","time":"{time}","subject":"vm","data":{{"account_id":"acc","quantities":{{"api.requests":"-5"}}}}}}"#
            ),
            4 => format!(
                r#"{{"specversion":"1.0","id":"x{at}","source":"s","type":"resource.started","time":"{time}","subject":"vm","data":{{"quantities":{{"compute.vcpu":"1"}}}}}}"#
            ),
            _ => "not json at all".to_owned(),
        }
    }
}

impl Generator {
    /// The messages as `tally-dataflows` reads them, numbering offsets per
    /// partition in append order.
    pub fn messages(self) -> Vec<tally_dataflows::event::Message> {
        let mut offsets = std::collections::BTreeMap::<Partition, i64>::new();
        self.map(|produced| {
            let offset = offsets.entry(produced.partition).or_default();
            *offset += 1;
            tally_dataflows::event::Message {
                partition: produced.partition,
                offset: *offset - 1,
                timestamp: produced.timestamp,
                payload: produced.payload.into_bytes(),
            }
        })
        .collect()
    }
}

impl Iterator for Generator {
    type Item = Produced;

    fn next(&mut self) -> Option<Produced> {
        loop {
            if self.emitted >= self.config.events {
                return None;
            }
            if let Some(produced) = self.deliveries.released.pop_front() {
                self.emitted += 1;
                return Some(produced);
            }
            if self.schedule.is_empty() {
                if !self.deliveries.release_through(Millis::MAX) {
                    return None;
                }
            } else if !self.deliveries.release_through(self.now - self.max_delay()) {
                self.step();
            }
        }
    }
}

/// Messages waiting for their append time, in buckets of a second of it.
/// At a large fleet two hours of messages wait (the latest delivery delay):
/// a heap of them cost each message a sift through a tree far larger than
/// the caches, a sixth of the producer's time. Here a message is pushed onto
/// its second's bucket, and a bucket is sorted once, when no earlier append
/// can follow; the order out is the heap's, by append time then sequence.
#[derive(Default)]
struct Deliveries {
    /// The second of append time of the first bucket.
    first_second: Millis,
    /// Per second, its messages with their sequence, in the order pushed.
    buckets: VecDeque<Vec<(u64, Produced)>>,
    /// Messages in append order, ready to go.
    released: VecDeque<Produced>,
}

impl Deliveries {
    /// Holds `produced`, which may be appended before every message held
    /// (their delays differ), never in a second already released.
    fn push(&mut self, sequence: u64, produced: Produced) {
        let second = produced.timestamp.div_euclid(SECOND);
        if self.buckets.is_empty() {
            self.first_second = second;
        }
        while second < self.first_second {
            self.buckets.push_front(Vec::new());
            self.first_second -= 1;
        }
        let index = usize::try_from(second - self.first_second).expect("a bucket at or after the first");
        if index >= self.buckets.len() {
            self.buckets.resize_with(index + 1, Vec::new);
        }
        self.buckets[index].push((sequence, produced));
    }

    /// Releases, in order, the messages of every second that ends by
    /// `limit`; whether there were any.
    fn release_through(&mut self, limit: Millis) -> bool {
        let before = self.released.len();
        while !self.buckets.is_empty() && (self.first_second + 1).saturating_mul(SECOND) - 1 <= limit {
            let mut bucket = self.buckets.pop_front().expect("a first bucket");
            self.first_second += 1;
            bucket.sort_unstable_by_key(|(sequence, produced)| (produced.timestamp, *sequence));
            self.released.extend(bucket.into_iter().map(|(_, produced)| produced));
        }
        self.released.len() > before
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_messages_in_append_order() {
        let config = Workload { events: 2_000, fleet: 50, ..Workload::default() };
        let first: Vec<Produced> = Generator::new(config.clone()).collect();
        let second: Vec<Produced> = Generator::new(config.clone()).collect();
        assert_eq!(first.len(), 2_000);
        assert_eq!(first, second);
        assert!(first.windows(2).all(|w| w[0].timestamp <= w[1].timestamp), "append order");
        let other: Vec<Produced> = Generator::new(Workload { seed: 2, ..config }).collect();
        assert_ne!(first, other);
    }

    #[test]
    fn deliveries_come_out_as_a_heap_would_give_them() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let mut deliveries = Deliveries::default();
        let mut heap = BinaryHeap::new();
        let (mut out, mut expected) = (Vec::new(), Vec::new());
        let mut now: Millis = 1_000_000;
        for sequence in 0..20_000u64 {
            now += rng.random_range(0..50);
            // Most within two seconds, a tenth up to ten minutes late; some share a millisecond.
            let delay = if rng.random_bool(0.1) { rng.random_range(0..600_000) } else { rng.random_range(0..2_000) };
            let payload = sequence.to_string();
            let produced = Produced { partition: 0, key: String::new(), timestamp: now + delay, payload };
            heap.push(Reverse((produced.timestamp, sequence, produced.clone())));
            deliveries.push(sequence, produced);
            let limit = now - 600_000;
            deliveries.release_through(limit);
            out.extend(deliveries.released.drain(..));
            while heap.peek().is_some_and(|Reverse((t, _, _))| *t <= limit) {
                expected.push(heap.pop().expect("a peeked message").0.2);
            }
            assert!(out.len() <= expected.len(), "nothing released before the heap would");
        }
        deliveries.release_through(Millis::MAX);
        out.extend(deliveries.released.drain(..));
        expected.extend(std::iter::from_fn(|| heap.pop().map(|Reverse((_, _, produced))| produced)));
        assert_eq!(out, expected);
    }
}
