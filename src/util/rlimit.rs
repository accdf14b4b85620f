//! Raise the open-files limit (`RLIMIT_NOFILE`) to what the connection limit needs.
//! Each connection is one descriptor; the soft limit is often 1024 while the hard limit is much
//! higher. We raise the soft limit up to the hard limit, never beyond, and warn when even that
//! is short of `max_connections` plus room for files and database connections.
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
