//! The `tally` command line.

use std::io::{BufWriter, Write};
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tally::cluster::Cluster;
use tally::config::Overrides;
use tally::produce::Pace;
use tally::run::Mode;
use tally::workload::{Generator, Workload};
use tally_dataflows::time::{Millis, parse_duration, parse_rfc3339};

mod allocator;

#[global_allocator]
static ALLOCATOR: allocator::Mimalloc = allocator::Mimalloc;

#[derive(Parser)]
#[command(name = "tally", version, about = "Exactly-once stream processor for cloud billing")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// A worker process: Kafka → dataflow → ClickHouse.
    Run {
        #[command(flatten)]
        config: Overrides,
        #[command(flatten)]
        cluster: Cluster,
        /// Stop once every partition is read up to the end offsets found at
        /// start and everything is written.
        #[arg(long, env = "TALLY_DRAIN")]
        drain: bool,
    },
    /// Create the configured database if missing and apply the ClickHouse DDL.
    Migrate {
        #[command(flatten)]
        config: Overrides,
    },
    /// Produce a realistic synthetic workload, seeded and reproducible.
    Gen(GenArgs),
    /// Recompute the tables from the whole event log in batch and diff them
    /// against ClickHouse. Exit status: 0 equal, 1 different, 2 not checked.
    Reconcile {
        #[command(flatten)]
        config: Overrides,
        /// Read this JSON Lines file (as `tally gen --out` writes) instead of
        /// the topic.
        #[arg(long, env = "TALLY_RECONCILE_EVENTS")]
        events: Option<PathBuf>,
    },
}

#[derive(clap::Args)]
struct GenArgs {
    /// Write the messages as JSON Lines (partition, key, timestamp, value) to this file.
    #[arg(long, env = "TALLY_GEN_OUT", required_unless_present = "kafka", conflicts_with = "kafka")]
    out: Option<PathBuf>,
    /// Produce the messages to the configured Kafka topic (created when missing).
    #[arg(long)]
    kafka: bool,
    #[command(flatten)]
    config: Overrides,
    /// Messages to produce.
    #[arg(long, default_value_t = 100_000, env = "TALLY_GEN_EVENTS")]
    events: u64,
    /// Seed of every random choice.
    #[arg(long, default_value_t = 1, env = "TALLY_GEN_SEED")]
    seed: u64,
    /// Billing accounts.
    #[arg(long, default_value_t = 200, env = "TALLY_GEN_ACCOUNTS")]
    accounts: u32,
    /// Resources running at any time.
    #[arg(long, default_value_t = 2_000, env = "TALLY_GEN_FLEET")]
    fleet: u32,
    /// Partitions of the topic.
    #[arg(long, default_value_t = 4, env = "TALLY_GEN_PARTITIONS")]
    partitions: u32,
    /// Event time of the first event (RFC 3339, or `now`).
    #[arg(long, default_value = "2026-11-23T00:00:00Z", value_parser = rfc3339, env = "TALLY_GEN_START")]
    start: Millis,
    /// Mean time between counter records of a running resource.
    #[arg(long, default_value = "5m", value_parser = parse_duration, env = "TALLY_GEN_COUNTER_INTERVAL")]
    counter_interval: Millis,
    /// Fraction of events delivered twice.
    #[arg(long, default_value_t = 0.02, env = "TALLY_GEN_DUPLICATE_RATE")]
    duplicate_rate: f64,
    /// Fraction of events delivered after the allowed lateness.
    #[arg(long, default_value_t = 0.002, env = "TALLY_GEN_LATE_RATE")]
    late_rate: f64,
    /// Fraction of broken messages.
    #[arg(long, default_value_t = 0.001, env = "TALLY_GEN_MALFORMED_RATE")]
    malformed_rate: f64,
    /// With --kafka: send this many messages per second, each stamped with
    /// the wall clock when sent (a live source), whatever its event time.
    /// No event is then stamped ahead of its append time: with the append
    /// time the wall clock, such an event would not be `future`, only move
    /// its partition's clock hours ahead and make the events after it late.
    #[arg(long, requires = "kafka", env = "TALLY_GEN_RATE")]
    rate: Option<u32>,
}

fn rfc3339(text: &str) -> Result<Millis, String> {
    if text == "now" {
        return Ok(tally::unix_millis());
    }
    parse_rfc3339(text).ok_or_else(|| format!("expected an RFC 3339 time with an offset, found {text:?}"))
}

/// Exit status of a process that lost another process of its cluster.
const EXIT_PEER_LOST: i32 = 3;

fn main() -> anyhow::Result<()> {
    allocator::configure();
    tally::logging::init();
    // A worker that panics leaves its peers waiting on it forever: end the
    // process instead, as a crash, for the supervisor to restart it. timely's
    // network threads panic when another process of the cluster goes away:
    // this process cannot go on without it and stops with its own status.
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if std::thread::current()
            .name()
            .is_some_and(|name| name.starts_with("timely:send") || name.starts_with("timely:recv"))
        {
            tracing::error!(
                cause = %info,
                "lost the connection to another process of the cluster: stopping; restart the whole cluster \
                 (it resumes from the last checkpoint)"
            );
            std::process::exit(EXIT_PEER_LOST);
        }
        report(info);
        std::process::abort();
    }));
    match Cli::parse().command {
        Command::Run { config, cluster, drain } => {
            let mode = if drain { Mode::Drain } else { Mode::Live };
            tally::fault::arm_from_environment().map_err(anyhow::Error::msg)?;
            allocator::trim_glibc_heap();
            tally::run::run(config.load()?, &cluster, mode)
        }
        Command::Migrate { config } => {
            let config = config.load()?;
            let applied = tally::migrate::migrate(&config.clickhouse)?;
            if applied.is_empty() {
                eprintln!("tally migrate: database {} is up to date", config.clickhouse.database);
            } else {
                eprintln!("tally migrate: applied {} to database {}", applied.join(", "), config.clickhouse.database);
            }
            Ok(())
        }
        Command::Gen(args) => generate(args),
        Command::Reconcile { config, events } => {
            let outcome = config
                .load()
                .map_err(tally::reconcile::ReconcileError::from)
                .and_then(|config| tally::reconcile::reconcile(&config, events.as_deref()));
            match outcome {
                Err(error) => {
                    eprintln!("tally reconcile: could not check: {error}");
                    std::process::exit(2);
                }
                Ok(outcome) => {
                    let differences = outcome.differences.count();
                    print!("{}", outcome.differences);
                    println!("reconciled {} messages of {}: {differences} rows differ", outcome.messages, outcome.log);
                    if differences > 0 {
                        std::process::exit(1);
                    }
                    Ok(())
                }
            }
        }
    }
}

/// The workload `tally gen` makes of its arguments.
fn workload(args: &GenArgs) -> Workload {
    let default = Workload::default();
    Workload {
        seed: args.seed,
        events: args.events,
        accounts: args.accounts,
        fleet: args.fleet,
        partitions: args.partitions,
        start: args.start,
        counter_interval: args.counter_interval,
        duplicate_rate: args.duplicate_rate,
        late_rate: args.late_rate,
        malformed_rate: args.malformed_rate,
        future_rate: if args.rate.is_some() { 0.0 } else { default.future_rate },
        ..default
    }
}

fn generate(args: GenArgs) -> anyhow::Result<()> {
    let workload = workload(&args);
    if args.kafka {
        let config = args.config.load()?;
        let kafka = &config.kafka;
        tally::produce::ensure_topic(kafka, args.partitions)?;
        let pace = args.rate.map_or(Pace::Unpaced, Pace::PerSecond);
        let total = args.events;
        let sent = tally::produce::produce(kafka, Generator::new(workload), total, pace, |sent| {
            eprintln!("tally gen: {sent} of {total} messages sent");
        })?;
        eprintln!("tally gen: {sent} messages produced to {} at {}", kafka.topic, kafka.brokers);
        return Ok(());
    }
    let path = args.out.expect("clap requires --out without --kafka");
    let file = std::fs::File::create(&path).with_context(|| format!("cannot create {}", path.display()))?;
    let mut out = BufWriter::new(file);
    let step = (args.events / 10).max(1);
    for (i, produced) in Generator::new(workload).enumerate() {
        let line = serde_json::json!({
            "partition": produced.partition,
            "key": produced.key,
            "timestamp": produced.timestamp,
            "value": produced.payload,
        });
        serde_json::to_writer(&mut out, &line)?;
        out.write_all(b"\n")?;
        if (i as u64 + 1).is_multiple_of(step) {
            eprintln!("tally gen: {} of {} messages", i as u64 + 1, args.events);
        }
    }
    out.flush().with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gen_args(flags: &[&str]) -> GenArgs {
        let cli = Cli::try_parse_from(["tally", "gen"].iter().chain(flags)).unwrap();
        match cli.command {
            Command::Gen(args) => args,
            _ => unreachable!("parsed a gen command"),
        }
    }

    #[test]
    fn a_paced_workload_stamps_no_event_ahead_of_its_append() {
        assert!(workload(&gen_args(&["--out", "x"])).future_rate > 0.0);
        assert_eq!(workload(&gen_args(&["--kafka", "--rate", "100"])).future_rate, 0.0);
    }
}
