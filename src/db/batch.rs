//! Reads by id, combined: the threads that want rows by id at the same moment share one query.
//!
//! Every authenticated request reads its caller's row (and `GET /users/{id}` one more). Under
//! load, 64 workers each checking out a connection for a one-row read cost two wake-ups per
//! request (the gate's handoff and the reply) and one PostgreSQL round trip each. Here a thread
//! that wants rows either *leads* (runs one `WHERE id = ANY($1)` for itself and every request
//! queued behind it, then hands each its rows) or, when enough leaders are already at work,
//! queues and sleeps until a leader hands it its rows. The query starts after every job it
//! carries was queued, so a job sees every write committed before it asked (as its own query
//! would).
//!
//! Leaders: at most `max_leaders` at once (each holds one pooled connection while it runs). A
//! leader that finishes hands the lead to the oldest queued job (woken to lead a batch of
//! everything queued by then) instead of leading again, so no thread leads for others longer
//! than one batch.
//! Queue: `State::queue`, owned by the batcher; at most one job per thread that reads (the HTTP
//! workers and a few others), so it needs no bound of its own. A job still queued at its
//! deadline (`DB_CHECKOUT_TIMEOUT_MS`, as a checkout) leaves it and fails as a busy pool does;
//! a job already taken into a batch waits for that batch, which is bounded by the leader's own
//! checkout timeout and the connection's TCP timeouts.
//! Lock: `Batcher::state`, held for a few instructions (never across I/O, a wait or a wake-up);
//! a job's `slot` lock is taken after it, never before.
//! Must never: lose a job (a leader that panics fails its batch and still hands the lead on);
//! give a job rows it did not ask for; let two leaders' counts drift (`leading` only changes
//! under the lock, and a handoff keeps it).

use std::collections::VecDeque;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::Thread;
use std::time::{Duration, Instant};

use super::DbError;

/// Where a job is.
enum Slot<T> {
    /// In the queue; it may still leave it at its deadline.
    Queued,
    /// In a leader's batch: its rows are coming.
    Taken,
    /// Handed the lead: it runs the next batch.
    Lead,
    /// Its rows, or the batch's error.
    Done(Result<Vec<T>, DbError>),
}

struct Job<T> {
    keys: Vec<i64>,
    thread: Thread,
    slot: Mutex<Slot<T>>,
}

impl<T> Job<T> {
    fn slot(&self) -> MutexGuard<'_, Slot<T>> {
        self.slot.lock().unwrap_or_else(|p| p.into_inner())
    }
}

struct State<T> {
    queue: VecDeque<Arc<Job<T>>>,
    /// Leaders at work (a handed-over lead counts from the handoff).
    leading: usize,
}

/// Combines reads of rows by id (see the module's notes). `key` gives a row's id.
pub struct Batcher<T> {
    state: Mutex<State<T>>,
    max_leaders: usize,
    key: fn(&T) -> i64,
}

/// What a batch reads: the rows whose ids are among `keys` (sorted, without duplicates).
pub type Read<'a, T> = &'a dyn Fn(&[i64]) -> Result<Vec<T>, DbError>;

impl<T: Clone> Batcher<T> {
    /// At most `max_leaders` batches at once (at least one).
    pub fn new(max_leaders: usize, key: fn(&T) -> i64) -> Batcher<T> {
        Batcher {
            state: Mutex::new(State { queue: VecDeque::new(), leading: 0 }),
            max_leaders: max_leaders.max(1),
            key,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The rows among `keys` (in no particular order), read by `read` in this thread or in
    /// another's batch. A job still queued at `deadline` gets `busy(waited)`.
    pub fn get(
        &self,
        keys: &[i64],
        deadline: Instant,
        read: Read<'_, T>,
        busy: impl FnOnce(Duration) -> DbError,
    ) -> Result<Vec<T>, DbError> {
        let start = Instant::now();
        let job = Arc::new(Job { keys: keys.to_vec(), thread: std::thread::current(), slot: Mutex::new(Slot::Queued) });
        {
            let mut st = self.lock();
            if st.leading < self.max_leaders {
                st.leading += 1;
                drop(st);
                return self.lead(job, read);
            }
            st.queue.push_back(job.clone());
        }
        loop {
            let lead = {
                let mut slot = job.slot();
                if let Slot::Done(_) = *slot {
                    if let Slot::Done(result) = std::mem::replace(&mut *slot, Slot::Taken) {
                        return result;
                    }
                }
                matches!(*slot, Slot::Lead)
            };
            if lead {
                return self.lead(job, read);
            }
            let now = Instant::now();
            if now >= deadline {
                let mut st = self.lock();
                let mut slot = job.slot();
                if let Slot::Queued = *slot {
                    // Still queued (so no leader has it, nor can get it now): leave.
                    let i = st.queue.iter().position(|j| Arc::ptr_eq(j, &job)).expect("a queued job is in the queue");
                    st.queue.remove(i);
                    *slot = Slot::Taken;
                    return Err(busy(start.elapsed()));
                }
                // Taken, handed the lead or done meanwhile: the next turn of the loop sees which.
                drop(slot);
                drop(st);
                std::thread::park_timeout(Duration::from_millis(10));
                continue;
            }
            // Spurious wake-ups and stray unpark tokens just go round the loop again.
            std::thread::park_timeout(deadline - now);
        }
    }

    /// Lead one batch: `me` and everything queued now. Then hand the lead on, or give it up.
    fn lead(&self, me: Arc<Job<T>>, read: Read<'_, T>) -> Result<Vec<T>, DbError> {
        let batch: Vec<Arc<Job<T>>> = {
            let mut st = self.lock();
            let mut batch = Vec::with_capacity(st.queue.len() + 1);
            batch.push(me);
            for job in st.queue.drain(..) {
                *job.slot() = Slot::Taken;
                batch.push(job);
            }
            batch
        };
        let mut keys: Vec<i64> = batch.iter().flat_map(|j| j.keys.iter().copied()).collect();
        keys.sort_unstable();
        keys.dedup();
        let outcome = catch_unwind(AssertUnwindSafe(|| read(&keys)));
        let (mine, others) = batch.split_first().expect("the batch holds its leader");
        let result = match &outcome {
            Ok(Ok(rows)) => Ok(rows),
            Ok(Err(e)) => Err(e.clone()),
            Err(_) => Err(DbError::Query { code: None, message: "the batched read failed (a panic)".into() }),
        };
        for job in others {
            *job.slot() = Slot::Done(self.share(&result, &job.keys));
            job.thread.unpark();
        }
        let own = self.share(&result, &mine.keys);
        self.hand_on();
        match outcome {
            Err(panic) => resume_unwind(panic),
            Ok(_) => own,
        }
    }

    /// A job's part of a batch's outcome.
    fn share(&self, result: &Result<&Vec<T>, DbError>, keys: &[i64]) -> Result<Vec<T>, DbError> {
        match result {
            Ok(rows) => Ok(rows.iter().filter(|r| keys.contains(&(self.key)(r))).cloned().collect()),
            Err(e) => Err(e.clone()),
        }
    }

    /// After a batch: the oldest queued job leads next (the count of leaders stays), or, with
    /// nothing queued, one leader fewer.
    fn hand_on(&self) {
        let mut st = self.lock();
        match st.queue.pop_front() {
            Some(next) => {
                *next.slot() = Slot::Lead;
                drop(st);
                next.thread.unpark();
            }
            None => st.leading -= 1,
        }
    }

    /// Jobs queued right now.
    #[cfg(test)]
    fn queued(&self) -> usize {
        self.lock().queue.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Barrier;

    fn busy(waited: Duration) -> DbError {
        DbError::Unavailable(format!("busy after {} ms", waited.as_millis()))
    }

    fn soon() -> Instant {
        Instant::now() + Duration::from_secs(10)
    }

    /// Rows are their own ids: what a read of `keys` finds when every id below 1000 exists.
    fn existing(keys: &[i64]) -> Result<Vec<i64>, DbError> {
        Ok(keys.iter().copied().filter(|k| *k < 1000).collect())
    }

    /// A thread leading a batch for `[key]` whose read is held up until the sender is used;
    /// returns once that read has started.
    fn held_leader(
        b: &Arc<Batcher<i64>>,
        key: i64,
    ) -> (std::thread::JoinHandle<Result<Vec<i64>, DbError>>, std::sync::mpsc::Sender<()>) {
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let started = Arc::new(Barrier::new(2));
        let (b, started2) = (b.clone(), started.clone());
        let t = std::thread::spawn(move || {
            let read = |keys: &[i64]| {
                started2.wait();
                release_rx.recv_timeout(Duration::from_secs(10)).unwrap();
                existing(keys)
            };
            b.get(&[key], soon(), &read, busy)
        });
        started.wait();
        (t, release_tx)
    }

    #[test]
    fn alone_a_thread_reads_for_itself_and_gets_only_what_it_asked_for() {
        let b = Batcher::new(1, |r: &i64| *r);
        let mut got = b.get(&[7, 3, 5000], soon(), &existing, busy).unwrap();
        got.sort();
        assert_eq!(got, vec![3, 7]);
        assert_eq!(b.lock().leading, 0);
    }

    /// While one leader's read is held up, the jobs that arrive queue; when it finishes, the
    /// oldest of them leads one batch for all of them: two reads in all, each job its own rows.
    #[test]
    fn jobs_queued_behind_a_leader_share_one_read_and_each_gets_its_own_rows() {
        let b = Arc::new(Batcher::new(1, |r: &i64| *r));
        let reads = Arc::new(Mutex::new(Vec::<Vec<i64>>::new()));
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let release_rx = Mutex::new(release_rx);
        let first = {
            let (b, reads) = (b.clone(), reads.clone());
            std::thread::spawn(move || {
                let read = |keys: &[i64]| {
                    reads.lock().unwrap().push(keys.to_vec());
                    release_rx.lock().unwrap().recv().unwrap();
                    existing(keys)
                };
                b.get(&[1], soon(), &read, busy).unwrap()
            })
        };
        while reads.lock().unwrap().is_empty() {
            std::thread::yield_now();
        }
        let waiters: Vec<_> = (10..20)
            .map(|i| {
                let (b, reads) = (b.clone(), reads.clone());
                std::thread::spawn(move || {
                    let read = |keys: &[i64]| {
                        reads.lock().unwrap().push(keys.to_vec());
                        existing(keys)
                    };
                    b.get(&[i, 1, 5000 + i], soon(), &read, busy).unwrap()
                })
            })
            .collect();
        while b.queued() < 10 {
            std::thread::yield_now();
        }
        release_tx.send(()).unwrap();
        assert_eq!(first.join().unwrap(), vec![1]);
        for (i, w) in (10..20).zip(waiters) {
            let mut got = w.join().unwrap();
            got.sort();
            assert_eq!(got, vec![1, i]);
        }
        let reads = reads.lock().unwrap();
        assert_eq!(reads.len(), 2, "{reads:?}");
        let mut want: Vec<i64> = (10..20).chain(5010..5020).collect();
        want.push(1);
        want.sort();
        assert_eq!(reads[1], want, "the second read carries every queued job's ids, sorted, once");
        assert_eq!(b.lock().leading, 0);
    }

    /// The limit at its edge: with two leaders allowed, two reads run at once and a third job
    /// queues; when one read ends, the queued job is led (its own read, one of two again).
    #[test]
    fn no_more_than_max_leaders_reads_run_at_once() {
        let b = Arc::new(Batcher::new(2, |r: &i64| *r));
        let (first, release_first) = held_leader(&b, 1);
        let (second, release_second) = held_leader(&b, 2);
        assert_eq!(b.lock().leading, 2);
        let third = {
            let b = b.clone();
            std::thread::spawn(move || b.get(&[3], soon(), &existing, busy))
        };
        while b.queued() < 1 {
            std::thread::yield_now();
        }
        assert_eq!(b.lock().leading, 2, "the third job waits: two reads are running");
        release_first.send(()).unwrap();
        assert_eq!(first.join().unwrap().unwrap(), vec![1]);
        assert_eq!(third.join().unwrap().unwrap(), vec![3]);
        release_second.send(()).unwrap();
        assert_eq!(second.join().unwrap().unwrap(), vec![2]);
        assert_eq!(b.queued(), 0);
        assert_eq!(b.lock().leading, 0);
    }

    #[test]
    fn a_job_still_queued_at_its_deadline_leaves_and_the_others_are_served() {
        let b = Arc::new(Batcher::new(1, |r: &i64| *r));
        let (first, release_tx) = held_leader(&b, 1);
        let late = b.get(&[2], Instant::now() + Duration::from_millis(30), &existing, busy);
        assert!(matches!(&late, Err(DbError::Unavailable(m)) if m.starts_with("busy after")), "{late:?}");
        assert_eq!(b.queued(), 0, "the job that gave up left the queue");
        release_tx.send(()).unwrap();
        assert_eq!(first.join().unwrap().unwrap(), vec![1]);
        assert_eq!(b.get(&[3], soon(), &existing, busy).unwrap(), vec![3]);
    }

    /// A leader (A) is held up while B, then C and D queue. B leads the next batch and its
    /// read panics: C and D get an error, B's call panics on, and the lead is not lost. Then a
    /// batch whose read fails gives every job its error.
    #[test]
    fn a_panic_fails_its_batch_but_hands_the_lead_on_and_an_error_reaches_every_job() {
        let b = Arc::new(Batcher::new(1, |r: &i64| *r));
        let (a, release_tx) = held_leader(&b, 1);
        let spawn_queued = |key: i64, panics: bool| {
            let before = b.queued();
            let bt = b.clone();
            let t = std::thread::spawn(move || {
                let read = |keys: &[i64]| {
                    if panics {
                        panic!("boom");
                    }
                    existing(keys)
                };
                catch_unwind(AssertUnwindSafe(|| bt.get(&[key], soon(), &read, busy)))
            });
            while b.queued() == before {
                std::thread::yield_now();
            }
            t
        };
        let pb = spawn_queued(2, true);
        let (c, d) = (spawn_queued(3, false), spawn_queued(4, false));
        release_tx.send(()).unwrap();
        assert_eq!(a.join().unwrap().unwrap(), vec![1]);
        assert!(pb.join().unwrap().is_err(), "the panicking leader's own call panics on");
        for t in [c, d] {
            let r = t.join().unwrap().expect("not the queued job's panic");
            assert!(matches!(&r, Err(DbError::Query { message, .. }) if message.contains("panic")), "{r:?}");
        }
        assert_eq!(b.lock().leading, 0, "the lead was given up");
        let failing = |_: &[i64]| -> Result<Vec<i64>, DbError> { Err(DbError::Unavailable("down".into())) };
        let r = b.get(&[5], soon(), &failing, busy);
        assert!(matches!(&r, Err(DbError::Unavailable(m)) if m == "down"), "{r:?}");
        assert_eq!(b.get(&[5], soon(), &existing, busy).unwrap(), vec![5]);
    }
}
