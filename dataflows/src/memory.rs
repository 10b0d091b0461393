//! Runs the billing dataflow over in-memory partitions, as a drain would:
//! for tests, benchmarks and batch recomputation.
//!
//! Messages are given in one global read order and cut into epochs; each
//! worker reads the partitions `p` with `p mod workers == index`, in that
//! order, so any cut and any worker count are a legitimate run over the same
//! input. At the end every partition is marked exhausted.

use std::sync::{Arc, Mutex};

use timely::dataflow::InputHandleVec;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::{Input, Operator};

use crate::dataflow::billing;
use crate::event::{Message, Partition};
use crate::fixed::Overflow;
use crate::judge::{PartitionState, SourceItem};
use crate::prices::PriceList;
use crate::rows::{BreakdownRow, Ledger, Outcomes, Progress, Rejection, TotalRow};
use crate::settings::Settings;

/// How to run: worker threads and where epochs end.
#[derive(Clone, Debug)]
pub struct RunShape {
    /// Worker threads in this process.
    pub workers: usize,
    /// Indices into the message sequence at which a new epoch starts
    /// (sorted; out-of-range indices are ignored).
    pub epoch_starts: Vec<usize>,
}

#[derive(Default)]
struct Collected {
    breakdowns: Vec<(u64, BreakdownRow)>,
    totals: Vec<(u64, TotalRow)>,
    rejections: Vec<Rejection>,
    outcomes: Outcomes,
    progress: Vec<(u64, Progress)>,
    errors: Vec<Overflow>,
}

/// Runs the dataflow over `messages` (read in that order) from `partitions`,
/// and returns the tables as a reader would see them afterwards.
pub fn run(
    partitions: &[Partition],
    messages: Vec<Message>,
    prices: Arc<PriceList>,
    settings: Settings,
    shape: &RunShape,
) -> Result<Ledger, Overflow> {
    let collected = Arc::new(Mutex::new(Collected::default()));
    let messages = Arc::new(messages);
    let partitions = Arc::new(partitions.to_vec());
    let epoch_starts = Arc::new(shape.epoch_starts.clone());
    let sink = Arc::clone(&collected);
    timely::execute(timely::Config::process(shape.workers), move |worker| {
        let (index, peers) = (worker.index(), worker.peers());
        let mine = |p: Partition| p as usize % peers == index;
        let mut input = InputHandleVec::<u64, SourceItem>::new();
        worker.dataflow::<u64, _, _>(|scope| {
            let streams = billing(scope.input_from(&mut input), Arc::clone(&prices), settings);
            collect(streams.breakdowns, &sink, |c, t, rows| c.breakdowns.extend(rows.iter().map(|r| (t, r.clone()))));
            collect(streams.totals, &sink, |c, t, rows| c.totals.extend(rows.iter().map(|r| (t, r.clone()))));
            collect(streams.rejections, &sink, |c, _, rows| c.rejections.extend(rows.iter().cloned()));
            collect(streams.errors, &sink, |c, _, rows| c.errors.extend(rows.iter().cloned()));
            collect(streams.outcomes, &sink, |c, _, rows| {
                for o in rows {
                    c.outcomes.accepted += o.accepted;
                    c.outcomes.duplicates += o.duplicates;
                }
            });
            collect(streams.progress, &sink, |c, t, rows| c.progress.extend(rows.iter().map(|p| (t, *p))));
        });
        for &partition in partitions.iter().filter(|&&p| mine(p)) {
            input.send(SourceItem::Status { partition, state: PartitionState::Active });
        }
        let mut epoch = 0;
        for (i, message) in messages.iter().enumerate() {
            if epoch_starts.binary_search(&i).is_ok() && i > 0 {
                epoch += 1;
                input.advance_to(epoch);
            }
            if mine(message.partition) {
                input.send(SourceItem::Message(message.clone()));
            }
        }
        input.advance_to(epoch + 1);
        for &partition in partitions.iter().filter(|&&p| mine(p)) {
            input.send(SourceItem::Status { partition, state: PartitionState::Exhausted });
        }
        input.close();
        while worker.step_or_park(None) {}
    })
    .expect("timely workers start")
    .join()
    .into_iter()
    .for_each(|result| result.expect("a billing worker panicked"));

    let collected = std::mem::take(&mut *collected.lock().expect("no worker panicked holding the lock"));
    if let Some(error) = collected.errors.first().cloned() {
        return Err(error);
    }
    Ok(materialize(collected))
}

/// Keeps the last upsert of every key, as `FINAL` does, and drops zero usage.
fn materialize(collected: Collected) -> Ledger {
    let mut ledger = Ledger { outcomes: collected.outcomes, ..Ledger::default() };
    let mut breakdowns = collected.breakdowns;
    breakdowns.sort_by_key(|(epoch, _)| *epoch);
    for (_, row) in breakdowns {
        ledger.breakdowns.insert(row.key.clone(), row);
    }
    ledger.breakdowns.retain(|_, row| !row.usage.is_zero());
    let mut totals = collected.totals;
    totals.sort_by_key(|(epoch, _)| *epoch);
    for (_, row) in totals {
        ledger.totals.insert(row.key.clone(), row);
    }
    ledger.totals.retain(|_, row| !row.usage.is_zero());
    for rejection in collected.rejections {
        ledger.rejections.insert((rejection.partition, rejection.offset), rejection);
    }
    ledger.progress = collected.progress.iter().max_by_key(|(epoch, _)| *epoch).map(|(_, p)| *p);
    ledger
}

fn collect<'scope, D: Clone + 'static>(
    stream: timely::dataflow::StreamVec<'scope, u64, D>,
    sink: &Arc<Mutex<Collected>>,
    mut add: impl FnMut(&mut Collected, u64, &[D]) + 'static,
) {
    let sink = Arc::clone(sink);
    stream.sink(Pipeline, "Collect", move |(input, _)| {
        input.for_each(|cap, data| {
            if let Some(&epoch) = cap.least() {
                add(&mut sink.lock().expect("no worker panicked holding the lock"), epoch, data);
            }
        });
    });
}
