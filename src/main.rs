//! `adcluster`: the commands. `serve` (the default) runs the server; `help` prints every
//! setting. Errors go to standard error as one line starting `error:`; exit codes are 0 for
//! success, 1 when the operation failed, 2 for bad usage.
//!
//! Threads started here: the signal thread (`signals`, waits for SIGINT/SIGTERM and triggers
//! the shutdown); `metrics-server` (only with `METRICS_ADDR`: a second instance of the HTTP
//! layer, two workers, serving `GET /metrics`); the HTTP layer's own threads are listed in
//! `http/server.rs`, the WebSocket sessions' in `ws/mod.rs`, the cluster's two (`CLUSTER=postgres`
//! only) in `cluster/mod.rs`. `backup` and `restore` start the `interrupt` thread of
//! `ops/interrupt.rs`.

#![warn(clippy::undocumented_unsafe_blocks)]

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use adcluster::auth::{self, password, token};
use adcluster::config::{self, Config};
use adcluster::db::{self, Db, DbConfig};
use adcluster::{api, http, info, ops, util, warn};

/// A failure with the exit code it maps to.
struct Failure {
    code: u8,
    message: String,
}

fn usage(message: impl Into<String>) -> Failure {
    Failure { code: 2, message: message.into() }
}

fn failed(message: impl Into<String>) -> Failure {
    Failure { code: 1, message: message.into() }
}

impl From<ops::OpsError> for Failure {
    fn from(e: ops::OpsError) -> Failure {
        Failure { code: e.code, message: e.message }
    }
}

fn main() -> ExitCode {
    // Before any thread exists: large blocks (Argon2's) go back to the kernel when freed.
    util::mem::bound_heap_retention();
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("error: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}

fn run(args: Vec<String>) -> Result<(), Failure> {
    // `backup` and `restore` have their own `--help`.
    match args.first().map(String::as_str) {
        Some("backup") => return ops::backup::run(&args[1..]).map_err(Failure::from),
        Some("restore") => return ops::restore::run(&args[1..]).map_err(Failure::from),
        _ => {}
    }
    if args.iter().any(|a| a == "--help" || a == "-h") {
        print!("{}", config::help_text());
        return Ok(());
    }
    if args.iter().any(|a| a == "--version" || a == "-V") {
        println!("adcluster {}", api::VERSION);
        return Ok(());
    }
    let (command, rest) = match args.first() {
        Some(first) if !first.starts_with('-') => (first.as_str(), &args[1..]),
        _ => ("serve", &args[..]),
    };
    match command {
        "serve" => serve(rest),
        "migrate" => migrate(rest),
        "user" => user(rest),
        "db-gui" => db_gui(rest),
        "help" => {
            print!("{}", config::help_text());
            Ok(())
        }
        other => Err(usage(format!("unknown command {other:?}; run `adcluster --help` for the list"))),
    }
}

fn load_config(args: &[String]) -> Result<Config, Failure> {
    let (cfg, rest) = Config::load(args).map_err(|e| usage(e.to_string()))?;
    if let Some(extra) = rest.first() {
        return Err(usage(format!("unexpected argument {extra:?}; run `adcluster --help` for the flags")));
    }
    // A DATABASE_URL that does not parse is a bad setting (exit 2), not a database that is away.
    if cfg.database_url.is_some() {
        db_config(&cfg).pg_config().map_err(|e| usage(e.to_string()))?;
    }
    util::log::set_level(cfg.log_level);
    Ok(cfg)
}

fn serve(args: &[String]) -> Result<(), Failure> {
    let cfg = load_config(args)?;
    // Bad settings before anything is started or logged.
    listen_address(
        "HOST",
        &format!("{}:{}", cfg.host, cfg.port),
        "use 0.0.0.0 (every interface) or 127.0.0.1 (this machine only)",
    )?;
    if let Some(m) = &cfg.metrics_addr {
        listen_address("METRICS_ADDR", m, "give HOST:PORT, for example 127.0.0.1:9100")?;
    }
    util::log::bridge();
    // Block SIGINT/SIGTERM in this thread before any other starts, so every thread inherits the
    // mask and only the signal thread receives them (via sigwait).
    let signals = signals::block().map_err(|e| failed(format!("cannot set up signal handling: {e}")))?;
    // One descriptor per HTTP connection and one per WebSocket session.
    util::rlimit::raise_nofile(cfg.max_connections + cfg.ws_max_clients);
    // One thread per HTTP worker, then one per WebSocket session: no more than the machine can
    // start (see `util::rlimit`). Too many workers is a bad setting; sessions are lowered.
    util::rlimit::check_workers(cfg.workers).map_err(usage)?;
    let ws_max_clients = util::rlimit::thread_ceiling(cfg.ws_max_clients, cfg.workers);
    let build = if cfg!(debug_assertions) { "debug" } else { "release" };
    info!("starting adcluster {} ({build} build): {}", api::VERSION, cfg.redacted_summary());
    if let Some(warning) = config::wrong_folder_warning(&cfg) {
        warn!("{warning}");
    }
    if cfg!(not(debug_assertions)) && cfg.test_routes {
        warn!("ADCLUSTER_TEST_ROUTES is ignored: a release build has no test routes");
    }

    let http_cfg = http_config(&cfg);
    let addr = format!("{}:{}", cfg.host, cfg.port);
    let auth = build_auth(&cfg)?;
    let db = Arc::new(
        Db::with_cache_refreshed(db_config(&cfg), cfg.account_cache_size, cfg.account_cache_refresh)
            .map_err(|e| failed(e.to_string()))?,
    );
    // The spool first: a restarted server drains what it spooled before it died, as soon as the
    // database is up (the monitor wakes the replayer).
    let spool = db::spool::Spool::open(&cfg.data_dir).map_err(|e| {
        let hint =
            if e.kind() == std::io::ErrorKind::WouldBlock { "" } else { " (DATA_DIR must be a writable folder)" };
        failed(format!("cannot open the upload spool in {}: {e}{hint}", cfg.data_dir.join("spool").display()))
    })?;
    // The intents of uploads a crash cut off between their rename and their record
    // (`db::intent`): resolved below, or when the database is back.
    let intents = db::intent::Intents::open(&cfg.data_dir, &cfg.upload_dir).map_err(|e| {
        failed(format!(
            "cannot open the upload intents in {}: {e} (DATA_DIR must be a writable folder)",
            cfg.data_dir.join(db::intent::DIR).display()
        ))
    })?;
    db.attach_spool(Arc::new(spool), Arc::new(intents))
        .map_err(|e| failed(format!("cannot start the spool replayer: {e}")))?;
    let ws_settings =
        adcluster::ws::WsSettings { max_clients: ws_max_clients, ..adcluster::ws::WsSettings::from_config(&cfg) };
    let ws = Arc::new(adcluster::ws::Ws::new(ws_settings));
    match adcluster::util::uring::configure(cfg.ws_io_uring) {
        Ok(()) => info!("websocket fan-outs: one io_uring submission for each fan-out's sends"),
        Err(why) => info!("websocket fan-outs: one send per recipient (io_uring: {why})"),
    }
    let alerter = adcluster::ops::alert::Alerter {
        ws: ws.clone(),
        command: cfg.alert_command.clone(),
        database: db.config().describe(),
    };
    let hook: db::StateHook = Arc::new(move |up| alerter.fire(up));
    // One check before listening, so a healthy database is migrated before the first request;
    // a dead one only costs this check (the monitor keeps trying).
    if !db.check(Some(&hook)) {
        warn!("database {} is not reachable; serving in degraded mode until it is", db.config().describe());
    }
    db.start_monitor(Some(hook)).map_err(|e| failed(format!("cannot start the database monitor: {e}")))?;
    api::files::sweep_temp(&cfg.upload_dir).map_err(|e| {
        failed(format!(
            "cannot use UPLOAD_DIR {}: {e} (UPLOAD_DIR must be a folder this user can write)",
            config::absolute(&cfg.upload_dir).display()
        ))
    })?;
    // Before the first request: no file of an interrupted upload is served once it is decided
    // (with the database away, those not in the spool wait for it).
    db.resolve_intents();
    let metrics = Arc::new(api::metrics::Metrics::default());
    let app = Arc::new(api::App { config: cfg, started: Instant::now(), db, auth, ws: ws.clone(), metrics });
    let router = Arc::new(api::build_router(app.clone()));
    let server = http::Server::bind(&addr, http_cfg.clone(), router).map_err(|e| {
        failed(format!(
            "cannot listen on {addr}: {e} (is another server using the port? choose one with --port or PORT)"
        ))
    })?;
    let bound = server.local_addr().map_err(|e| failed(format!("cannot read the bound address: {e}")))?;
    let cluster = if app.config.cluster {
        let settings = adcluster::cluster::Settings {
            instance: app
                .config
                .instance_id
                .clone()
                .unwrap_or_else(|| adcluster::cluster::default_instance_id(bound.port())),
            presence_timeout: app.config.cluster_presence_timeout,
            queue_bytes: app.config.cluster_queue_kb.saturating_mul(1024),
        };
        Some(
            adcluster::cluster::start(ws.clone(), app.db.config(), &settings)
                .map_err(|e| failed(format!("cannot start the cluster threads: {e}")))?,
        )
    } else {
        None
    };
    app.metrics.attach_server(server.stats());
    let metrics_handle = match app.config.metrics_addr.clone() {
        Some(maddr) => Some(serve_metrics(&maddr, http_cfg, app.clone())?),
        None => None,
    };
    info!("listening on http://{bound}");

    let handle = server.shutdown_handle();
    let ws_on_signal = ws.clone();
    signals::spawn_waiter(signals, move |sig| {
        if handle.is_triggered() {
            warn!("second {sig}: exiting now");
            std::process::exit(1);
        }
        info!("received {sig}");
        handle.trigger();
        if let Some(h) = &metrics_handle {
            h.trigger();
        }
        // WebSocket clients get a close 1001 now, while HTTP requests in flight finish.
        ws_on_signal.shutdown();
    })
    .map_err(|e| failed(format!("cannot start the signal thread: {e}")))?;

    server.run().map_err(|e| failed(format!("server failed: {e}")))?;
    // Uploads cut short by the end of the grace leave no temp file behind.
    api::files::remove_own_temp(&app.config.upload_dir);
    ws.shutdown();
    if let Some(cluster) = &cluster {
        cluster.stop(std::time::Duration::from_secs(2));
    }
    if !ws.wait_idle(std::time::Duration::from_secs(2)) {
        warn!("{} WebSocket session(s) still closing; exiting anyway", ws.sessions());
    }
    info!("stopped");
    Ok(())
}

/// `GET /metrics` on its own listener (`METRICS_ADDR`), with a pool of its own: two workers, a
/// few connections. Thread: `metrics-server`, which runs that server until shutdown.
fn serve_metrics(addr: &str, base: http::ServerConfig, app: Arc<api::App>) -> Result<http::ShutdownHandle, Failure> {
    let cfg = http::ServerConfig { workers: 2, max_connections: 64, max_connections_per_addr: 16, ..base };
    let server = http::Server::bind(addr, cfg, Arc::new(api::metrics::router(app)))
        .map_err(|e| failed(format!("cannot listen on METRICS_ADDR={addr}: {e}")))?;
    let bound = server.local_addr().map_err(|e| failed(format!("cannot read the metrics address: {e}")))?;
    let handle = server.shutdown_handle();
    std::thread::Builder::new()
        .name("metrics-server".into())
        .spawn(move || {
            if let Err(e) = server.run() {
                warn!("metrics listener failed: {e}");
            }
        })
        .map_err(|e| failed(format!("cannot start the metrics thread: {e}")))?;
    info!("metrics: GET /metrics served at http://{bound}/metrics");
    Ok(handle)
}

/// `adcluster db-gui [--host 127.0.0.1] [--port 3030] [--allow-writes]`: the database web GUI.
/// Its `--host`/`--port` are its own (not the server's `HOST`/`PORT`); every other setting is
/// shared with the server. Prints one line with the URL and token on standard output.
fn db_gui(args: &[String]) -> Result<(), Failure> {
    use adcluster::dbgui;
    const USAGE: &str = "usage: adcluster db-gui [--host 127.0.0.1] [--port 3030] [--allow-writes]";
    let mut opts = dbgui::Options::default();
    let mut rest = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let (name, inline) = match args[i].split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n.to_string(), Some(v.to_string())),
            _ => (args[i].clone(), None),
        };
        let mut value = |what: &str| -> Result<String, Failure> {
            if let Some(v) = inline.clone() {
                return Ok(v);
            }
            i += 1;
            args.get(i).cloned().ok_or_else(|| usage(format!("{what} needs a value; {USAGE}")))
        };
        match name.as_str() {
            "--host" => opts.host = value("--host")?,
            "--port" => {
                let v = value("--port")?;
                opts.port =
                    v.parse().map_err(|_| usage(format!("--port {v:?} is not a port number (0-65535); {USAGE}")))?;
            }
            // A switch: `--allow-writes=false` must not turn writes on.
            "--allow-writes" if inline.is_some() => {
                return Err(usage(format!(
                    "--allow-writes takes no value (give it to allow writes, leave it out for read-only); {USAGE}"
                )))
            }
            "--allow-writes" => opts.allow_writes = true,
            _ => rest.push(args[i].clone()),
        }
        i += 1;
    }
    let cfg = load_config(&rest)?;
    let signals = signals::block().map_err(|e| failed(format!("cannot set up signal handling: {e}")))?;
    let dbc = db_config(&cfg);
    let gui = dbgui::Gui::new(&cfg, &dbc, opts.allow_writes).map_err(failed)?;
    let router = Arc::new(dbgui::api::build_router(gui.clone(), cfg.max_json_bytes));
    // The GUI's own small pool; every limit and timeout as the server's.
    let http_cfg =
        http::ServerConfig { workers: dbgui::WORKERS, max_connections: 256, transfer_workers: 0, ..http_config(&cfg) };
    let host = opts.host.trim_start_matches('[').trim_end_matches(']').to_string();
    let addr = if host.contains(':') { format!("[{host}]:{}", opts.port) } else { format!("{host}:{}", opts.port) };
    let server = http::Server::bind(&addr, http_cfg, router).map_err(|e| {
        failed(format!("cannot listen on {addr}: {e} (is something else using the port? choose one with --port)"))
    })?;
    let bound = server.local_addr().map_err(|e| failed(format!("cannot read the bound address: {e}")))?;
    let ip_loopback = bound.ip().is_loopback();
    let mode = if opts.allow_writes { "read-write (--allow-writes)" } else { "read-only" };
    info!("db-gui listening on http://{bound}, {mode}, database {}", gui.database);
    if !ip_loopback {
        warn!("db-gui listens on {bound}: anyone who can reach it and has the token can read the database");
    }
    {
        use std::io::Write;
        let shown = if host.contains(':') { format!("[{host}]") } else { host.clone() };
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "db-gui: http://{shown}:{}/?token={}", bound.port(), gui.token);
        let _ = out.flush();
    }
    // After the start line (a database that is down must not delay it): say so now rather than
    // on the first click.
    if let Err(e) = gui.pool.get() {
        // The pool says only "timed out waiting for connection: db error"; one direct attempt
        // says why (a database that does not exist is not one that is starting).
        let why = match dbc.pg_config().and_then(|c| c.connect(postgres::NoTls).map_err(db::DbError::from)) {
            Err(d) => format!("{d}{}", db::cause_hint(&d)),
            Ok(_) => e.to_string(),
        };
        warn!("database {} is not reachable yet ({why}); the GUI answers 503 until it is", gui.database);
    }
    let handle = server.shutdown_handle();
    signals::spawn_waiter(signals, move |sig| {
        if handle.is_triggered() {
            std::process::exit(1);
        }
        info!("received {sig}");
        handle.trigger();
    })
    .map_err(|e| failed(format!("cannot start the signal thread: {e}")))?;
    server.run().map_err(|e| failed(format!("db-gui failed: {e}")))?;
    info!("db-gui stopped");
    Ok(())
}

/// The HTTP layer's settings from the configuration (the server's; `db-gui` and the metrics
/// listener start from them too).
fn http_config(cfg: &Config) -> http::ServerConfig {
    http::ServerConfig {
        workers: cfg.workers,
        max_connections: cfg.max_connections,
        max_connections_per_addr: cfg.max_connections_per_addr,
        transfer_workers: cfg.transfer_workers,
        max_transfers_per_addr: cfg.max_transfers_per_addr,
        head_timeout: cfg.head_timeout,
        body_timeout: cfg.body_timeout,
        idle_timeout: cfg.keepalive_timeout,
        min_body_rate: cfg.min_body_rate,
        shutdown_grace: cfg.shutdown_grace,
        head_limits: http::parse::HeadLimits { max_head_bytes: cfg.max_header_bytes, max_headers: cfg.max_headers },
        ..http::ServerConfig::default()
    }
}

/// `Err` (a bad setting, exit 2) when `addr`, from the setting `var`, is not an address this
/// machine can listen on: not an IP address or a name it resolves, or a port out of range.
/// Whether the port is free is for the bind to find out (exit 1).
fn listen_address(var: &str, addr: &str, what_to_do: &str) -> Result<(), Failure> {
    use std::net::ToSocketAddrs;
    match addr.to_socket_addrs().map(|mut found| found.next()) {
        Ok(Some(_)) => Ok(()),
        Ok(None) => Err(usage(format!("{var}: {addr:?} names no address; {what_to_do}"))),
        Err(e) => Err(usage(format!("{var}: {addr:?} is not an address to listen on ({e}); {what_to_do}"))),
    }
}

/// The database settings of the configuration.
fn db_config(cfg: &Config) -> DbConfig {
    ops::db_config(cfg)
}

/// Token keys (from `SECRET_KEY` or `DATA_DIR/secret_key`), the login limiter, the hashing gate.
fn build_auth(cfg: &Config) -> Result<auth::Auth, Failure> {
    let (secret, source) =
        token::load_or_create_secret(cfg.secret_key.as_deref(), &cfg.data_dir).map_err(|e| failed(format!("{e}")))?;
    match source {
        token::SecretSource::Generated => warn!(
            "SECRET_KEY is not set: generated one into {} (keep that file; tokens die with it)",
            config::absolute(&cfg.data_dir.join(token::SECRET_FILE_NAME)).display()
        ),
        token::SecretSource::File => {
            info!("SECRET_KEY read from {}", config::absolute(&cfg.data_dir.join(token::SECRET_FILE_NAME)).display())
        }
        token::SecretSource::Configured => {}
    }
    // Pay for the dummy hash used for unknown emails now, not on the first login.
    password::burn_verify("");
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    Ok(auth::Auth {
        keys: token::TokenKeys::new(&secret),
        token_ttl: cfg.access_token_expire,
        limiter: auth::ratelimit::LoginLimiter::default(),
        hasher: auth::HashPool::start(cores, (cfg.workers / 4).max(1), auth::HASH_WAIT_MAX)
            .map_err(|e| failed(format!("cannot start the hashing threads: {e}")))?,
    })
}

/// A direct connection for one-shot commands: create the database if missing, migrate.
fn command_db(cfg: &Config) -> Result<postgres::Client, Failure> {
    let dbc = db_config(cfg);
    // The cause in words and what fixes it, as the server's log gives it.
    let unreachable = |e: db::DbError| failed(format!("{e} ({}){}", dbc.describe(), db::unreachable_hint(&e)));
    db::pool::ensure_database(&dbc).map_err(unreachable)?;
    let pg = dbc.pg_config().map_err(|e| failed(e.to_string()))?;
    let mut client = pg.connect(postgres::NoTls).map_err(|e| unreachable(db::DbError::from(e)))?;
    let applied = db::migrate::migrate(&mut client).map_err(|e| failed(e.to_string()))?;
    if !applied.is_empty() {
        info!("applied migrations {applied:?}");
    }
    Ok(client)
}

fn migrate(args: &[String]) -> Result<(), Failure> {
    let cfg = load_config(args)?;
    command_db(&cfg)?;
    println!("database {} is up to date", db_config(&cfg).describe());
    Ok(())
}

/// `adcluster user create --email E --password P [--superuser] [--full-name N]`
fn user(args: &[String]) -> Result<(), Failure> {
    const USAGE: &str =
        "usage: adcluster user create --email E --password P|- [--superuser] [--full-name N] (- reads it from stdin)";
    if args.first().map(String::as_str) != Some("create") {
        return Err(usage(USAGE));
    }
    let mut email = None;
    let mut pass = None;
    let mut full_name = None;
    let mut superuser = false;
    let mut rest = Vec::new();
    let mut it = args[1..].iter();
    while let Some(a) = it.next() {
        // `--email E` or `--email=E`, as the settings flags take them.
        let (name, inline) = match a.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n, Some(v.to_string())),
            _ => (a.as_str(), None),
        };
        let mut value = |name: &str| {
            inline.clone().or_else(|| it.next().cloned()).ok_or_else(|| usage(format!("{name} needs a value; {USAGE}")))
        };
        // Each at most once: a second `--email` is a mistake, not a correction to guess at.
        let once = |slot: &Option<String>, name: &str| match slot {
            Some(_) => Err(usage(format!("{name} is given twice; {USAGE}"))),
            None => Ok(()),
        };
        match name {
            "--email" => {
                once(&email, name)?;
                email = Some(value("--email")?)
            }
            "--password" => {
                once(&pass, name)?;
                pass = Some(value("--password")?)
            }
            "--full-name" => {
                once(&full_name, name)?;
                full_name = Some(value("--full-name")?)
            }
            "--superuser" if inline.is_some() => {
                return Err(usage(format!("--superuser takes no value (give it or leave it out); {USAGE}")))
            }
            "--superuser" => superuser = true,
            _ => rest.push(a.clone()),
        }
    }
    let cfg = load_config(&rest)?;
    let email = email.ok_or_else(|| usage(format!("--email is required; {USAGE}")))?;
    let mut pass = pass.ok_or_else(|| usage(format!("--password is required; {USAGE}")))?;
    if pass == "-" {
        // `--password -`: read it from standard input, so it never shows in the process list.
        let mut line = String::new();
        std::io::stdin().read_line(&mut line).map_err(|e| failed(format!("cannot read the password: {e}")))?;
        pass = line.trim_end_matches(['\r', '\n']).to_string();
    }
    let email = api::extract::normalize_email(&email).map_err(|why| usage(format!("invalid email: {why}")))?;
    let n = pass.chars().count();
    if !(api::users::PASSWORD_MIN..=api::users::PASSWORD_MAX).contains(&n) {
        return Err(usage(format!(
            "the password must have {} to {} characters",
            api::users::PASSWORD_MIN,
            api::users::PASSWORD_MAX
        )));
    }
    let hash = password::hash_password(&pass).map_err(|e| failed(format!("cannot hash the password: {e}")))?;
    let mut client = command_db(&cfg)?;
    match db::users::insert(&mut client, &email, &hash, full_name.as_deref(), superuser) {
        Ok(u) => {
            println!("created user {} <{}>{}", u.id, u.email, if u.is_superuser { " (superuser)" } else { "" });
            Ok(())
        }
        Err(e) if e.is_unique_violation() => Err(failed(format!("a user with email {email} already exists"))),
        Err(e) => Err(failed(e.to_string())),
    }
}

/// SIGINT/SIGTERM handling with `sigwait` on a dedicated thread: no async-signal-safety
/// puzzles, the handler is ordinary code.
mod signals {
    use std::io;

    pub struct Blocked(libc::sigset_t);

    pub fn block() -> io::Result<Blocked> {
        // SAFETY: sigset_t is plain data; sigemptyset/sigaddset initialise it; pthread_sigmask
        // changes this thread's mask only.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGINT);
            libc::sigaddset(&mut set, libc::SIGTERM);
            let rc = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
            if rc != 0 {
                return Err(io::Error::from_raw_os_error(rc));
            }
            Ok(Blocked(set))
        }
    }

    pub fn spawn_waiter<F: Fn(&'static str) + Send + 'static>(blocked: Blocked, on_signal: F) -> io::Result<()> {
        let set = blocked.0;
        std::thread::Builder::new().name("signals".into()).stack_size(64 * 1024).spawn(move || loop {
            let mut sig: libc::c_int = 0;
            // SAFETY: `set` is an initialised sigset; `sig` is a valid out pointer.
            if unsafe { libc::sigwait(&set, &mut sig) } == 0 {
                on_signal(if sig == libc::SIGINT { "SIGINT" } else { "SIGTERM" });
            }
        })?;
        Ok(())
    }
}
