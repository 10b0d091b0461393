//! Input held back per epoch until the frontier has passed it.
//!
//! Every stateful operator of the billing dataflow works a whole epoch at a
//! time, in epoch order, once no more input for it can arrive: that is what
//! makes its output a function of the input's content, not of how the input
//! was batched or interleaved on its way.

use std::collections::BTreeMap;

use timely::dataflow::operators::{Capability, InputCapability};
use timely::progress::frontier::MutableAntichain;

/// One epoch's worth of an operator's two inputs.
pub struct Epoch<A, B> {
    /// Capability to emit output at the epoch.
    pub capability: Capability<u64>,
    /// Records from the first input.
    pub first: Vec<A>,
    /// Records from the second input.
    pub second: Vec<B>,
}

/// Records of two inputs, held per epoch.
///
/// An epoch's records arrive in many small batches. Appended one after the
/// other to an empty vector, they were copied at every doubling, each
/// larger vector on fresh pages, per operator and epoch. A new epoch starts
/// with room for as many records as the last one completed had: in a steady
/// stream, one allocation per epoch and nothing moved.
pub struct Pending<A, B> {
    epochs: BTreeMap<u64, Epoch<A, B>>,
    /// Records in each input of the epoch completed last.
    last_sizes: (usize, usize),
}

impl<A, B> Default for Pending<A, B> {
    fn default() -> Self {
        Pending { epochs: BTreeMap::new(), last_sizes: (0, 0) }
    }
}

impl<A, B> Pending<A, B> {
    fn epoch(&mut self, capability: &InputCapability<u64>, port: usize) -> Option<&mut Epoch<A, B>> {
        let time = *capability.least()?;
        let (first, second) = self.last_sizes;
        Some(self.epochs.entry(time).or_insert_with(|| Epoch {
            capability: capability.delayed(&time, port),
            first: Vec::with_capacity(first),
            second: Vec::with_capacity(second),
        }))
    }

    /// Holds records of the first input.
    pub fn first(&mut self, capability: &InputCapability<u64>, port: usize, records: &mut Vec<A>) {
        if let Some(epoch) = self.epoch(capability, port) {
            epoch.first.append(records);
        }
    }

    /// Holds records of the second input.
    pub fn second(&mut self, capability: &InputCapability<u64>, port: usize, records: &mut Vec<B>) {
        if let Some(epoch) = self.epoch(capability, port) {
            epoch.second.append(records);
        }
    }

    /// Removes and returns, oldest first, the epochs no input can add to any more.
    pub fn complete(&mut self, frontiers: &[&MutableAntichain<u64>]) -> Vec<(u64, Epoch<A, B>)> {
        let mut done = Vec::new();
        while let Some(entry) = self.epochs.first_entry() {
            if frontiers.iter().any(|f| f.less_equal(entry.key())) {
                break;
            }
            let (time, epoch) = entry.remove_entry();
            self.last_sizes = (epoch.first.len(), epoch.second.len());
            done.push((time, epoch));
        }
        done
    }
}
