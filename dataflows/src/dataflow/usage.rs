//! Usage per resource: on-time events, exchanged by `(account, resource)`,
//! less those deduplication finds to be copies, become breakdown row
//! changes.
//!
//! Per epoch, in this order: insert the epoch's events; move accrual to the
//! epoch's watermark; recompute the rows those two can have changed (from the
//! earliest new event, and from the old accrual point, to the newest event or
//! the new accrual point, for running resources) and write those that differ
//! from the rows emitted, which are recomputed too, from each resource as the
//! epoch found it; fold away the windows that became final. Windows turning
//! final are thus written a last time before their state goes.
//!
//! The deltas an epoch's row changes make to day totals are summed per total
//! before they leave: an account's resources change many rows of the same
//! day and SKU at once (every accrual move changes them all), and the totals
//! stage then receives one delta per total and epoch instead of one per row.

use std::collections::hash_map::Entry;
use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use timely::dataflow::StreamVec;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::Capability;
use timely::scheduling::SyncActivator;

use super::outputs::One;
use super::pending::{Epoch, Pending};
use super::snapshots::{Due, stateful};
use crate::checkpoint::pieces::Spill;
use crate::checkpoint::{ChunkId, ChunkStore, Part, Pieces, Recorded, Recorder, usage_part};
use crate::event::{Event, ReadAt, ResourceKey};
use crate::fixed::Overflow;
use crate::lifecycle::{Copied, Emitted, Held, Resource, Resources, RowChange, copied, encode_letting_go};
use crate::offload::Offload;
use crate::prices::PriceList;
use crate::routing::Routing;
use crate::rows::{BreakdownKey, BreakdownRow, Delta, Progress, TotalKey};
use crate::time::{Millis, window_start};

/// What the usage stage reads.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum UsageIn {
    /// An on-time event from the partition stage.
    Event(Event),
    /// From deduplication: the event read at `at` is a copy of one counted,
    /// and does not count. Its route is its resource's.
    Duplicate {
        /// The route of the event's resource.
        route: u64,
        /// Where the event was read.
        at: ReadAt,
    },
}

/// What the usage stage emits.
#[derive(Clone, Debug)]
pub enum UsageOut {
    /// A breakdown row's new value.
    Row(BreakdownRow),
    /// The change it makes to its day's total.
    Delta(TotalKey, Delta),
    /// Arithmetic left `Decimal(38, 12)`: the pipeline must stop.
    Overflow(Overflow),
}

/// What the usage stage starts from: restored, or nothing.
pub(crate) struct Start {
    /// Resources with open windows.
    pub resources: Resources,
    /// Progress as of the state.
    pub progress: Progress,
    /// Rows to write again in the first epoch worked.
    pub stale: Vec<BreakdownKey>,
    /// The prices the rows of the state were rated with, when not the run's.
    pub rated_with: Option<Arc<PriceList>>,
}

/// Turns accepted events into row changes and total deltas. Starts from
/// `start`, writes its stale rows again in the first epoch it works (and
/// rates every open row again then, if the rows were rated with other
/// prices), and records its state with `recorder`. An epoch's rows leave
/// about `rows_per_step` at a time, one step per activation (see
/// [`Working`]). The second stream holds back each checkpoint epoch until
/// its snapshot is recorded.
pub(crate) fn usage<'scope>(
    events: StreamVec<'scope, u64, UsageIn>,
    progress: StreamVec<'scope, u64, Progress>,
    (prices, routing): (Arc<PriceList>, Routing),
    start: Start,
    (recorder, rows_per_step): (Recorder, usize),
) -> (StreamVec<'scope, u64, UsageOut>, StreamVec<'scope, u64, ()>) {
    let by_resource = Exchange::new(move |item: &UsageIn| match item {
        UsageIn::Event(event) => routing.route(&event.resource),
        UsageIn::Duplicate { route, .. } => *route,
    });
    let worker = events.scope().worker();
    let chunks = recorder.chunks.clone();
    let part = (recorder, Part::Usage);
    stateful::<_, One<_>, _, _, _>(events, progress, by_resource, "Usage", part, move |mut snapshots, info| {
        let activator = worker.sync_activator_for(info.address.to_vec());
        let encoder = snapshot_encoder((worker.index(), worker.peers()), chunks, activator);
        let activator = worker.activator_for(info.address);
        let mut pending = Pending::<UsageIn, Progress>::default();
        // Epochs complete and not yet worked: they wait when the snapshot in
        // flight is needed before the next one can be taken.
        let mut ready = VecDeque::new();
        let mut working: Option<Working> = None;
        // The vector an epoch's rows are queued in, kept from epoch to epoch:
        // grown afresh each time, it was copied at every doubling, into
        // fresh pages (1.3% of a drain's samples).
        let mut queue = Vec::new();
        let Start { mut resources, mut progress, mut stale, mut rated_with } = start;
        move |(events, events_frontier), (new_progress, progress_frontier), output| {
            let port = output.output_index();
            events.for_each(|cap, data| pending.first(&cap, [port], data));
            new_progress.for_each(|cap, data| pending.second(&cap, [port], data));
            if let Some(recorded) = encoder.done().pop() {
                snapshots.record(recorded);
            }
            ready.extend(pending.complete(&[events_frontier, progress_frontier]));
            loop {
                let work = match working.as_mut() {
                    Some(work) => work,
                    None => {
                        let Some(&(time, _)) = ready.front() else { break };
                        match snapshots.due_before(time) {
                            Due::Now(checkpoint) => encoder.hand_over((checkpoint, copied(&resources))),
                            Due::Wait => return,
                            Due::Nothing => {}
                        }
                        let (_, epoch) = ready.pop_front().expect("an epoch is ready");
                        let emitted = (progress, rated_with.take().unwrap_or_else(|| Arc::clone(&prices)));
                        let stale = std::mem::take(&mut stale);
                        let queue = std::mem::take(&mut queue);
                        working.insert(Working::begin(epoch, emitted, &prices, (stale, queue)))
                    }
                };
                let walked = work.walk(&mut resources, &prices, rows_per_step);
                let (capability, step) = work.step_out();
                output.session(capability).give_iterator(step);
                if !walked {
                    // This step's rows go downstream before the next step
                    // makes more.
                    activator.activate();
                    return;
                }
                let work = working.take().expect("an epoch is being worked");
                let (capability, mut last) = work.finish(&mut resources, &prices, &mut progress);
                output.session(&capability).give_iterator(last.drain(..));
                if last.capacity() <= rows_per_step.saturating_mul(2) {
                    queue = last;
                }
                snapshots.worked(*capability.time());
            }
            if let Due::Now(checkpoint) = snapshots.due_after(&[events_frontier, progress_frontier]) {
                encoder.hand_over((checkpoint, copied(&resources)));
            }
        }
    })
}

/// Encodes snapshots of the resources on a thread of their own, one at a
/// time (the stage asks for one only once the last is recorded, see
/// [`Due`]). The resources are the largest state a worker holds: encoding them
/// took the worker 0.4 to 1.2 s per checkpoint in a live run, during which
/// the checkpoint epoch's rows waited, and on a thread of its own up to
/// 4 s, longer than an epoch. The thread encodes a copy of the handles, whose
/// resources it shares with the stage until the stage changes them (see
/// [`Resources`]), and lets go of each once written. Given a chunk store,
/// it writes the encoding there a chunk at a time as it goes (see
/// [`ChunkId`]), and the snapshot recorded holds only the blocks after the
/// last chunk.
fn snapshot_encoder(
    (worker, workers): (usize, usize),
    chunks: Option<Arc<dyn ChunkStore>>,
    activator: SyncActivator,
) -> Offload<(u64, Copied), Recorded> {
    let encode = move |(epoch, resources): (u64, Copied)| {
        let entries = resources.len();
        let Some(store) = chunks.as_deref() else {
            return Recorded::whole(usage_part(&[], encode_letting_go(resources, None)), entries);
        };
        let mut written: Vec<(ChunkId, u64)> = Vec::new();
        let mut write = |blocks: Pieces| {
            let index = u32::try_from(written.len()).expect("fewer than 2^32 chunks");
            let id = ChunkId { epoch, worker, workers, index };
            let bytes = blocks.iter().map(|block| block.len() as u64).sum();
            store.write(id, blocks);
            written.push((id, bytes));
        };
        let spill = Spill { chunk_bytes: store.chunk_bytes(), write: &mut write };
        let left = encode_letting_go(resources, Some(spill));
        let ids: Vec<ChunkId> = written.iter().map(|&(id, _)| id).collect();
        Recorded { chunks: written, ..Recorded::whole(usage_part(&ids, left), entries) }
    };
    Offload::start(format!("tally-usage-snapshot-{worker}"), activator, encode)
}

/// Gives back the room of a map that has shrunk to a quarter of it: a hash
/// map keeps its largest size otherwise, and a fleet that shrank would hold
/// the memory of its peak.
fn release_room(resources: &mut Resources) {
    if resources.capacity() > 4 * resources.len().max(1024) {
        resources.shrink_to(2 * resources.len());
    }
}

/// An epoch being worked: its rows leave a step at a time. When accrual
/// moves (or the price list changed), every running resource's open rows
/// change at once: a million rows and more, which, all made before any
/// left, were most of a worker's peak memory. A step refreshes resources
/// until about `rows_per_step` rows are queued, and the stage yields after
/// each, so that those rows are on their way to ClickHouse before the next
/// step makes more.
///
/// A resource's events go in when the walk reaches it, after its windows
/// were read as the rows last emitted. Inserted all at once beforehand,
/// each resource they changed had to be kept as it was until the walk
/// reached it: a copy of every resource an epoch touched, made and freed
/// again in every epoch. Resources new in the epoch go into the map only
/// once the walk over it is done, and windows fold after it, so the map's
/// order holds while the walk goes on and it resumes where it stopped.
/// Filing events does not look the map up: doing so read each touched
/// resource's allocation (for its key) once more an epoch, cold.
struct Working {
    capability: Capability<u64>,
    previous: Progress,
    next: Progress,
    /// The prices the rows emitted were rated with.
    emitted_prices: Arc<PriceList>,
    /// When every resource is walked, how many have been.
    walked: Option<usize>,
    /// The epoch's events of each resource the walk has not reached.
    touched: foldhash::HashMap<ResourceKey, Vec<Event>>,
    /// The same, once the walk over every resource is done or when there
    /// is none: refreshed last.
    rest: Vec<(ResourceKey, Vec<Event>)>,
    /// Rows read stale at restore that the epoch has not written yet.
    stale: BTreeSet<BreakdownKey>,
    out: EpochOut,
}

impl Working {
    /// Files `epoch`'s events by resource, from `previous` progress with rows
    /// rated with `emitted_prices`, and plans the walk. Rows are queued in
    /// `queue`, empty.
    fn begin(
        epoch: Epoch<UsageIn, Progress>,
        (previous, emitted_prices): (Progress, Arc<PriceList>),
        prices: &Arc<PriceList>,
        (stale, queue): (Vec<BreakdownKey>, Vec<UsageOut>),
    ) -> Working {
        let next = epoch.second.last().copied().unwrap_or(previous);
        // The events deduplication found to be copies of one counted: a
        // few in an epoch.
        let duplicates: foldhash::HashSet<ReadAt> = (epoch.first.batches().iter().flatten())
            .filter_map(|item| match item {
                UsageIn::Duplicate { at, .. } => Some(*at),
                UsageIn::Event(_) => None,
            })
            .collect();
        // Events are filed under their own keys, looked up by reference: a
        // key is copied once per resource an epoch. The map of resources is
        // not looked at: the walk finds the resources it holds.
        let mut touched: foldhash::HashMap<ResourceKey, Vec<Event>> = foldhash::HashMap::default();
        for item in epoch.first {
            let UsageIn::Event(event) = item else { continue };
            if duplicates.contains(&event.read_at()) {
                continue;
            }
            match touched.get_mut(&event.resource) {
                Some(events) => events.push(event),
                None => {
                    touched.insert(event.resource.clone(), vec![event]);
                }
            }
        }
        // Accrual moved: every running resource's open rows change; prices
        // changed: every open row may. Otherwise only the resources the
        // events changed have rows to refresh.
        let walk_all = next.accrued_to > previous.accrued_to || !Arc::ptr_eq(&emitted_prices, prices);
        let (walked, rest) = if walk_all { (Some(0), Vec::new()) } else { (None, touched.drain().collect()) };
        let stale = stale.into_iter().collect();
        let [capability] = epoch.capabilities;
        let out = EpochOut { items: queue, sums: foldhash::HashMap::default() };
        Working { capability, previous, next, emitted_prices, walked, touched, rest, stale, out }
    }

    /// Refreshes resources until `rows_per_step` rows are queued or every
    /// resource the epoch changes has been; true in the second case.
    fn walk(&mut self, resources: &mut Resources, prices: &Arc<PriceList>, rows_per_step: usize) -> bool {
        let Working { previous, next, emitted_prices, walked, touched, rest, out, .. } = self;
        let step = Step { previous, next, emitted_prices, prices };
        if let Some(walked_so_far) = walked {
            // Walk the resources in place rather than listing their keys.
            for held in resources.iter_mut().skip(*walked_so_far) {
                if out.items.len() >= rows_per_step {
                    return false;
                }
                *walked_so_far += 1;
                let events = touched.remove(held.key()).unwrap_or_default();
                refresh(held, events, &step, out);
            }
            *walked = None;
            rest.extend(touched.drain());
        }
        while out.items.len() < rows_per_step {
            let Some((key, events)) = rest.pop() else {
                return true;
            };
            // A resource new this epoch goes into the map here, once no
            // walk is under way over it.
            let held = resources.get_or_default(&key);
            refresh(held, events, &step, out);
        }
        rest.is_empty()
    }

    /// The rows and overflows queued since the last step, and where they go.
    fn step_out(&mut self) -> (&Capability<u64>, std::vec::Drain<'_, UsageOut>) {
        if !self.stale.is_empty() {
            for item in &self.out.items {
                if let UsageOut::Row(row) = item {
                    self.stale.remove(&row.key);
                }
            }
        }
        (&self.capability, self.out.items.drain(..))
    }

    /// Ends the epoch once walked: queues the stale rows it did not write and
    /// the sums of its deltas, folds away the windows that turned final and
    /// moves `progress` on. Returns what is left to send, and where.
    fn finish(
        self,
        resources: &mut Resources,
        prices: &PriceList,
        progress: &mut Progress,
    ) -> (Capability<u64>, Vec<UsageOut>) {
        let Working { capability, previous, next, stale, mut out, .. } = self;
        rewrite_stale(stale, resources, (&previous, &next, prices), &mut out.items);
        if let Some(boundary) = next.final_before
            && next.final_before > previous.final_before
        {
            resources.retain(|held| {
                if held.resource().holds_before(boundary) {
                    held.resource_mut().fold(boundary);
                }
                !held.resource().is_dormant()
            });
            release_room(resources);
        }
        *progress = next;
        (capability, out.finish())
    }
}

/// One epoch's move: from `previous` progress, with rows rated with
/// `emitted_prices`, to `next`, rating with `prices`.
struct Step<'a> {
    previous: &'a Progress,
    next: &'a Progress,
    emitted_prices: &'a Arc<PriceList>,
    prices: &'a Arc<PriceList>,
}

/// Queues the current value of each stale row: its resource's row as of
/// `next` progress (the epoch worked, its final windows not yet folded), or
/// zero.
fn rewrite_stale(
    stale: BTreeSet<BreakdownKey>,
    resources: &Resources,
    (previous, next, prices): (&Progress, &Progress, &PriceList),
    out: &mut Vec<UsageOut>,
) {
    out.extend(stale.into_iter().map(|key| {
        let resource = ResourceKey { account: key.account.clone(), resource: key.resource.clone() };
        let row = match resources.get(&resource) {
            Some(resource) => resource.current_row(key, next.accrued_to, previous.final_before, prices),
            None => Ok(BreakdownRow::zero(key)),
        };
        row.map_or_else(UsageOut::Overflow, UsageOut::Row)
    }));
}

/// Inserts the epoch's `events` into one resource and recomputes the rows
/// they, the accrual move and a change of prices can have changed: from the
/// earliest of those on, after `previous` and up to `next` progress. Queues
/// those that differ from the rows emitted, read from the resource before
/// its events go in.
fn refresh(held: &mut Held, events: Vec<Event>, step: &Step<'_>, out: &mut EpochOut) {
    let Step { previous, next, emitted_prices, prices } = step;
    ask_for_quantities(&events);
    let emitted = rows_to_refresh(held.resource(), &events, step)
        .map(|range| (range, held.resource().windows(range, previous.accrued_to)));
    if !events.is_empty() {
        let resource = held.resource_mut();
        for event in events {
            resource.insert(event);
        }
    }
    let Some((range, emitted)) = emitted else {
        return;
    };
    let (key, resource) = (held.key(), held.resource());
    let refreshed = emitted.and_then(|windows| {
        let emitted = Emitted { windows, prices: emitted_prices };
        resource.refresh(key, emitted, (range, next.accrued_to), prices, |change| out.change(change))
    });
    if let Err(overflow) = refreshed {
        out.items.push(UsageOut::Overflow(overflow));
    }
}

/// Asks for the memory holding `events`' quantities before they are counted.
/// A counter's quantities were allocated when the event was decoded, an
/// epoch's worth of memory before, and counting them one event after
/// another waited for each in turn: `Counted::add` took 5.9% of a worker's
/// time, nearly all of it on the load of a quantity. Asked for all at once,
/// they are on their way together.
fn ask_for_quantities(events: &[Event]) {
    #[cfg(all(target_arch = "x86_64", target_feature = "sse"))]
    for first in events.iter().filter_map(|event| event.quantities.first()) {
        safe_arch::prefetch_t0(first);
    }
    #[cfg(not(all(target_arch = "x86_64", target_feature = "sse")))]
    let _ = events;
}

/// The windows whose rows `events`, the accrual move and a change of prices
/// can change, first and last, on `resource` before `events` go in; `None`
/// when none can.
fn rows_to_refresh(resource: &Resource, events: &[Event], step: &Step<'_>) -> Option<(Millis, Millis)> {
    let Step { previous, next, emitted_prices, prices } = step;
    let events_from = events.iter().map(|event| resource.earliest_change(event)).min();
    // Running before the events: a resource they start runs from one of
    // them on, which their own earliest change already covers.
    let running = resource.is_running();
    let accrued_from =
        (next.accrued_to > previous.accrued_to && running).then(|| previous.accrued_to.unwrap_or(Millis::MIN));
    let open_from = (!Arc::ptr_eq(emitted_prices, prices)).then_some(Millis::MIN);
    let from = [events_from, accrued_from, open_from].into_iter().flatten().min()?;
    let times = events.iter().map(|event| event.order.time);
    let first = resource.first_event_time().into_iter().chain(times.clone()).min();
    let last = resource.last_event_time().into_iter().chain(times).max();
    let from = resource.clamp_from_first(from, previous.final_before, first)?;
    let accrued_through = next.accrued_to.map(|accrued_to| window_start(accrued_to - 1));
    let through = accrued_through.into_iter().chain(last.map(window_start)).max().unwrap_or(from);
    Some((from, through))
}

/// What one epoch emits: rows and overflows a step at a time, deltas summed
/// per day total until the epoch ends.
#[derive(Default)]
struct EpochOut {
    items: Vec<UsageOut>,
    sums: foldhash::HashMap<TotalKey, Delta>,
}

impl EpochOut {
    fn change(&mut self, RowChange { row, delta }: RowChange) {
        self.add(TotalKey::of(&row.key), delta);
        self.items.push(UsageOut::Row(row));
    }

    fn add(&mut self, key: TotalKey, delta: Delta) {
        match self.sums.entry(key) {
            Entry::Vacant(entry) => {
                entry.insert(delta);
            }
            Entry::Occupied(mut entry) => {
                let sum = entry.get();
                match (sum.usage.checked_add(delta.usage), sum.cost.checked_add(delta.cost)) {
                    (Some(usage), Some(cost)) => *entry.get_mut() = Delta { usage, cost },
                    // A partial sum out of range: sent on its own, for the
                    // totals stage to judge the day's sum.
                    _ => self.items.push(UsageOut::Delta(entry.key().clone(), delta)),
                }
            }
        }
    }

    /// Everything queued, and the sums that change a total.
    fn finish(self) -> Vec<UsageOut> {
        let EpochOut { mut items, sums } = self;
        let changes = sums.into_iter().filter(|(_, delta)| *delta != Delta::default());
        items.extend(changes.map(|(key, delta)| UsageOut::Delta(key, delta)));
        items
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixed::{Amount, DECIMAL38_LIMIT};
    use crate::prices::SkuId;

    fn delta(scaled: i128) -> Delta {
        let amount = Amount::from_scaled(scaled).unwrap();
        Delta { usage: amount, cost: amount }
    }

    fn key(account: &str) -> TotalKey {
        TotalKey { account: account.into(), day: 0, sku: SkuId(1) }
    }

    fn sent(out: EpochOut) -> Vec<(TotalKey, Delta)> {
        let mut sent: Vec<_> = out
            .finish()
            .into_iter()
            .filter_map(|o| if let UsageOut::Delta(k, d) = o { Some((k, d)) } else { None })
            .collect();
        sent.sort_by(|a, b| (&a.0, a.1.usage).cmp(&(&b.0, b.1.usage)));
        sent
    }

    #[test]
    fn a_map_that_shrank_to_a_quarter_gives_its_room_back() {
        let mut resources = Resources::default();
        for i in 0..100_000 {
            let key = ResourceKey { account: "acc".into(), resource: format!("vm-{i:06}").into() };
            resources.insert(key, Resource::default());
        }
        let peak = resources.capacity();
        resources.retain(|held| held.key().resource.ends_with("00"));
        release_room(&mut resources);
        assert_eq!(resources.len(), 1_000);
        assert!(resources.capacity() <= peak / 8, "capacity {} after a peak of {peak}", resources.capacity());
        let kept = resources.capacity();
        release_room(&mut resources);
        assert_eq!(resources.capacity(), kept, "a map at its size keeps its room");
    }

    #[test]
    fn deltas_leave_summed_per_total_and_zero_sums_stay_home() {
        let mut out = EpochOut::default();
        for (account, scaled) in [("a", 5), ("b", 7), ("a", -2), ("c", 3), ("c", -3), ("a", 10)] {
            out.add(key(account), delta(scaled));
        }
        assert!(out.items.is_empty(), "nothing leaves before the epoch's end");
        assert_eq!(sent(out), vec![(key("a"), delta(13)), (key("b"), delta(7))]);
    }

    #[test]
    fn a_partial_sum_out_of_range_leaves_on_its_own_for_the_totals_to_judge() {
        let big = DECIMAL38_LIMIT / 10 * 6;
        let mut out = EpochOut::default();
        out.add(key("a"), delta(big));
        out.add(key("a"), delta(big));
        out.add(key("a"), delta(-1));
        assert_eq!(sent(out), vec![(key("a"), delta(big - 1)), (key("a"), delta(big))]);
    }
}
