//! A private PostgreSQL cluster for one test: `initdb` into a temp dir, `pg_ctl start` on a free
//! port with its socket in that dir, and a real outage with `pg_ctl stop -m immediate`. Never
//! the shared cluster on 5432.
//!
//! Tests run as root and PostgreSQL refuses to run as root, so `initdb` and `pg_ctl` run as the
//! `postgres` OS user (`runuser -u postgres --`) over a dir owned by it; as any other user they
//! run directly. The binaries are `PG_BIN` when set, else the newest `/usr/lib/postgresql/*/bin`
//! holding `initdb`. The cluster runs with `fsync=off` (a process stop keeps what it wrote in the
//! page cache; only a machine crash would lose it, and the tests do not crash the machine).
//!
//! Dropping a `PgCluster` stops it (`-m immediate`) and removes its dir, also when the test
//! panicked. Usage:
//!
//! ```ignore
//! let mut pg = PgCluster::start();
//! let srv = TestServer::start_with(pg.opts(Opts::default()));
//! pg.stop_immediate();   // the outage
//! pg.start_again();      // the return, same port
//! ```

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::Opts;

static N: AtomicUsize = AtomicUsize::new(0);

/// The directory of `initdb` and `pg_ctl`.
pub fn pg_bin() -> PathBuf {
    if let Ok(dir) = std::env::var("PG_BIN") {
        return PathBuf::from(dir);
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("no /usr/lib/postgresql: install PostgreSQL's server package or set PG_BIN")
        .flatten()
        .filter_map(|e| {
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, b)| b).expect("no initdb under /usr/lib/postgresql/*/bin: set PG_BIN")
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// A command run as the `postgres` OS user when we are root.
fn as_postgres(program: &Path) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn check(what: &str, out: Output) {
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

pub struct PgCluster {
    /// The temp dir: `data/` (the cluster), the socket, `server.log`.
    pub dir: PathBuf,
    pub port: u16,
    /// The `postgres` role's password when the cluster asks TCP clients for one.
    pub password: Option<String>,
    bin: PathBuf,
    running: bool,
}

impl PgCluster {
    /// A new cluster, running, with trust authentication.
    pub fn start() -> PgCluster {
        let mut pg = PgCluster::init(None);
        pg.start_again();
        pg
    }

    /// A new cluster, running, that asks TCP clients for the `postgres` role's `password`
    /// (scram-sha-256).
    pub fn start_with_password(password: &str) -> PgCluster {
        let mut pg = PgCluster::init(Some(password));
        pg.start_again();
        pg
    }

    /// A new cluster, created but not started.
    pub fn init_stopped() -> PgCluster {
        PgCluster::init(None)
    }

    fn init(password: Option<&str>) -> PgCluster {
        let dir =
            std::env::temp_dir().join(format!("adc-pg-{}-{}", std::process::id(), N.fetch_add(1, Ordering::SeqCst)));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the cluster dir");
        let bin = pg_bin();
        let pg = PgCluster {
            dir: dir.clone(),
            port: free_port(),
            password: password.map(str::to_string),
            bin,
            running: false,
        };
        if is_root() {
            check("chown", Command::new("chown").args(["postgres:postgres"]).arg(&dir).output().expect("run chown"));
        }
        let mut initdb = as_postgres(&pg.bin.join("initdb"));
        initdb.arg("-D").arg(dir.join("data")).args(["-U", "postgres", "-E", "UTF8", "--locale=C", "--no-sync"]);
        match password {
            Some(pw) => {
                let pwfile = dir.join("pwfile");
                std::fs::write(&pwfile, pw).unwrap();
                if is_root() {
                    check("chown", Command::new("chown").args(["postgres:postgres"]).arg(&pwfile).output().unwrap());
                }
                initdb
                    .args(["--auth-local=trust", "--auth-host=scram-sha-256"])
                    .arg(format!("--pwfile={}", pwfile.display()));
            }
            None => {
                initdb.args(["-A", "trust"]);
            }
        }
        check("initdb", initdb.output().expect("run initdb"));
        pg
    }

    fn pg_ctl(&self) -> Command {
        let mut c = as_postgres(&self.bin.join("pg_ctl"));
        c.arg("-D").arg(self.dir.join("data"));
        c
    }

    /// Start (again) on the same port; waits until it accepts connections.
    pub fn start_again(&mut self) {
        assert!(!self.running, "already running");
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off -c max_connections=50",
            self.port,
            self.dir.display()
        );
        let out = self
            .pg_ctl()
            .args(["start", "-w", "-t", "60", "-l"])
            .arg(self.dir.join("server.log"))
            .args(["-o", &opts])
            .output()
            .expect("run pg_ctl start");
        let log = std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default();
        assert!(out.status.success(), "pg_ctl start failed: {}\n{log}", String::from_utf8_lossy(&out.stderr));
        self.running = true;
    }

    /// The outage: `pg_ctl stop -m immediate` (no shutdown checkpoint, every client cut).
    pub fn stop_immediate(&mut self) {
        check("pg_ctl stop", self.pg_ctl().args(["stop", "-m", "immediate", "-w"]).output().expect("run pg_ctl stop"));
        self.running = false;
    }

    /// The server's settings for this cluster, on top of `opts`.
    pub fn opts(&self, opts: Opts) -> Opts {
        opts.env("DB_HOST", "127.0.0.1")
            .env("DB_PORT", &self.port.to_string())
            .env("DB_USER", "postgres")
            .env("DB_PASSWORD", self.password.as_deref().unwrap_or(""))
    }

    /// A direct client to `dbname` on this cluster.
    pub fn client(&self, dbname: &str) -> postgres::Client {
        let mut cfg = postgres::Config::new();
        cfg.host("127.0.0.1").port(self.port).user("postgres").dbname(dbname).connect_timeout(Duration::from_secs(5));
        if let Some(pw) = &self.password {
            cfg.password(pw);
        }
        cfg.connect(postgres::NoTls).expect("connect to the private cluster")
    }

    /// Run `f` with a client to `dbname` until it returns `Some`, for at most `timeout`.
    pub fn poll<T>(
        &self,
        dbname: &str,
        timeout: Duration,
        mut f: impl FnMut(&mut postgres::Client) -> Option<T>,
    ) -> Option<T> {
        let until = Instant::now() + timeout;
        let mut c = self.client(dbname);
        while Instant::now() < until {
            if let Some(v) = f(&mut c) {
                return Some(v);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        if self.running {
            let _ = self.pg_ctl().args(["stop", "-m", "immediate", "-w"]).output();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
