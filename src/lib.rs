//! tally: an exactly-once stream processor for cloud billing.
//!
//! The billing semantics live in the `tally-dataflows` crate; this crate holds
//! the edges around it. For now: the synthetic workload generator ([`workload`]).

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod workload;
