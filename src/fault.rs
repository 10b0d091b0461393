//! Fault injection for crash tests: `TALLY_FAULT=POINT[:N]` makes the process
//! abort (no cleanup, as a `kill -9` would) the `N`th time (default: first) it
//! reaches the named point. The points are the narrow windows of the commit
//! protocol (see [`crate::checkpoint`]).

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

/// A place in the commit protocol where a crash can be injected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Between two inserts of one epoch's rows.
    BetweenSinkBatches,
    /// After an epoch's rows are written, before its shard.
    AfterSinkWrite,
    /// Inside a usage chunk's upload, while its snapshot is encoded.
    MidChunkWrite,
    /// Inside a shard upload: some bytes sent, the object not complete.
    MidShardWrite,
    /// After a shard is written, before the manifest.
    AfterShardWrite,
    /// Inside the manifest upload.
    MidManifest,
    /// After the manifest is committed, before `pipeline_progress`.
    AfterManifest,
}

impl Fault {
    /// Every point, with its name.
    pub const ALL: [(Fault, &'static str); 7] = [
        (Fault::BetweenSinkBatches, "between-sink-batches"),
        (Fault::AfterSinkWrite, "after-sink-write"),
        (Fault::MidChunkWrite, "mid-chunk-write"),
        (Fault::MidShardWrite, "mid-shard-write"),
        (Fault::AfterShardWrite, "after-shard-write"),
        (Fault::MidManifest, "mid-manifest"),
        (Fault::AfterManifest, "after-manifest"),
    ];

    /// The point's name in `TALLY_FAULT`.
    pub fn name(self) -> &'static str {
        Fault::ALL.iter().find(|(f, _)| *f == self).map(|(_, name)| *name).expect("every fault is named")
    }
}

/// The armed fault: where, and on which arrival.
#[derive(Debug)]
struct Armed {
    fault: Fault,
    on_arrival: u64,
    arrivals: AtomicU64,
}

static ARMED: OnceLock<Option<Armed>> = OnceLock::new();

/// Reads `TALLY_FAULT`; an unknown point is an error, not a silent no-op.
pub fn arm_from_environment() -> Result<(), String> {
    let armed = match std::env::var("TALLY_FAULT") {
        Err(_) => None,
        Ok(text) => Some(parse(&text)?),
    };
    if let Some(armed) = &armed {
        tracing::warn!(fault = armed.fault.name(), on_arrival = armed.on_arrival, "fault injection armed");
    }
    let _ = ARMED.set(armed);
    Ok(())
}

fn parse(text: &str) -> Result<Armed, String> {
    let (name, count) = text.split_once(':').unwrap_or((text, "1"));
    let names = || Fault::ALL.iter().map(|(_, n)| *n).collect::<Vec<_>>().join(", ");
    let fault = Fault::ALL
        .iter()
        .find(|(_, n)| *n == name)
        .map(|(f, _)| *f)
        .ok_or_else(|| format!("TALLY_FAULT: unknown point {name:?}; known: {}", names()))?;
    let on_arrival = count
        .parse::<u64>()
        .ok()
        .filter(|&n| n > 0)
        .ok_or_else(|| format!("TALLY_FAULT: {count:?} is not a positive count"))?;
    Ok(Armed { fault, on_arrival, arrivals: AtomicU64::new(0) })
}

/// Marks that the process reached `fault`; aborts if it is armed for this arrival.
pub fn point(fault: Fault) {
    let Some(Some(armed)) = ARMED.get() else { return };
    if armed.fault == fault && armed.arrivals.fetch_add(1, Ordering::SeqCst) + 1 == armed.on_arrival {
        eprintln!("TALLY_FAULT: aborting at {}", fault.name());
        std::process::abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn points_parse_by_name_and_count() {
        let armed = parse("mid-manifest:3").unwrap();
        assert_eq!((armed.fault, armed.on_arrival), (Fault::MidManifest, 3));
        assert_eq!(parse("after-sink-write").unwrap().on_arrival, 1);
        assert!(parse("mid-lunch").unwrap_err().contains("known: between-sink-batches"));
        assert!(parse("after-manifest:0").is_err());
    }
}
