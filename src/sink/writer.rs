//! A worker's epochs of rows, written to ClickHouse on a thread of their own.
//!
//! A worker that waited for ClickHouse to take each epoch's rows did nothing
//! else meanwhile: under steady load that was most of the time its inserts
//! took, while the next epoch's messages queued. With a writer thread, the
//! worker computes the next epoch while ClickHouse takes this one. Epochs are
//! written one at a time, in the order given, so a later epoch never lands
//! before an earlier one. One epoch at most waits behind the one being
//! written: handing over another blocks the worker, so memory stays bounded
//! and, while ClickHouse is away, the worker stops as it did when it wrote
//! itself.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError};
use std::thread::JoinHandle;

use timely::scheduling::SyncActivator;

use super::{Output, Target, write_rows};
use crate::sink::clickhouse::Warehouse;

/// Epochs handed over and not yet written, beyond the one being written.
const WAITING: usize = 1;

/// One worker's writer thread.
pub struct RowWriter {
    batches: Option<SyncSender<(u64, Vec<Output>)>>,
    written: Receiver<u64>,
    thread: Option<JoinHandle<()>>,
}

impl RowWriter {
    /// Starts the thread of `worker`; each epoch it writes activates the
    /// operator behind `activator`.
    pub fn start(target: Arc<Target>, activator: SyncActivator, worker: usize) -> RowWriter {
        let (batches, to_write) = std::sync::mpsc::sync_channel::<(u64, Vec<Output>)>(WAITING);
        let (done, written) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name(format!("tally-rows-{worker}"))
            .spawn(move || {
                let warehouse = Warehouse::new(&target.clickhouse);
                for (epoch, batch) in to_write {
                    write_rows(&warehouse, &target, epoch, &batch);
                    // The operator is gone only when the dataflow is, and
                    // then nothing waits for this epoch.
                    if done.send(epoch).is_err() || activator.activate().is_err() {
                        break;
                    }
                }
            })
            .expect("a thread for writing rows starts");
        RowWriter { batches: Some(batches), written, thread: Some(thread) }
    }

    /// Hands `epoch`'s rows to the thread; blocks while it is behind.
    pub fn write(&self, epoch: u64, batch: Vec<Output>) {
        let batches = self.batches.as_ref().expect("the writer takes rows until dropped");
        if batches.send((epoch, batch)).is_err() {
            panic!("the ClickHouse row writer stopped (see the error above)");
        }
    }

    /// The epochs written since last asked, oldest first.
    pub fn written(&self) -> Vec<u64> {
        let mut epochs = Vec::new();
        loop {
            match self.written.try_recv() {
                Ok(epoch) => epochs.push(epoch),
                Err(TryRecvError::Empty) => return epochs,
                // The thread ends early only by panicking.
                Err(TryRecvError::Disconnected) => panic!("the ClickHouse row writer stopped (see the error above)"),
            }
        }
    }
}

impl Drop for RowWriter {
    fn drop(&mut self) {
        self.batches = None;
        // Unwinding, the worker does not wait for rows that nothing will
        // acknowledge: the thread may be retrying against a ClickHouse away.
        if std::thread::panicking() {
            return;
        }
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            panic!("the ClickHouse row writer stopped (see the error above)");
        }
    }
}
