//! The PostgreSQL client programs that `backup` and `restore` drive (`pg_dump`, `pg_dumpall`,
//! `psql`): which one to run, with which connection settings, and how to run it so that an
//! interruption cannot leave it behind.
//!
//! Which program: one whose major version is at least the server's (an older `pg_dump` refuses
//! a newer server; a newer one reads older servers fine). The one on `PATH` when it is new
//! enough, else the newest under `/usr/lib/postgresql/*/bin` (Debian installs every major
//! version there side by side). None: one line naming the version to install.
//!
//! Connection settings reach the child only through its environment (`PGHOST`, `PGPORT`,
//! `PGUSER`, `PGDATABASE`, `PGPASSWORD`, `PGCONNECT_TIMEOUT`), built from the same `DbConfig` as
//! the server's (`DATABASE_URL` or `DB_*`). The command line holds only options and file names,
//! so `ps` shows no password and no host; a database name holding `=` cannot be misread as a
//! connection string either.
//!
//! Must never: put a password on a command line or in a message; let the child prompt for a
//! password (`--no-password`: it fails instead); leave the child running after we are gone.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::db::DbConfig;

/// A PostgreSQL version as `major` (15) and the full text shown to people ("15.20").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgVersion {
    pub major: u32,
    pub text: String,
}

/// `server_version_num` (`150020`, `90624`) as a version.
pub fn version_from_num(num: u32) -> PgVersion {
    if num >= 100_000 {
        PgVersion { major: num / 10_000, text: format!("{}.{}", num / 10_000, num % 10_000) }
    } else {
        // 9.6.24 is 90624: the major version of those is "9.6", the number before the dot is
        // what we compare (no tool of ours is that old anyway).
        PgVersion { major: num / 10_000, text: format!("{}.{}.{}", num / 10_000, num / 100 % 100, num % 100) }
    }
}

/// Parse `pg_dump (PostgreSQL) 15.20 (Debian 15.20-0+deb12u1)` → 15 / "15.20".
pub fn parse_tool_version(output: &str) -> Option<PgVersion> {
    let rest = output.split("(PostgreSQL)").nth(1)?.trim_start();
    let text: String = rest.chars().take_while(|c| c.is_ascii_digit() || *c == '.').collect();
    let major = text.split('.').next()?.parse().ok()?;
    Some(PgVersion { major, text: text.trim_end_matches('.').to_string() })
}

/// The libpq environment of a child: `(PGHOST, "...")` and so on.
pub type ChildEnv = Vec<(&'static str, String)>;

/// A client program found on this machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tool {
    pub path: PathBuf,
    pub version: PgVersion,
}

/// The rule, without the file system: the `PATH` candidate when new enough, else the newest
/// new-enough one of `installed`; else the one-line message for the operator.
pub fn choose(name: &str, server: &PgVersion, on_path: Option<Tool>, installed: Vec<Tool>) -> Result<Tool, String> {
    if let Some(t) = on_path.as_ref().filter(|t| t.version.major >= server.major) {
        return Ok(t.clone());
    }
    if let Some(t) = installed.into_iter().filter(|t| t.version.major >= server.major).max_by_key(|t| t.version.major) {
        return Ok(t);
    }
    let found = match on_path {
        Some(t) => format!(" (the one on PATH, {}, is {})", t.path.display(), t.version.text),
        None => String::new(),
    };
    Err(format!(
        "{name} {m} or newer is needed for a PostgreSQL {m} server{found}; install postgresql-client-{m}",
        m = server.major
    ))
}

/// Run `program --version` and parse it; `None` when it does not run or says nothing we know.
/// It runs with the same environment as the real run: Debian's `/usr/bin/pg_dump` is a wrapper
/// that picks a version by `PGHOST`/`PGPORT`/`PGCLUSTER`, so the answer must be the one the real
/// run will get.
fn probe(path: &Path, env: &[(&'static str, String)]) -> Option<Tool> {
    let out = command_for(path, env).arg("--version").stdin(Stdio::null()).stderr(Stdio::null()).output().ok()?;
    let version = parse_tool_version(&String::from_utf8_lossy(&out.stdout))?;
    Some(Tool { path: path.to_path_buf(), version })
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0).unwrap_or(false)
}

/// The `name` on `PATH`, with its version.
fn on_path(name: &str, env: &[(&'static str, String)]) -> Option<Tool> {
    path_candidate(name).and_then(|p| probe(&p, env))
}

/// The `name` on `PATH`, not yet asked its version.
pub fn path_candidate(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .and_then(|paths| std::env::split_paths(&paths).map(|d| d.join(name)).find(|p| is_executable(p)))
}

/// The program to use when `tried` (the one on `PATH`, if any) refused the server: the newest
/// new-enough one under `/usr/lib/postgresql/*/bin`, or the one-line message of what to install.
pub fn fallback(
    name: &str,
    server: &PgVersion,
    tried: Option<&Path>,
    env: &[(&'static str, String)],
) -> Result<Tool, String> {
    let path_tool = tried.and_then(|p| probe(p, env));
    // Asked for its version now, the PATH one may claim to be new enough; it refused all the
    // same, so only the installed ones count (it still shows in the message).
    let on_path_ok = path_tool.as_ref().is_some_and(|t| t.version.major >= server.major);
    let mut installed = Vec::new();
    if let Ok(dirs) = std::fs::read_dir("/usr/lib/postgresql") {
        for d in dirs.flatten() {
            let p = d.path().join("bin").join(name);
            if is_executable(&p) && Some(p.as_path()) != tried {
                installed.extend(probe(&p, env));
            }
        }
    }
    choose(name, server, path_tool.filter(|_| !on_path_ok), installed)
}

/// Whether pg_dump/pg_dumpall refused the server for being of a newer major version
/// (`aborting because of server version mismatch`; messages are in English: `LC_MESSAGES=C`).
pub fn is_version_mismatch(stderr: &str) -> bool {
    stderr.contains("server version mismatch")
}

/// Find `name` (pg_dump, pg_dumpall, psql) for a server of version `server`, given what is on
/// `PATH`: the `/usr/lib/postgresql/*/bin` ones are asked only when that is not good enough.
fn find_with(
    name: &str,
    server: &PgVersion,
    path_tool: Option<Tool>,
    env: &[(&'static str, String)],
) -> Result<Tool, String> {
    let mut installed = Vec::new();
    if !path_tool.as_ref().is_some_and(|t| t.version.major >= server.major) {
        if let Ok(dirs) = std::fs::read_dir("/usr/lib/postgresql") {
            for d in dirs.flatten() {
                let p = d.path().join("bin").join(name);
                if is_executable(&p) {
                    installed.extend(probe(&p, env));
                }
            }
        }
    }
    choose(name, server, path_tool, installed)
}

/// What a command runs against: the server's version, whether the database exists, the client
/// program to use and its environment.
pub struct Target {
    pub server: PgVersion,
    pub db_exists: bool,
    pub tool: Tool,
    pub env: ChildEnv,
}

/// The server's version and the `name` to run against it. The server is asked (which proves it
/// reachable before any file is made) while the `PATH` program says its version, at the same time.
pub fn server_and_tool(cfg: &DbConfig, name: &str) -> Result<Target, String> {
    let env = child_env(cfg)?;
    let (server, path_tool) = std::thread::scope(|s| {
        let probing = s.spawn(|| on_path(name, &env));
        let server = server_version(cfg);
        (server, probing.join().ok().flatten())
    });
    let (server, db_exists) = server?;
    let tool = find_with(name, &server, path_tool, &env)?;
    Ok(Target { server, db_exists, tool, env })
}

/// The connection settings of `cfg` as libpq environment variables, password included.
/// These go into the child's environment and nowhere else.
pub fn child_env(cfg: &DbConfig) -> Result<ChildEnv, String> {
    let pg = cfg.pg_config().map_err(|e| e.to_string())?;
    let mut env = Vec::new();
    match pg.get_hosts().first() {
        Some(postgres::config::Host::Tcp(h)) => env.push(("PGHOST", h.clone())),
        Some(postgres::config::Host::Unix(p)) => env.push(("PGHOST", p.display().to_string())),
        None => {}
    }
    env.push(("PGPORT", pg.get_ports().first().copied().unwrap_or(5432).to_string()));
    let user = pg.get_user().unwrap_or(&cfg.user).to_string();
    env.push(("PGDATABASE", pg.get_dbname().unwrap_or(&user).to_string()));
    env.push(("PGUSER", user));
    if let Some(pw) = pg.get_password() {
        env.push(("PGPASSWORD", String::from_utf8_lossy(pw).into_owned()));
    }
    let timeout = pg.get_connect_timeout().copied().unwrap_or(cfg.connect_timeout);
    env.push(("PGCONNECT_TIMEOUT", timeout.as_secs().max(2).to_string()));
    env.push(("PGAPPNAME", "adcluster".into()));
    // English messages, so a version mismatch can be recognised.
    env.push(("LC_MESSAGES", "C".into()));
    Ok(env)
}

/// libpq variables inherited from the operator's shell that could redirect or alter the child's
/// connection behind our back; removed before our own are set.
const INHERITED_PG_VARS: &[&str] = &[
    "PGHOST",
    "PGHOSTADDR",
    "PGPORT",
    "PGDATABASE",
    "PGUSER",
    "PGPASSWORD",
    "PGPASSFILE",
    "PGSERVICE",
    "PGSERVICEFILE",
    "PGOPTIONS",
    "PGCONNECT_TIMEOUT",
];

/// A `Command` for `tool` with the connection in its environment, the shell's own libpq
/// variables removed, signals unblocked (the caller blocks them to handle them itself), and
/// SIGTERM delivered to the child if this process dies first.
pub fn command(tool: &Tool, env: &[(&'static str, String)]) -> Command {
    command_for(&tool.path, env)
}

pub fn command_for(path: &Path, env: &[(&'static str, String)]) -> Command {
    let mut cmd = Command::new(path);
    for v in INHERITED_PG_VARS {
        cmd.env_remove(v);
    }
    cmd.envs(env.iter().map(|(k, v)| (*k, v)));
    // SAFETY: between fork and exec only async-signal-safe calls: sigemptyset, sigprocmask,
    // prctl, getppid, raise. They touch no memory of the parent's other threads.
    unsafe {
        use std::os::unix::process::CommandExt;
        let parent = libc::getpid();
        cmd.pre_exec(move || {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM as libc::c_ulong);
            // The parent died between fork and prctl: nobody will see our output.
            if libc::getppid() != parent {
                libc::raise(libc::SIGTERM);
            }
            Ok(())
        });
    }
    cmd
}

/// The command as an operator would type it, for `--dry-run`: the environment (the password
/// shown as `***`), the program, the arguments, each quoted for a POSIX shell when needed.
pub fn display_command(tool: &Tool, env: &[(&'static str, String)], args: &[String]) -> String {
    let mut parts: Vec<String> = env
        .iter()
        .filter(|(k, _)| !matches!(*k, "PGAPPNAME" | "PGCONNECT_TIMEOUT" | "LC_MESSAGES"))
        .map(|(k, v)| if *k == "PGPASSWORD" { format!("{k}=***") } else { format!("{k}={}", shell_quote(v)) })
        .collect();
    parts.push(shell_quote(&tool.path.display().to_string()));
    parts.extend(args.iter().map(|a| shell_quote(a)));
    parts.join(" ")
}

/// `s` as one POSIX shell word.
pub fn shell_quote(s: &str) -> String {
    if !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c)) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

/// The server's version, asked over a direct connection (which also proves the database is
/// reachable before any file is created), and whether the configured database exists (when it
/// does not, the version is asked of the maintenance database `postgres`).
pub fn server_version(cfg: &DbConfig) -> Result<(PgVersion, bool), String> {
    let unreachable = |e: postgres::Error| {
        let e = crate::db::DbError::from(e);
        // What will fix it when that is known (a refused password is not a stopped server).
        format!("cannot reach the database {}: {e}{}", cfg.describe(), crate::db::unreachable_hint(&e))
    };
    let mut pg = cfg.pg_config().map_err(|e| e.to_string())?;
    let (mut client, exists) = match pg.connect(postgres::NoTls) {
        Ok(c) => (c, true),
        Err(e) if e.code() == Some(&postgres::error::SqlState::INVALID_CATALOG_NAME) => {
            pg.dbname("postgres");
            (pg.connect(postgres::NoTls).map_err(unreachable)?, false)
        }
        Err(e) => return Err(unreachable(e)),
    };
    let row = client.query_one("SELECT current_setting('server_version_num')::int", &[]).map_err(|e| {
        format!("cannot read the server version of {}: {}", cfg.describe(), crate::db::DbError::from(e))
    })?;
    let num: i32 = row.get(0);
    Ok((version_from_num(num.max(0) as u32), exists))
}

/// The first line of a child's standard error that says what went wrong (`ERROR:`, `FATAL:`,
/// `error:`), else its last non-empty line; one line, for an `error:` message.
pub fn stderr_reason(stderr: &str) -> String {
    let lines: Vec<&str> = stderr.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    let pick = lines
        .iter()
        .find(|l| l.contains("ERROR:") || l.contains("FATAL:") || l.contains("error:"))
        .or(lines.last())
        .copied()
        .unwrap_or("no message");
    let mut s: String = pick.split_whitespace().collect::<Vec<_>>().join(" ");
    if s.len() > 400 {
        let mut cut = 400;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push('…');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tool(path: &str, major: u32) -> Tool {
        Tool { path: path.into(), version: PgVersion { major, text: format!("{major}.1") } }
    }

    #[test]
    fn versions_parse() {
        let v = parse_tool_version("pg_dump (PostgreSQL) 15.20 (Debian 15.20-0+deb12u1)\n").unwrap();
        assert_eq!((v.major, v.text.as_str()), (15, "15.20"));
        assert_eq!(parse_tool_version("psql (PostgreSQL) 17.2").unwrap().major, 17);
        assert_eq!(parse_tool_version("pg_dump (PostgreSQL) 9.6.24").unwrap().major, 9);
        assert!(parse_tool_version("something else 15.2").is_none());
        assert_eq!(version_from_num(150020), PgVersion { major: 15, text: "15.20".into() });
        assert_eq!(version_from_num(170002).major, 17);
        assert_eq!(version_from_num(90624).text, "9.6.24");
    }

    #[test]
    fn path_first_then_newest_installed() {
        let server = version_from_num(150004);
        let installed =
            vec![tool("/usr/lib/postgresql/13/bin/pg_dump", 13), tool("/usr/lib/postgresql/16/bin/pg_dump", 16)];
        let on_path = Some(tool("/usr/bin/pg_dump", 15));
        assert_eq!(choose("pg_dump", &server, on_path, installed.clone()).unwrap().path, Path::new("/usr/bin/pg_dump"));
        let old_on_path = Some(tool("/usr/bin/pg_dump", 14));
        assert_eq!(
            choose("pg_dump", &server, old_on_path, installed.clone()).unwrap().path,
            Path::new("/usr/lib/postgresql/16/bin/pg_dump")
        );
        assert_eq!(choose("pg_dump", &server, None, installed).unwrap().version.major, 16);
    }

    #[test]
    fn a_missing_version_is_one_line_that_says_what_to_install() {
        let server = version_from_num(150004);
        let err = choose("pg_dump", &server, None, vec![tool("/usr/lib/postgresql/13/bin/pg_dump", 13)]).unwrap_err();
        assert_eq!(err, "pg_dump 15 or newer is needed for a PostgreSQL 15 server; install postgresql-client-15");
        let err = choose("psql", &server, Some(tool("/usr/bin/psql", 14)), vec![]).unwrap_err();
        assert!(err.starts_with("psql 15 or newer is needed") && err.contains("/usr/bin/psql, is 14.1"), "{err}");
        assert!(!err.contains('\n'));
    }

    #[test]
    fn the_child_environment_carries_the_password_and_the_display_hides_it() {
        let cfg =
            DbConfig { url: Some("postgres://alice:s3cr%20t@db.example:6543/app%3Dx".into()), ..DbConfig::default() };
        let env = child_env(&cfg).unwrap();
        let get = |k: &str| env.iter().find(|(n, _)| *n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("PGHOST"), Some("db.example"));
        assert_eq!(get("PGPORT"), Some("6543"));
        assert_eq!(get("PGUSER"), Some("alice"));
        assert_eq!(get("PGDATABASE"), Some("app=x"));
        assert_eq!(get("PGPASSWORD"), Some("s3cr t"));
        let shown = display_command(&tool("/usr/bin/psql", 15), &env, &["--file".into(), "/tmp/a b.sql".into()]);
        assert!(!shown.contains("s3cr"), "{shown}");
        assert!(
            shown.contains("PGPASSWORD=***") && shown.contains("'/tmp/a b.sql'") && shown.contains("PGDATABASE=app=x "),
            "{shown}"
        );
        // DB_* settings without a password: no PGPASSWORD at all.
        let env = child_env(&DbConfig::default()).unwrap();
        assert!(!env.iter().any(|(k, _)| *k == "PGPASSWORD"));
        assert!(env.contains(&("PGDATABASE", "adcluster_db".to_string())));
    }

    #[test]
    fn the_reason_is_the_error_line() {
        let e = "psql:/x.sql:12: NOTICE:  hello\npsql:/x.sql:40: ERROR:  syntax error at or near \"zz\"\nLINE 1: zz\n";
        assert_eq!(stderr_reason(e), "psql:/x.sql:40: ERROR: syntax error at or near \"zz\"");
        assert_eq!(stderr_reason("a\n\nlast words\n"), "last words");
        assert_eq!(stderr_reason(""), "no message");
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
    }
}
