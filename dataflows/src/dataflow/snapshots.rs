//! When a stateful operator records its state: once per checkpoint epoch, as
//! of that epoch, and once more at the end of the input.
//!
//! An operator works epochs in order, each once the frontier has passed it.
//! Its state before it works epoch `e` is its state as of every epoch between
//! the one it last worked and `e`; after it has worked every complete epoch,
//! its state is as of every epoch the frontier has passed. The checkpoint
//! epochs falling there are recorded from that state. A snapshot is only
//! taken when the state changed since the last one: the latest snapshot at
//! or before an epoch is the state as of it.
//!
//! Each stateful operator has a second output, which carries nothing: until
//! a checkpoint epoch's snapshot is recorded, the operator holds a capability
//! there at that epoch, so that the checkpoint sink, which reads that output,
//! does not see the epoch complete before its snapshot exists. The rows flow
//! on the first output, which no snapshot holds back: an epoch's rows can be
//! written while its snapshot is still being encoded.

use timely::dataflow::StreamVec;
use timely::dataflow::channels::pact::{ParallelizationContract, Pipeline};
use timely::dataflow::operators::Capability;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::operators::generic::{InputHandleCore, OperatorInfo};
use timely::progress::frontier::MutableAntichain;

use super::outputs::Outputs;
use crate::checkpoint::{Part, Record, Recorded, Recorder};
use crate::rows::Progress;

/// One input of a stateful operator, with its frontier.
pub(crate) type Input<'a, D, P> = (&'a mut InputHandleCore<u64, Vec<D>, P>, &'a MutableAntichain<u64>);

/// The puller of a stateful operator's progress input.
type ProgressPuller = <Pipeline as ParallelizationContract<u64, Vec<Progress>>>::Puller;

/// Builds a stateful operator of the billing dataflow: `data` exchanged by
/// `pact` and this worker's `progress` in, records out on the outputs `O`,
/// and one more output that its snapshots of `part` hold back (see the
/// module docs). `constructor` gets the operator's [`PartSnapshots`] and
/// returns its logic, called as timely's `binary_frontier` calls it.
pub(crate) fn stateful<'scope, D, O, P, B, L>(
    data: StreamVec<'scope, u64, D>,
    progress: StreamVec<'scope, u64, Progress>,
    pact: P,
    name: &str,
    (recorder, part): (Recorder, Part),
    constructor: B,
) -> (O::Streams<'scope>, StreamVec<'scope, u64, ()>)
where
    D: 'static,
    O: Outputs,
    P: ParallelizationContract<u64, Vec<D>>,
    B: FnOnce(PartSnapshots, OperatorInfo) -> L,
    L: FnMut(Input<'_, D, P::Puller>, Input<'_, Progress, ProgressPuller>, &mut O::Active<'_>) + 'static,
{
    let mut builder = OperatorBuilder::new(name.to_owned(), data.scope());
    let info = builder.operator_info();
    let mut data = builder.new_input(data, pact);
    let mut progress = builder.new_input(progress, Pipeline);
    let (mut records, records_streams) = O::new(&mut builder);
    let (_, recorded_stream) = builder.new_output::<Vec<()>>();
    builder.build(move |mut capabilities| {
        let held = capabilities.pop().expect("a capability per output");
        // Records are sent at the capabilities of the epochs they belong to.
        drop(capabilities);
        let mut logic = constructor(PartSnapshots::new(recorder, part, held), info);
        move |frontiers| {
            let mut output = records.activate();
            logic((&mut data, &frontiers[0]), (&mut progress, &frontiers[1]), &mut output);
        }
    });
    (records_streams, recorded_stream)
}

/// One operator's snapshots of one part.
pub(crate) struct PartSnapshots {
    recorder: Recorder,
    part: Part,
    /// At the next checkpoint epoch not yet recorded, on the operator's
    /// second output; `None` at the end.
    held: Option<Capability<u64>>,
    /// The epoch last worked, while its changes are not in a snapshot.
    unrecorded: Option<u64>,
    /// The snapshot asked for and not yet recorded.
    in_flight: Option<InFlight>,
}

/// A snapshot asked for: as of `epoch`, taken before working `bound` (after
/// it, the next checkpoint epoch is held), or at the end.
#[derive(Clone, Copy, Debug)]
struct InFlight {
    epoch: u64,
    bound: Option<u64>,
}

/// What an operator recording its snapshots later is to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Due {
    /// Nothing: go on.
    Nothing,
    /// Record the state as it is now as of this epoch, then go on.
    Now(u64),
    /// Wait for the snapshot in flight: the state is needed as it is for
    /// the next one.
    Wait,
}

impl PartSnapshots {
    /// Starts holding `capability`, the operator's initial one at epoch 0 (a
    /// checkpoint epoch whatever the cadence), unless nothing is recorded.
    fn new(recorder: Recorder, part: Part, capability: Capability<u64>) -> PartSnapshots {
        let held = recorder.is_recording().then_some(capability);
        PartSnapshots { recorder, part, held, unrecorded: None, in_flight: None }
    }

    /// Called after working `epoch`.
    pub(crate) fn worked(&mut self, epoch: u64) {
        self.unrecorded = Some(epoch);
    }

    /// Called after working every complete epoch, with the operator's input
    /// frontiers and its state as it is.
    pub(crate) fn after(&mut self, frontiers: &[&MutableAntichain<u64>], state: &mut impl Record) {
        if let Due::Now(epoch) = self.due_after(frontiers) {
            self.record(state.record(epoch));
        }
    }

    /// Called before working epoch `bound` (or once every epoch before it is
    /// worked), with the state as it is: records the held checkpoint epoch if
    /// it is before `bound`.
    pub(crate) fn before(&mut self, bound: u64, state: &mut impl Record) {
        if let Due::Now(epoch) = self.due_before(bound) {
            self.record(state.record(epoch));
        }
    }

    /// As [`PartSnapshots::after`], for an operator that records its
    /// snapshots later, one at a time: what to do with the state as it is.
    pub(crate) fn due_after(&mut self, frontiers: &[&MutableAntichain<u64>]) -> Due {
        if self.held.is_none() {
            return Due::Nothing;
        }
        let frontier = frontiers.iter().filter_map(|f| f.frontier().iter().min().copied()).min();
        match frontier {
            Some(frontier) => match self.due_before(frontier) {
                // Nothing to wait for before another epoch comes.
                Due::Wait => Due::Nothing,
                due => due,
            },
            None if self.in_flight.is_some() => Due::Nothing,
            None => match self.unrecorded.take() {
                Some(epoch) => {
                    self.in_flight = Some(InFlight { epoch, bound: None });
                    Due::Now(epoch)
                }
                None => {
                    self.held = None;
                    Due::Nothing
                }
            },
        }
    }

    /// As [`PartSnapshots::before`], for an operator that records its
    /// snapshots later, one at a time: what to do with the state as it is
    /// before working `bound`.
    pub(crate) fn due_before(&mut self, bound: u64) -> Due {
        let Some(held) = self.held.as_ref().map(|c| *c.time()) else { return Due::Nothing };
        if let Some(InFlight { bound: Some(after), .. }) = self.in_flight {
            // Once recorded, the next checkpoint epoch is held; working past
            // it before then would lose the state as of it.
            let next = self.recorder.cadence.next_from(after);
            return if next < bound { Due::Wait } else { Due::Nothing };
        }
        if held >= bound {
            return Due::Nothing;
        }
        if self.unrecorded.take().is_some() {
            self.in_flight = Some(InFlight { epoch: held, bound: Some(bound) });
            return Due::Now(held);
        }
        self.move_held(bound);
        Due::Nothing
    }

    /// Records the snapshot in flight, and moves on to the next checkpoint
    /// epoch.
    pub(crate) fn record(&mut self, recorded: Recorded) {
        let InFlight { epoch, bound } = self.in_flight.take().expect("a snapshot is recorded once it is due");
        self.recorder.store(self.part, epoch, recorded);
        match bound {
            Some(bound) => self.move_held(bound),
            None => self.held = None,
        }
    }

    fn move_held(&mut self, from: u64) {
        let next = self.recorder.cadence.next_from(from);
        if let Some(held) = self.held.as_mut()
            && *held.time() < next
        {
            held.downgrade(&next);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::{Cell, RefCell};
    use std::rc::Rc;

    use timely::dataflow::channels::pact::Pipeline;
    use timely::dataflow::operators::{Input, Probe};
    use timely::dataflow::{InputHandleVec, ProbeHandle};
    use timely::scheduling::Activator;

    use super::*;
    use crate::checkpoint::{Cadence, Encoded, SnapshotsHandle, Whole};
    use crate::dataflow::outputs::One;

    #[test]
    fn a_checkpoint_epoch_stays_held_until_its_snapshot_recorded_later_arrives() {
        timely::execute_directly(|worker| {
            let snapshots = SnapshotsHandle::default();
            let recorder = Recorder::new(Some(&snapshots), Cadence::every(2), None);
            // The operator reports the epoch found due; the test hands it
            // the snapshot when it chooses, as an encoding thread would.
            let due: Rc<Cell<Option<u64>>> = Rc::default();
            let arrived: Rc<RefCell<Option<Recorded>>> = Rc::default();
            let activator: Rc<RefCell<Option<Activator>>> = Rc::default();
            let mut data = InputHandleVec::<u64, u8>::new();
            let mut progress = InputHandleVec::<u64, Progress>::new();
            let recorded = ProbeHandle::new();
            worker.dataflow::<u64, _, _>(|scope| {
                let (due, arrived, activator) = (Rc::clone(&due), Rc::clone(&arrived), Rc::clone(&activator));
                let inputs = (scope.input_from(&mut data), scope.input_from(&mut progress));
                let (_, held) =
                    stateful::<_, One<u8>, _, _, _>(inputs.0, inputs.1, Pipeline, "Test", (recorder, Part::Totals), {
                        move |mut snapshots, info| {
                            *activator.borrow_mut() = Some(scope.activator_for(info.address.clone()));
                            move |(data, data_frontier), (progress, progress_frontier), _| {
                                data.for_each(|cap, _| snapshots.worked(*cap.least().expect("an epoch")));
                                progress.for_each(|_, _| {});
                                if let Some(snapshot) = arrived.borrow_mut().take() {
                                    snapshots.record(snapshot);
                                    due.set(None);
                                }
                                if due.get().is_none()
                                    && let Due::Now(epoch) = snapshots.due_after(&[data_frontier, progress_frontier])
                                {
                                    due.set(Some(epoch));
                                }
                            }
                        }
                    });
                held.probe_with(&recorded);
            });
            data.send(7);
            data.advance_to(1);
            progress.advance_to(1);
            for _ in 0..10 {
                worker.step();
            }
            assert_eq!(due.get(), Some(0), "epoch 0 changed the state and the frontier passed it");
            assert!(recorded.less_equal(&0), "held until its snapshot arrives");
            assert_eq!(snapshots.borrow().parts_at(0)[2].1, Encoded::Empty);

            *arrived.borrow_mut() = Some(Whole(&7u8, 1).record(0));
            activator.borrow().as_ref().expect("the operator is built").activate();
            for _ in 0..10 {
                worker.step();
            }
            assert!(!recorded.less_equal(&0), "passed once recorded");
            assert!(matches!(snapshots.borrow().parts_at(0)[2].1, Encoded::Held(_)));
            assert_eq!(due.get(), None, "nothing changed since");
        });
    }

    #[test]
    fn with_a_snapshot_in_flight_work_stops_short_of_the_next_checkpoint_epochs_state() {
        timely::execute_directly(|worker| {
            let snapshots = SnapshotsHandle::default();
            let recorder = Recorder::new(Some(&snapshots), Cadence::every(2), None);
            let mut data = InputHandleVec::<u64, u8>::new();
            let mut progress = InputHandleVec::<u64, Progress>::new();
            worker.dataflow::<u64, _, _>(|scope| {
                let inputs = (scope.input_from(&mut data), scope.input_from(&mut progress));
                stateful::<_, One<u8>, _, _, _>(inputs.0, inputs.1, Pipeline, "Test", (recorder, Part::Totals), {
                    |mut snapshots, _| {
                        snapshots.worked(0);
                        assert_eq!(snapshots.due_before(1), Due::Now(0));
                        snapshots.worked(1);
                        assert_eq!(snapshots.due_before(2), Due::Nothing, "epoch 2 still goes in the next one");
                        snapshots.worked(2);
                        assert_eq!(snapshots.due_before(3), Due::Wait, "the state as of epoch 2 is due first");
                        snapshots.record(Whole(&0u8, 0).record(0));
                        assert_eq!(snapshots.due_before(3), Due::Now(2));
                        |_, _, _| {}
                    }
                });
            });
        });
    }
}
