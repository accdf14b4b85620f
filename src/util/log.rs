//! Logging: one line per event on standard error, `<rfc3339> <LEVEL> <message>`.
//!
//! The level is a process-wide atomic set once at start from `LOG_LEVEL` or `RUST_LOG`
//! (`error`, `warn`, `info`, `debug`; `RUST_LOG=adcluster=debug` style is understood too).
//! Each line is written with a single `write_all` on a locked stderr, so lines from different
//! threads never interleave.
//!
//! The `log` facade (used by r2d2 for its connection errors, and by postgres/tokio-postgres) is
//! bridged into the same lines by `bridge()`, as `<LEVEL> <crate>: <message>`, for `error` and
//! `warn` (and r2d2's `info`) only: tokio-postgres logs every statement *with its parameters* at `debug`, which
//! would put password hashes and emails in the log, so `debug` and `trace` from other crates are
//! never forwarded, whatever `LOG_LEVEL` says.
//!
//! Must never: log a password, a token, a `SECRET_KEY`, a database password or a query string
//! (tokens travel in `?token=`). Callers pass paths, not targets; config is logged redacted.

use std::io::Write;
use std::sync::atomic::{AtomicU8, Ordering};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Error = 1,
    Warn = 2,
    Info = 3,
    Debug = 4,
}

static LEVEL: AtomicU8 = AtomicU8::new(Level::Info as u8);

impl Level {
    /// Parse `info`, `WARN`, `adcluster=debug`, `warn,adcluster=debug` (the most verbose
    /// level named wins). `None` when nothing in it is a level.
    pub fn parse(s: &str) -> Option<Level> {
        s.split(',')
            .filter_map(|part| {
                let lvl = part.rsplit('=').next().unwrap_or(part).trim();
                match lvl.to_ascii_lowercase().as_str() {
                    "error" => Some(Level::Error),
                    "warn" | "warning" => Some(Level::Warn),
                    "info" => Some(Level::Info),
                    "debug" | "trace" => Some(Level::Debug),
                    _ => None,
                }
            })
            .max()
    }

    fn name(self) -> &'static str {
        match self {
            Level::Error => "ERROR",
            Level::Warn => "WARN",
            Level::Info => "INFO",
            Level::Debug => "DEBUG",
        }
    }
}

pub fn set_level(level: Level) {
    LEVEL.store(level as u8, Ordering::Relaxed);
}

pub fn enabled(level: Level) -> bool {
    level as u8 <= LEVEL.load(Ordering::Relaxed)
}

/// Write one line. Use the macros instead.
pub fn write(level: Level, args: std::fmt::Arguments<'_>) {
    let line = format!("{} {:<5} {}\n", super::time::rfc3339(std::time::SystemTime::now()), level.name(), args);
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

/// The `log` facade's records, into our lines (see the module doc).
struct Bridge;

/// Map a `log` level to ours; `None` for the levels never forwarded (`debug`, `trace`).
fn from_facade(level: log::Level) -> Option<Level> {
    match level {
        log::Level::Error => Some(Level::Error),
        log::Level::Warn => Some(Level::Warn),
        log::Level::Info => Some(Level::Info),
        log::Level::Debug | log::Level::Trace => None,
    }
}

/// The level a record is forwarded at: errors and warnings of any crate, `info` of r2d2 only
/// (postgres turns every server NOTICE into an `info` line, e.g. "relation already exists,
/// skipping" on each start), never `debug`.
///
/// r2d2's errors are logged as warnings: each is one failed connect or one pooled connection found
/// dead at checkout (every connection an outage killed is reported once when it is next
/// checked out), which the pool replaces by itself; the outage itself is the monitor's `WARN`.
fn forwarded(level: log::Level, target: &str) -> Option<Level> {
    let ours = from_facade(level)?;
    if target.starts_with("r2d2") {
        return Some(ours.max(Level::Warn));
    }
    (ours <= Level::Warn).then_some(ours)
}

impl log::Log for Bridge {
    fn enabled(&self, m: &log::Metadata<'_>) -> bool {
        forwarded(m.level(), m.target()).is_some_and(enabled)
    }

    fn log(&self, r: &log::Record<'_>) {
        if let Some(level) = forwarded(r.level(), r.target()).filter(|l| enabled(*l)) {
            let target = r.target().split("::").next().unwrap_or("");
            write(level, format_args!("{target}: {}", r.args()));
        }
    }

    fn flush(&self) {}
}

static BRIDGE: Bridge = Bridge;

/// Install the `log` facade bridge (once; later calls do nothing).
pub fn bridge() {
    if log::set_logger(&BRIDGE).is_ok() {
        log::set_max_level(log::LevelFilter::Info);
    }
}

#[macro_export]
macro_rules! log_at {
    ($lvl:expr, $($arg:tt)*) => {
        if $crate::util::log::enabled($lvl) {
            $crate::util::log::write($lvl, format_args!($($arg)*));
        }
    };
}
#[macro_export]
macro_rules! error { ($($arg:tt)*) => { $crate::log_at!($crate::util::log::Level::Error, $($arg)*) }; }
#[macro_export]
macro_rules! warn { ($($arg:tt)*) => { $crate::log_at!($crate::util::log::Level::Warn, $($arg)*) }; }
#[macro_export]
macro_rules! info { ($($arg:tt)*) => { $crate::log_at!($crate::util::log::Level::Info, $($arg)*) }; }
#[macro_export]
macro_rules! debug { ($($arg:tt)*) => { $crate::log_at!($crate::util::log::Level::Debug, $($arg)*) }; }

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bridge_never_forwards_debug() {
        assert_eq!(from_facade(log::Level::Error), Some(Level::Error));
        assert_eq!(from_facade(log::Level::Info), Some(Level::Info));
        assert_eq!(from_facade(log::Level::Debug), None);
        assert_eq!(from_facade(log::Level::Trace), None);
        assert_eq!(forwarded(log::Level::Info, "postgres::notice"), None);
        assert_eq!(forwarded(log::Level::Info, "r2d2"), Some(Level::Info));
        assert_eq!(forwarded(log::Level::Error, "r2d2"), Some(Level::Warn));
        assert_eq!(forwarded(log::Level::Error, "tokio_postgres::x"), Some(Level::Error));
        assert_eq!(forwarded(log::Level::Warn, "tokio_postgres::x"), Some(Level::Warn));
        bridge();
        bridge();
        assert_eq!(log::max_level(), log::LevelFilter::Info);
        assert!(!log::logger().enabled(&log::Metadata::builder().level(log::Level::Debug).target("x").build()));
    }

    #[test]
    fn parses_levels() {
        assert_eq!(Level::parse("info"), Some(Level::Info));
        assert_eq!(Level::parse("WARN"), Some(Level::Warn));
        assert_eq!(Level::parse("adcluster=debug"), Some(Level::Debug));
        assert_eq!(Level::parse("warn,adcluster=debug"), Some(Level::Debug));
        assert_eq!(Level::parse("nonsense"), None);
    }
}
