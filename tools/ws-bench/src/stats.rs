//! Latency arithmetic: nearest-rank percentiles over nanosecond samples and the per-message
//! fan-out record (first and last receiver). Plain functions, unit tested; must never read a
//! clock or do I/O.

/// The nearest-rank percentile `q` (0 < q <= 100) of `sorted` (ascending): the smallest sample
/// with at least q% of the samples at or below it. `None` for no samples.
pub fn percentile(sorted: &[u64], q: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let n = sorted.len();
    let rank = ((q / 100.0) * n as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, n) - 1])
}

/// p50, p99 and max of unsorted samples, in milliseconds (sorts in place).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    pub count: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

pub fn summarize(samples: &mut [u64]) -> Option<Summary> {
    samples.sort_unstable();
    let ms = |ns: u64| ns as f64 / 1e6;
    Some(Summary {
        count: samples.len(),
        p50_ms: ms(percentile(samples, 50.0)?),
        p99_ms: ms(percentile(samples, 99.0)?),
        max_ms: ms(*samples.last()?),
    })
}

/// What the receivers of one fan-out message saw: the earliest and latest delivery latency and
/// how many members got it. One per message and reader thread; merged across readers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fan {
    pub first_ns: u64,
    pub last_ns: u64,
    pub count: u32,
}

impl Default for Fan {
    fn default() -> Self {
        Fan { first_ns: u64::MAX, last_ns: 0, count: 0 }
    }
}

impl Fan {
    pub fn record(&mut self, latency_ns: u64) {
        self.first_ns = self.first_ns.min(latency_ns);
        self.last_ns = self.last_ns.max(latency_ns);
        self.count += 1;
    }

    pub fn merge(&mut self, other: &Fan) {
        self.first_ns = self.first_ns.min(other.first_ns);
        self.last_ns = self.last_ns.max(other.last_ns);
        self.count += other.count;
    }
}

/// Merges per-reader fan-out tables (indexed by message sequence number) into one.
pub fn merge_fans(tables: &[Vec<Fan>]) -> Vec<Fan> {
    let len = tables.iter().map(Vec::len).max().unwrap_or(0);
    let mut out = vec![Fan::default(); len];
    for t in tables {
        for (o, f) in out.iter_mut().zip(t) {
            o.merge(f);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 50.0), Some(50));
        assert_eq!(percentile(&v, 99.0), Some(99));
        assert_eq!(percentile(&v, 100.0), Some(100));
        assert_eq!(percentile(&v, 0.1), Some(1));
        assert_eq!(percentile(&[], 50.0), None);
        assert_eq!(percentile(&[7], 99.0), Some(7));
        // 10 samples: p99 is the largest, p50 the 5th.
        let v: Vec<u64> = (10..20).collect();
        assert_eq!(percentile(&v, 99.0), Some(19));
        assert_eq!(percentile(&v, 50.0), Some(14));
        // 1000 samples: p99 is the 990th.
        let v: Vec<u64> = (1..=1000).collect();
        assert_eq!(percentile(&v, 99.0), Some(990));
    }

    #[test]
    fn summary_sorts_and_scales() {
        let mut v = vec![3_000_000, 1_000_000, 2_000_000];
        let s = summarize(&mut v).unwrap();
        assert_eq!(s.count, 3);
        assert_eq!((s.p50_ms, s.p99_ms, s.max_ms), (2.0, 3.0, 3.0));
        assert!(summarize(&mut []).is_none());
    }

    #[test]
    fn fans_merge() {
        let mut a = Fan::default();
        a.record(5);
        a.record(9);
        let mut b = Fan::default();
        b.record(3);
        let merged = merge_fans(&[vec![a, Fan::default()], vec![b]]);
        assert_eq!(merged[0], Fan { first_ns: 3, last_ns: 9, count: 3 });
        assert_eq!(merged[1].count, 0);
    }
}
