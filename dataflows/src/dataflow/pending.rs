//! Input held back per epoch until the frontier has passed it.
//!
//! Every stateful operator of the billing dataflow works a whole epoch at a
//! time, in epoch order, once no more input for it can arrive: that is what
//! makes its output a function of the input's content, not of how the input
//! was batched or interleaved on its way.

use std::collections::BTreeMap;

use timely::dataflow::operators::{Capability, InputCapability};
use timely::progress::frontier::MutableAntichain;

/// One epoch's worth of an operator's two inputs, for an operator with `N`
/// outputs.
pub struct Epoch<A, B, const N: usize = 1> {
    /// Capabilities to emit output at the epoch, one per output port, in
    /// the order [`Pending::first`] was given the ports.
    pub capabilities: [Capability<u64>; N],
    /// Records from the first input.
    pub first: Batches<A>,
    /// Records from the second input.
    pub second: Vec<B>,
}

/// An epoch's records of one input, in the batches they arrived in.
///
/// Appended one after the other into one vector, every record was copied
/// once more, into room the size of the last epoch's, which came as fresh
/// pages for the kernel to zero: 2% of a drain's samples went to those
/// copies and their pages. Batches are kept as they came, and read in the
/// order they came.
pub struct Batches<A>(Vec<Vec<A>>);

impl<A> Batches<A> {
    /// Whether no record arrived.
    pub fn is_empty(&self) -> bool {
        self.0.iter().all(Vec::is_empty)
    }

    /// How many records arrived: room to collect them into at once, where
    /// a flattening's hint counts only the first batch.
    pub fn len(&self) -> usize {
        self.0.iter().map(Vec::len).sum()
    }

    /// The batches, in the order they arrived.
    pub fn batches(&self) -> &[Vec<A>] {
        &self.0
    }
}

impl<A> From<Vec<Vec<A>>> for Batches<A> {
    fn from(batches: Vec<Vec<A>>) -> Self {
        Batches(batches)
    }
}

impl<A> IntoIterator for Batches<A> {
    type Item = A;
    type IntoIter = std::iter::Flatten<std::vec::IntoIter<Vec<A>>>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter().flatten()
    }
}

/// Records of two inputs, held per epoch, for an operator with `N` outputs.
pub struct Pending<A, B, const N: usize = 1> {
    epochs: BTreeMap<u64, Epoch<A, B, N>>,
}

impl<A, B, const N: usize> Default for Pending<A, B, N> {
    fn default() -> Self {
        Pending { epochs: BTreeMap::new() }
    }
}

impl<A, B, const N: usize> Pending<A, B, N> {
    fn epoch(&mut self, capability: &InputCapability<u64>, ports: [usize; N]) -> Option<&mut Epoch<A, B, N>> {
        let time = *capability.least()?;
        Some(self.epochs.entry(time).or_insert_with(|| Epoch {
            capabilities: ports.map(|port| capability.delayed(&time, port)),
            first: Batches(Vec::new()),
            second: Vec::new(),
        }))
    }

    /// Holds a batch of the first input, taking its records; `ports` are
    /// the operator's outputs.
    pub fn first(&mut self, capability: &InputCapability<u64>, ports: [usize; N], records: &mut Vec<A>) {
        if let Some(epoch) = self.epoch(capability, ports)
            && !records.is_empty()
        {
            epoch.first.0.push(std::mem::take(records));
        }
    }

    /// Holds records of the second input.
    pub fn second(&mut self, capability: &InputCapability<u64>, ports: [usize; N], records: &mut Vec<B>) {
        if let Some(epoch) = self.epoch(capability, ports) {
            epoch.second.append(records);
        }
    }

    /// Removes and returns, oldest first, the epochs no input can add to any more.
    pub fn complete(&mut self, frontiers: &[&MutableAntichain<u64>]) -> Vec<(u64, Epoch<A, B, N>)> {
        let mut done = Vec::new();
        while let Some(entry) = self.epochs.first_entry() {
            if frontiers.iter().any(|f| f.less_equal(entry.key())) {
                break;
            }
            done.push(entry.remove_entry());
        }
        done
    }
}
