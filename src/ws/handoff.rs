//! A hand-off of two values, in order, from one thread to one other that waits for them, or
//! the news that the sender is gone. Used between the HTTP worker that answers a WebSocket
//! upgrade and the session thread it starts (`mod.rs`): first the registration, then the
//! socket once the `101` is written.
//!
//! Why not `std::sync::mpsc::sync_channel`: that channel is one allocation of about 650 bytes
//! (cache-padded head and tail, two waker lists) plus its slot buffer, and the session thread,
//! dropping the receiver last, kept both in its allocator cache (glibc's per-thread `tcache`)
//! for the whole session: about 0.7 KiB of every idle session's memory. This is one `Arc` of
//! about 100 bytes (see `docs/decisions.md`).
//!
//! Queue: none; one slot for each value, each filled at most once. Lock: `Shared::state`, held
//! for a few instructions, never across a wait (the receiver waits on the condvar, which
//! releases it). Must never: hand a value over twice, or leave the receiver waiting after the
//! sender is dropped.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};

struct State<A, B> {
    first: Option<A>,
    second: Option<B>,
    sender_gone: bool,
}

struct Shared<A, B> {
    state: Mutex<State<A, B>>,
    ready: Condvar,
}

impl<A, B> Shared<A, B> {
    fn lock(&self) -> MutexGuard<'_, State<A, B>> {
        // A panic while the lock is held cannot leave the state half-written (every write is
        // one assignment), so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The sending half: `first` once, then `second`, which consumes it. Dropping it without
/// sending wakes the receiver with `None`.
pub struct Sender<A, B>(Arc<Shared<A, B>>);

/// The receiving half: `first`, then `second`, each waiting until its value or the sender's
/// end.
pub struct Receiver<A, B>(Arc<Shared<A, B>>);

/// A new hand-off.
pub fn pair<A, B>() -> (Sender<A, B>, Receiver<A, B>) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State { first: None, second: None, sender_gone: false }),
        ready: Condvar::new(),
    });
    (Sender(shared.clone()), Receiver(shared))
}

impl<A, B> Sender<A, B> {
    /// Hands over the first value (a second call replaces a value not yet taken; callers make
    /// one).
    pub fn first(&self, a: A) {
        self.0.lock().first = Some(a);
        self.0.ready.notify_one();
    }

    /// Hands over the second value; the sender is done.
    pub fn second(self, b: B) {
        self.0.lock().second = Some(b);
        // `drop(self)` marks the sender gone and wakes the receiver.
    }
}

impl<A, B> Drop for Sender<A, B> {
    fn drop(&mut self) {
        self.0.lock().sender_gone = true;
        self.0.ready.notify_one();
    }
}

impl<A, B> Receiver<A, B> {
    /// Waits for the first value; `None` if the sender was dropped without sending it.
    pub fn first(&self) -> Option<A> {
        self.wait(|s| s.first.take())
    }

    /// Waits for the second value; `None` if the sender was dropped without sending it.
    pub fn second(self) -> Option<B> {
        self.wait(|s| s.second.take())
    }

    fn wait<T>(&self, take: impl Fn(&mut State<A, B>) -> Option<T>) -> Option<T> {
        let mut s = self.0.lock();
        loop {
            if let Some(v) = take(&mut s) {
                return Some(v);
            }
            if s.sender_gone {
                return None;
            }
            s = self.0.ready.wait(s).unwrap_or_else(|p| p.into_inner());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::thread;

    #[test]
    fn both_values_arrive_in_order_whoever_comes_first() {
        // The receiver waits before anything is sent.
        let (tx, rx) = pair::<u32, String>();
        let t = thread::spawn(move || (rx.first(), rx.second()));
        thread::sleep(std::time::Duration::from_millis(20));
        tx.first(7);
        tx.second("socket".to_string());
        assert_eq!(t.join().unwrap(), (Some(7), Some("socket".to_string())));

        // Everything is sent (and the sender gone) before the receiver looks.
        let (tx, rx) = pair::<u32, String>();
        tx.first(8);
        tx.second("later".to_string());
        assert_eq!(rx.first(), Some(8));
        assert_eq!(rx.second(), Some("later".to_string()));
    }

    #[test]
    fn a_dropped_sender_wakes_the_receiver_with_none() {
        // Dropped before the first value: both are None.
        let (tx, rx) = pair::<u32, u32>();
        let t = thread::spawn(move || rx.first());
        thread::sleep(std::time::Duration::from_millis(20));
        drop(tx);
        assert_eq!(t.join().unwrap(), None);

        // Dropped after the first (the 101 was never written): the first still arrives, the
        // second is None, and a waiting receiver is woken.
        let (tx, rx) = pair::<u32, u32>();
        tx.first(1);
        let t = thread::spawn(move || {
            let a = rx.first();
            (a, rx.second())
        });
        thread::sleep(std::time::Duration::from_millis(20));
        drop(tx);
        assert_eq!(t.join().unwrap(), (Some(1), None));
    }

    #[test]
    fn it_is_one_small_allocation() {
        // What the session pays for while it waits for its socket: the shared state the
        // ws hand-off uses, well under the ~650 bytes of a `sync_channel`.
        let bytes = std::mem::size_of::<Shared<crate::ws::hub::Member, (std::net::TcpStream, Vec<u8>)>>();
        assert!(bytes <= 128, "{bytes} bytes");
    }
}
