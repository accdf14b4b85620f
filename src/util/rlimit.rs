//! The process limits that bound how many connections and sessions we may hold.
//!
//! - Open files (`RLIMIT_NOFILE`): each connection is one descriptor; the soft limit is often
//!   1024 while the hard limit is much higher. We raise the soft limit up to the hard limit,
//!   never beyond, and warn when even that is short of `max_connections` plus room for files and
//!   database connections.
//! - Threads (`thread_ceiling`): each WebSocket session is a thread, which takes a pid from the
//!   whole machine's `kernel.pid_max` and four memory mappings from the process's
//!   `vm.max_map_count`. At that second limit the start of a thread does not fail cleanly: `std`
//!   aborts the whole process when it cannot map the new thread's signal stack (seen by hand:
//!   `vm.max_map_count` lowered to 12,000, 4,000 clients connecting, the server died with "failed
//!   to set up alternative stack guard page"). So sessions are capped below both, with room left
//!   for the rest of the process and of the machine.
//!
//! Must never: fail the start-up (a low limit degrades to 503s, it does not break the server).

use crate::warn;

const RESERVE: u64 = 256;

pub fn raise_nofile(max_connections: usize) {
    let want = max_connections as u64 + RESERVE;
    // SAFETY: getrlimit/setrlimit with a valid rlimit struct.
    unsafe {
        let mut lim: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return;
        }
        if lim.rlim_cur < want && lim.rlim_cur < lim.rlim_max {
            let old = lim.rlim_cur;
            lim.rlim_cur = want.min(lim.rlim_max);
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                lim.rlim_cur = old;
            }
        }
        if lim.rlim_cur < want {
            warn!(
                "open-files limit is {} but {} connections (MAX_CONNECTIONS + WS_MAX_CLIENTS) need about {}; raise it (ulimit -n) or lower those settings",
                lim.rlim_cur, max_connections, want
            );
        }
    }
}

/// Memory mappings each thread takes: its stack and the stack's guard page (glibc), and the
/// signal stack `std` gives every thread (to report a stack overflow) with its own guard page.
/// `thread_maps_are_counted_right` checks it.
pub const MAPS_PER_THREAD: usize = 4;
/// Mappings left for everything that is not a session thread: the HTTP workers, the allocator's
/// heaps, large buffers (`malloc` maps each allocation over 128 KiB on its own), libraries.
/// A started server with no session uses about 230 (`grep -c '' /proc/PID/maps`), of which
/// about 30 exist when the ceiling is read; each transfer in flight adds a few.
pub const MAP_RESERVE: usize = 8192;
/// Pids left for the rest of the machine (its shells, its cron jobs, our backups).
pub const PID_RESERVE: usize = 4096;

/// What `thread_ceiling` reads: the system's limits and what is already in use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThreadLimits {
    /// `vm.max_map_count`.
    pub max_map_count: usize,
    /// Lines of `/proc/self/maps` now.
    pub maps_in_use: usize,
    /// The lower of `kernel.pid_max` and `kernel.threads-max`.
    pub max_tasks: usize,
    /// Threads on the whole machine now (`/proc/loadavg`, its fourth field after the `/`).
    pub tasks_in_use: usize,
}

impl ThreadLimits {
    /// Reads the limits from `/proc`; `None` if any cannot be read (then nothing is capped).
    pub fn read() -> Option<ThreadLimits> {
        let num = |path: &str| std::fs::read_to_string(path).ok()?.trim().parse::<usize>().ok();
        let loadavg = std::fs::read_to_string("/proc/loadavg").ok()?;
        let tasks_in_use = loadavg.split_whitespace().nth(3)?.split('/').nth(1)?.parse().ok()?;
        Some(ThreadLimits {
            max_map_count: num("/proc/sys/vm/max_map_count")?,
            maps_in_use: std::fs::read_to_string("/proc/self/maps").ok()?.lines().count(),
            max_tasks: num("/proc/sys/kernel/pid_max")?.min(num("/proc/sys/kernel/threads-max")?),
            tasks_in_use,
        })
    }

    /// The most threads the process may still start and leave both reserves free.
    pub fn ceiling(&self) -> usize {
        let by_maps = self.max_map_count.saturating_sub(self.maps_in_use + MAP_RESERVE) / MAPS_PER_THREAD;
        let by_tasks = self.max_tasks.saturating_sub(self.tasks_in_use + PID_RESERVE);
        by_maps.min(by_tasks)
    }
}

/// `Err` with what to do when `workers` (`WORKERS`) threads do not fit this machine's limits
/// (checked before any starts: a thread that cannot start mid-way panicked inside `std` and
/// ended the server with a message that named no setting).
pub fn check_workers(workers: usize) -> Result<(), String> {
    let Some(limits) = ThreadLimits::read() else { return Ok(()) };
    workers_fit(&limits, workers)
}

fn workers_fit(limits: &ThreadLimits, workers: usize) -> Result<(), String> {
    let ceiling = limits.ceiling();
    if workers <= ceiling {
        return Ok(());
    }
    Err(format!(
        "WORKERS={workers} is more threads than this machine can start: it has room for {ceiling} ({MAPS_PER_THREAD} memory mappings each, vm.max_map_count is {} with {} in use; a pid each, the limit is {} with {} in use). Lower WORKERS (auto: 16 per core), or raise the limits (sysctl -w vm.max_map_count=262144)",
        limits.max_map_count, limits.maps_in_use, limits.max_tasks, limits.tasks_in_use
    ))
}

/// `wanted` (`WS_MAX_CLIENTS`), or fewer if this machine's limits cannot take that many more
/// threads besides `reserved` (the HTTP workers, not started yet), with a warning that says
/// which limit and what to do.
pub fn thread_ceiling(wanted: usize, reserved: usize) -> usize {
    let Some(limits) = ThreadLimits::read() else { return wanted };
    let ceiling = limits.ceiling().saturating_sub(reserved);
    if ceiling >= wanted {
        return wanted;
    }
    warn!(
        "WS_MAX_CLIENTS is {wanted} but this machine has room for {ceiling} more threads (one per WebSocket session: \
         {MAPS_PER_THREAD} memory mappings each, vm.max_map_count is {} with {} in use; a pid each, the machine's limit is {} \
         with {} in use); sessions over {ceiling} are refused with 503. Raise the limits (sysctl -w vm.max_map_count=262144, \
         sysctl -w kernel.pid_max=4194304) or lower WS_MAX_CLIENTS",
        limits.max_map_count,
        limits.maps_in_use,
        limits.max_tasks,
        limits.tasks_in_use
    );
    ceiling
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max_map_count: usize, maps_in_use: usize, max_tasks: usize, tasks_in_use: usize) -> ThreadLimits {
        ThreadLimits { max_map_count, maps_in_use, max_tasks, tasks_in_use }
    }

    #[test]
    fn the_ceiling_keeps_both_reserves() {
        // Linux's default map limit, a fresh server: the maps bound it.
        assert_eq!(limits(65530, 230, 32768, 400).ceiling(), (65530 - 230 - MAP_RESERVE) / MAPS_PER_THREAD);
        // Many maps allowed, few pids: the pids bound it.
        assert_eq!(limits(1 << 20, 230, 32768, 400).ceiling(), 32768 - 400 - PID_RESERVE);
        // At the edge: exactly one thread's maps beyond the reserve, then one map short of it.
        assert_eq!(limits(230 + MAP_RESERVE + MAPS_PER_THREAD, 230, 1 << 22, 0).ceiling(), 1);
        assert_eq!(limits(230 + MAP_RESERVE + MAPS_PER_THREAD - 1, 230, 1 << 22, 0).ceiling(), 0);
        // Limits already exceeded (a crowded machine): none, not an underflow.
        assert_eq!(limits(1000, 5000, 1 << 22, 0).ceiling(), 0);
        assert_eq!(limits(1 << 20, 0, 1000, 5000).ceiling(), 0);
    }

    #[test]
    fn workers_that_do_not_fit_are_refused_naming_the_setting() {
        // Linux's default map limit: room for (65530 - 230 - 8192) / 4 = 14277 threads.
        let l = limits(65530, 230, 1 << 22, 0);
        assert!(workers_fit(&l, 14_277).is_ok());
        let err = workers_fit(&l, 14_278).unwrap_err();
        assert!(
            err.starts_with("WORKERS=14278 is more threads than this machine can start: it has room for 14277"),
            "{err}"
        );
        assert!(err.contains("vm.max_map_count is 65530"), "{err}");
    }

    #[test]
    fn the_limits_are_read_and_the_default_session_limit_fits() {
        let l = ThreadLimits::read().expect("Linux /proc");
        assert!(l.max_map_count > 0 && l.maps_in_use > 0 && l.max_tasks > 0 && l.tasks_in_use > 0, "{l:?}");
        // Linux's defaults (65530 maps, 32768 pids) leave room for the default WS_MAX_CLIENTS.
        assert!(limits(65530, l.maps_in_use, 32768, 400).ceiling() >= 10_000, "{l:?}");
    }

    #[test]
    fn thread_maps_are_counted_right() {
        // Threads started the way session threads are (a named thread with a set stack size),
        // parked while the mappings are counted. nextest runs this test in its own process, so
        // no other test's threads come and go meanwhile; a thread starting elsewhere could only
        // make the count larger, and the assertion is that it is not larger.
        let count = || std::fs::read_to_string("/proc/self/maps").unwrap().lines().count();
        // First let glibc make all its allocator arenas (up to 8 per core, each a mapping or
        // two, made by threads that allocate at once), as a running server long has: the
        // threads counted below then reuse them.
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(65));
        let warm: Vec<_> = (0..64)
            .map(|_| {
                let b = barrier.clone();
                std::thread::spawn(move || {
                    let v = std::hint::black_box(vec![1u8; 64]);
                    b.wait();
                    drop(v);
                })
            })
            .collect();
        barrier.wait();
        for t in warm {
            t.join().unwrap();
        }
        let before = count();
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let rx = std::sync::Arc::new(std::sync::Mutex::new(rx));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<()>();
        let threads: Vec<_> = (0..16)
            .map(|_| {
                let (rx, ready) = (rx.clone(), ready_tx.clone());
                std::thread::Builder::new()
                    .name("maps-test".into())
                    .stack_size(128 * 1024)
                    .spawn(move || {
                        ready.send(()).unwrap();
                        let _ = rx.lock().unwrap().recv();
                    })
                    .unwrap()
            })
            .collect();
        for _ in 0..16 {
            ready_rx.recv().unwrap();
        }
        let per_thread = (count() - before) as f64 / 16.0;
        drop(tx);
        for t in threads {
            t.join().unwrap();
        }
        // Each thread adds its four; the allocator may add a heap or two for the threads' arenas.
        assert!(per_thread >= MAPS_PER_THREAD as f64, "{per_thread} mappings per thread");
        assert!(per_thread < MAPS_PER_THREAD as f64 + 1.0, "{per_thread} mappings per thread");
    }
}
