//! A first-come-first-served gate: `size` permits handed out in arrival order. Used by the
//! database's fair checkout (`db/gate.rs`) and by the WebSocket fan-out (`ws/hub.rs`, how many
//! fan-outs write at once).
//!
//! A released permit goes straight to the longest waiter (handoff), never back into a free count
//! a newcomer could grab, so nobody passes a thread that is already waiting.
//!
//! Queue: `GateState::waiters`, owned by the gate; it holds at most one entry per waiting thread
//! (each user says what bounds its threads). A waiter leaves it when served, or when its deadline
//! passes, whichever comes first.
//! Lock: `FifoGate::state`, held for a few instructions (never across I/O or a wait).
//! Must never: hand out more than `size` permits; lose a permit (a waiter whose deadline passes
//! while it is being granted one takes it, and so must give it back); let a newcomer pass a
//! waiter.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::Thread;
use std::time::Instant;

/// A thread parked in a gate's queue. `granted` is set (under the gate's lock) by the thread
/// that hands it a permit, and then the waiter is unparked.
struct Waiter {
    thread: Thread,
    granted: AtomicBool,
}

thread_local! {
    /// This thread's waiter, reused by every wait it makes: a thread waits in one queue at a
    /// time (it is parked while it waits), so a contended acquire allocates nothing.
    static WAITER: Arc<Waiter> = Arc::new(Waiter { thread: std::thread::current(), granted: AtomicBool::new(false) });
}

struct GateState {
    /// Permits neither held nor handed to a waiter. Nonzero only while `waiters` is empty.
    free: usize,
    /// Waiting threads, longest waiting first.
    waiters: VecDeque<Arc<Waiter>>,
}

/// `size` permits handed out in arrival order.
pub struct FifoGate {
    state: Mutex<GateState>,
    size: usize,
}

impl FifoGate {
    /// A gate of `size` permits (at least one).
    pub fn new(size: usize) -> FifoGate {
        let size = size.max(1);
        FifoGate { state: Mutex::new(GateState { free: size, waiters: VecDeque::new() }), size }
    }

    fn lock(&self) -> MutexGuard<'_, GateState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Take a permit, waiting in line until `deadline` (`None`: for as long as it takes). False
    /// when the deadline passed first. The caller gives the permit back with [`FifoGate::release`].
    pub fn acquire(&self, deadline: Option<Instant>) -> bool {
        let waiter = {
            let mut st = self.lock();
            if st.free > 0 {
                st.free -= 1;
                return true;
            }
            let w = WAITER.with(Arc::clone);
            w.granted.store(false, Ordering::Relaxed);
            st.waiters.push_back(w.clone());
            w
        };
        loop {
            if waiter.granted.load(Ordering::Acquire) {
                return true;
            }
            // Spurious wake-ups (and stray unpark tokens) just go round the loop again.
            let Some(deadline) = deadline else {
                std::thread::park();
                continue;
            };
            let now = Instant::now();
            if now >= deadline {
                let mut st = self.lock();
                // Granted between the check above and taking the lock: the permit is ours.
                if waiter.granted.load(Ordering::Acquire) {
                    return true;
                }
                if let Some(i) = st.waiters.iter().position(|w| Arc::ptr_eq(w, &waiter)) {
                    st.waiters.remove(i);
                }
                return false;
            }
            std::thread::park_timeout(deadline - now);
        }
    }

    /// A permit for the scope of the returned guard, waiting in line for as long as it takes.
    pub fn enter(&self) -> Permit<'_> {
        self.acquire(None);
        Permit(self)
    }

    /// Give a permit back: to the longest waiter if there is one, else to the free count.
    pub fn release(&self) {
        let mut st = self.lock();
        match st.waiters.pop_front() {
            Some(w) => {
                w.granted.store(true, Ordering::Release);
                // Wake it outside the lock: the wake-up is a system call, and the lock is taken
                // by every acquire.
                drop(st);
                w.thread.unpark();
            }
            None => {
                st.free += 1;
                debug_assert!(st.free <= self.size);
            }
        }
    }

    /// Threads waiting in line right now.
    pub fn waiting(&self) -> usize {
        self.lock().waiters.len()
    }

    /// Permits not held by anyone right now (at most `size`).
    pub fn free(&self) -> usize {
        self.lock().free
    }
}

/// A permit of a [`FifoGate`], given back (to the next in line) when dropped.
pub struct Permit<'a>(&'a FifoGate);

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        self.0.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::util::within;
    use std::sync::mpsc;

    #[test]
    fn permits_go_to_waiters_in_arrival_order() {
        let gate = Arc::new(FifoGate::new(1));
        let held = gate.enter();
        let (tx, rx) = mpsc::channel();
        let mut threads = Vec::new();
        for i in 0..4 {
            let (g, tx) = (gate.clone(), tx.clone());
            threads.push(std::thread::spawn(move || {
                let _p = g.enter();
                tx.send(i).unwrap();
            }));
            // The next one starts only once this one is in line.
            within("a waiter did not get in line", || gate.waiting() == i + 1);
        }
        // A newcomer with a deadline already past does not pass them, and leaves the line.
        assert!(!gate.acquire(Some(Instant::now())));
        assert_eq!(gate.waiting(), 4);
        drop(held);
        let order: Vec<usize> = (0..4).map(|_| rx.recv().unwrap()).collect();
        assert_eq!(order, [0, 1, 2, 3]);
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!((gate.free(), gate.waiting()), (1, 0));
    }

    #[test]
    fn never_more_than_size_permits_and_none_lost() {
        assert_eq!(FifoGate::new(0).free(), 1, "a gate has at least one permit");
        let gate = Arc::new(FifoGate::new(2));
        let inside = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let most = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (gate, inside, most) = (gate.clone(), inside.clone(), most.clone());
                std::thread::spawn(move || {
                    for _ in 0..200 {
                        let _p = gate.enter();
                        let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
                        most.fetch_max(now, Ordering::SeqCst);
                        std::thread::yield_now();
                        inside.fetch_sub(1, Ordering::SeqCst);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert!(most.load(Ordering::SeqCst) <= 2, "at most 2 inside at once");
        assert_eq!(gate.free(), 2, "every permit came back");
    }
}
