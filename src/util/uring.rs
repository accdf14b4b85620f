//! Batched non-blocking sends: one frame written to many sockets with one `io_uring_enter`
//! instead of one `send` each. A fan-out to 100 members is 100 system calls; on this project's
//! machines (a KVM guest with the kernel's speculative-execution mitigations, where a system
//! call costs 0.2-0.28 µs before it does anything: `scripts/bench/syscall-cost.sh`) the batch took 4-13% off the server's CPU
//! per delivery for 20 groups of 100 and 22-26% for 10 groups of 1,000, flat out
//! (`BENCHMARKS.md`, notes, "io_uring").
//!
//! Used synchronously: `send_all` submits and waits for every completion before it returns, so
//! no buffer is ever in the kernel's hands after the call, no completion is ever left for later,
//! and nothing here is asynchronous. Each send carries `MSG_DONTWAIT`, so the kernel finishes it
//! during the submission (a full socket completes with `EAGAIN`, it is never parked).
//!
//! Where io_uring is not there (a kernel before 5.6, `kernel.io_uring_disabled`, a seccomp
//! policy such as a container runtime's, or `WS_IO_URING=off`), `with_ring` gives `None` and callers
//! send one by one as before: the batch is an optimisation, never the only way to write.
//!
//! Owners and bounds: the rings live in one pool. A caller holds a ring for the length of one
//! batch and gives it back; the pool holds at most as many rings as were ever in use at once,
//! which the callers bound (the WebSocket fan-outs take turns, as many at a time as there are
//! cores: `ws::hub::Hub::writers`). Each ring is one descriptor and about 30 KiB of memory
//! shared with the kernel (`ENTRIES` submission slots and twice as many completion slots).
//!
//! Must never: return from `send_all` before the kernel has completed every submitted send;
//! block on a socket.

use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Mutex;

use io_uring::{opcode, types, IoUring, Probe};

/// Submission slots of one ring: the most sends in one `io_uring_enter` (a bigger batch is
/// submitted in pieces of this size).
pub const ENTRIES: usize = 256;

const UNKNOWN: u8 = 0;
const ON: u8 = 1;
const OFF: u8 = 2;

/// Whether rings are used: unknown until the first `with_ring` (which tries to make one), or set by
/// `configure`.
static STATE: AtomicU8 = AtomicU8::new(UNKNOWN);
/// Sends completed through a ring since the start (`sends`).
static SENT: AtomicU64 = AtomicU64::new(0);
/// Rings not in use (see the module's head for its bound).
static POOL: Mutex<Vec<SendRing>> = Mutex::new(Vec::new());

/// Turn batching off (`WS_IO_URING=off`), or check now that a ring can be made and say which it
/// is. Returns why io_uring cannot be used, when it cannot.
pub fn configure(enabled: bool) -> Result<(), String> {
    if !enabled {
        STATE.store(OFF, Ordering::SeqCst);
        return Err("turned off (WS_IO_URING=off)".into());
    }
    match SendRing::new() {
        Ok(r) => {
            lock_pool().push(r);
            STATE.store(ON, Ordering::SeqCst);
            Ok(())
        }
        Err(e) => {
            STATE.store(OFF, Ordering::SeqCst);
            Err(e)
        }
    }
}

/// How many sends have gone through a ring (each one socket's write, whatever it took), for
/// `/metrics`: 0 means the batches are not in use.
pub fn sends() -> u64 {
    SENT.load(Ordering::Relaxed)
}

fn lock_pool() -> std::sync::MutexGuard<'static, Vec<SendRing>> {
    // The pool is a list that a panic cannot leave half-changed.
    POOL.lock().unwrap_or_else(|p| p.into_inner())
}

/// A ring from the pool (made when none is free) for `f`, or `None` when io_uring cannot be
/// used here; the ring goes back to the pool afterwards.
pub fn with_ring<R>(f: impl FnOnce(Option<&mut SendRing>) -> R) -> R {
    if STATE.load(Ordering::Relaxed) == OFF {
        return f(None);
    }
    let pooled = lock_pool().pop();
    let mut ring = match pooled {
        Some(r) => r,
        None => match SendRing::new() {
            Ok(r) => {
                STATE.store(ON, Ordering::Relaxed);
                r
            }
            Err(_) => {
                STATE.store(OFF, Ordering::Relaxed);
                return f(None);
            }
        },
    };
    let result = f(Some(&mut ring));
    if ring.broken {
        // A submission failed in a way that says io_uring will not work here: stop using it.
        STATE.store(OFF, Ordering::Relaxed);
    } else {
        lock_pool().push(ring);
    }
    result
}

/// One io_uring instance for sends.
pub struct SendRing {
    ring: IoUring,
    /// `io_uring_enter` failed other than by a signal: this ring is not used again.
    broken: bool,
}

impl SendRing {
    fn new() -> Result<SendRing, String> {
        let ring = IoUring::new(ENTRIES as u32).map_err(|e| format!("io_uring_setup failed: {e}"))?;
        let mut probe = Probe::new();
        ring.submitter().register_probe(&mut probe).map_err(|e| format!("io_uring probe failed: {e}"))?;
        if !probe.is_supported(opcode::Send::CODE) {
            return Err("this kernel's io_uring has no send operation (it came in Linux 5.6)".into());
        }
        Ok(SendRing { ring, broken: false })
    }

    /// Sends `buf` to each socket of `fds` (`MSG_DONTWAIT | MSG_NOSIGNAL`), and sets
    /// `results[i]` to what `send` would have returned for `fds[i]`: the bytes written (maybe
    /// fewer than `buf.len()`), or the error (`WouldBlock` for a full socket). A send that could
    /// not be submitted at all reads `Ok(0)`: nothing written, the caller writes it another way.
    pub fn send_all(&mut self, fds: &[RawFd], buf: &[u8], results: &mut Vec<io::Result<usize>>) {
        results.clear();
        results.extend(fds.iter().map(|_| Ok(0)));
        let len = u32::try_from(buf.len()).unwrap_or(u32::MAX);
        for (chunk_no, chunk) in fds.chunks(ENTRIES).enumerate() {
            if self.broken {
                return;
            }
            let base = chunk_no * ENTRIES;
            {
                let mut sq = self.ring.submission();
                for (i, &fd) in chunk.iter().enumerate() {
                    let sqe = opcode::Send::new(types::Fd(fd), buf.as_ptr(), len)
                        .flags(libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
                        .build()
                        .user_data((base + i) as u64);
                    // SAFETY: `buf` outlives every send submitted here: this function waits below
                    // for all of their completions before it returns or reuses anything. The ring
                    // has ENTRIES slots, all free (every earlier submission was reaped), so the
                    // push cannot fail.
                    unsafe { sq.push(&sqe).expect("a free submission slot") };
                }
            }
            let mut reaped = 0;
            // Whether `io_uring_enter` took this chunk's sends (it returns an error only when it
            // took none; once it has, later calls only wait).
            let mut submitted = false;
            while reaped < chunk.len() {
                let wait = chunk.len() - reaped;
                let entered = if submitted {
                    self.ring.submitter().submit_and_wait(wait)
                } else {
                    self.ring.submit_and_wait(wait)
                };
                let failed = match entered {
                    Ok(_) => {
                        submitted = true;
                        None
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => None,
                    Err(e) => Some(e),
                };
                for cqe in self.ring.completion() {
                    SENT.fetch_add(1, Ordering::Relaxed);
                    let i = cqe.user_data() as usize;
                    let r = cqe.result();
                    results[i] = if r >= 0 { Ok(r as usize) } else { Err(io::Error::from_raw_os_error(-r)) };
                    reaped += 1;
                }
                if let Some(e) = failed {
                    crate::warn!("io_uring submission failed ({e}); writing one send at a time from now on");
                    self.broken = true;
                    if submitted {
                        // Taken but not reported complete (a non-blocking send always completes
                        // during the submission, so this is not expected): whether its bytes went
                        // out is unknown, and writing them again could split a frame. Those
                        // connections are reported broken.
                        for r in &mut results[base..base + chunk.len()] {
                            if matches!(r, Ok(0)) {
                                *r = Err(io::Error::other("io_uring lost the completion of a send"));
                            }
                        }
                    }
                    // Not taken: the remaining `Ok(0)` say "nothing written", for the caller's
                    // other way.
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::util::tcp_pair as pair;
    use std::io::{Read, Write};
    use std::os::fd::AsRawFd;

    /// Whether this machine lets us make a ring (tests that need one say so and pass when not).
    fn ring() -> Option<SendRing> {
        match SendRing::new() {
            Ok(r) => Some(r),
            Err(e) => {
                eprintln!("no io_uring here ({e}): nothing to test");
                None
            }
        }
    }

    #[test]
    fn one_frame_reaches_every_socket_even_past_one_ring() {
        let Some(mut ring) = ring() else { return };
        // More sockets than submission slots: the batch goes in pieces.
        let pairs: Vec<_> = (0..ENTRIES + 3).map(|_| pair()).collect();
        let fds: Vec<RawFd> = pairs.iter().map(|(s, _)| s.as_raw_fd()).collect();
        let mut results = Vec::new();
        ring.send_all(&fds, b"hello", &mut results);
        assert_eq!(results.len(), fds.len());
        assert!(results.iter().all(|r| matches!(r, Ok(5))), "{:?}", results.iter().find(|r| !matches!(r, Ok(5))));
        for (_, mut client) in pairs {
            let mut got = [0u8; 5];
            client.read_exact(&mut got).unwrap();
            assert_eq!(&got, b"hello");
        }
    }

    #[test]
    fn a_full_socket_says_would_block_and_a_dead_one_its_error() {
        let Some(mut ring) = ring() else { return };
        let (dead, dead_client) = pair();
        drop(dead_client);
        let big = vec![7u8; 100_000];
        // The dead socket: the first send may still be taken (the peer's reset comes back after
        // it); the second send below fails.
        let mut results = Vec::new();
        std::thread::sleep(std::time::Duration::from_millis(50));
        ring.send_all(&[dead.as_raw_fd()], &big, &mut results);
        std::thread::sleep(std::time::Duration::from_millis(50));
        let (ok, mut ok_client) = pair();
        let (full, _full_client) = pair();
        full.set_nonblocking(true).unwrap();
        // Fill it (the client never reads), right before the batch: acknowledgements arriving
        // later would make room again.
        for size in [1 << 16, 1] {
            let chunk = vec![0u8; size];
            while matches!((&full).write(&chunk), Ok(n) if n > 0) {}
        }
        ring.send_all(&[full.as_raw_fd(), dead.as_raw_fd(), ok.as_raw_fd()], b"x", &mut results);
        assert_eq!(results[0].as_ref().map_err(|e| e.kind()), Err(io::ErrorKind::WouldBlock));
        assert!(results[1].is_err(), "a send to a closed peer fails: {:?}", results[1]);
        assert!(matches!(results[2], Ok(1)));
        let mut got = [0u8; 1];
        ok_client.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"x");
    }
}
