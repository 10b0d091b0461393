//! tally: an exactly-once stream processor for cloud billing.
//!
//! The billing semantics live in the `tally-dataflows` crate; this crate holds
//! the edges around it and the process: data flows [`source`] → dataflow →
//! [`sink`], tied together by [`run`].

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod backoff;
pub mod checkpoint;
pub mod cluster;
pub mod config;
pub mod fault;
pub mod logging;
pub mod metrics;
pub mod migrate;
pub mod produce;
pub mod reconcile;
pub mod run;
pub mod sink;
pub mod source;
pub mod workload;

/// A single-threaded tokio runtime, for a synchronous thread (a worker, a
/// writer, a command) to drive the async clients of Kafka, ClickHouse and
/// the checkpoint store.
pub fn blocking_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a single-threaded tokio runtime starts")
}

/// Now, in Unix milliseconds (0 before 1970).
pub fn unix_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
