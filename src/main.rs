//! `adcluster`: the commands. `serve` (the default) runs the server; `help` prints every
//! setting. Errors go to standard error as one line starting `error:`; exit codes are 0 for
//! success, 1 when the operation failed, 2 for bad usage.
//!
//! Threads started here: the signal thread (`signals`, waits for SIGINT/SIGTERM and triggers
//! the shutdown); the HTTP layer's own threads are listed in `http/server.rs`.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use adcluster::config::{self, Config};
use adcluster::{api, http, info, util, warn};

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

fn main() -> ExitCode {
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
    util::log::set_level(cfg.log_level);
    Ok(cfg)
}

fn serve(args: &[String]) -> Result<(), Failure> {
    let cfg = load_config(args)?;
    // Block SIGINT/SIGTERM in this thread before any other starts, so every thread inherits the
    // mask and only the signal thread receives them (via sigwait).
    let signals = signals::block().map_err(|e| failed(format!("cannot set up signal handling: {e}")))?;
    util::rlimit::raise_nofile(cfg.max_connections);
    info!("starting adcluster {}: {}", api::VERSION, cfg.redacted_summary());

    let http_cfg = http::ServerConfig {
        workers: cfg.workers,
        max_connections: cfg.max_connections,
        head_timeout: cfg.head_timeout,
        body_timeout: cfg.body_timeout,
        idle_timeout: cfg.keepalive_timeout,
        shutdown_grace: cfg.shutdown_grace,
        head_limits: http::parse::HeadLimits { max_head_bytes: cfg.max_header_bytes, max_headers: cfg.max_headers },
        ..http::ServerConfig::default()
    };
    let addr = format!("{}:{}", cfg.host, cfg.port);
    let app = Arc::new(api::App { config: cfg, started: Instant::now() });
    let router = Arc::new(api::build_router(app.clone()));
    let server = http::Server::bind(&addr, http_cfg, router).map_err(|e| {
        failed(format!(
            "cannot listen on {addr}: {e} (is another server using the port? choose one with --port or PORT)"
        ))
    })?;
    let bound = server.local_addr().map_err(|e| failed(format!("cannot read the bound address: {e}")))?;
    info!("listening on http://{bound}");

    let handle = server.shutdown_handle();
    signals::spawn_waiter(signals, move |sig| {
        if handle.is_triggered() {
            warn!("second {sig}: exiting now");
            std::process::exit(1);
        }
        info!("received {sig}");
        handle.trigger();
    })
    .map_err(|e| failed(format!("cannot start the signal thread: {e}")))?;

    server.run().map_err(|e| failed(format!("server failed: {e}")))?;
    info!("stopped");
    Ok(())
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
