//! A thread inserting rows for one or several workers: the rows an epoch
//! ends with on each of them go into ClickHouse together, one insert per
//! table, instead of one per table and worker.
//!
//! Every insert is a part of about thirty files in ClickHouse, created,
//! merged and deleted again: in a drain on two workers a third of the
//! machine was ClickHouse, half of it inserting, and a quarter of that the
//! kernel creating files. Epochs end on every worker at about the same
//! time, so the thread waits for the other workers it serves to hand over
//! their rows of the epoch too, and writes them as one. That trades the
//! inserts going side by side for fewer of them, which a drain wants and a
//! live run, whose freshness is an epoch's slowest insert, does not (see
//! [`super::ProcessRows`]).
//!
//! Rows are written in the order each worker hands them over, and a worker
//! learns its epoch is written only once its last rows are. A worker hands
//! over one chunk at most ahead of the thread: handing over another blocks,
//! so memory stays bounded and, while ClickHouse is away, the workers stop
//! behind it. The thread never waits for a worker that is blocked so, nor
//! for longer than [`GRACE`] in a run: which rows go together decides
//! nothing but how many inserts there are.

use std::collections::VecDeque;
use std::sync::mpsc::{Receiver, Sender, TryRecvError};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use timely::scheduling::SyncActivator;

/// The longest the thread of a run waits for the other workers' rows of an
/// epoch before it writes what it has: they come within a few steps of each
/// other, unless a worker is stopping.
pub const GRACE: Duration = Duration::from_millis(200);

/// Rows of one worker's epoch; `last` when the epoch is complete on the
/// worker and these are its last.
pub struct Chunk<R> {
    /// The epoch.
    pub epoch: u64,
    /// The rows.
    pub rows: Vec<R>,
    /// Whether the epoch ends with these.
    pub last: bool,
}

/// The thread and what its workers share with it.
pub struct Inserter<R> {
    shared: Arc<Shared<R>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

struct Shared<R> {
    state: Mutex<State<R>>,
    changed: Condvar,
    name: String,
    grace: Duration,
}

struct State<R> {
    /// Chunks handed over and not taken yet, with the worker of each.
    queue: VecDeque<(usize, Chunk<R>)>,
    /// Per worker: every epoch below it is handed over in full.
    passed: Vec<u64>,
    /// Per worker: where to report epochs written, and how to wake it.
    reporters: Vec<Option<(Sender<u64>, SyncActivator)>>,
    /// Workers blocked handing over a chunk.
    blocked: usize,
    /// Set once no worker hands over anything any more.
    closed: bool,
    /// Set when the thread has ended.
    stopped: bool,
}

impl<R: Send + 'static> Inserter<R> {
    /// Starts thread `name` for `workers` workers, which writes every group
    /// of chunks with `write`, waiting up to `grace` for an epoch's last
    /// chunks from every worker.
    pub fn start(
        name: String,
        workers: usize,
        grace: Duration,
        mut write: impl FnMut(&[Chunk<R>]) + Send + 'static,
    ) -> Inserter<R> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                queue: VecDeque::new(),
                passed: vec![0; workers],
                reporters: (0..workers).map(|_| None).collect(),
                blocked: 0,
                closed: false,
                stopped: false,
            }),
            changed: Condvar::new(),
            name: name.clone(),
            grace,
        });
        let on_thread = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name(name)
            .spawn(move || {
                let stopping = Stopping(&on_thread);
                while let Some(group) = on_thread.next_group() {
                    let (workers, chunks): (Vec<usize>, Vec<Chunk<R>>) = group.into_iter().unzip();
                    write(&chunks);
                    on_thread.report(workers.into_iter().zip(chunks));
                }
                drop(stopping);
            })
            .expect("a thread for inserts starts");
        Inserter { shared, thread: Mutex::new(Some(thread)) }
    }

    /// Worker `worker`'s side, which wakes the operator behind `activator`
    /// when an epoch of its is written.
    pub fn connect(&self, worker: usize, activator: SyncActivator) -> WorkerRows<R> {
        let (report, done) = std::sync::mpsc::channel();
        self.shared.lock().reporters[worker] = Some((report, activator));
        WorkerRows { shared: Arc::clone(&self.shared), worker, done, owned: None }
    }

    /// The side of the one worker of an inserter started for it alone,
    /// which keeps the inserter as long as it lives.
    pub fn into_only_worker(self, activator: SyncActivator) -> WorkerRows<R> {
        let mut rows = self.connect(0, activator);
        rows.owned = Some(self);
        rows
    }

    /// Lets the thread end once it has written everything handed over, and
    /// waits for it: called when every worker is done.
    pub fn finish(&self) {
        self.close();
        let thread = self.thread.lock().unwrap_or_else(PoisonError::into_inner).take();
        if let Some(thread) = thread
            && thread.join().is_err()
        {
            panic!("{}", self.shared.stopped());
        }
    }
}

impl<R> Inserter<R> {
    fn close(&self) {
        self.shared.lock().closed = true;
        self.shared.changed.notify_all();
    }
}

/// Dropped, the inserter lets its thread end once everything handed over is
/// written, without waiting for it: a run that failed may have left it
/// retrying against a service that is away.
impl<R> Drop for Inserter<R> {
    fn drop(&mut self) {
        self.close();
    }
}

impl<R> Shared<R> {
    fn lock(&self) -> MutexGuard<'_, State<R>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn stopped(&self) -> String {
        format!("the thread {} stopped (see the error above)", self.name)
    }

    /// The next chunks to write together, taken off the queue; `None` once
    /// closed and everything is written.
    fn next_group(&self) -> Option<Vec<(usize, Chunk<R>)>> {
        let mut state = self.lock();
        let (epoch, last) = loop {
            if let Some((_, front)) = state.queue.front() {
                break (front.epoch, front.last);
            }
            if state.closed {
                return None;
            }
            state = self.changed.wait(state).unwrap_or_else(PoisonError::into_inner);
        };
        if last {
            let deadline = Instant::now() + self.grace;
            while state.blocked == 0 && state.passed.iter().any(|&passed| passed <= epoch) {
                let Some(left) = deadline.checked_duration_since(Instant::now()) else { break };
                state = self.changed.wait_timeout(state, left).unwrap_or_else(PoisonError::into_inner).0;
            }
        }
        // A worker's chunks are queued in epoch order: those up to `epoch`
        // are the first of each.
        let (group, rest) = state.queue.drain(..).partition(|(_, chunk)| chunk.epoch <= epoch);
        state.queue = rest;
        drop(state);
        self.changed.notify_all();
        Some(group.into())
    }

    /// Reports the epochs whose last chunks `written` held to their workers.
    fn report(&self, written: impl Iterator<Item = (usize, Chunk<R>)>) {
        let mut woken = Vec::new();
        let state = self.lock();
        for (worker, chunk) in written {
            if let (true, Some((report, _))) = (chunk.last, &state.reporters[worker]) {
                // A worker that is gone waits for nothing.
                if report.send(chunk.epoch).is_ok() && !woken.contains(&worker) {
                    woken.push(worker);
                }
            }
        }
        for worker in woken {
            if let Some((_, activator)) = &state.reporters[worker] {
                activator.activate().ok();
            }
        }
    }
}

/// Marks the thread stopped however it ends, so that no worker waits for it.
struct Stopping<'a, R>(&'a Shared<R>);

impl<R> Drop for Stopping<'_, R> {
    fn drop(&mut self) {
        let mut state = self.0.lock();
        state.stopped = true;
        state.reporters.iter_mut().for_each(|reporter| *reporter = None);
        drop(state);
        self.0.changed.notify_all();
    }
}

/// A worker's side of the [`Inserter`].
pub struct WorkerRows<R> {
    shared: Arc<Shared<R>>,
    worker: usize,
    done: Receiver<u64>,
    /// The inserter, when it was started for this worker alone.
    owned: Option<Inserter<R>>,
}

impl<R> WorkerRows<R> {
    /// Hands `chunk` to the thread; blocks while an earlier chunk of this
    /// worker waits to be taken.
    pub fn hand_over(&self, chunk: Chunk<R>) {
        let mut state = self.shared.lock();
        let mine = |state: &State<R>| state.queue.iter().any(|(worker, _)| *worker == self.worker);
        if mine(&state) && !state.stopped {
            state.blocked += 1;
            self.shared.changed.notify_all();
            while mine(&state) && !state.stopped {
                state = self.shared.changed.wait(state).unwrap_or_else(PoisonError::into_inner);
            }
            state.blocked -= 1;
        }
        assert!(!state.stopped, "{}", self.shared.stopped());
        state.queue.push_back((self.worker, chunk));
        drop(state);
        self.shared.changed.notify_all();
    }

    /// Tells the thread that every epoch below `frontier` is handed over.
    pub fn passed(&self, frontier: u64) {
        let mut state = self.shared.lock();
        if state.passed[self.worker] < frontier {
            state.passed[self.worker] = frontier;
            drop(state);
            self.shared.changed.notify_all();
        }
    }

    /// The epochs whose last rows are written since last asked, oldest first.
    pub fn done(&self) -> Vec<u64> {
        let mut done = Vec::new();
        loop {
            match self.done.try_recv() {
                Ok(epoch) => done.push(epoch),
                Err(TryRecvError::Empty) => return done,
                // Reports end early only when the thread panicked.
                Err(TryRecvError::Disconnected) => panic!("{}", self.shared.stopped()),
            }
        }
    }
}

impl<R> Drop for WorkerRows<R> {
    fn drop(&mut self) {
        self.passed(u64::MAX);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;

    use super::*;

    /// Long enough that a test passes only if the thread never needs it.
    const FOREVER: Duration = Duration::from_secs(3600);

    /// What was written, group by group: each chunk's worker-tagged rows.
    type Written = Arc<Mutex<Vec<Vec<(u64, Vec<u32>, bool)>>>>;

    /// Runs `test` with an inserter for `workers` workers that records what
    /// it writes, and activators to connect them with; fails if the test does
    /// not end within a minute.
    fn with_inserter(
        workers: usize,
        test: impl FnOnce(&Inserter<u32>, &dyn Fn() -> SyncActivator) + Send + 'static,
    ) -> Written {
        let written: Written = Arc::default();
        let recorded = Arc::clone(&written);
        let (ended, end) = mpsc::channel();
        // Run once: the worker's closure must be `Sync`.
        let test = Mutex::new(Some(test));
        std::thread::spawn(move || {
            timely::execute_directly(move |worker| {
                let inserter =
                    Inserter::start("test-inserts".into(), workers, FOREVER, move |chunks: &[Chunk<u32>]| {
                        let group = chunks.iter().map(|c| (c.epoch, c.rows.clone(), c.last)).collect();
                        recorded.lock().unwrap().push(group);
                    });
                let test = test.lock().unwrap().take().expect("the worker runs once");
                test(&inserter, &|| worker.sync_activator_for(vec![0]));
                inserter.finish();
            });
            ended.send(()).ok();
        });
        end.recv_timeout(Duration::from_secs(60)).expect("the test ended");
        written
    }

    fn await_done<R>(rows: &WorkerRows<R>, epochs: usize) -> Vec<u64> {
        let mut done = Vec::new();
        while done.len() < epochs {
            done.extend(rows.done());
            std::thread::yield_now();
        }
        done
    }

    fn chunk(epoch: u64, rows: &[u32], last: bool) -> Chunk<u32> {
        Chunk { epoch, rows: rows.to_vec(), last }
    }

    #[test]
    fn the_last_rows_of_an_epoch_from_every_worker_go_in_one_write() {
        let written = with_inserter(2, |inserter, activator| {
            let (first, second) = (inserter.connect(0, activator()), inserter.connect(1, activator()));
            first.hand_over(chunk(0, &[1, 2], true));
            first.passed(1);
            std::thread::sleep(Duration::from_millis(50));
            second.hand_over(chunk(0, &[3], true));
            second.passed(1);
            assert_eq!(await_done(&first, 1), [0]);
            assert_eq!(await_done(&second, 1), [0]);
        });
        assert_eq!(*written.lock().unwrap(), [vec![(0, vec![1, 2], true), (0, vec![3], true)]]);
    }

    #[test]
    fn a_worker_past_the_epoch_without_rows_is_not_waited_for() {
        let written = with_inserter(2, |inserter, activator| {
            let (first, second) = (inserter.connect(0, activator()), inserter.connect(1, activator()));
            second.passed(1);
            first.hand_over(chunk(0, &[1], true));
            first.passed(1);
            assert_eq!(await_done(&first, 1), [0]);
            drop(second);
        });
        assert_eq!(*written.lock().unwrap(), [vec![(0, vec![1], true)]]);
    }

    #[test]
    fn a_worker_blocked_handing_over_is_not_waited_for() {
        let written = with_inserter(2, |inserter, activator| {
            let (first, second) = (inserter.connect(0, activator()), inserter.connect(1, activator()));
            first.hand_over(chunk(0, &[1], true));
            first.passed(1);
            // The second worker has not passed epoch 0, and the first blocks
            // here until its chunk is taken.
            first.hand_over(chunk(1, &[2], true));
            first.passed(2);
            second.passed(2);
            assert_eq!(await_done(&first, 2), [0, 1]);
        });
        assert_eq!(*written.lock().unwrap(), [vec![(0, vec![1], true)], vec![(1, vec![2], true)]]);
    }

    #[test]
    fn every_chunk_is_written_once_and_each_worker_learns_its_epochs_in_order() {
        const EPOCHS: u64 = 40;
        let written = with_inserter(3, |inserter, activator| {
            let rows: Vec<WorkerRows<u32>> = (0..3).map(|worker| inserter.connect(worker, activator())).collect();
            let handing: Vec<_> = (0..)
                .zip(rows)
                .map(|(worker, rows)| {
                    std::thread::spawn(move || {
                        for epoch in 0..EPOCHS {
                            // Some epochs have rows before their end, some
                            // none at all on some workers.
                            let row = worker * 1000 + u32::try_from(epoch).unwrap();
                            if epoch % 3 == 0 {
                                rows.hand_over(chunk(epoch, &[row], false));
                            }
                            if (epoch + u64::from(worker)) % 4 != 0 {
                                rows.hand_over(chunk(epoch, &[row + 500], true));
                            }
                            rows.passed(epoch + 1);
                        }
                        rows
                    })
                })
                .collect();
            for (worker, handing) in (0..).zip(handing) {
                let rows = handing.join().unwrap();
                let ends = (0..EPOCHS).filter(|epoch| (epoch + worker) % 4 != 0).collect::<Vec<_>>();
                assert_eq!(await_done(&rows, ends.len()), ends);
            }
        });
        let groups = written.lock().unwrap();
        let mut rows: Vec<u32> = groups.iter().flatten().flat_map(|(_, rows, _)| rows.clone()).collect();
        let mut expected: Vec<u32> = (0..3u32)
            .flat_map(|worker| {
                (0..EPOCHS).flat_map(move |epoch| {
                    let row = worker * 1000 + u32::try_from(epoch).unwrap();
                    let early = (epoch % 3 == 0).then_some(row);
                    let last = ((epoch + u64::from(worker)) % 4 != 0).then_some(row + 500);
                    early.into_iter().chain(last)
                })
            })
            .collect();
        rows.sort_unstable();
        expected.sort_unstable();
        assert_eq!(rows, expected, "every row is written once");
        for worker in 0..3 {
            let epochs: Vec<u64> = groups
                .iter()
                .flatten()
                .filter(|(_, rows, _)| rows[0] / 1000 == worker)
                .map(|(epoch, _, _)| *epoch)
                .collect();
            assert!(epochs.is_sorted(), "worker {worker}'s chunks are written in the order handed over");
        }
    }

    #[test]
    fn a_writer_that_stops_stops_the_workers_instead_of_leaving_them_waiting() {
        let (ended, end) = mpsc::channel();
        std::thread::spawn(move || {
            timely::execute_directly(move |worker| {
                let inserter = Inserter::start("test-failing".into(), 1, FOREVER, |_: &[Chunk<u32>]| {
                    panic!("ClickHouse refused the rows")
                });
                let rows = inserter.connect(0, worker.sync_activator_for(vec![0]));
                rows.hand_over(chunk(0, &[1], true));
                rows.passed(1);
                let waited = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    loop {
                        rows.done();
                        std::thread::yield_now();
                    }
                }));
                let message = waited.expect_err("the worker learns the thread stopped");
                let message = message.downcast_ref::<String>().cloned().unwrap_or_default();
                assert!(message.contains("test-failing stopped"), "{message}");
            });
            ended.send(()).ok();
        });
        end.recv_timeout(Duration::from_secs(60)).expect("the test ended");
    }
}
