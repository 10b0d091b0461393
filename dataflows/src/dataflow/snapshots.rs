//! When a stateful operator records its state: once per checkpoint epoch, as
//! of that epoch, and once more at the end of the input.
//!
//! An operator works epochs in order, each once the frontier has passed it.
//! Its state before it works epoch `e` is its state as of every epoch between
//! the one it last worked and `e`; after it has worked every complete epoch,
//! its state is as of every epoch the frontier has passed. The checkpoint
//! epochs falling there are recorded from that state. Until then the operator
//! holds a capability at the next checkpoint epoch, so that nothing downstream
//! (the checkpoint sink above all) sees that epoch complete before its
//! snapshot exists. A snapshot is only taken when the state changed since the
//! last one: the latest snapshot at or before an epoch is the state as of it.

use timely::dataflow::operators::Capability;
use timely::progress::frontier::MutableAntichain;

use crate::checkpoint::{Part, Record, Recorder};

/// One operator's snapshots of one part.
pub(crate) struct PartSnapshots {
    recorder: Recorder,
    part: Part,
    /// At the next checkpoint epoch not yet recorded; `None` at the end.
    held: Option<Capability<u64>>,
    /// The epoch last worked, while its changes are not in a snapshot.
    unrecorded: Option<u64>,
}

impl PartSnapshots {
    /// Starts holding `capability`, the operator's initial one at epoch 0 (a
    /// checkpoint epoch whatever the cadence).
    pub(crate) fn new(recorder: Recorder, part: Part, capability: Capability<u64>) -> PartSnapshots {
        PartSnapshots { recorder, part, held: Some(capability), unrecorded: None }
    }

    /// Called after working `epoch`.
    pub(crate) fn worked(&mut self, epoch: u64) {
        self.unrecorded = Some(epoch);
    }

    /// Called after working every complete epoch, with the operator's input
    /// frontiers and its state as it is.
    pub(crate) fn after(&mut self, frontiers: &[&MutableAntichain<u64>], state: &mut impl Record) {
        let frontier = frontiers.iter().filter_map(|f| f.frontier().iter().min().copied()).min();
        match frontier {
            Some(frontier) => self.before(frontier, state),
            None => {
                if let Some(epoch) = self.unrecorded.take() {
                    self.recorder.record(self.part, epoch, state);
                }
                self.held = None;
            }
        }
    }

    /// Called before working epoch `bound` (or once every epoch before it is
    /// worked), with the state as it is: records the held checkpoint epoch if
    /// it is before `bound`.
    pub(crate) fn before(&mut self, bound: u64, state: &mut impl Record) {
        let Some(held) = self.held.as_ref().map(|c| *c.time()) else { return };
        if held >= bound {
            return;
        }
        if self.unrecorded.take().is_some() {
            self.recorder.record(self.part, held, state);
        }
        self.move_held(bound);
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
