//! tally's billing semantics (shared/CONTRACT.md): CloudEvents lifecycle
//! events in, exact per-resource hourly usage and cost, per-account daily
//! totals, rejections and progress out.
//!
//! The crate is pure: no Kafka, no ClickHouse, no clock. [`dataflow::billing`]
//! builds the timely dataflow; [`oracle`] is the same contract as a plain
//! sequential program, the reference the dataflow is tested against; [`memory`]
//! runs the dataflow over in-memory partitions.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod checkpoint;
pub mod dataflow;
pub mod decode;
pub mod event;
pub mod fixed;
pub mod identity;
pub mod intern;
pub mod judge;
pub mod lifecycle;
pub mod memory;
pub mod offload;
pub mod oracle;
pub mod prices;
pub mod rate;
pub mod routing;
pub mod rows;
pub mod settings;
pub mod time;
