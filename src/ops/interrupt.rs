//! Interruption of `backup` and `restore`: SIGINT, SIGTERM and SIGHUP are turned into "stop the
//! child and clean up" instead of "die here", so that an interrupted backup leaves no file and an
//! interrupted restore leaves no `psql` running on behind our back.
//!
//! Thread: `interrupt` (one, started by `Guard::install`, lives until the process exits) waits
//! in `sigwait` for the three signals, blocked in every other thread; on one it records it and
//! sends SIGTERM to the registered child. It holds no lock.
//! Must never: do anything but store an atomic and call kill(2): the main thread does the
//! cleaning, with its ordinary error path.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::Arc;

/// What the signal thread and the command share.
pub struct Guard {
    /// Pid of the running child (0: none).
    child: AtomicI32,
    /// The signal that arrived (0: none).
    signal: AtomicI32,
    /// Nothing has been written or started yet: a signal ends the process at once (exit 1),
    /// e.g. a Ctrl-C at the confirmation prompt. Cleared before the first file or child.
    quit_now: AtomicBool,
}

impl Guard {
    /// Block the signals in this thread (and so in every thread started after) and start the
    /// `interrupt` thread. Call before any other thread starts. Children unblock them again
    /// (`pgtools::command`).
    pub fn install() -> io::Result<Arc<Guard>> {
        let guard =
            Arc::new(Guard { child: AtomicI32::new(0), signal: AtomicI32::new(0), quit_now: AtomicBool::new(true) });
        // SAFETY: sigset_t is plain data, initialised by sigemptyset; pthread_sigmask changes
        // only this thread's mask.
        let set = unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            for s in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
                libc::sigaddset(&mut set, s);
            }
            let rc = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
            if rc != 0 {
                return Err(io::Error::from_raw_os_error(rc));
            }
            set
        };
        let g = guard.clone();
        std::thread::Builder::new().name("interrupt".into()).stack_size(64 * 1024).spawn(move || loop {
            let mut sig: libc::c_int = 0;
            // SAFETY: `set` is an initialised sigset and `sig` a valid out pointer.
            if unsafe { libc::sigwait(&set, &mut sig) } != 0 {
                continue;
            }
            g.signal.store(sig, Ordering::SeqCst);
            if g.quit_now.load(Ordering::SeqCst) {
                eprintln!("\nerror: interrupted by {}; nothing was changed", g.interrupted().unwrap_or("a signal"));
                std::process::exit(1);
            }
            let pid = g.child.load(Ordering::SeqCst);
            if pid > 0 {
                // SAFETY: kill(2) on the pid of our own child, registered while it runs.
                unsafe { libc::kill(pid, libc::SIGTERM) };
            }
        })?;
        Ok(guard)
    }

    /// From now on a signal no longer ends the process at once: something (a temporary file, a
    /// child) needs cleaning up by the command's own error path.
    pub fn arm(&self) {
        self.quit_now.store(false, Ordering::SeqCst);
    }

    /// Register the running child (`None`: it has been reaped). A signal that came before the
    /// child was registered stops it at once.
    pub fn set_child(&self, pid: Option<u32>) {
        let pid = pid.map(|p| p as i32).unwrap_or(0);
        self.child.store(pid, Ordering::SeqCst);
        if pid > 0 && self.interrupted().is_some() {
            // SAFETY: as above.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
    }

    /// The name of the signal that interrupted us, if one did.
    pub fn interrupted(&self) -> Option<&'static str> {
        match self.signal.load(Ordering::SeqCst) {
            0 => None,
            libc::SIGINT => Some("SIGINT"),
            libc::SIGTERM => Some("SIGTERM"),
            _ => Some("SIGHUP"),
        }
    }
}
