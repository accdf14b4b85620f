//! Command-line arguments of `ws-bench`: plain parsing over a list of strings, so it is unit
//! tested without a process. Must never touch the network, the clock or the environment.

use std::fmt;

/// What a run does after the clients are connected (the connect itself is always measured).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Connect and report the connect figures, nothing more.
    Connect,
    /// Hold the clients idle for `--seconds`: RSS per idle client, then a ping to every client
    /// to prove each is still connected.
    Idle,
    /// `/send_to` from client 2k to client 2k+1 at `--rate` messages/s in total.
    Rtt,
    /// `/group` from the first member of each group at `--rate` messages/s in total.
    Fanout,
    /// `/group` flat out: a new message as soon as fewer than `--window` are in flight.
    Flat,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Connect => "connect",
            Mode::Idle => "idle",
            Mode::Rtt => "rtt",
            Mode::Fanout => "fanout",
            Mode::Flat => "flat",
        }
    }

    fn parse(s: &str) -> Result<Mode, ArgError> {
        Ok(match s {
            "connect" => Mode::Connect,
            "idle" => Mode::Idle,
            "rtt" => Mode::Rtt,
            "fanout" => Mode::Fanout,
            "flat" => Mode::Flat,
            other => {
                return Err(ArgError(format!("--mode: unknown mode {other:?} (connect, idle, rtt, fanout, flat)")))
            }
        })
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Args {
    /// `HOST:PORT` of each `ws://HOST:PORT` of `--url` (a comma-separated list: several
    /// instances of one cluster); client `i` connects to `host_ports[i % len]`, at
    /// `/ws/<id>/<group>`.
    pub host_ports: Vec<String>,
    pub clients: usize,
    /// Number of groups; 0: no group (`/ws/<id>`).
    pub groups: usize,
    /// Members of each group (client i is in group i / members); derived from `groups` when not given.
    pub members: usize,
    /// The server's pid, for CPU and memory from /proc; none: those figures are not reported.
    pub pid: Option<u32>,
    /// Phases run in order on the same connections (`--mode fanout,flat`).
    pub modes: Vec<Mode>,
    /// Messages per second in total (rtt, fanout).
    pub rate: f64,
    /// Length of each measured phase.
    pub seconds: f64,
    /// Messages sent before the measured part of a phase, not counted.
    pub warmup: f64,
    /// flat: most `/group` messages in flight (sent, not yet delivered to every member).
    pub window: usize,
    /// Reader threads, each owning an epoll set of sockets.
    pub readers: usize,
    /// Threads connecting in parallel during the connect phase.
    pub connect_threads: usize,
    /// Extra bytes of padding in each message text.
    pub payload: usize,
    /// Prefix of client ids (`b` gives `b-0`, `b-1`, ...).
    pub id_prefix: String,
    /// How the clients leave at the end: each with a close frame, or all dropping the
    /// connection without one (`--teardown drop`: a mass disconnect, as when a network goes).
    pub drop_at_end: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArgError(pub String);

impl fmt::Display for ArgError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

pub const USAGE: &str = "\
usage: ws-bench --url ws://HOST:PORT --mode MODE[,MODE...] [options]

  --url URL[,URL...]    server base URL; clients connect to URL/ws/<id>/<group>; with
                        several (instances of one cluster), client i connects to the
                        (i mod count)-th, so clients 2k and 2k+1 are never on the same one
  --mode LIST           phases run in order on the same connections, of:
                          connect  connect and report (always measured first anyway)
                          idle     hold --seconds; RSS per idle client; ping every client
                          rtt      /send_to from client 2k to 2k+1 at --rate msg/s in total
                          fanout   /group from each group's first member at --rate msg/s in total
                          flat     /group flat out, at most --window messages in flight
  --clients N           connections to open (default 100)
  --groups G            groups; client i joins group i / ceil(N/G) (default 1; 0: no group)
  --members M           members per group instead of --groups (G = ceil(N/M))
  --pid PID             the server's pid: CPU per delivery and RSS from /proc/PID
  --rate R              messages per second in total for rtt and fanout (default 10)
  --seconds S           measured length of each phase (default 10)
  --warmup S            unmeasured messages before each phase (default 1)
  --window W            flat: most /group messages in flight (default 8)
  --readers R           reader threads (epoll), each owning 1/R of the sockets (default 2)
  --connect-threads K   parallel connects (default 8)
  --payload BYTES       padding added to each message text (default 0)
  --id-prefix P         client ids P-0, P-1, ... (default b)
  --teardown HOW        how the clients leave at the end: close (a close frame each, then
                        wait for the server to end each connection; default) or drop (every
                        connection shut at once without a close frame)

Results go to standard output as `key value` lines; progress to standard error.";

fn num<T: std::str::FromStr>(flag: &str, v: &str) -> Result<T, ArgError> {
    v.parse::<T>().map_err(|_| ArgError(format!("{flag}: not a valid number: {v:?}")))
}

/// Parses the arguments after the program name.
pub fn parse(argv: &[String]) -> Result<Args, ArgError> {
    let mut url = None;
    let mut clients = 100usize;
    let mut groups: Option<usize> = None;
    let mut members: Option<usize> = None;
    let mut pid = None;
    let mut modes = Vec::new();
    let mut rate = 10.0f64;
    let mut seconds = 10.0f64;
    let mut warmup = 1.0f64;
    let mut window = 8usize;
    let mut readers = 2usize;
    let mut connect_threads = 8usize;
    let mut payload = 0usize;
    let mut id_prefix = "b".to_string();
    let mut drop_at_end = false;

    let mut it = argv.iter();
    while let Some(flag) = it.next() {
        let (flag, inline) = match flag.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v.to_string())),
            _ => (flag.as_str(), None),
        };
        if flag == "-h" || flag == "--help" {
            return Err(ArgError(USAGE.to_string()));
        }
        let value = match inline {
            Some(v) => v,
            None => it.next().cloned().ok_or_else(|| ArgError(format!("{flag}: missing value")))?,
        };
        let v = value.as_str();
        match flag {
            "--url" => url = Some(v.to_string()),
            "--clients" => clients = num(flag, v)?,
            "--groups" => groups = Some(num(flag, v)?),
            "--members" => members = Some(num(flag, v)?),
            "--pid" => pid = Some(num(flag, v)?),
            "--mode" => {
                for m in v.split(',').filter(|m| !m.is_empty()) {
                    modes.push(Mode::parse(m)?);
                }
            }
            "--rate" => rate = num(flag, v)?,
            "--seconds" => seconds = num(flag, v)?,
            "--warmup" => warmup = num(flag, v)?,
            "--window" => window = num(flag, v)?,
            "--readers" => readers = num(flag, v)?,
            "--connect-threads" => connect_threads = num(flag, v)?,
            "--payload" => payload = num(flag, v)?,
            "--id-prefix" => id_prefix = v.to_string(),
            "--teardown" => {
                drop_at_end = match v {
                    "close" => false,
                    "drop" => true,
                    other => return Err(ArgError(format!("--teardown: {other:?} is neither close nor drop"))),
                }
            }
            other => return Err(ArgError(format!("unknown argument {other:?} (see --help)"))),
        }
    }

    let urls = url.ok_or_else(|| ArgError("--url is required (ws://HOST:PORT)".into()))?;
    let mut host_ports = Vec::new();
    for url in urls.split(',') {
        let host_port = url
            .strip_prefix("ws://")
            .ok_or_else(|| ArgError(format!("--url: only ws:// URLs are supported, not {url:?}")))?
            .trim_end_matches('/')
            .to_string();
        if host_port.is_empty() || host_port.contains('/') {
            return Err(ArgError(format!("--url: expected ws://HOST:PORT with no path, not {url:?}")));
        }
        host_ports.push(host_port);
    }
    if modes.is_empty() {
        return Err(ArgError("--mode is required (connect, idle, rtt, fanout, flat)".into()));
    }
    if clients == 0 {
        return Err(ArgError("--clients must be at least 1".into()));
    }
    let (groups, members) = match (groups, members) {
        (_, Some(0)) => return Err(ArgError("--members must be at least 1".into())),
        (None, Some(m)) => (clients.div_ceil(m), m),
        (Some(g), Some(m)) if g != clients.div_ceil(m) => {
            return Err(ArgError(format!("--groups {g} and --members {m} disagree for {clients} clients")))
        }
        (Some(g), Some(m)) => (g, m),
        (g, None) => {
            let g = g.unwrap_or(1);
            if g > clients {
                return Err(ArgError(format!("--groups {g} is more than --clients {clients}")));
            }
            (g, if g == 0 { 0 } else { clients.div_ceil(g) })
        }
    };
    let messaging = modes.iter().any(|m| matches!(m, Mode::Rtt | Mode::Fanout | Mode::Flat));
    if modes.contains(&Mode::Rtt) && clients < 2 {
        return Err(ArgError("rtt needs at least 2 clients (pairs)".into()));
    }
    if modes.iter().any(|m| matches!(m, Mode::Fanout | Mode::Flat)) && groups == 0 {
        return Err(ArgError("fanout and flat need groups (--groups >= 1)".into()));
    }
    if messaging && !(rate > 0.0 && rate.is_finite()) && modes.iter().any(|m| matches!(m, Mode::Rtt | Mode::Fanout)) {
        return Err(ArgError("--rate must be a positive number of messages per second".into()));
    }
    if !(seconds > 0.0 && seconds.is_finite() && warmup >= 0.0 && warmup.is_finite()) {
        return Err(ArgError("--seconds must be positive and --warmup not negative".into()));
    }
    if window == 0 || readers == 0 || connect_threads == 0 {
        return Err(ArgError("--window, --readers and --connect-threads must be at least 1".into()));
    }
    let id_ok = |s: &str| s.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
    if id_prefix.is_empty() || !id_ok(&id_prefix) || id_prefix.len() + 1 + clients.to_string().len() > 64 {
        return Err(ArgError(format!("--id-prefix {id_prefix:?}: use A-Z a-z 0-9 _ . - (ids are at most 64 chars)")));
    }
    Ok(Args {
        host_ports,
        clients,
        groups,
        members,
        pid,
        modes,
        rate,
        seconds,
        warmup,
        window,
        readers,
        connect_threads,
        payload,
        id_prefix,
        drop_at_end,
    })
}

impl Args {
    /// The group of client `i`, if the run uses groups.
    pub fn group_of(&self, i: usize) -> Option<usize> {
        (self.groups > 0).then(|| i / self.members)
    }

    /// Size of group `g` (the last group may be smaller).
    pub fn group_size(&self, g: usize) -> usize {
        let start = g * self.members;
        self.clients.saturating_sub(start).min(self.members)
    }

    pub fn client_id(&self, i: usize) -> String {
        format!("{}-{i}", self.id_prefix)
    }

    pub fn group_name(g: usize) -> String {
        format!("bg-{g}")
    }

    /// The request path of client `i`.
    pub fn path(&self, i: usize) -> String {
        match self.group_of(i) {
            Some(g) => format!("/ws/{}/{}", self.client_id(i), Self::group_name(g)),
            None => format!("/ws/{}", self.client_id(i)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Result<Args, ArgError> {
        parse(&s.split_whitespace().map(String::from).collect::<Vec<_>>())
    }

    #[test]
    fn full_line() {
        let a = p("--url ws://127.0.0.1:9000/ --clients 1000 --groups 1 --pid 42 --mode fanout,flat --rate 10 \
                   --seconds 5 --window 4 --readers 3")
        .unwrap();
        assert_eq!(a.host_ports, ["127.0.0.1:9000"]);
        let several = p("--url ws://h:1,ws://h:2/,ws://h:3 --clients 6 --mode rtt").unwrap();
        assert_eq!(several.host_ports, ["h:1", "h:2", "h:3"]);
        assert!(p("--url ws://h:1,http://h:2 --clients 6 --mode rtt").is_err());
        assert!(p("--url ws://h:1, --clients 6 --mode rtt").is_err());
        assert_eq!((a.clients, a.groups, a.members), (1000, 1, 1000));
        assert_eq!(a.pid, Some(42));
        assert_eq!(a.modes, vec![Mode::Fanout, Mode::Flat]);
        assert_eq!((a.rate, a.seconds, a.window, a.readers), (10.0, 5.0, 4, 3));
        assert_eq!(a.path(999), "/ws/b-999/bg-0");
        assert!(!a.drop_at_end, "clients close with a close frame unless told");
        assert!(p("--url ws://h:1 --mode idle --teardown drop").unwrap().drop_at_end);
        assert!(!p("--url ws://h:1 --mode idle --teardown close").unwrap().drop_at_end);
        assert!(p("--url ws://h:1 --mode idle --teardown rst").is_err());
    }

    #[test]
    fn members_and_groups() {
        let a = p("--url ws://h:1 --clients 10 --members 4 --mode idle").unwrap();
        assert_eq!((a.groups, a.members), (3, 4));
        assert_eq!((a.group_size(0), a.group_size(2)), (4, 2));
        assert_eq!(a.group_of(9), Some(2));
        let a = p("--url=ws://h:1 --clients=10 --groups=5 --mode=idle").unwrap();
        assert_eq!((a.groups, a.members), (5, 2));
        let a = p("--url ws://h:1 --clients 3 --groups 0 --mode rtt").unwrap();
        assert_eq!(a.group_of(1), None);
        assert_eq!(a.path(1), "/ws/b-1");
        assert!(p("--url ws://h:1 --clients 10 --groups 2 --members 4 --mode idle").is_err());
        assert!(p("--url ws://h:1 --clients 10 --groups 0 --mode flat").is_err());
    }

    #[test]
    fn errors() {
        assert!(p("--clients 10 --mode idle").unwrap_err().0.contains("--url"));
        assert!(p("--url http://h:1 --mode idle").is_err());
        assert!(p("--url ws://h:1/x --mode idle").is_err());
        assert!(p("--url ws://h:1").unwrap_err().0.contains("--mode"));
        assert!(p("--url ws://h:1 --mode nope").unwrap_err().0.contains("unknown mode"));
        assert!(p("--url ws://h:1 --mode idle --clients ten").unwrap_err().0.contains("not a valid number"));
        assert!(p("--url ws://h:1 --mode idle --clients").unwrap_err().0.contains("missing value"));
        assert!(p("--url ws://h:1 --mode rtt --rate 0").is_err());
        assert!(p("--url ws://h:1 --mode idle --bogus 1").is_err());
        assert!(p("--url ws://h:1 --mode idle --id-prefix a/b").is_err());
        assert!(p("--help").unwrap_err().0.starts_with("usage:"));
    }
}
