//! Producing a workload to Kafka (`tally gen --kafka`): creates the topic with
//! the workload's partitions when it is missing, then sends every message to
//! its partition with its key and timestamp.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use std::sync::Mutex;

use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::DeliveryResult;
use rdkafka::producer::{BaseRecord, Producer, ProducerContext, ThreadedProducer};

use crate::config::Kafka;
use crate::workload::Produced;

/// Why producing failed.
#[derive(Debug, thiserror::Error)]
#[error("Kafka at {brokers}: {what}: {source}")]
pub struct ProduceError {
    brokers: String,
    what: &'static str,
    source: Box<KafkaError>,
}

/// Remembers the first message Kafka failed to take.
#[derive(Default)]
struct Deliveries {
    failure: Mutex<Option<KafkaError>>,
}

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((error, _)) = result {
            self.failure.lock().expect("no panic holding the lock").get_or_insert_with(|| error.clone());
        }
    }
}

/// Creates `topic` with `partitions` partitions unless it exists. The topic
/// keeps every message: a workload's messages are stamped with their event
/// time, days or weeks back, and a broker's default retention (7 days)
/// deletes such messages, even under a reader that has not read them yet.
pub fn ensure_topic(kafka: &Kafka, partitions: u32) -> Result<(), ProduceError> {
    let (brokers, topic) = (&kafka.brokers, &kafka.topic);
    let fail = |what| move |source| ProduceError { brokers: brokers.clone(), what, source: Box::new(source) };
    let admin: AdminClient<DefaultClientContext> =
        kafka.client_config(&[]).create().map_err(fail("create admin client"))?;
    let runtime = crate::blocking_runtime();
    let new = NewTopic::new(topic, i32::try_from(partitions).unwrap_or(i32::MAX), TopicReplication::Fixed(1))
        .set("retention.ms", "-1");
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = runtime.block_on(admin.create_topics([&new], &options)).map_err(fail("create topic"))?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((_, code)) => return Err(fail("create topic")(KafkaError::AdminOp(code))),
        }
    }
    Ok(())
}

/// The producer's defaults, which `[kafka.properties]` may override.
const PRODUCER_TUNING: &[(&str, &str)] = &[
    ("linger.ms", "20"),
    ("batch.num.messages", "10000"),
    ("queue.buffering.max.messages", "1000000"),
    ("compression.type", "lz4"),
    ("message.max.bytes", "2000000"),
];

/// How far ahead of its pace a paced producer may run before it sleeps:
/// sleeping before each message that is due a few microseconds later took
/// a syscall and a wake-up per message, on cores shared with tally.
const PACE_SLACK: Duration = Duration::from_millis(2);

/// How fast to send.
#[derive(Clone, Copy, Debug)]
pub enum Pace {
    /// As fast as Kafka takes them, each with its own timestamp.
    Unpaced,
    /// This many messages per second, each stamped with the wall clock when
    /// sent: a live source, for measuring freshness.
    PerSecond(u32),
}

/// Sends `messages` to `topic`, calling `progress` with the count sent after
/// each tenth of `total`; fails if Kafka did not take every one of them.
pub fn produce(
    kafka: &Kafka,
    messages: impl Iterator<Item = Produced>,
    total: u64,
    pace: Pace,
    mut progress: impl FnMut(u64),
) -> Result<u64, ProduceError> {
    let (brokers, topic) = (&kafka.brokers, kafka.topic.as_str());
    let fail = |what| move |source| ProduceError { brokers: brokers.clone(), what, source: Box::new(source) };
    let producer: ThreadedProducer<Deliveries> = kafka
        .client_config(PRODUCER_TUNING)
        .create_with_context(Deliveries::default())
        .map_err(fail("create producer"))?;
    let mut sent = 0u64;
    let step = (total / 10).max(1);
    let started = std::time::Instant::now();
    for message in messages {
        let timestamp = match pace {
            Pace::Unpaced => message.timestamp,
            Pace::PerSecond(rate) => {
                let due = Duration::from_secs_f64(sent as f64 / f64::from(rate.max(1)));
                if let Some(wait) = due.checked_sub(started.elapsed())
                    && wait >= PACE_SLACK
                {
                    std::thread::sleep(wait);
                }
                crate::unix_millis()
            }
        };
        let mut record = BaseRecord::to(topic)
            .partition(i32::try_from(message.partition).unwrap_or(i32::MAX))
            .key(&message.key)
            .payload(&message.payload)
            .timestamp(timestamp);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned)) => {
                    record = returned;
                    producer.poll(Duration::from_millis(50));
                }
                Err((error, _)) => return Err(fail("send")(error)),
            }
        }
        sent += 1;
        if sent.is_multiple_of(step) {
            progress(sent);
        }
    }
    producer.flush(Duration::from_secs(120)).map_err(fail("flush"))?;
    if let Some(error) = producer.context().failure.lock().expect("no panic holding the lock").take() {
        return Err(fail("deliver")(error));
    }
    Ok(sent)
}
