//! Time formatting: RFC 3339 (API timestamps, always UTC) and the HTTP `Date` format.
//!
//! We format dates ourselves (days-from-civil arithmetic, Howard Hinnant's algorithm) rather
//! than pull in a date crate: the server only ever needs "UTC now, printed two ways".
//! Must never: depend on the local time zone.

use std::cell::RefCell;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// (year, month 1-12, day 1-31) of a day count since 1970-01-01.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn split(t: SystemTime) -> (i64, u32, u32, u64, u64, u64, u32) {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    let secs = d.as_secs();
    let (y, m, day) = civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    (y, m, day, rem / 3600, rem % 3600 / 60, rem % 60, d.subsec_micros())
}

/// `2026-11-26T07:37:33.123456Z`
pub fn rfc3339(t: SystemTime) -> String {
    Rfc3339(t).to_string()
}

/// A time that prints (and serialises, as a JSON string) in [`rfc3339`]'s form without building
/// a `String` first: for responses that serialise straight from a borrowed row.
#[derive(Clone, Copy, Debug)]
pub struct Rfc3339(pub SystemTime);

impl std::fmt::Display for Rfc3339 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (y, mo, d, h, mi, s, us) = split(self.0);
        write!(f, "{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{us:06}Z")
    }
}

impl serde::Serialize for Rfc3339 {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// `Thu, 26 Nov 2026 07:37:33 GMT`
pub fn http_date(t: SystemTime) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    let secs = t.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO).as_secs();
    let (y, mo, d, h, mi, s, _) = split(t);
    let wd = DAYS[((secs / 86_400) % 7) as usize];
    format!("{wd}, {d:02} {} {y:04} {h:02}:{mi:02}:{s:02} GMT", MONTHS[(mo - 1) as usize])
}

thread_local! {
    /// Per-thread cache of the `Date` header: (unix second, formatted). One format per second
    /// per worker instead of one per response.
    static DATE_CACHE: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
}

/// The HTTP date for now, cached per second.
/// Calls `f` with the current HTTP date (from the per-thread cache: no allocation).
pub fn with_http_date_now<R>(f: impl FnOnce(&str) -> R) -> R {
    let now = SystemTime::now();
    let secs = now.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO).as_secs();
    DATE_CACHE.with(|c| {
        let mut c = c.borrow_mut();
        if c.0 != secs {
            *c = (secs, http_date(now));
        }
        f(&c.1)
    })
}

pub fn http_date_now() -> String {
    let now = SystemTime::now();
    let secs = now.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO).as_secs();
    DATE_CACHE.with(|c| {
        let mut c = c.borrow_mut();
        if c.0 != secs {
            *c = (secs, http_date(now));
        }
        c.1.clone()
    })
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO).as_secs()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_instants() {
        let t = UNIX_EPOCH + Duration::from_secs(1_795_678_653) + Duration::from_micros(42);
        assert_eq!(rfc3339(t), "2026-11-26T07:37:33.000042Z");
        assert_eq!(http_date(t), "Thu, 26 Nov 2026 07:37:33 GMT");
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000000Z");
        // A leap day.
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(rfc3339(leap), "2000-02-29T00:00:00.000000Z");
        assert_eq!(http_date(leap), "Tue, 29 Feb 2000 00:00:00 GMT");
        // The borrowed form prints and serialises the same text.
        assert_eq!(Rfc3339(leap).to_string(), rfc3339(leap));
        assert_eq!(serde_json::to_string(&Rfc3339(t)).unwrap(), "\"2026-11-26T07:37:33.000042Z\"");
    }
}
