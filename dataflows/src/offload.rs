//! A worker's slow work, done on a thread of their own: writes, and
//! encoding the usage state's snapshots.
//!
//! A worker that waited for ClickHouse to take an epoch's rows, or for the
//! store to take its shard, did nothing else meanwhile, while the next
//! epoch's messages queued. With the writes on a thread, the worker computes
//! the next epoch while they go on. The operator that hands a write over
//! holds the epoch's capability until the thread reports it done, so
//! nothing downstream moves earlier than before.
//!
//! Writes are done one at a time, in the order handed over, so a later epoch
//! never lands before an earlier one. One write at most waits behind the one
//! going on: handing over another blocks the worker, so memory stays bounded
//! and, while a service is away, the worker stops as it did when it wrote
//! itself.

use std::sync::mpsc::{Receiver, SyncSender, TryRecvError};
use std::thread::JoinHandle;

use timely::scheduling::SyncActivator;

/// Writes handed over and not yet begun.
const WAITING: usize = 1;

/// A thread doing one operator's writes in order.
pub struct Offload<Write, Done> {
    writes: Option<SyncSender<Write>>,
    done: Receiver<Done>,
    thread: Option<JoinHandle<()>>,
}

impl<Write: Send + 'static, Done: Send + 'static> Offload<Write, Done> {
    /// Starts thread `name`, which does each write with `work` and then
    /// activates the operator behind `activator`.
    pub fn start(
        name: String,
        activator: SyncActivator,
        mut work: impl FnMut(Write) -> Done + Send + 'static,
    ) -> Offload<Write, Done> {
        let (writes, to_do) = std::sync::mpsc::sync_channel::<Write>(WAITING);
        let (report, done) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name(name)
            .spawn(move || {
                for write in to_do {
                    // The operator is gone only when the dataflow is, and
                    // then nothing waits for this write.
                    if report.send(work(write)).is_err() || activator.activate().is_err() {
                        break;
                    }
                }
            })
            .expect("a thread for writes starts");
        Offload { writes: Some(writes), done, thread: Some(thread) }
    }

    /// Hands `write` to the thread; blocks while it is behind.
    pub fn hand_over(&self, write: Write) {
        let writes = self.writes.as_ref().expect("writes are taken until dropped");
        if writes.send(write).is_err() {
            panic!("{}", self.stopped());
        }
    }

    /// What the writes done since last asked returned, oldest first.
    pub fn done(&self) -> Vec<Done> {
        let mut done = Vec::new();
        loop {
            match self.done.try_recv() {
                Ok(report) => done.push(report),
                Err(TryRecvError::Empty) => return done,
                // The thread ends early only by panicking.
                Err(TryRecvError::Disconnected) => panic!("{}", self.stopped()),
            }
        }
    }
}

impl<Write, Done> Offload<Write, Done> {
    fn stopped(&self) -> String {
        let name = self.thread.as_ref().and_then(|thread| thread.thread().name()).unwrap_or("writer");
        format!("the thread {name} stopped (see the error above)")
    }
}

impl<Write, Done> Drop for Offload<Write, Done> {
    fn drop(&mut self) {
        self.writes = None;
        // Unwinding, the worker does not wait for writes that nothing will
        // acknowledge: the thread may be retrying against a service away.
        if std::thread::panicking() {
            return;
        }
        let stopped = self.stopped();
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            panic!("{stopped}");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex, mpsc};
    use std::time::Duration;

    use timely::container::CapacityContainerBuilder;
    use timely::dataflow::InputHandleVec;
    use timely::dataflow::channels::pact::Pipeline;
    use timely::dataflow::operators::{Input, Operator};

    use super::*;

    /// Runs `work` on a thread; fails if it does not end within a minute.
    fn within_a_minute(work: impl FnOnce() + Send + 'static) {
        let (ended, end) = mpsc::channel();
        std::thread::spawn(move || {
            work();
            ended.send(()).ok();
        });
        end.recv_timeout(Duration::from_secs(60)).expect("the work ended");
    }

    #[test]
    fn writes_done_wake_a_parked_worker_and_pass_on_in_order() {
        let passed: Arc<Mutex<Vec<u64>>> = Arc::default();
        let seen = Arc::clone(&passed);
        within_a_minute(move || {
            timely::execute_directly(move |worker| {
                let mut input = InputHandleVec::<u64, u64>::new();
                worker.dataflow::<u64, _, _>(|scope| {
                    let timely_worker = scope.worker();
                    scope
                        .input_from(&mut input)
                        .unary_frontier::<CapacityContainerBuilder<Vec<u64>>, _, _, _>(
                            Pipeline,
                            "Slow",
                            move |_, info| {
                                let activator = timely_worker.sync_activator_for(info.address.to_vec());
                                // Earlier writes take longer: done out of order,
                                // they would be reported out of order.
                                let offload = Offload::start("test-writes".into(), activator, |epoch: u64| {
                                    std::thread::sleep(Duration::from_millis(30 - 3 * epoch));
                                    epoch
                                });
                                let mut held = VecDeque::new();
                                move |(input, _), output| {
                                    let port = output.output_index();
                                    input.for_each(|capability, data| {
                                        for epoch in data.drain(..) {
                                            offload.hand_over(epoch);
                                            held.push_back(capability.delayed(&epoch, port));
                                        }
                                    });
                                    for epoch in offload.done() {
                                        let capability = held.pop_front().expect("a write was handed over");
                                        output.session(&capability).give(epoch);
                                    }
                                }
                            },
                        )
                        .sink(Pipeline, "Passed", move |(input, _)| {
                            input.for_each(|_, data| seen.lock().unwrap().extend(data.drain(..)));
                        });
                });
                for epoch in 0..10 {
                    input.send(epoch);
                    input.advance_to(epoch + 1);
                }
                input.close();
                // Parked with no timeout, the worker wakes only when a
                // write done activates the operator.
                while worker.step_or_park(None) {}
            });
        });
        assert_eq!(*passed.lock().unwrap(), (0..10).collect::<Vec<_>>());
    }

    #[test]
    fn a_third_write_waits_for_the_first_to_be_done() {
        within_a_minute(|| {
            timely::execute_directly(|worker| {
                let activator = worker.sync_activator_for(vec![0]);
                let (release, released) = mpsc::channel::<()>();
                let offload = Offload::start("test-bound".into(), activator, move |write: u32| {
                    released.recv().expect("the test releases every write");
                    write
                });
                let first_released = Arc::new(AtomicBool::new(false));
                let releasing = {
                    let first_released = Arc::clone(&first_released);
                    std::thread::spawn(move || {
                        std::thread::sleep(Duration::from_millis(200));
                        first_released.store(true, Ordering::SeqCst);
                        for _ in 0..3 {
                            release.send(()).unwrap();
                        }
                    })
                };
                offload.hand_over(1);
                offload.hand_over(2);
                offload.hand_over(3);
                assert!(first_released.load(Ordering::SeqCst), "a third write was taken while two were outstanding");
                releasing.join().unwrap();
                let mut done = Vec::new();
                while done.len() < 3 {
                    done.extend(offload.done());
                    std::thread::yield_now();
                }
                assert_eq!(done, [1, 2, 3]);
            });
        });
    }
}
