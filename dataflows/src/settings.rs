//! The time rules of the contract that an operator may tune.

use serde::{Deserialize, Serialize};

use crate::time::{DAY, HOUR, MINUTE, Millis};

/// How event time is judged; the contract's `[time]` section.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settings {
    /// How far behind its partition's clock an event may be, and how long past
    /// its end a window stays open.
    pub allowed_lateness: Millis,
    /// How far ahead of its Kafka timestamp an event may be.
    pub max_future: Millis,
    /// Running resources accrue up to the watermark truncated to this step.
    pub accrual_granularity: Millis,
    /// How long an `(source, id)` is remembered, behind the watermark.
    pub dedup_horizon: Millis,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings::new(HOUR, HOUR, MINUTE)
    }
}

impl Settings {
    /// Settings with the contract's default dedup horizon: lateness + 1 day.
    pub fn new(allowed_lateness: Millis, max_future: Millis, accrual_granularity: Millis) -> Settings {
        Settings {
            allowed_lateness,
            max_future,
            accrual_granularity,
            dedup_horizon: allowed_lateness.saturating_add(DAY),
        }
    }

    /// Checks the settings make sense together, saying what is wrong.
    pub fn validate(&self) -> Result<(), String> {
        if self.allowed_lateness < 0 || self.max_future < 0 {
            return Err("allowed_lateness and max_future must not be negative".into());
        }
        if self.accrual_granularity <= 0 || HOUR % self.accrual_granularity != 0 {
            return Err(format!("accrual_granularity must divide one hour, found {} ms", self.accrual_granularity));
        }
        if self.dedup_horizon < self.allowed_lateness {
            return Err("the dedup horizon must be at least the allowed lateness".into());
        }
        Ok(())
    }
}
