//! Where events come from: Kafka partitions, read in offset order.

pub mod kafka;
