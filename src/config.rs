//! Configuration: built-in defaults < `.env` in the working directory < the process environment
//! < command-line flags. One table (`SETTINGS`) lists every setting with its variable, flag,
//! default and meaning; `--help` is printed from it, so the two cannot drift apart.
//!
//! Values are read as strings first, then parsed into `Config` with errors that name the
//! setting and say what is expected. Must never: print a secret (`SECRET_KEY`, `DB_PASSWORD`,
//! the password in `DATABASE_URL`) — `Config::redacted_summary` masks them.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

/// One setting: environment variable, flag, default (empty = unset), help text.
pub struct Setting {
    pub var: &'static str,
    pub flag: &'static str,
    pub default: &'static str,
    pub help: &'static str,
    pub secret: bool,
}

const fn s(var: &'static str, flag: &'static str, default: &'static str, help: &'static str) -> Setting {
    Setting { var, flag, default, help, secret: false }
}

const fn secret(var: &'static str, flag: &'static str, help: &'static str) -> Setting {
    Setting { var, flag, default: "", help, secret: true }
}

/// Every setting the server reads.
pub const SETTINGS: &[Setting] = &[
    s("HOST", "--host", "0.0.0.0", "address to listen on"),
    s("PORT", "--port", "8000", "port to listen on (0: any free port; the bound address is logged)"),
    s("DB_HOST", "--db-host", "localhost", "PostgreSQL host"),
    s("DB_PORT", "--db-port", "5432", "PostgreSQL port"),
    s("DB_NAME", "--db-name", "adcluster_db", "database name (created when missing)"),
    s("DB_USER", "--db-user", "postgres", "database user"),
    secret("DB_PASSWORD", "--db-password", "database password"),
    secret("DATABASE_URL", "--database-url", "postgres:// URL; wins over the DB_* settings"),
    s("DB_POOL_SIZE", "--db-pool-size", "16", "most PostgreSQL connections in the pool"),
    s("DB_CHECKOUT_TIMEOUT_MS", "--db-checkout-timeout-ms", "2000", "how long a request waits for a pooled connection"),
    secret(
        "SECRET_KEY",
        "--secret-key",
        "HS256 key for tokens, at least 32 bytes (unset: generated into DATA_DIR/secret_key)",
    ),
    s("ACCESS_TOKEN_EXPIRE_MINUTES", "--access-token-expire-minutes", "30", "token lifetime in minutes"),
    s("UPLOAD_DIR", "--upload-dir", "uploads", "root folder of uploaded files"),
    s("BACKUP_DIR", "--backup-dir", "dbBackup", "where backups are written and looked for"),
    s("DATA_DIR", "--data-dir", "data", "local state: generated secret, write-behind spool"),
    s("MAX_UPLOAD_MB", "--max-upload-mb", "100", "largest accepted upload, per file, in MiB"),
    s("MAX_UPLOAD_FILES", "--max-upload-files", "20", "most files in one POST /api/upload/multiple"),
    s("ALLOW_SIGNUP", "--allow-signup", "true", "true: POST /users/ is open; false: superusers only"),
    s("WS_AUTH", "--ws-auth", "optional", "optional or required: whether a WebSocket connect needs a token"),
    s("WS_MAX_CLIENTS", "--ws-max-clients", "10000", "most WebSocket sessions at once (over it: 503)"),
    s(
        "WS_QUEUE_FRAMES",
        "--ws-queue-frames",
        "1024",
        "most frames queued for one WebSocket client (over it: close 1008)",
    ),
    s("WS_QUEUE_KB", "--ws-queue-kb", "4096", "most KiB queued for one WebSocket client (over it: close 1008)"),
    s("WS_THREAD_STACK_KB", "--ws-thread-stack-kb", "128", "stack size of each WebSocket session thread, in KiB"),
    s("WS_PING_INTERVAL_SECS", "--ws-ping-interval-secs", "30", "the server pings each WebSocket client this often"),
    s("WS_PING_TIMEOUT_SECS", "--ws-ping-timeout-secs", "60", "a WebSocket client silent this long is dropped"),
    s("ALERT_COMMAND", "--alert-command", "", "shell command run with each database alert as JSON on stdin"),
    s("WORKERS", "--workers", "64", "HTTP worker threads"),
    s("MAX_CONNECTIONS", "--max-connections", "4096", "most open HTTP connections (over it: 503 and close)"),
    s("MAX_HEADER_BYTES", "--max-header-bytes", "16384", "largest request head in bytes (over it: 431)"),
    s("MAX_HEADERS", "--max-headers", "100", "most header fields in a request (over it: 431)"),
    s("MAX_JSON_BYTES", "--max-json-bytes", "1048576", "largest JSON or form request body in bytes (over it: 413)"),
    s("HEAD_TIMEOUT_SECS", "--head-timeout-secs", "10", "time for a request head to arrive (then 408)"),
    s("BODY_TIMEOUT_SECS", "--body-timeout-secs", "30", "longest silence while a request body arrives (then 408)"),
    s(
        "MIN_BODY_RATE_KB",
        "--min-body-rate-kb",
        "16",
        "slowest average KiB/s for a large request body or a file download after BODY_TIMEOUT_SECS",
    ),
    s("KEEPALIVE_TIMEOUT_SECS", "--keepalive-timeout-secs", "30", "idle keep-alive connections are closed after this"),
    s("SHUTDOWN_GRACE_SECS", "--shutdown-grace-secs", "30", "on SIGTERM, how long requests in flight may take"),
    secret(
        "DB_GUI_TOKEN",
        "--db-gui-token",
        "access token of `adcluster db-gui` (unset: a random one per start, printed on its start line)",
    ),
    s("DB_GUI_TIMEOUT_SECS", "--db-gui-timeout-secs", "30", "db-gui: statement_timeout of every query it runs"),
    s(
        "DB_GUI_MAX_ROWS",
        "--db-gui-max-rows",
        "10000",
        "db-gui: most rows a query or a table page shows (exports are whole)",
    ),
    s("DB_GUI_HISTORY", "--db-gui-history", "200", "db-gui: how many recent queries the history keeps (in memory)"),
    s("LOG_LEVEL", "--log-level", "info", "error, warn, info or debug (RUST_LOG is read too)"),
    s(
        "ADCLUSTER_TEST_ROUTES",
        "--test-routes",
        "false",
        "true: add /__test/* routes used by the test suite (never in production)",
    ),
];

/// The raw string values, after layering.
#[derive(Debug, Clone, Default)]
pub struct RawConfig {
    values: HashMap<&'static str, String>,
}

/// A configuration problem, worded for the person who has to fix it.
#[derive(Debug)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl RawConfig {
    /// Layer the sources. `dotenv` is the text of `.env` (if any), `env` the process
    /// environment, `flags` the command-line arguments after the command name.
    /// Returns the config and the arguments that are not settings flags.
    pub fn layer(
        dotenv: Option<&str>,
        env: &dyn Fn(&str) -> Option<String>,
        flags: &[String],
    ) -> Result<(RawConfig, Vec<String>), ConfigError> {
        let mut values: HashMap<&'static str, String> =
            SETTINGS.iter().map(|s| (s.var, s.default.to_string())).collect();
        if let Some(text) = dotenv {
            for (k, v) in parse_dotenv(text) {
                if let Some(setting) = SETTINGS.iter().find(|s| s.var == k) {
                    values.insert(setting.var, v);
                }
            }
        }
        for setting in SETTINGS {
            if let Some(v) = env(setting.var) {
                values.insert(setting.var, v);
            }
        }
        if values.get("LOG_LEVEL").is_some_and(|v| v == "info") {
            if let Some(v) = env("RUST_LOG") {
                values.insert("LOG_LEVEL", v);
            }
        }
        let mut rest = Vec::new();
        let mut i = 0;
        while i < flags.len() {
            let arg = &flags[i];
            let (name, inline) = match arg.split_once('=') {
                Some((n, v)) if n.starts_with("--") => (n, Some(v.to_string())),
                _ => (arg.as_str(), None),
            };
            match SETTINGS.iter().find(|s| s.flag == name) {
                Some(setting) => {
                    let value = match inline {
                        Some(v) => v,
                        None => {
                            i += 1;
                            flags
                                .get(i)
                                .cloned()
                                .ok_or_else(|| ConfigError(format!("{name} needs a value (see --help)")))?
                        }
                    };
                    values.insert(setting.var, value);
                }
                None => rest.push(arg.clone()),
            }
            i += 1;
        }
        Ok((RawConfig { values }, rest))
    }

    pub fn get(&self, var: &str) -> &str {
        self.values.get(var).map(String::as_str).unwrap_or("")
    }

    fn opt(&self, var: &str) -> Option<String> {
        let v = self.get(var);
        (!v.is_empty()).then(|| v.to_string())
    }

    fn num<T>(&self, var: &str, min: T) -> Result<T, ConfigError>
    where
        T: std::str::FromStr + PartialOrd + std::fmt::Display + Copy,
    {
        let raw = self.get(var).trim();
        let n: T = raw.parse().map_err(|_| ConfigError(format!("{var}={raw:?} is not a valid number")))?;
        if n < min {
            return Err(ConfigError(format!("{var}={raw} is too small (at least {min})")));
        }
        Ok(n)
    }

    fn boolean(&self, var: &str) -> Result<bool, ConfigError> {
        match self.get(var).trim().to_ascii_lowercase().as_str() {
            "1" | "true" | "yes" | "on" => Ok(true),
            "0" | "false" | "no" | "off" | "" => Ok(false),
            other => Err(ConfigError(format!("{var}={other:?}: expected true or false"))),
        }
    }
}

/// Whether WebSocket connects need a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WsAuth {
    Optional,
    Required,
}

/// The typed configuration.
#[derive(Clone)]
pub struct Config {
    pub host: String,
    pub port: u16,
    pub db_host: String,
    pub db_port: u16,
    pub db_name: String,
    pub db_user: String,
    pub db_password: String,
    pub database_url: Option<String>,
    pub db_pool_size: u32,
    pub db_checkout_timeout: Duration,
    pub secret_key: Option<String>,
    pub access_token_expire: Duration,
    pub upload_dir: PathBuf,
    pub backup_dir: PathBuf,
    pub data_dir: PathBuf,
    pub max_upload_bytes: u64,
    pub max_upload_files: usize,
    pub allow_signup: bool,
    pub ws_auth: WsAuth,
    pub ws_max_clients: usize,
    pub ws_queue_frames: usize,
    pub ws_queue_kb: usize,
    pub ws_thread_stack_kb: usize,
    pub ws_ping_interval: Duration,
    pub ws_ping_timeout: Duration,
    pub alert_command: Option<String>,
    pub workers: usize,
    pub max_connections: usize,
    pub max_header_bytes: usize,
    pub max_headers: usize,
    pub max_json_bytes: u64,
    pub head_timeout: Duration,
    pub body_timeout: Duration,
    pub keepalive_timeout: Duration,
    pub min_body_rate: u64,
    pub shutdown_grace: Duration,
    pub log_level: crate::util::log::Level,
    pub test_routes: bool,
    pub db_gui_token: Option<String>,
    pub db_gui_timeout: Duration,
    pub db_gui_max_rows: usize,
    pub db_gui_history: usize,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted_summary())
    }
}

impl Config {
    pub fn from_raw(raw: &RawConfig) -> Result<Config, ConfigError> {
        let secs = |var: &str| -> Result<Duration, ConfigError> { Ok(Duration::from_secs(raw.num::<u64>(var, 1)?)) };
        let ws_auth = match raw.get("WS_AUTH").trim().to_ascii_lowercase().as_str() {
            "optional" | "" => WsAuth::Optional,
            "required" => WsAuth::Required,
            other => return Err(ConfigError(format!("WS_AUTH={other:?}: expected optional or required"))),
        };
        if raw.num::<u64>("WS_PING_TIMEOUT_SECS", 1)? <= raw.num::<u64>("WS_PING_INTERVAL_SECS", 1)? {
            return Err(ConfigError(format!(
                "WS_PING_TIMEOUT_SECS={} must be longer than WS_PING_INTERVAL_SECS={} (a client needs a ping to answer)",
                raw.get("WS_PING_TIMEOUT_SECS"),
                raw.get("WS_PING_INTERVAL_SECS")
            )));
        }
        let log_level = crate::util::log::Level::parse(raw.get("LOG_LEVEL")).ok_or_else(|| {
            ConfigError(format!("LOG_LEVEL={:?}: expected error, warn, info or debug", raw.get("LOG_LEVEL")))
        })?;
        Ok(Config {
            host: raw.get("HOST").trim().to_string(),
            port: raw.num::<u16>("PORT", 0)?,
            db_host: raw.get("DB_HOST").to_string(),
            db_port: raw.num::<u16>("DB_PORT", 1)?,
            db_name: raw.get("DB_NAME").to_string(),
            db_user: raw.get("DB_USER").to_string(),
            db_password: raw.get("DB_PASSWORD").to_string(),
            database_url: raw.opt("DATABASE_URL"),
            db_pool_size: raw.num::<u32>("DB_POOL_SIZE", 1)?,
            db_checkout_timeout: Duration::from_millis(raw.num::<u64>("DB_CHECKOUT_TIMEOUT_MS", 1)?),
            secret_key: raw.opt("SECRET_KEY"),
            access_token_expire: Duration::from_secs(60 * raw.num::<u64>("ACCESS_TOKEN_EXPIRE_MINUTES", 1)?),
            upload_dir: PathBuf::from(raw.get("UPLOAD_DIR")),
            backup_dir: PathBuf::from(raw.get("BACKUP_DIR")),
            data_dir: PathBuf::from(raw.get("DATA_DIR")),
            max_upload_bytes: raw.num::<u64>("MAX_UPLOAD_MB", 1)?.saturating_mul(1024 * 1024),
            max_upload_files: raw.num::<usize>("MAX_UPLOAD_FILES", 1)?,
            allow_signup: raw.boolean("ALLOW_SIGNUP")?,
            ws_auth,
            ws_max_clients: raw.num::<usize>("WS_MAX_CLIENTS", 1)?,
            ws_queue_frames: raw.num::<usize>("WS_QUEUE_FRAMES", 1)?,
            ws_queue_kb: raw.num::<usize>("WS_QUEUE_KB", 1)?,
            ws_thread_stack_kb: raw.num::<usize>("WS_THREAD_STACK_KB", 64)?,
            ws_ping_interval: secs("WS_PING_INTERVAL_SECS")?,
            ws_ping_timeout: secs("WS_PING_TIMEOUT_SECS")?,
            alert_command: raw.opt("ALERT_COMMAND"),
            workers: raw.num::<usize>("WORKERS", 1)?,
            max_connections: raw.num::<usize>("MAX_CONNECTIONS", 1)?,
            max_header_bytes: raw.num::<usize>("MAX_HEADER_BYTES", 256)?,
            max_headers: raw.num::<usize>("MAX_HEADERS", 1)?,
            max_json_bytes: raw.num::<u64>("MAX_JSON_BYTES", 1)?,
            head_timeout: secs("HEAD_TIMEOUT_SECS")?,
            body_timeout: secs("BODY_TIMEOUT_SECS")?,
            keepalive_timeout: secs("KEEPALIVE_TIMEOUT_SECS")?,
            min_body_rate: raw.num::<u64>("MIN_BODY_RATE_KB", 0)?.saturating_mul(1024),
            shutdown_grace: secs("SHUTDOWN_GRACE_SECS")?,
            log_level,
            test_routes: raw.boolean("ADCLUSTER_TEST_ROUTES")?,
            db_gui_token: raw.opt("DB_GUI_TOKEN"),
            db_gui_timeout: secs("DB_GUI_TIMEOUT_SECS")?,
            db_gui_max_rows: raw.num::<usize>("DB_GUI_MAX_ROWS", 1)?,
            db_gui_history: raw.num::<usize>("DB_GUI_HISTORY", 0)?,
        })
    }

    /// Load from the real sources: `.env` in the working directory, the environment, `args`.
    pub fn load(args: &[String]) -> Result<(Config, Vec<String>), ConfigError> {
        let dotenv = std::fs::read_to_string(".env").ok();
        let env = |k: &str| std::env::var(k).ok();
        let (raw, rest) = RawConfig::layer(dotenv.as_deref(), &env, args)?;
        Ok((Config::from_raw(&raw)?, rest))
    }

    /// One line for the start-up log, with secrets masked.
    pub fn redacted_summary(&self) -> String {
        let db = match &self.database_url {
            Some(url) => redact_url(url),
            None => format!("{}@{}:{}/{}", self.db_user, self.db_host, self.db_port, self.db_name),
        };
        format!(
            "listen={}:{} db={} pool={} workers={} max_connections={} upload_dir={} data_dir={} secret_key={}",
            self.host,
            self.port,
            db,
            self.db_pool_size,
            self.workers,
            self.max_connections,
            self.upload_dir.display(),
            self.data_dir.display(),
            if self.secret_key.is_some() { "set" } else { "unset" }
        )
    }
}

/// `postgres://user:pw@host/db` → `postgres://user:***@host/db`.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "***".into();
    };
    let (auth, host) = match rest.rsplit_once('@') {
        Some(pair) => pair,
        None => return url.to_string(),
    };
    let user = auth.split(':').next().unwrap_or_default();
    format!("{scheme}://{user}:***@{host}")
}

/// Parse `.env` text: `KEY=VALUE` lines, `#` comments, optional `export `, optional quotes.
pub fn parse_dotenv(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|line| {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                return None;
            }
            let line = line.strip_prefix("export ").unwrap_or(line);
            let (k, v) = line.split_once('=')?;
            let v = v.trim();
            let v = if v.len() >= 2
                && ((v.starts_with('"') && v.ends_with('"')) || (v.starts_with('\'') && v.ends_with('\'')))
            {
                &v[1..v.len() - 1]
            } else {
                // An unquoted value ends at an inline comment.
                v.split(" #").next().unwrap_or(v).trim()
            };
            Some((k.trim().to_string(), v.to_string()))
        })
        .collect()
}

/// The `--help` text, generated from `SETTINGS`.
pub fn help_text() -> String {
    let mut out = String::from(
        "adcluster — the Adcluster server\n\n\
         USAGE:\n    adcluster [serve] [FLAGS]\n\n\
         COMMANDS:\n    serve      run the server (the default)\n    migrate    create the database if missing, apply the schema, exit\n    \
         user create --email E --password P|- [--superuser] [--full-name N]\n               create a user (the way to make the first superuser); - reads the password from stdin\n    \
         db-gui [--host 127.0.0.1] [--port 3030] [--allow-writes]\n               the database web GUI (read-only unless --allow-writes); prints its URL with the token\n    \
         help       print this text\n\n\
         SETTINGS (flag, environment variable, default). Later wins: defaults < .env < environment < flags.\n",
    );
    for s in SETTINGS {
        let default = if s.secret || s.default.is_empty() { "(unset)".to_string() } else { s.default.to_string() };
        out.push_str(&format!(
            "    {:<34} {:<28} {}\n        {}\n",
            format!("{} <value>", s.flag),
            s.var,
            default,
            s.help
        ));
    }
    out.push_str("\nExit codes: 0 success, 1 failure, 2 bad usage.\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(dotenv: Option<&str>, env: &[(&str, &str)], flags: &[&str]) -> Result<(Config, Vec<String>), ConfigError> {
        let env: HashMap<String, String> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let lookup = move |k: &str| env.get(k).cloned();
        let flags: Vec<String> = flags.iter().map(|s| s.to_string()).collect();
        let (raw, rest) = RawConfig::layer(dotenv, &lookup, &flags)?;
        Ok((Config::from_raw(&raw)?, rest))
    }

    #[test]
    fn defaults_match_the_contract() {
        let (c, rest) = layer(None, &[], &[]).unwrap();
        assert!(rest.is_empty());
        assert_eq!((c.host.as_str(), c.port), ("0.0.0.0", 8000));
        assert_eq!(
            (c.db_host.as_str(), c.db_port, c.db_name.as_str(), c.db_user.as_str()),
            ("localhost", 5432, "adcluster_db", "postgres")
        );
        assert_eq!(c.access_token_expire, Duration::from_secs(30 * 60));
        assert_eq!(c.upload_dir, PathBuf::from("uploads"));
        assert_eq!(c.max_upload_bytes, 100 * 1024 * 1024);
        assert!(c.allow_signup);
        assert_eq!(c.ws_auth, WsAuth::Optional);
        assert_eq!(c.workers, 64);
        assert!(c.secret_key.is_none());
    }

    #[test]
    fn later_sources_win() {
        let dotenv = "# comment\nPORT=1000\nexport DB_NAME='from_env_file'\nWORKERS=3 # inline\n";
        let (c, _) = layer(Some(dotenv), &[], &[]).unwrap();
        assert_eq!((c.port, c.db_name.as_str(), c.workers), (1000, "from_env_file", 3));
        let (c, _) = layer(Some(dotenv), &[("PORT", "2000")], &[]).unwrap();
        assert_eq!(c.port, 2000);
        let (c, rest) = layer(Some(dotenv), &[("PORT", "2000")], &["--port", "3000", "--workers=5", "extra"]).unwrap();
        assert_eq!((c.port, c.workers), (3000, 5));
        assert_eq!(rest, vec!["extra".to_string()]);
    }

    #[test]
    fn bad_values_name_the_setting() {
        let err = layer(None, &[("PORT", "eighty")], &[]).unwrap_err().0;
        assert!(err.contains("PORT"), "{err}");
        let err = layer(None, &[], &["--workers", "0"]).unwrap_err().0;
        assert!(err.contains("WORKERS") && err.contains("at least 1"), "{err}");
        assert!(layer(None, &[], &["--port"]).unwrap_err().0.contains("--port needs a value"));
        assert!(layer(None, &[("WS_AUTH", "maybe")], &[]).is_err());
        assert!(layer(None, &[("ALLOW_SIGNUP", "perhaps")], &[]).is_err());
        let err = layer(None, &[("WS_PING_INTERVAL_SECS", "30"), ("WS_PING_TIMEOUT_SECS", "30")], &[]).unwrap_err().0;
        assert!(err.contains("WS_PING_TIMEOUT_SECS"), "{err}");
    }

    #[test]
    fn rust_log_is_read_when_log_level_is_default() {
        let (c, _) = layer(None, &[("RUST_LOG", "adcluster=debug")], &[]).unwrap();
        assert_eq!(c.log_level, crate::util::log::Level::Debug);
        let (c, _) = layer(None, &[("RUST_LOG", "debug"), ("LOG_LEVEL", "warn")], &[]).unwrap();
        assert_eq!(c.log_level, crate::util::log::Level::Warn);
    }

    #[test]
    fn secrets_never_show() {
        let (c, _) =
            layer(None, &[("DATABASE_URL", "postgres://u:hunter2@h/db"), ("SECRET_KEY", "k".repeat(40).as_str())], &[])
                .unwrap();
        let shown = format!("{c:?} {}", c.redacted_summary());
        assert!(!shown.contains("hunter2"));
        assert!(!shown.contains(&"k".repeat(40)));
        assert!(help_text().contains("--secret-key"));
        for s in SETTINGS {
            assert!(help_text().contains(s.var), "{} missing from --help", s.var);
        }
    }
}
