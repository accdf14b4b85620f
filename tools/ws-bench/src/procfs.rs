//! What the kernel says about a process: CPU time from `/proc/PID/stat` (utime + stime, every
//! thread of the process) and memory from `/proc/PID/status` (VmRSS, VmHWM), plus this tool's
//! own CPU time (`getrusage`). Must never write to /proc or signal the process it watches.

use std::fs;
use std::io;
use std::time::{Duration, Instant};

/// Clock ticks per second of `/proc/PID/stat` times (`sysconf(_SC_CLK_TCK)`, 100 on Linux).
pub fn clk_tck() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as u64
    } else {
        100
    }
}

/// CPU time in ticks, as `/proc/PID/stat` splits it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ticks {
    /// utime: in the process's own code.
    pub user: u64,
    /// stime: in the kernel on its behalf (its system calls).
    pub system: u64,
}

impl Ticks {
    pub fn total(self) -> u64 {
        self.user + self.system
    }
}

/// utime and stime from the text of `/proc/PID/stat`. The command name (field 2) may hold
/// spaces and parentheses, so fields are counted after the last `)`: state is field 3, utime 14,
/// stime 15.
pub fn parse_stat_ticks(stat: &str) -> Option<Ticks> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut f = rest.split_whitespace().skip(11);
    let user: u64 = f.next()?.parse().ok()?;
    let system: u64 = f.next()?.parse().ok()?;
    Some(Ticks { user, system })
}

pub fn cpu_ticks(pid: u32) -> io::Result<Ticks> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    parse_stat_ticks(&s).ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "unreadable /proc/PID/stat"))
}

/// The value in KiB of a `Key:   1234 kB` line of `/proc/PID/status`.
pub fn parse_status_kib(status: &str, key: &str) -> Option<u64> {
    status.lines().find_map(|l| {
        let v = l.strip_prefix(key)?.strip_prefix(':')?;
        v.split_whitespace().next()?.parse().ok()
    })
}

pub fn status_kib(pid: u32, key: &str) -> io::Result<u64> {
    let s = fs::read_to_string(format!("/proc/{pid}/status"))?;
    parse_status_kib(&s, key).ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, format!("no {key} in status")))
}

/// This process's user + system CPU time so far, in microseconds.
pub fn self_cpu_us() -> u64 {
    // SAFETY: getrusage writes into the struct we own.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Waits until `pid` has been nearly idle (at most one tick per 250 ms, i.e. under 4% of a
/// core at 100 Hz) for two samples in a row, or `max` has passed. Returns how long it waited
/// and whether it did settle. Used before measuring, so that one run's aftermath (a server
/// still sending `leave` frames to closed sockets, a garbage collection) is not billed to the next.
pub fn wait_quiet(pid: u32, max: Duration) -> (Duration, bool) {
    let t0 = Instant::now();
    let mut calm = 0;
    let Ok(mut last) = cpu_ticks(pid).map(Ticks::total) else {
        return (t0.elapsed(), false);
    };
    while t0.elapsed() < max {
        std::thread::sleep(Duration::from_millis(250));
        let Ok(now) = cpu_ticks(pid).map(Ticks::total) else {
            return (t0.elapsed(), false);
        };
        calm = if now.saturating_sub(last) <= 1 { calm + 1 } else { 0 };
        last = now;
        if calm >= 2 {
            return (t0.elapsed(), true);
        }
    }
    (t0.elapsed(), false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_after_the_name() {
        // A name with spaces and a ')' of its own.
        let s = "1234 (node (ws) x) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 11 0 5 0 0";
        assert_eq!(parse_stat_ticks(s), Some(Ticks { user: 250, system: 75 }));
        assert_eq!(parse_stat_ticks("garbage"), None);
    }

    #[test]
    fn status_lines() {
        let s = "Name:\tadcluster\nVmHWM:\t   20480 kB\nVmRSS:\t   10240 kB\n";
        assert_eq!(parse_status_kib(s, "VmRSS"), Some(10240));
        assert_eq!(parse_status_kib(s, "VmHWM"), Some(20480));
        assert_eq!(parse_status_kib(s, "VmSwap"), None);
    }

    #[test]
    fn reads_itself() {
        let pid = std::process::id();
        assert!(cpu_ticks(pid).is_ok());
        assert!(status_kib(pid, "VmRSS").unwrap() > 0);
        assert!(clk_tck() > 0);
    }
}
