//! `GET /metrics`: the server's figures in the Prometheus text format (version 0.0.4), written by
//! hand — it is a few `# HELP`/`# TYPE` lines and samples.
//!
//! Served only on its own listener, `METRICS_ADDR` (unset: nowhere), never on the API's port:
//! `router` builds that listener's one-route table. What it shows: requests and handler latency
//! by route *pattern* (`/users/{user_id}`, never a path, so no id, email or file name can appear
//! in a label) and status class; open connections; WebSocket sessions, groups, deliveries and
//! slow-consumer closes; database up/down; pool connections in use and idle; the upload spool's
//! depth (only when a spool is attached); failed and rate-limited logins; uptime.
//!
//! The request path pays relaxed atomic adds only: `instrument` wraps each route's handler (via
//! `Router::wrap_handlers`) with a timer that updates that route's own counters, allocated once
//! when the router is built. No lock, no map lookup, no allocation per request. A scrape reads
//! the atomics and asks the hub, the gate and the pool for their sizes (each takes its lock for a
//! moment).
//!
//! What it does not count: requests that match no route (404, 405, redirects) and bodies refused
//! on their declared length before the handler runs (413) — those are answered by the HTTP layer
//! before the app sees them. The latency is the handler's time (reading the body included, the
//! writing of the response not).
//!
//! Must never: label a sample with anything a client chose (paths, ids, emails, names); take a
//! lock or allocate on the request path.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use super::App;
use crate::http::router::Handler;
use crate::http::{Response, Router};

/// Upper bounds of the latency histogram's buckets, in seconds (`+Inf` follows).
pub const BUCKETS: [f64; 13] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// One route's counters.
pub struct RouteStats {
    pub method: &'static str,
    pub pattern: &'static str,
    /// Responses by status class: 1xx, 2xx, 3xx, 4xx, 5xx.
    by_class: [AtomicU64; 5],
    /// Latencies per bucket, NOT cumulative (the last one is `+Inf` only); made cumulative at
    /// scrape time, so `_count` always equals the `+Inf` bucket.
    buckets: [AtomicU64; BUCKETS.len() + 1],
    /// Sum of latencies, in microseconds.
    sum_us: AtomicU64,
}

impl RouteStats {
    fn new(method: &'static str, pattern: &'static str) -> RouteStats {
        RouteStats {
            method,
            pattern,
            by_class: Default::default(),
            buckets: Default::default(),
            sum_us: AtomicU64::new(0),
        }
    }

    /// Count one response.
    pub fn record(&self, status: u16, micros: u64) {
        let class = (status / 100).clamp(1, 5) as usize - 1;
        self.by_class[class].fetch_add(1, Ordering::Relaxed);
        let secs = micros as f64 / 1e6;
        let bucket = BUCKETS.iter().position(|&b| secs <= b).unwrap_or(BUCKETS.len());
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(micros, Ordering::Relaxed);
    }
}

/// Every figure `/metrics` shows that is not asked of another part at scrape time.
#[derive(Default)]
pub struct Metrics {
    routes: OnceLock<Vec<Arc<RouteStats>>>,
    /// `POST /auth/login` answered 401 (wrong password or unknown email).
    login_failures: AtomicU64,
    /// `POST /auth/login` answered 429 (the failure limit).
    login_limited: AtomicU64,
    /// The API server's figures, set by `main` once it is bound.
    server: OnceLock<crate::http::Stats>,
}

/// The route whose responses are login outcomes.
const LOGIN_ROUTE: (&str, &str) = ("POST", "/auth/login");

impl Metrics {
    /// Wrap every route of `router` with its counters. Call once, after every route is added.
    pub fn instrument(self: &Arc<Self>, router: &mut Router) {
        let mut all = Vec::new();
        router.wrap_handlers(|method, pattern, handler: Handler| {
            let stats = Arc::new(RouteStats::new(method, pattern));
            all.push(stats.clone());
            let login = (method, pattern) == LOGIN_ROUTE;
            let metrics = self.clone();
            Box::new(move |req| {
                let started = Instant::now();
                // Counted on drop, so a handler that panics counts as a 500.
                let mut guard = Record { stats: &stats, started, status: 500 };
                let result = handler(req);
                guard.status = match &result {
                    Ok(resp) => resp.status,
                    Err(e) => e.status,
                };
                if login {
                    match guard.status {
                        401 => metrics.login_failures.fetch_add(1, Ordering::Relaxed),
                        429 => metrics.login_limited.fetch_add(1, Ordering::Relaxed),
                        _ => 0,
                    };
                }
                result
            })
        });
        let _ = self.routes.set(all);
    }

    /// Tell the metrics which server's connections to count.
    pub fn attach_server(&self, stats: crate::http::Stats) {
        let _ = self.server.set(stats);
    }

    /// The routes' counters (empty before `instrument`).
    pub fn routes(&self) -> &[Arc<RouteStats>] {
        self.routes.get().map(Vec::as_slice).unwrap_or(&[])
    }
}

struct Record<'a> {
    stats: &'a RouteStats,
    started: Instant,
    status: u16,
}

impl Drop for Record<'_> {
    fn drop(&mut self) {
        self.stats.record(self.status, self.started.elapsed().as_micros() as u64);
    }
}

/// A label value, escaped as the text format wants (`\\`, `\"`, `\n`).
pub fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// Prometheus' float syntax (`+Inf`, no exponent surprises for small values).
fn float(v: f64) -> String {
    if v.is_infinite() {
        "+Inf".into()
    } else {
        format!("{v}")
    }
}

/// The other parts' figures, read at scrape time (so the text can be rendered without an app).
#[derive(Debug, Default, Clone)]
pub struct Snapshot {
    pub open_connections: Option<usize>,
    pub ws_sessions: usize,
    pub ws_groups: usize,
    pub ws_delivered: u64,
    pub ws_slow_closes: u64,
    pub db_up: bool,
    pub pool_in_use: u32,
    pub pool_idle: u32,
    /// `None` when no spool is attached: then no sample at all rather than a made-up zero.
    pub spool_depth: Option<usize>,
    pub uptime_seconds: f64,
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// The exposition text.
pub fn render(m: &Metrics, s: &Snapshot) -> String {
    let mut out = String::with_capacity(8192);
    let routes: Vec<&Arc<RouteStats>> =
        m.routes().iter().filter(|r| r.buckets.iter().any(|b| b.load(Ordering::Relaxed) > 0)).collect();

    family(
        &mut out,
        "adcluster_http_requests_total",
        "counter",
        "HTTP requests answered by a route, by route pattern and status class.",
    );
    for r in &routes {
        for (i, c) in r.by_class.iter().enumerate() {
            let n = c.load(Ordering::Relaxed);
            if n > 0 {
                let _ = writeln!(
                    out,
                    "adcluster_http_requests_total{{method=\"{}\",route=\"{}\",status=\"{}xx\"}} {n}",
                    r.method,
                    escape_label(r.pattern),
                    i + 1
                );
            }
        }
    }
    family(
        &mut out,
        "adcluster_http_request_duration_seconds",
        "histogram",
        "Time in the route's handler, by route pattern.",
    );
    for r in &routes {
        let labels = format!("method=\"{}\",route=\"{}\"", r.method, escape_label(r.pattern));
        let mut cumulative = 0;
        for (i, b) in r.buckets.iter().enumerate() {
            cumulative += b.load(Ordering::Relaxed);
            let le = BUCKETS.get(i).copied().unwrap_or(f64::INFINITY);
            let _ = writeln!(
                out,
                "adcluster_http_request_duration_seconds_bucket{{{labels},le=\"{}\"}} {cumulative}",
                float(le)
            );
        }
        let sum = r.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "adcluster_http_request_duration_seconds_sum{{{labels}}} {}", float(sum));
        let _ = writeln!(out, "adcluster_http_request_duration_seconds_count{{{labels}}} {cumulative}");
    }
    if let Some(n) = s.open_connections {
        family(
            &mut out,
            "adcluster_http_open_connections",
            "gauge",
            "Open HTTP connections (upgraded WebSockets not included).",
        );
        let _ = writeln!(out, "adcluster_http_open_connections {n}");
    }
    family(&mut out, "adcluster_ws_sessions", "gauge", "Open WebSocket sessions.");
    let _ = writeln!(out, "adcluster_ws_sessions {}", s.ws_sessions);
    family(&mut out, "adcluster_ws_groups", "gauge", "WebSocket groups with at least one member.");
    let _ = writeln!(out, "adcluster_ws_groups {}", s.ws_groups);
    family(
        &mut out,
        "adcluster_ws_deliveries_total",
        "counter",
        "WebSocket frames queued to clients, one per recipient.",
    );
    let _ = writeln!(out, "adcluster_ws_deliveries_total {}", s.ws_delivered);
    family(
        &mut out,
        "adcluster_ws_batched_sends_total",
        "counter",
        "WebSocket frame writes done in a fan-out's io_uring batch (0: WS_IO_URING=off or io_uring not available).",
    );
    let _ = writeln!(out, "adcluster_ws_batched_sends_total {}", crate::util::uring::sends());
    family(
        &mut out,
        "adcluster_ws_slow_consumer_closes_total",
        "counter",
        "WebSocket clients closed with 1008 because they did not read.",
    );
    let _ = writeln!(out, "adcluster_ws_slow_consumer_closes_total {}", s.ws_slow_closes);
    family(
        &mut out,
        "adcluster_db_up",
        "gauge",
        "1 when PostgreSQL was reachable at the monitor's last check, else 0 (degraded mode).",
    );
    let _ = writeln!(out, "adcluster_db_up {}", u8::from(s.db_up));
    family(&mut out, "adcluster_db_pool_connections", "gauge", "Pooled PostgreSQL connections, by state.");
    let _ = writeln!(out, "adcluster_db_pool_connections{{state=\"in_use\"}} {}", s.pool_in_use);
    let _ = writeln!(out, "adcluster_db_pool_connections{{state=\"idle\"}} {}", s.pool_idle);
    if let Some(n) = s.spool_depth {
        family(
            &mut out,
            "adcluster_spool_depth",
            "gauge",
            "Upload records in the spool, waiting to be written to the database.",
        );
        let _ = writeln!(out, "adcluster_spool_depth {n}");
    }
    family(
        &mut out,
        "adcluster_login_failures_total",
        "counter",
        "Logins refused with 401 (unknown email or wrong password).",
    );
    let _ = writeln!(out, "adcluster_login_failures_total {}", m.login_failures.load(Ordering::Relaxed));
    family(&mut out, "adcluster_login_rate_limited_total", "counter", "Logins refused with 429 (too many failures).");
    let _ = writeln!(out, "adcluster_login_rate_limited_total {}", m.login_limited.load(Ordering::Relaxed));
    family(&mut out, "adcluster_uptime_seconds", "gauge", "Seconds since the server started.");
    let _ = writeln!(out, "adcluster_uptime_seconds {}", float(s.uptime_seconds));
    family(&mut out, "adcluster_build_info", "gauge", "Always 1; the version is the label.");
    let _ = writeln!(out, "adcluster_build_info{{version=\"{}\"}} 1", escape_label(super::VERSION));
    out
}

/// The figures of a running app.
pub fn snapshot(app: &App) -> Snapshot {
    let (pool_in_use, pool_idle) = app.db.pool_state();
    Snapshot {
        open_connections: app.metrics.server.get().map(|s| s.open_connections()),
        ws_sessions: app.ws.sessions(),
        ws_groups: app.ws.hub.groups().len(),
        ws_delivered: app.ws.hub.stats.delivered.load(Ordering::Relaxed),
        ws_slow_closes: app.ws.hub.stats.slow_consumer_closes.load(Ordering::Relaxed),
        db_up: app.db.is_up(),
        pool_in_use,
        pool_idle,
        spool_depth: app.db.spool().map(|s| s.depth()),
        uptime_seconds: app.started.elapsed().as_secs_f64(),
    }
}

/// The metrics listener's route table: `GET /metrics` and nothing else.
pub fn router(app: Arc<App>) -> Router {
    let mut r = Router::new(1024);
    r.add("GET", "/metrics", move |_| {
        let text = render(&app.metrics, &snapshot(&app));
        Ok(Response::bytes(200, "text/plain; version=0.0.4; charset=utf-8", text.into_bytes()))
    });
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_counts_and_classes() {
        let r = RouteStats::new("GET", "/users/{user_id}");
        r.record(200, 500); // 0.5 ms
        r.record(404, 3_000); // 3 ms
        r.record(500, 20_000_000); // 20 s: +Inf
        r.record(101, 0);
        assert_eq!(r.by_class.iter().map(|c| c.load(Ordering::Relaxed)).collect::<Vec<_>>(), vec![1, 1, 0, 1, 1]);
        assert_eq!(r.buckets[0].load(Ordering::Relaxed), 2);
        assert_eq!(r.buckets[2].load(Ordering::Relaxed), 1);
        assert_eq!(r.buckets[BUCKETS.len()].load(Ordering::Relaxed), 1);
    }

    #[test]
    fn the_text_is_well_formed() {
        let m = Arc::new(Metrics::default());
        let mut router = Router::new(1024);
        router.add("GET", "/users/{user_id}", |_| Ok(Response::new(200)));
        router.add("GET", "/quiet", |_| Ok(Response::new(200)));
        m.instrument(&mut router);
        m.routes()[0].record(200, 1500);
        m.routes()[0].record(404, 1500);
        let text = render(&m, &Snapshot { spool_depth: None, ..Snapshot::default() });
        assert!(
            text.contains(
                "adcluster_http_requests_total{method=\"GET\",route=\"/users/{user_id}\",status=\"2xx\"} 1\n"
            ),
            "{text}"
        );
        assert!(text.contains("adcluster_http_request_duration_seconds_bucket{method=\"GET\",route=\"/users/{user_id}\",le=\"0.001\"} 0\n"));
        assert!(text.contains("adcluster_http_request_duration_seconds_bucket{method=\"GET\",route=\"/users/{user_id}\",le=\"0.0025\"} 2\n"));
        assert!(text.contains("le=\"+Inf\"} 2\n"));
        assert!(text
            .contains("adcluster_http_request_duration_seconds_count{method=\"GET\",route=\"/users/{user_id}\"} 2\n"));
        assert!(!text.contains("/quiet"), "routes never hit have no samples");
        assert!(!text.contains("adcluster_spool_depth"), "no spool, no made-up depth");
        assert!(!text.contains("adcluster_http_open_connections"), "no server attached");
        // Every sample line belongs to a family declared by # TYPE above it.
        let mut declared = Vec::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                declared.push(rest.split(' ').next().unwrap().to_string());
            } else if !line.starts_with('#') {
                let name = line.split(['{', ' ']).next().unwrap();
                let base = ["_bucket", "_sum", "_count"].iter().fold(name, |n, s| n.strip_suffix(s).unwrap_or(n));
                assert!(declared.iter().any(|d| d == name || d == base), "{line}: no # TYPE");
            }
        }
        let with_spool = render(&m, &Snapshot { spool_depth: Some(3), ..Snapshot::default() });
        assert!(with_spool.contains("adcluster_spool_depth 3\n"));
        assert_eq!(escape_label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
