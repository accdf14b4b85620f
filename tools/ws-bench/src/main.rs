//! `ws-bench`: the WebSocket load generator of `scripts/bench.sh ws`. It opens N clients in G
//! groups against a server speaking the contract's WebSocket protocol (ours or the Node
//! reference), measures the connect rate, then runs the asked phases on those connections:
//! idle (RSS per idle client, every client still there), `/send_to` latency, `/group` fan-out
//! latency to the first and last member at a fixed rate, and flat out (deliveries/s, server CPU
//! per delivery). Results are `key value` lines on stdout, progress on stderr.
//!
//! Must never: use an async runtime (blocking sockets and threads, like the server); write to the
//! server's /proc entries or signal it; count a frame it cannot attribute (only frames carrying
//! its own `wsb:` mark are latency samples).
//!
//! # Threads (all bounded, all named)
//!
//! - main: the driver — connects (through the connectors), paces the messages, reads /proc.
//! - `connect-K` (`--connect-threads`, default 8): blocking connect + handshake + welcome, only
//!   during the connect phase; each hands its sockets to a reader.
//! - `reader-R` (`--readers`, default 2): epoll over 1/R of the sockets each (see `reader.rs`).
//!
//! # How latency is measured
//!
//! One monotonic clock (`Instant` at start) for every thread. A message text carries its send
//! time (ns since start, taken just before the write); the reader that receives a frame carrying
//! it subtracts that from the time right after its `recv`. `/send_to` latency is therefore the
//! one-way trip sender → server → recipient (`private`), measured exactly because both ends are
//! in this process; the sender's own `sent` frame gives the round trip back to the sender. For
//! `/group`, each message records its earliest and latest delivery over all members.

mod args;
mod conn;
mod frame;
mod procfs;
mod reader;
mod stats;

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use args::{Args, Mode};
use conn::Conn;
use reader::{Adopt, ReaderStats, Shared};
use stats::{merge_fans, summarize};

/// Time given to the connections to settle after the connect phase (join storms) and to close.
const SETTLE_MAX: Duration = Duration::from_secs(120);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// A phase's drain gives up when no benchmark frame has arrived for this long.
const DRAIN_IDLE: Duration = Duration::from_secs(3);
/// flat gives up when nothing was delivered for this long (a server that lost messages).
const STALL: Duration = Duration::from_secs(10);

fn log(msg: impl AsRef<str>) {
    eprintln!("ws-bench: {}", msg.as_ref());
}

/// Results, printed in order at the end.
#[derive(Default)]
struct Out(Vec<(String, String)>);

impl Out {
    fn put(&mut self, key: impl Into<String>, v: impl ToString) {
        self.0.push((key.into(), v.to_string()));
    }
    fn f(&mut self, key: impl Into<String>, v: f64, decimals: usize) {
        self.put(key, format!("{v:.decimals$}"));
    }
}

fn raise_nofile(want: u64) -> u64 {
    // SAFETY: getrlimit/setrlimit on a struct we own.
    unsafe {
        let mut rl = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) != 0 {
            return 0;
        }
        if rl.rlim_cur >= want {
            return rl.rlim_cur;
        }
        let raised = libc::rlimit { rlim_cur: want, rlim_max: rl.rlim_max.max(want) };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
            return want;
        }
        let capped = libc::rlimit { rlim_cur: rl.rlim_max, rlim_max: rl.rlim_max };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &capped) == 0 {
            return rl.rlim_max;
        }
        rl.rlim_cur
    }
}

/// The server's CPU ticks and this tool's CPU µs at one instant, for window deltas.
#[derive(Clone, Copy)]
struct Cpu {
    at: Instant,
    server_ticks: Option<procfs::Ticks>,
    tool_us: u64,
}

fn cpu_now(pid: Option<u32>) -> Cpu {
    Cpu {
        at: Instant::now(),
        server_ticks: pid.and_then(|p| procfs::cpu_ticks(p).ok()),
        tool_us: procfs::self_cpu_us(),
    }
}

/// What the driver knows about one phase; turned into results once the readers are joined.
struct PhaseRun {
    mode: Mode,
    sent: u64,
    measure_from: u64,
    /// Expected deliveries of each message (indexed by seq).
    expected: Vec<u32>,
    cpu0: Cpu,
    cpu1: Cpu,
    late_max_ns: u64,
    drained: bool,
    stalled: bool,
}

struct Bench {
    args: Args,
    /// One per `--url`; client `i` connects to `addrs[i % len]`.
    addrs: Vec<SocketAddr>,
    shared: Arc<Shared>,
    conns: Vec<Option<Arc<Conn>>>,
    out: Out,
    clk_tck: u64,
}

fn main() {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let args = match args::parse(&argv) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(if e.0.starts_with("usage:") { 0 } else { 2 });
        }
    };
    let mut addrs = Vec::new();
    for hp in &args.host_ports {
        match hp.to_socket_addrs().ok().and_then(|mut a| a.next()) {
            Some(a) => addrs.push(a),
            None => {
                eprintln!("ws-bench: error: cannot resolve {hp}");
                std::process::exit(2);
            }
        }
    }
    let want = args.clients as u64 + 256;
    let nofile = raise_nofile(want);
    if nofile < want {
        log(format!("warning: RLIMIT_NOFILE is {nofile}, below the {want} needed for {} clients", args.clients));
    }
    let mut b = Bench {
        args,
        addrs,
        shared: Arc::new(Shared::new()),
        conns: Vec::new(),
        out: Out::default(),
        clk_tck: procfs::clk_tck(),
    };
    let code = b.run();
    for (k, v) in &b.out.0 {
        println!("{k} {v}");
    }
    std::process::exit(code);
}

impl Bench {
    fn pid(&self) -> Option<u32> {
        self.args.pid
    }

    fn rss(&self, key: &str) -> Option<u64> {
        self.pid().and_then(|p| procfs::status_kib(p, key).ok())
    }

    fn run(&mut self) -> i32 {
        let a = &self.args;
        self.out.put("clients", a.clients);
        self.out.put("groups", a.groups);
        self.out.put("members", a.members);
        self.out.put("readers", a.readers);
        self.out.put("connect_threads", a.connect_threads);
        if let Some(pid) = self.pid() {
            let (waited, calm) = procfs::wait_quiet(pid, Duration::from_secs(30));
            log(format!(
                "server pid {pid}: {} after {:.1} s",
                if calm { "quiet" } else { "still busy" },
                waited.as_secs_f64()
            ));
            self.out.f("server.quiet_wait_s", waited.as_secs_f64(), 1);
        }
        let rss0 = self.rss("VmRSS");
        if let Some(r) = rss0 {
            self.out.put("server.rss_start_kib", r);
        }

        let mut handles = Vec::new();
        let mut txs = Vec::new();
        for r in 0..self.args.readers {
            let (tx, h) = reader::spawn(r, self.shared.clone());
            txs.push(tx);
            handles.push(h);
        }
        let ok = self.connect_all(txs);
        if ok == 0 {
            log("error: no client connected");
            self.shared.stop.store(true, Ordering::Release);
            for h in handles {
                let _ = h.join();
            }
            return 1;
        }
        self.settle("after connecting");

        let mut runs = Vec::new();
        let modes = self.args.modes.clone();
        for (p, mode) in modes.iter().enumerate() {
            self.shared.marked.store(0, Ordering::SeqCst);
            self.shared.measure_from_seq.store(u64::MAX, Ordering::SeqCst);
            self.shared.win_start_ns.store(u64::MAX, Ordering::SeqCst);
            self.shared.win_end_ns.store(u64::MAX, Ordering::SeqCst);
            self.shared.phase.store(p as u32, Ordering::SeqCst);
            log(format!("phase {}: {}", p, mode.name()));
            match mode {
                Mode::Connect => {}
                Mode::Idle => self.idle(rss0, ok),
                Mode::Rtt => runs.push((p, self.rtt(p as u32))),
                Mode::Fanout => runs.push((p, self.fanout(p as u32))),
                Mode::Flat => runs.push((p, self.flat(p as u32))),
            }
            if p + 1 < modes.len() {
                self.settle("between phases");
            }
        }
        if let Some(h) = self.rss("VmHWM") {
            self.out.put("server.hwm_end_kib", h);
        }
        if let Some(r) = self.rss("VmRSS") {
            self.out.put("server.rss_end_kib", r);
        }
        let tool_hwm = procfs::status_kib(std::process::id(), "VmHWM").unwrap_or(0);
        self.out.put("tool.hwm_kib", tool_hwm);

        self.teardown();
        self.shared.stop.store(true, Ordering::Release);
        let readers: Vec<ReaderStats> = handles.into_iter().map(|h| h.join().expect("reader panicked")).collect();
        self.report(&runs, &readers);
        0
    }

    /// Opens every client with `--connect-threads` connectors; returns how many connected.
    fn connect_all(&mut self, txs: Vec<std::sync::mpsc::SyncSender<Adopt>>) -> usize {
        let n = self.args.clients;
        let next = AtomicUsize::new(0);
        let slots: Mutex<Vec<Option<Arc<Conn>>>> = Mutex::new(vec![None; n]);
        let lat: Mutex<Vec<u64>> = Mutex::new(Vec::with_capacity(n));
        let errors: Mutex<(u64, Vec<String>)> = Mutex::new((0, Vec::new()));
        let t0 = Instant::now();
        let args = &self.args;
        let addrs = &self.addrs;
        std::thread::scope(|sc| {
            for k in 0..args.connect_threads {
                let (next, slots, lat, errors, txs) = (&next, &slots, &lat, &errors, &txs);
                std::thread::Builder::new()
                    .name(format!("connect-{k}"))
                    .stack_size(256 * 1024)
                    .spawn_scoped(sc, move || loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= n {
                            break;
                        }
                        let at = i % addrs.len();
                        match conn::connect(addrs[at], &args.host_ports[at], &args.path(i), i, CONNECT_TIMEOUT) {
                            Ok(c) => {
                                let conn = Arc::new(c.conn);
                                slots.lock().unwrap()[i] = Some(conn.clone());
                                let done = {
                                    let mut l = lat.lock().unwrap();
                                    l.push(c.connect_ns);
                                    l.len()
                                };
                                if done % 1000 == 0 {
                                    log(format!("{done} connected ({:.1} s)", t0.elapsed().as_secs_f64()));
                                }
                                if txs[i % txs.len()].send(Adopt { conn, leftover: c.leftover }).is_err() {
                                    break;
                                }
                            }
                            Err(e) => {
                                let mut er = errors.lock().unwrap();
                                er.0 += 1;
                                if er.1.len() < 5 {
                                    er.1.push(format!("client {i}: {e}"));
                                }
                            }
                        }
                    })
                    .expect("spawn a connector");
            }
        });
        let secs = t0.elapsed().as_secs_f64();
        self.conns = slots.into_inner().unwrap();
        let mut lat = lat.into_inner().unwrap();
        let (failed, errs) = errors.into_inner().unwrap();
        let ok = lat.len();
        log(format!("connected {ok}/{n} in {secs:.2} s ({:.0}/s), {failed} failed", ok as f64 / secs));
        for e in &errs {
            log(format!("  connect error: {e}"));
        }
        self.out.put("connect.ok", ok);
        self.out.put("connect.failed", failed);
        self.out.f("connect.seconds", secs, 3);
        self.out.f("connect.rate_per_s", ok as f64 / secs, 1);
        if let Some(s) = summarize(&mut lat) {
            self.out.f("connect.p50_ms", s.p50_ms, 3);
            self.out.f("connect.p99_ms", s.p99_ms, 3);
            self.out.f("connect.max_ms", s.max_ms, 3);
        }
        for (i, e) in errs.iter().enumerate() {
            self.out.put(format!("connect.error{i}"), e.replace(['\n', '\r'], " "));
        }
        ok
    }

    /// Waits until no frame has arrived for 300 ms and the server is quiet (join and leave storms
    /// are over), at most `SETTLE_MAX`.
    fn settle(&mut self, when: &str) {
        let t0 = Instant::now();
        loop {
            std::thread::sleep(Duration::from_millis(100));
            let since = self.shared.now_ns().saturating_sub(self.shared.last_frame_ns.load(Ordering::Acquire));
            if since >= 300_000_000 || t0.elapsed() > SETTLE_MAX {
                break;
            }
        }
        if let Some(pid) = self.pid() {
            procfs::wait_quiet(pid, SETTLE_MAX.saturating_sub(t0.elapsed()));
        }
        let secs = t0.elapsed().as_secs_f64();
        log(format!("settled {when} in {secs:.1} s ({} frames so far)", self.shared.frames.load(Ordering::Acquire)));
        if when == "after connecting" {
            self.out.f("connect.settle_s", secs, 1);
            self.out.put("connect.frames", self.shared.frames.load(Ordering::Acquire));
        }
    }

    fn open_conns(&self) -> impl Iterator<Item = &Arc<Conn>> {
        self.conns.iter().flatten().filter(|c| !c.closed.load(Ordering::Acquire))
    }

    fn idle(&mut self, rss0: Option<u64>, ok: usize) {
        let rss1 = self.rss("VmRSS");
        if let (Some(r0), Some(r1)) = (rss0, rss1) {
            self.out.put("idle.rss_before_kib", r0);
            self.out.put("idle.rss_idle_kib", r1);
            self.out.f("idle.rss_per_client_kib", (r1 as f64 - r0 as f64) / ok as f64, 2);
        }
        let closes0 = self.shared.open.load(Ordering::Acquire);
        log(format!("holding {closes0} clients idle for {} s", self.args.seconds));
        let t0 = Instant::now();
        let mut rss_max = rss1.unwrap_or(0);
        while t0.elapsed().as_secs_f64() < self.args.seconds {
            std::thread::sleep(Duration::from_millis(500));
            rss_max = rss_max.max(self.rss("VmRSS").unwrap_or(0));
        }
        let open = self.shared.open.load(Ordering::Acquire);
        self.out.put("idle.open_before_hold", closes0);
        self.out.put("idle.open_after_hold", open);
        if rss1.is_some() {
            self.out.put("idle.rss_max_during_hold_kib", rss_max);
        }
        // Every client pings; every pong proves that connection still works end to end.
        let pongs0 = self.shared.pongs.load(Ordering::Acquire);
        let t1 = Instant::now();
        let mut pings = 0u64;
        for c in self.open_conns() {
            if c.send(&frame::ping(b"wsb", c.mask())).is_ok() {
                pings += 1;
            }
        }
        while self.shared.pongs.load(Ordering::Acquire) - pongs0 < pings && t1.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(20));
        }
        let pongs = self.shared.pongs.load(Ordering::Acquire) - pongs0;
        log(format!(
            "after {} s idle: {open} open, {pongs}/{pings} pongs in {:.2} s",
            self.args.seconds,
            t1.elapsed().as_secs_f64()
        ));
        self.out.put("idle.pings", pings);
        self.out.put("idle.pongs", pongs);
        self.out.f("idle.pong_seconds", t1.elapsed().as_secs_f64(), 3);
        self.out.put("idle.held", u64::from(open == ok as u64 && pongs == ok as u64));
    }

    fn start_window(&self, seq: u64) -> Cpu {
        self.shared.measure_from_seq.store(seq, Ordering::SeqCst);
        let c = cpu_now(self.pid());
        self.shared.win_start_ns.store(self.shared.now_ns(), Ordering::SeqCst);
        c
    }

    /// Waits for every delivery expected so far (or until nothing arrives for `DRAIN_IDLE`),
    /// then closes the window.
    fn drain(&self, expected_total: u64) -> (Cpu, bool) {
        let mut last = self.shared.marked.load(Ordering::SeqCst);
        let mut last_change = Instant::now();
        loop {
            let m = self.shared.marked.load(Ordering::SeqCst);
            if m >= expected_total {
                break;
            }
            if m != last {
                last = m;
                last_change = Instant::now();
            } else if last_change.elapsed() > DRAIN_IDLE {
                log(format!("drain: {m}/{expected_total} deliveries, giving up"));
                self.shared.win_end_ns.store(self.shared.now_ns(), Ordering::SeqCst);
                return (cpu_now(self.pid()), false);
            }
            reader::wait_gate(&self.shared, Duration::from_millis(50), || {
                self.shared.marked.load(Ordering::SeqCst) >= expected_total
            });
        }
        self.shared.win_end_ns.store(self.shared.now_ns(), Ordering::SeqCst);
        (cpu_now(self.pid()), true)
    }

    /// Sends `total` messages at `rate`/s, the window opening at message `warm`; `send(seq,
    /// send_ns)` writes message `seq` and returns how many marked frames it will bring back.
    fn paced(&self, mode: Mode, mut send: impl FnMut(u64, u64) -> u32) -> PhaseRun {
        let a = &self.args;
        let warm = (a.warmup * a.rate).round() as u64;
        let total = warm + ((a.seconds * a.rate).round() as u64).max(1);
        let t0 = Instant::now();
        let mut expected = Vec::with_capacity(total as usize);
        let mut cpu0 = cpu_now(self.pid());
        let mut late_max = 0u64;
        for seq in 0..total {
            let due = t0 + Duration::from_secs_f64(seq as f64 / a.rate);
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            if seq == warm {
                cpu0 = self.start_window(seq);
            }
            if seq >= warm {
                late_max = late_max.max(Instant::now().saturating_duration_since(due).as_nanos() as u64);
            }
            expected.push(send(seq, self.shared.now_ns()));
        }
        let total_expected: u64 = expected.iter().map(|&e| u64::from(e)).sum();
        let (cpu1, drained) = self.drain(total_expected);
        PhaseRun {
            mode,
            sent: total,
            measure_from: warm,
            expected,
            cpu0,
            cpu1,
            late_max_ns: late_max,
            drained,
            stalled: false,
        }
    }

    fn rtt(&mut self, phase: u32) -> PhaseRun {
        let pairs: Vec<(Arc<Conn>, String)> = (0..self.args.clients / 2)
            .filter_map(|k| {
                let a = self.conns[2 * k].clone()?;
                self.conns[2 * k + 1].as_ref()?;
                Some((a, self.args.client_id(2 * k + 1)))
            })
            .collect();
        log(format!("rtt: {} pairs, {} msg/s in total", pairs.len(), self.args.rate));
        self.out.put("rtt.pairs", pairs.len());
        let pad = self.args.payload;
        let mut failed = 0u64;
        let run = self.paced(Mode::Rtt, |seq, send_ns| {
            let (a, to) = &pairs[seq as usize % pairs.len()];
            let text = format!("/send_to {to} {}", frame::mark_text(frame::Mark { phase, seq, send_ns }, pad));
            if a.send(&frame::text(&text, a.mask())).is_ok() {
                2 // the recipient's private frame and the sender's sent frame
            } else {
                failed += 1;
                0
            }
        });
        self.out.put("rtt.send_failures", failed);
        run
    }

    /// The first connected member and the connected size of each group that has any.
    fn senders(&self) -> Vec<(Arc<Conn>, u32)> {
        (0..self.args.groups)
            .filter_map(|g| {
                let members: Vec<&Arc<Conn>> = (g * self.args.members..g * self.args.members + self.args.group_size(g))
                    .filter_map(|i| self.conns[i].as_ref())
                    .collect();
                Some(((*members.first()?).clone(), members.len() as u32))
            })
            .collect()
    }

    fn fanout(&mut self, phase: u32) -> PhaseRun {
        let senders = self.senders();
        log(format!("fanout: {} groups, {} msg/s in total", senders.len(), self.args.rate));
        let pad = self.args.payload;
        self.paced(Mode::Fanout, |seq, send_ns| {
            let (c, size) = &senders[seq as usize % senders.len()];
            let text = format!("/group {}", frame::mark_text(frame::Mark { phase, seq, send_ns }, pad));
            if c.send(&frame::text(&text, c.mask())).is_ok() {
                *size
            } else {
                0
            }
        })
    }

    fn flat(&mut self, phase: u32) -> PhaseRun {
        let senders = self.senders();
        let a = &self.args;
        let max_size = senders.iter().map(|s| s.1).max().unwrap_or(1) as u64;
        let budget = a.window as u64 * max_size;
        log(format!("flat: {} groups, at most {} messages ({budget} deliveries) in flight", senders.len(), a.window));
        let t0 = Instant::now();
        let mut expected = Vec::new();
        let mut sent_deliveries = 0u64;
        let mut started = false;
        let mut measure_from = 0;
        let mut cpu0 = cpu_now(self.pid());
        let mut stalled = false;
        let mut seq = 0u64;
        'send: loop {
            let el = t0.elapsed().as_secs_f64();
            if !started && el >= a.warmup {
                started = true;
                measure_from = seq;
                cpu0 = self.start_window(seq);
            }
            if started && el >= a.warmup + a.seconds {
                break;
            }
            let (c, size) = &senders[seq as usize % senders.len()];
            let size = u64::from(*size);
            let mut last = self.shared.marked.load(Ordering::SeqCst);
            let mut last_change = Instant::now();
            loop {
                let m = self.shared.marked.load(Ordering::SeqCst);
                if sent_deliveries - m.min(sent_deliveries) + size <= budget {
                    break;
                }
                if m != last {
                    last = m;
                    last_change = Instant::now();
                } else if last_change.elapsed() > STALL {
                    log(format!("flat: no delivery for {} s ({m}/{sent_deliveries}), stopping", STALL.as_secs()));
                    stalled = true;
                    break 'send;
                }
                reader::wait_gate(&self.shared, Duration::from_millis(50), || {
                    let m = self.shared.marked.load(Ordering::SeqCst);
                    sent_deliveries - m.min(sent_deliveries) + size <= budget
                });
            }
            let text = format!(
                "/group {}",
                frame::mark_text(frame::Mark { phase, seq, send_ns: self.shared.now_ns() }, a.payload)
            );
            let e = if c.send(&frame::text(&text, c.mask())).is_ok() { size as u32 } else { 0 };
            expected.push(e);
            sent_deliveries += u64::from(e);
            seq += 1;
        }
        let (cpu1, drained) = self.drain(sent_deliveries);
        PhaseRun { mode: Mode::Flat, sent: seq, measure_from, expected, cpu0, cpu1, late_max_ns: 0, drained, stalled }
    }

    /// Sends a close frame on every open connection (with `--teardown drop`, shuts each down
    /// without one) and waits for the server to end them; then,
    /// with `--pid`, waits for the server to go quiet and reports the CPU it spent from the
    /// first close on (`teardown.server_cpu_s`: the `leave` notices included, which it may go on
    /// sending after the last connection has ended).
    fn teardown(&mut self) {
        self.shared.closing.store(true, Ordering::SeqCst);
        let cpu0 = self.args.pid.and_then(|p| procfs::cpu_ticks(p).ok());
        let t0 = Instant::now();
        for c in self.open_conns() {
            if self.args.drop_at_end {
                c.shutdown();
            } else {
                let _ = c.send_close();
            }
        }
        while self.shared.open.load(Ordering::Acquire) > 0 && t0.elapsed() < Duration::from_secs(15) {
            std::thread::sleep(Duration::from_millis(50));
        }
        let left = self.shared.open.load(Ordering::Acquire);
        log(format!("closed in {:.1} s ({left} not closed by the server)", t0.elapsed().as_secs_f64()));
        self.out.f("teardown.seconds", t0.elapsed().as_secs_f64(), 1);
        self.out.put("teardown.unclosed", left);
        if let (Some(pid), Some(cpu0)) = (self.args.pid, cpu0) {
            procfs::wait_quiet(pid, Duration::from_secs(60));
            if let Ok(cpu1) = procfs::cpu_ticks(pid) {
                let ticks = cpu1.total().saturating_sub(cpu0.total());
                self.out.f("teardown.server_cpu_s", ticks as f64 / procfs::clk_tck() as f64, 2);
            }
        }
    }

    fn report(&mut self, runs: &[(usize, PhaseRun)], readers: &[ReaderStats]) {
        let mut kinds = [0u64; frame::Kind::ALL.len()];
        for r in readers {
            for (k, n) in kinds.iter_mut().zip(r.kinds) {
                *k += n;
            }
        }
        // Welcomes are read by the connectors (connect.ok counts them), not by the readers.
        for k in frame::Kind::ALL.into_iter().filter(|&k| k != frame::Kind::Welcome) {
            self.out.put(format!("frames.{}", k.name()), kinds[k as usize]);
        }
        self.out.put("frames.error_frames", readers.iter().map(|r| r.error_frames).sum::<u64>());
        self.out.put("server_closes", readers.iter().map(|r| r.server_closes).sum::<u64>());
        self.out.put("dropped", readers.iter().map(|r| r.dropped).sum::<u64>());
        self.out.put("pings_answered", readers.iter().map(|r| r.pings).sum::<u64>());
        let notes: Vec<String> = readers
            .iter()
            .flat_map(|r| {
                r.errors
                    .iter()
                    .cloned()
                    .chain(r.close_codes.iter().map(|c| format!("server close {c:?}")))
                    .chain(r.protocol_errors.iter().cloned())
            })
            .take(8)
            .collect();
        for (i, n) in notes.iter().enumerate() {
            log(format!("note: {n}"));
            self.out.put(format!("note{i}"), n.replace(['\n', '\r'], " "));
        }

        for (p, run) in runs {
            let m = run.mode.name();
            let phases: Vec<&reader::PhaseStats> = readers.iter().filter_map(|r| r.phases.get(*p)).collect();
            let secs = run.cpu1.at.duration_since(run.cpu0.at).as_secs_f64();
            let deliveries: u64 = phases.iter().map(|s| s.window_frames()).sum();
            self.out.put(format!("{m}.sent"), run.sent);
            self.out.put(format!("{m}.measured"), run.sent - run.measure_from.min(run.sent));
            self.out.f(format!("{m}.seconds"), secs, 3);
            self.out.put(format!("{m}.deliveries"), deliveries);
            self.out.f(format!("{m}.deliveries_per_s"), deliveries as f64 / secs, 1);
            self.out.put(format!("{m}.drained"), u8::from(run.drained));
            if run.mode == Mode::Flat {
                self.out.put(format!("{m}.stalled"), u8::from(run.stalled));
                self.out.put(format!("{m}.window"), self.args.window);
            } else {
                self.out.f(format!("{m}.rate"), self.args.rate, 1);
                self.out.f(format!("{m}.send_late_max_ms"), run.late_max_ns as f64 / 1e6, 3);
            }
            if let (Some(t0), Some(t1)) = (run.cpu0.server_ticks, run.cpu1.server_ticks) {
                let us = |ticks: u64| ticks as f64 * 1e6 / self.clk_tck as f64;
                let all = us(t1.total() - t0.total());
                self.out.f(format!("{m}.server_cpu_s"), all / 1e6, 2);
                self.out.f(format!("{m}.server_cpu_pct"), all / 1e4 / secs, 1);
                if deliveries > 0 {
                    self.out.f(format!("{m}.server_cpu_us_per_delivery"), all / deliveries as f64, 3);
                    // The kernel's part (stime): on loopback the same `send` path for any server.
                    let sys = us(t1.system - t0.system);
                    self.out.f(format!("{m}.server_sys_us_per_delivery"), sys / deliveries as f64, 3);
                }
            }
            let tool_us = (run.cpu1.tool_us - run.cpu0.tool_us) as f64;
            self.out.f(format!("{m}.tool_cpu_pct"), tool_us / 1e4 / secs, 1);
            if deliveries > 0 {
                self.out.f(format!("{m}.tool_cpu_us_per_delivery"), tool_us / deliveries as f64, 3);
            }
            match run.mode {
                Mode::Rtt => {
                    let measured = run.sent - run.measure_from;
                    let mut private: Vec<u64> = phases.iter().flat_map(|s| s.private.iter().copied()).collect();
                    let mut sent: Vec<u64> = phases.iter().flat_map(|s| s.sent.iter().copied()).collect();
                    self.out.put("rtt.private_received", private.len());
                    self.out.put("rtt.lost", measured.saturating_sub(private.len() as u64));
                    if let Some(s) = summarize(&mut private) {
                        self.out.f("rtt.private_p50_ms", s.p50_ms, 3);
                        self.out.f("rtt.private_p99_ms", s.p99_ms, 3);
                        self.out.f("rtt.private_max_ms", s.max_ms, 3);
                    }
                    if let Some(s) = summarize(&mut sent) {
                        self.out.f("rtt.sent_p50_ms", s.p50_ms, 3);
                        self.out.f("rtt.sent_p99_ms", s.p99_ms, 3);
                    }
                }
                Mode::Fanout | Mode::Flat => {
                    let tables: Vec<Vec<stats::Fan>> = phases.iter().map(|s| s.fan.clone()).collect();
                    let fans = merge_fans(&tables);
                    let (mut first, mut last) = (Vec::new(), Vec::new());
                    let (mut incomplete, mut missing) = (0u64, 0u64);
                    for seq in run.measure_from..run.sent {
                        let want = u64::from(run.expected[seq as usize]);
                        let f = fans.get(seq as usize).copied().unwrap_or_default();
                        if u64::from(f.count) >= want && want > 0 {
                            first.push(f.first_ns);
                            last.push(f.last_ns);
                        } else {
                            incomplete += 1;
                            missing += want.saturating_sub(u64::from(f.count));
                        }
                    }
                    self.out.put(format!("{m}.complete"), first.len());
                    self.out.put(format!("{m}.incomplete"), incomplete);
                    self.out.put(format!("{m}.missing_deliveries"), missing);
                    if let Some(s) = summarize(&mut first) {
                        self.out.f(format!("{m}.first_p50_ms"), s.p50_ms, 3);
                        self.out.f(format!("{m}.first_p99_ms"), s.p99_ms, 3);
                    }
                    if let Some(s) = summarize(&mut last) {
                        self.out.f(format!("{m}.last_p50_ms"), s.p50_ms, 3);
                        self.out.f(format!("{m}.last_p99_ms"), s.p99_ms, 3);
                        self.out.f(format!("{m}.last_max_ms"), s.max_ms, 3);
                    }
                }
                _ => {}
            }
        }
    }
}
