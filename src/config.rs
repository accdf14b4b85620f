//! Configuration: built-in defaults < `.env` in the working directory < the process environment
//! < command-line flags. One table (`SETTINGS`) lists every setting with its variable, flag,
//! default and meaning; `--help` is printed from it, so the two cannot drift apart.
//!
//! Values are read as strings first, then parsed into `Config` with errors that name the
//! setting and say what is expected (a number out of range says the range). One rule for empty
//! values everywhere: an empty value is not a value — the setting keeps what the layer before
//! gave it, in the end its default. A `.env` line that is not `KEY=VALUE` is an error naming
//! the file and the line.
//!
//! Secrets (`secret: true` rows) have no command-line flag, because any user of the machine
//! can read a process's command line; they come from the environment, `.env`, or a file named
//! by `<NAME>_FILE`. Must never: print a secret (`SECRET_KEY`, `DB_PASSWORD`, the password in
//! `DATABASE_URL`) — `Config::redacted_summary` masks them; accept one as a flag.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// One setting: environment variable, flag (empty: none — secrets), default (empty = unset),
/// help text.
pub struct Setting {
    pub var: &'static str,
    pub flag: &'static str,
    pub default: &'static str,
    pub help: &'static str,
    pub secret: bool,
    /// The value is a file or folder name (relative: to the working directory). The wrapper
    /// scripts make such flags' values absolute before they change directory.
    pub path: bool,
}

const fn s(var: &'static str, flag: &'static str, default: &'static str, help: &'static str) -> Setting {
    Setting { var, flag, default, help, secret: false, path: false }
}

/// A setting whose value is a path (see `Setting::path`).
const fn path_setting(var: &'static str, flag: &'static str, default: &'static str, help: &'static str) -> Setting {
    Setting { var, flag, default, help, secret: false, path: true }
}

/// A secret: no flag (a command line is visible to every user of the machine), never printed.
/// Its `<var>_FILE` row (see `secret_file`) reads it from a file.
const fn secret(var: &'static str, help: &'static str) -> Setting {
    Setting { var, flag: "", default: "", help, secret: true, path: false }
}

/// The flag a secret would have had: refused with an explanation instead of "unexpected argument".
fn refused_secret_flag(var: &str) -> String {
    format!("--{}", var.to_ascii_lowercase().replace('_', "-"))
}

/// Every setting the server reads.
pub const SETTINGS: &[Setting] = &[
    s("HOST", "--host", "0.0.0.0", "address to listen on"),
    s("PORT", "--port", "8000", "port to listen on (0: any free port; the bound address is logged)"),
    s("DB_HOST", "--db-host", "localhost", "PostgreSQL host"),
    s("DB_PORT", "--db-port", "5432", "PostgreSQL port"),
    s("DB_NAME", "--db-name", "adcluster_db", "database name (created when missing)"),
    s("DB_USER", "--db-user", "postgres", "database user"),
    secret("DB_PASSWORD", "database password"),
    path_setting("DB_PASSWORD_FILE", "--db-password-file", "", "file holding DB_PASSWORD (one trailing newline removed)"),
    secret("DATABASE_URL", "postgres:// URL; wins over the DB_* settings"),
    path_setting("DATABASE_URL_FILE", "--database-url-file", "", "file holding DATABASE_URL"),
    s(
        "DB_POOL_SIZE",
        "--db-pool-size",
        "auto",
        "most PostgreSQL connections in the pool (auto: 2 per core, at least 4)",
    ),
    s("DB_CHECKOUT_TIMEOUT_MS", "--db-checkout-timeout-ms", "2000", "how long a request waits for a pooled connection"),
    s(
        "DB_STATEMENT_TIMEOUT_MS",
        "--db-statement-timeout-ms",
        "10000",
        "longest one query of a request may run, lock waits included, before 503 (0: no limit)",
    ),
    secret("SECRET_KEY", "HS256 key for tokens, at least 32 bytes (unset: generated into DATA_DIR/secret_key)"),
    path_setting("SECRET_KEY_FILE", "--secret-key-file", "", "file holding SECRET_KEY"),
    s("ACCESS_TOKEN_EXPIRE_MINUTES", "--access-token-expire-minutes", "30", "token lifetime in minutes"),
    path_setting("UPLOAD_DIR", "--upload-dir", "uploads", "root folder of uploaded files"),
    path_setting("BACKUP_DIR", "--backup-dir", "dbBackup", "where backups are written and looked for"),
    path_setting("DATA_DIR", "--data-dir", "data", "local state: generated secret, write-behind spool (DATA_DIR/spool/), upload intents (DATA_DIR/intents/)"),
    s(
        "ACCOUNT_CACHE_SIZE",
        "--account-cache-size",
        "100000",
        "most accounts kept in memory for logins while the database is down (least recently used go first)",
    ),
    s(
        "ACCOUNT_CACHE_REFRESH_SECS",
        "--account-cache-refresh-secs",
        "10",
        "every this often the cached accounts are read again: at most this stale when the database goes away",
    ),
    s("MAX_UPLOAD_MB", "--max-upload-mb", "100", "largest accepted upload, per file, in MiB"),
    s("MAX_UPLOAD_FILES", "--max-upload-files", "20", "most files in one POST /api/upload/multiple"),
    s("ALLOW_SIGNUP", "--allow-signup", "true", "true: POST /users/ is open; false: superusers only"),
    s("WS_AUTH", "--ws-auth", "optional", "optional or required: whether a WebSocket connect needs a token"),
    s(
        "WS_MAX_CLIENTS",
        "--ws-max-clients",
        "10000",
        "most WebSocket sessions at once (over it: 503); lowered at start to what the machine can start as threads",
    ),
    s(
        "WS_MAX_CLIENTS_PER_ADDR",
        "--ws-max-clients-per-addr",
        "1024",
        "most WebSocket sessions from one client address (over it: 429); 0: no cap (behind a reverse proxy)",
    ),
    s(
        "WS_QUEUE_FRAMES",
        "--ws-queue-frames",
        "1024",
        "most frames queued for one WebSocket client (over it: close 1008)",
    ),
    s("WS_QUEUE_KB", "--ws-queue-kb", "4096", "most KiB queued for one WebSocket client (over it: close 1008)"),
    s(
        "WS_QUEUE_TOTAL_MB",
        "--ws-queue-total-mb",
        "256",
        "most MiB of frames queued for all WebSocket clients together (over it: a client that is behind is closed 1008)",
    ),
    s("WS_THREAD_STACK_KB", "--ws-thread-stack-kb", "128", "stack size of each WebSocket session thread, in KiB"),
    s(
        "WS_IO_URING",
        "--ws-io-uring",
        "auto",
        "auto (a fan-out's sends in one io_uring submission where the kernel allows it) or off (one send each)",
    ),
    s("WS_PING_INTERVAL_SECS", "--ws-ping-interval-secs", "30", "the server pings each WebSocket client this often"),
    s("WS_PING_TIMEOUT_SECS", "--ws-ping-timeout-secs", "60", "a WebSocket client silent this long is dropped"),
    s("ALERT_COMMAND", "--alert-command", "", "shell command run with each database alert as JSON on stdin"),
    s(
        "CLUSTER",
        "--cluster",
        "off",
        "off, or postgres: several instances on one database act as one (docs/cluster.md)",
    ),
    s(
        "INSTANCE_ID",
        "--instance-id",
        "",
        "this instance's name in a cluster, unique per instance (unset: host name:port)",
    ),
    s(
        "CLUSTER_PRESENCE_TIMEOUT_SECS",
        "--cluster-presence-timeout-secs",
        "15",
        "a dead instance's clients are dropped everywhere within this many seconds",
    ),
    s(
        "CLUSTER_QUEUE_KB",
        "--cluster-queue-kb",
        "16384",
        "most KiB of messages waiting to be published to the other instances (over it: error frame)",
    ),
    s(
        "METRICS_ADDR",
        "--metrics-addr",
        "",
        "host:port of a separate listener for GET /metrics (Prometheus text); unset: no metrics",
    ),
    s("WORKERS", "--workers", "auto", "HTTP worker threads (auto: 16 per core)"),
    s("MAX_CONNECTIONS", "--max-connections", "4096", "most open HTTP connections (over it: 503 and close)"),
    s(
        "MAX_CONNECTIONS_PER_ADDR",
        "--max-connections-per-addr",
        "1024",
        "most open HTTP connections from one client address (over it: 429 and close)",
    ),
    s(
        "TRANSFER_WORKERS",
        "--transfer-workers",
        "0",
        "most workers reading large request bodies at once (0: half of WORKERS); the rest serve short requests",
    ),
    s(
        "MAX_TRANSFERS_PER_ADDR",
        "--max-transfers-per-addr",
        "0",
        "most large request bodies read at once for one client address (0: half of TRANSFER_WORKERS; more wait their turn)",
    ),
    s("MAX_HEADER_BYTES", "--max-header-bytes", "16384", "largest request head in bytes (over it: 431)"),
    s("MAX_HEADERS", "--max-headers", "100", "most header fields in a request (over it: 431)"),
    s("MAX_JSON_BYTES", "--max-json-bytes", "1048576", "largest JSON or form request body in bytes (over it: 413)"),
    s("HEAD_TIMEOUT_SECS", "--head-timeout-secs", "10", "time for a request head to arrive (then 408)"),
    s("BODY_TIMEOUT_SECS", "--body-timeout-secs", "30", "longest silence of a request body (then 408) or of a client reading a response; after it, a large body must keep MIN_BODY_RATE_KB"),
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
        "access token of `adcluster db-gui` (unset: a random one per start, printed on its start line)",
    ),
    path_setting("DB_GUI_TOKEN_FILE", "--db-gui-token-file", "", "file holding DB_GUI_TOKEN"),
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
        "debug builds only: true adds the /__test/* routes of the test suite (a release build has none)",
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

/// Where a value came from; a later layer wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Layer {
    Default,
    DotEnv,
    Env,
    Flag,
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
        RawConfig::layer_named(dotenv.map(|text| (".env", text)), env, flags)
    }

    /// `layer`, with the name of the `.env` file for its error messages (`NAME:LINE: ...`).
    pub fn layer_named(
        dotenv: Option<(&str, &str)>,
        env: &dyn Fn(&str) -> Option<String>,
        flags: &[String],
    ) -> Result<(RawConfig, Vec<String>), ConfigError> {
        let mut values: HashMap<&'static str, (String, Layer)> =
            SETTINGS.iter().map(|s| (s.var, (s.default.to_string(), Layer::Default))).collect();
        // Empty is not a value: it leaves what the layer before gave.
        let mut put = |var: &'static str, v: String, layer: Layer| {
            if !v.is_empty() {
                values.insert(var, (v, layer));
            }
        };
        if let Some((name, text)) = dotenv {
            let lines = parse_dotenv(text).map_err(|e| ConfigError(format!("{name}:{}: {}", e.line, e.message)))?;
            for (k, v) in lines {
                if let Some(setting) = SETTINGS.iter().find(|s| s.var == k) {
                    put(setting.var, v, Layer::DotEnv);
                }
            }
        }
        for setting in SETTINGS {
            if let Some(v) = env(setting.var) {
                put(setting.var, v, Layer::Env);
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
            if let Some(secret) = SETTINGS.iter().find(|s| s.secret && refused_secret_flag(s.var) == name) {
                return Err(ConfigError(format!(
                    "{name} is not accepted: every user of this machine can read a command line. \
                     Set {var} in the environment or in .env, or put it in a file named by {var}_FILE",
                    var = secret.var
                )));
            }
            match SETTINGS.iter().find(|s| !s.flag.is_empty() && s.flag == name) {
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
                    put(setting.var, value, Layer::Flag);
                }
                None => rest.push(arg.clone()),
            }
            i += 1;
        }
        if values.get("LOG_LEVEL").is_some_and(|(_, layer)| *layer == Layer::Default) {
            if let Some(v) = env("RUST_LOG").filter(|v| !v.is_empty()) {
                values.insert("LOG_LEVEL", (v, Layer::Env));
            }
        }
        // `<SECRET>_FILE`: the file's content stands for the secret, when given in a later
        // layer than the secret itself.
        for setting in SETTINGS.iter().filter(|s| s.secret) {
            let Some(file_var) = SETTINGS.iter().map(|s| s.var).find(|v| *v == format!("{}_FILE", setting.var)) else {
                continue;
            };
            let (path, file_layer) = values[file_var].clone();
            if file_layer == Layer::Default {
                continue;
            }
            let secret_layer = values[setting.var].1;
            if secret_layer == file_layer {
                return Err(ConfigError(format!(
                    "both {} and {file_var} are set (in the same place); keep one of them",
                    setting.var
                )));
            }
            if secret_layer > file_layer {
                continue;
            }
            let text = std::fs::read_to_string(&path)
                .map_err(|e| ConfigError(format!("{file_var}={path}: cannot read the file: {e}")))?;
            let value = text.strip_suffix('\n').map(|t| t.strip_suffix('\r').unwrap_or(t)).unwrap_or(&text);
            if value.is_empty() {
                return Err(ConfigError(format!("{file_var}={path}: the file is empty")));
            }
            if setting.var == "SECRET_KEY" && value.len() < crate::auth::token::MIN_SECRET_LEN {
                return Err(ConfigError(format!(
                    "{file_var}={path}: {}",
                    crate::auth::token::SecretError::ConfiguredTooShort
                )));
            }
            values.insert(setting.var, (value.to_string(), file_layer));
        }
        let values = values.into_iter().map(|(k, (v, _))| (k, v)).collect();
        Ok((RawConfig { values }, rest))
    }

    pub fn get(&self, var: &str) -> &str {
        self.values.get(var).map(String::as_str).unwrap_or("")
    }

    fn opt(&self, var: &str) -> Option<String> {
        let v = self.get(var);
        (!v.is_empty()).then(|| v.to_string())
    }

    /// A whole number of at least `min` (and at most the type's largest value).
    fn num<T: Int>(&self, var: &str, min: T) -> Result<T, ConfigError> {
        self.num_in(var, min, T::MAX)
    }

    /// A whole number from `min` to `max`; outside it, an error that says the range.
    fn num_in<T: Int>(&self, var: &str, min: T, max: T) -> Result<T, ConfigError> {
        let raw = self.get(var).trim();
        let n: i128 = raw
            .parse()
            .map_err(|_| ConfigError(format!("{var}={raw:?} is not a whole number (between {min} and {max})")))?;
        if n < min.into() || n > max.into() {
            return Err(ConfigError(format!("{var}={raw} must be between {min} and {max}")));
        }
        Ok(T::try_from(n).ok().expect("checked against the range"))
    }

    /// Seconds from 1 to a year (so no deadline computed from it can overflow).
    fn secs(&self, var: &str) -> Result<Duration, ConfigError> {
        Ok(Duration::from_secs(self.num_in::<u64>(var, 1, MAX_SECS)?))
    }

    fn boolean(&self, var: &str) -> Result<bool, ConfigError> {
        match self.get(var).trim().to_ascii_lowercase().as_str() {
            "1" | "true" | "yes" | "on" => Ok(true),
            "0" | "false" | "no" | "off" => Ok(false),
            other => Err(ConfigError(format!("{var}={other:?}: expected true or false"))),
        }
    }
}

/// The longest time setting: one year, in seconds.
const MAX_SECS: u64 = 365 * 24 * 3600;

/// The integer types settings are read into.
pub trait Int: Copy + std::fmt::Display + Into<i128> + TryFrom<i128> {
    const MAX: Self;
}

impl Int for u16 {
    const MAX: Self = u16::MAX;
}
impl Int for u32 {
    const MAX: Self = u32::MAX;
}
impl Int for u64 {
    const MAX: Self = u64::MAX;
}

/// `usize` has no `Into<i128>`; settings of that kind are read as `u32` (4 billion is beyond
/// any count this server can hold) and widened.
fn count(raw: &RawConfig, var: &str, min: u32) -> Result<usize, ConfigError> {
    raw.num::<u32>(var, min).map(|n| n as usize)
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
    /// `DB_STATEMENT_TIMEOUT_MS`; zero: no limit.
    pub db_statement_timeout: Duration,
    pub secret_key: Option<String>,
    pub access_token_expire: Duration,
    pub upload_dir: PathBuf,
    pub backup_dir: PathBuf,
    pub data_dir: PathBuf,
    pub account_cache_size: usize,
    pub account_cache_refresh: Duration,
    pub max_upload_bytes: u64,
    pub max_upload_files: usize,
    pub allow_signup: bool,
    pub ws_auth: WsAuth,
    pub ws_max_clients: usize,
    pub ws_max_clients_per_addr: usize,
    pub ws_queue_frames: usize,
    pub ws_queue_kb: usize,
    pub ws_queue_total_mb: usize,
    pub ws_thread_stack_kb: usize,
    /// `WS_IO_URING`: batch a fan-out's sends through io_uring when the kernel allows it.
    pub ws_io_uring: bool,
    pub ws_ping_interval: Duration,
    pub ws_ping_timeout: Duration,
    pub alert_command: Option<String>,
    /// `CLUSTER=postgres`: several instances on one database.
    pub cluster: bool,
    pub instance_id: Option<String>,
    pub cluster_presence_timeout: Duration,
    pub cluster_queue_kb: usize,
    /// `METRICS_ADDR`: where `GET /metrics` listens (never on the API's port); `None`: off.
    pub metrics_addr: Option<String>,
    pub workers: usize,
    pub max_connections: usize,
    pub max_connections_per_addr: usize,
    pub transfer_workers: usize,
    pub max_transfers_per_addr: usize,
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
        let secs = |var: &str| raw.secs(var);
        let ws_auth = match raw.get("WS_AUTH").trim().to_ascii_lowercase().as_str() {
            "optional" | "" => WsAuth::Optional,
            "required" => WsAuth::Required,
            other => return Err(ConfigError(format!("WS_AUTH={other:?}: expected optional or required"))),
        };
        if secs("WS_PING_TIMEOUT_SECS")? <= secs("WS_PING_INTERVAL_SECS")? {
            return Err(ConfigError(format!(
                "WS_PING_TIMEOUT_SECS={} must be longer than WS_PING_INTERVAL_SECS={} (a client needs a ping to answer)",
                raw.get("WS_PING_TIMEOUT_SECS"),
                raw.get("WS_PING_INTERVAL_SECS")
            )));
        }
        let ws_io_uring = match raw.get("WS_IO_URING").trim().to_ascii_lowercase().as_str() {
            "auto" | "" => true,
            "off" => false,
            other => return Err(ConfigError(format!("WS_IO_URING={other:?}: expected auto or off"))),
        };
        let cluster = match raw.get("CLUSTER").trim().to_ascii_lowercase().as_str() {
            "off" | "" => false,
            "postgres" => true,
            other => return Err(ConfigError(format!("CLUSTER={other:?}: expected off or postgres"))),
        };
        let instance_id = raw.opt("INSTANCE_ID").map(|s| s.trim().to_string());
        if let Some(id) = &instance_id {
            if id.len() > 200 || id.chars().any(|c| c.is_control()) {
                return Err(ConfigError(
                    "INSTANCE_ID must be at most 200 characters, without control characters".into(),
                ));
            }
        }
        // A bad key is a bad setting (exit 2), found before anything starts.
        if raw.opt("SECRET_KEY").is_some_and(|k| k.len() < crate::auth::token::MIN_SECRET_LEN) {
            return Err(ConfigError(crate::auth::token::SecretError::ConfiguredTooShort.to_string()));
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
            db_pool_size: if raw.get("DB_POOL_SIZE").trim().eq_ignore_ascii_case("auto") {
                auto_pool_size()
            } else {
                raw.num_in::<u32>("DB_POOL_SIZE", 1, 10_000)?
            },
            db_checkout_timeout: Duration::from_millis(raw.num_in::<u64>(
                "DB_CHECKOUT_TIMEOUT_MS",
                1,
                MAX_SECS * 1000,
            )?),
            db_statement_timeout: Duration::from_millis(raw.num_in::<u64>(
                "DB_STATEMENT_TIMEOUT_MS",
                0,
                // PostgreSQL's own ceiling for the setting; above it every connection would fail.
                i32::MAX as u64,
            )?),
            secret_key: raw.opt("SECRET_KEY"),
            access_token_expire: Duration::from_secs(
                60 * raw.num_in::<u64>("ACCESS_TOKEN_EXPIRE_MINUTES", 1, MAX_SECS / 60)?,
            ),
            upload_dir: PathBuf::from(raw.get("UPLOAD_DIR")),
            backup_dir: PathBuf::from(raw.get("BACKUP_DIR")),
            data_dir: PathBuf::from(raw.get("DATA_DIR")),
            account_cache_size: count(raw, "ACCOUNT_CACHE_SIZE", 1)?,
            account_cache_refresh: raw.secs("ACCOUNT_CACHE_REFRESH_SECS")?,
            max_upload_bytes: raw.num_in::<u64>("MAX_UPLOAD_MB", 1, 1 << 30)? * 1024 * 1024,
            max_upload_files: count(raw, "MAX_UPLOAD_FILES", 1)?,
            allow_signup: raw.boolean("ALLOW_SIGNUP")?,
            ws_auth,
            ws_max_clients: count(raw, "WS_MAX_CLIENTS", 1)?,
            ws_max_clients_per_addr: count(raw, "WS_MAX_CLIENTS_PER_ADDR", 0)?,
            ws_queue_frames: count(raw, "WS_QUEUE_FRAMES", 1)?,
            ws_queue_kb: count(raw, "WS_QUEUE_KB", 1)?,
            ws_queue_total_mb: count(raw, "WS_QUEUE_TOTAL_MB", 1)?,
            ws_thread_stack_kb: raw.num_in::<u32>("WS_THREAD_STACK_KB", 64, 1 << 20)? as usize,
            ws_io_uring,
            ws_ping_interval: secs("WS_PING_INTERVAL_SECS")?,
            ws_ping_timeout: secs("WS_PING_TIMEOUT_SECS")?,
            alert_command: raw.opt("ALERT_COMMAND"),
            cluster,
            instance_id,
            cluster_presence_timeout: secs("CLUSTER_PRESENCE_TIMEOUT_SECS")?,
            cluster_queue_kb: raw.num_in::<u32>("CLUSTER_QUEUE_KB", 1, 1 << 22)? as usize,
            metrics_addr: raw.opt("METRICS_ADDR"),
            workers: if raw.get("WORKERS").trim().eq_ignore_ascii_case("auto") {
                auto_workers()
            } else {
                raw.num_in::<u32>("WORKERS", 1, 65_536)? as usize
            },
            max_connections: count(raw, "MAX_CONNECTIONS", 1)?,
            max_connections_per_addr: count(raw, "MAX_CONNECTIONS_PER_ADDR", 1)?,
            transfer_workers: count(raw, "TRANSFER_WORKERS", 0)?,
            max_transfers_per_addr: count(raw, "MAX_TRANSFERS_PER_ADDR", 0)?,
            max_header_bytes: count(raw, "MAX_HEADER_BYTES", 256)?,
            max_headers: raw.num_in::<u32>("MAX_HEADERS", 1, 10_000)? as usize,
            max_json_bytes: raw.num::<u64>("MAX_JSON_BYTES", 1)?,
            head_timeout: secs("HEAD_TIMEOUT_SECS")?,
            body_timeout: secs("BODY_TIMEOUT_SECS")?,
            keepalive_timeout: secs("KEEPALIVE_TIMEOUT_SECS")?,
            min_body_rate: raw.num_in::<u64>("MIN_BODY_RATE_KB", 0, 1 << 40)? * 1024,
            shutdown_grace: secs("SHUTDOWN_GRACE_SECS")?,
            log_level,
            test_routes: raw.boolean("ADCLUSTER_TEST_ROUTES")?,
            db_gui_token: raw.opt("DB_GUI_TOKEN"),
            db_gui_timeout: secs("DB_GUI_TIMEOUT_SECS")?,
            db_gui_max_rows: raw.num_in::<u32>("DB_GUI_MAX_ROWS", 1, 1_000_000)? as usize,
            db_gui_history: raw.num_in::<u32>("DB_GUI_HISTORY", 0, 100_000)? as usize,
        })
    }

    /// Load from the real sources: `.env` in the working directory, the environment, `args`.
    /// A missing `.env` is fine; one that cannot be read is an error naming it.
    pub fn load(args: &[String]) -> Result<(Config, Vec<String>), ConfigError> {
        let path = absolute(Path::new(".env"));
        let dotenv = match std::fs::read_to_string(&path) {
            Ok(text) => Some(text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(ConfigError(format!("{}: cannot read it: {e}", path.display()))),
        };
        let env = |k: &str| std::env::var(k).ok();
        let name = path.display().to_string();
        let (raw, rest) = RawConfig::layer_named(dotenv.as_deref().map(|t| (name.as_str(), t)), &env, args)?;
        Ok((Config::from_raw(&raw)?, rest))
    }

    /// One line for the start-up log, with secrets masked.
    pub fn redacted_summary(&self) -> String {
        let db = match &self.database_url {
            Some(url) => redact_url(url),
            None => format!("{}@{}:{}/{}", self.db_user, self.db_host, self.db_port, self.db_name),
        };
        format!(
            "listen={}:{} db={} pool={} workers={} max_connections={} upload_dir={} data_dir={} backup_dir={} secret_key={}",
            self.host,
            self.port,
            db,
            self.db_pool_size,
            self.workers,
            self.max_connections,
            absolute(&self.upload_dir).display(),
            absolute(&self.data_dir).display(),
            absolute(&self.backup_dir).display(),
            if self.secret_key.is_some() { "set" } else { "unset" }
        )
    }
}

/// Checked before anything is created: `DATA_DIR` does not exist yet but `UPLOAD_DIR` already
/// holds files. That is the mark of a server started from another folder than usual: a new
/// `data/` brings a new secret key (old tokens fail) and the files it lists are elsewhere.
pub fn wrong_folder_warning(cfg: &Config) -> Option<String> {
    if cfg.data_dir.exists() || !holds_files(&cfg.upload_dir, 2) {
        return None;
    }
    let cwd = std::env::current_dir().map(|d| d.display().to_string()).unwrap_or_else(|_| "?".into());
    Some(format!(
        "DATA_DIR {} is new but UPLOAD_DIR {} already holds files: was the server started from another folder \
         (working directory {cwd})? A new DATA_DIR means a new secret key, so earlier tokens fail. Start it \
         from the folder that holds its data/, or set DATA_DIR and UPLOAD_DIR to absolute paths",
        absolute(&cfg.data_dir).display(),
        absolute(&cfg.upload_dir).display(),
    ))
}

/// Whether `dir` holds a file (not a dotfile such as `.gitkeep` or the `.tmp` folder) within
/// `depth` levels.
fn holds_files(dir: &Path, depth: u32) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else { return false };
    entries.flatten().any(|e| {
        let hidden = e.file_name().to_string_lossy().starts_with('.');
        let Ok(kind) = e.file_type() else { return false };
        !hidden && (kind.is_file() || (kind.is_dir() && depth > 1 && holds_files(&e.path(), depth - 1)))
    })
}

/// `path` made absolute against the working directory (without touching the file system
/// beyond reading the working directory; `path` itself need not exist).
pub fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
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

/// A `.env` line that is not `KEY=VALUE`.
#[derive(Debug, PartialEq, Eq)]
pub struct DotenvError {
    /// 1-based line number.
    pub line: usize,
    pub message: String,
}

/// Parse `.env` text: `KEY=VALUE` lines, blank lines and `#` comments, optional `export `,
/// optional `'...'` or `"..."` around the value (kept as is inside); an unquoted value ends at
/// ` #`. Anything else is an error with its line number.
pub fn parse_dotenv(text: &str) -> Result<Vec<(String, String)>, DotenvError> {
    let mut out = Vec::new();
    for (n, raw) in text.lines().enumerate() {
        let err = |message: String| DotenvError { line: n + 1, message };
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").map(str::trim_start).unwrap_or(line);
        let Some((k, v)) = line.split_once('=') else {
            // The line itself is not shown: it may be a secret with its `=` missing.
            return Err(err("expected KEY=VALUE, found a line without `=` (not shown: it may hold a secret)".into()));
        };
        let k = k.trim();
        if k.is_empty()
            || !k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
            || k.as_bytes()[0].is_ascii_digit()
        {
            return Err(err(format!("{k:?} is not a valid name (letters, digits and _; expected KEY=VALUE)")));
        }
        let v = v.trim();
        let value = match v.chars().next() {
            Some(q @ ('"' | '\'')) => {
                let inner = &v[1..];
                let Some(end) = inner.find(q) else {
                    return Err(err(format!("the value of {k} opens a {q} quote that is not closed on this line")));
                };
                let after = inner[end + 1..].trim();
                if !(after.is_empty() || after.starts_with('#')) {
                    return Err(err(format!("unexpected text after the quoted value of {k} (not shown)")));
                }
                &inner[..end]
            }
            // An unquoted value ends at an inline comment.
            _ => v.split(" #").next().unwrap_or(v).trim(),
        };
        out.push((k.to_string(), value.to_string()));
    }
    Ok(out)
}

/// The `--help` text, generated from `SETTINGS`.
pub fn help_text() -> String {
    let mut out = String::from(
        "adcluster — the Adcluster server\n\n\
         USAGE:\n    adcluster [serve] [FLAGS]\n\n\
         COMMANDS:\n    serve      run the server (the default)\n    migrate    create the database if missing, apply the schema, exit\n    \
         user create --email E --password P|- [--superuser] [--full-name N]\n               create a user (the way to make the first superuser); - reads the password from stdin\n    backup [--all] [--output FILE] [--keep N]\n               a plain-SQL backup to BACKUP_DIR (see `adcluster backup --help`)\n    \
         restore [FILE] [--dry-run] [--yes] [--wait SECS]\n               restore a backup, all or nothing (see `adcluster restore --help`)\n    \
         db-gui [--host 127.0.0.1] [--port 3030] [--allow-writes]\n               the database web GUI (read-only unless --allow-writes); prints its URL with the token\n    \
         help       print this text\n\n\
         SETTINGS (flag, environment variable, default). Later wins: defaults < .env < environment < flags.\n",
    );
    for s in SETTINGS {
        let default = if s.secret || s.default.is_empty() { "(unset)".to_string() } else { s.default.to_string() };
        let flag = if s.flag.is_empty() { "(no flag: a secret)".to_string() } else { format!("{} <value>", s.flag) };
        out.push_str(&format!("    {:<34} {:<28} {}\n        {}\n", flag, s.var, default, s.help));
    }
    out.push_str(
        "\nAn empty value counts as unset (the default stands). A .env line that is not KEY=VALUE is an error.\n\
         \nSECRETS: SECRET_KEY, DB_PASSWORD, DATABASE_URL and DB_GUI_TOKEN have no flags, because every user\n\
         of this machine can read a process's command line (ps, /proc/PID/cmdline). Set them in the\n\
         environment, in .env, or in a file named by SECRET_KEY_FILE, DB_PASSWORD_FILE, DATABASE_URL_FILE\n\
         or DB_GUI_TOKEN_FILE.\n\
         \nThe full reference: docs/api.md. Exit codes: 0 success, 1 failure, 2 bad usage.\n",
    );
    out
}

/// `WORKERS=auto`: 16 HTTP workers per core of this machine. A worker waiting on the database
/// or a peer costs no CPU, but every worker a batch of answers wakes competes for the cores with
/// PostgreSQL and the other workers: on 2 cores, `GET /users/{id}` at 64 connections had a p99 of
/// 8.0-8.5 ms with 32 workers against 11.8-13.6 ms with 64, at 1.17-1.18x the requests per second
/// (`BENCHMARKS.md`, section `sizing`; `docs/decisions.md`).
pub fn auto_workers() -> usize {
    16 * std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// `DB_POOL_SIZE=auto`: two connections per core of this machine, at least 4. PostgreSQL's own
/// rule of thumb (cores x 2, plus disks) for a database on the same machine: on 2 cores, 16
/// connections let PostgreSQL backends preempt each other inside spinlocks and stall for up to
/// a second, where 4 kept the worst request under 75 ms (`BENCHMARKS.md`, section `sizing`;
/// `docs/decisions.md`). A database on a bigger machine of its own wants a number set here.
pub fn auto_pool_size() -> u32 {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as u32;
    (2 * cores).max(4)
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
        assert_eq!(c.workers, auto_workers());
        assert!(c.secret_key.is_none());
        assert_eq!((c.backup_dir.as_path(), c.data_dir.as_path()), (Path::new("dbBackup"), Path::new("data")));
        assert!(c.db_password.is_empty() && c.database_url.is_none() && !c.cluster);
        assert_eq!(c.max_connections, 4096);
        assert_eq!((c.body_timeout, c.shutdown_grace), (Duration::from_secs(30), Duration::from_secs(30)));
        assert_eq!(c.min_body_rate, 16 * 1024);
        // Not in the contract: ours, documented in docs/api.md, and written twice (the setting's
        // table and the library's own default), so they are checked to agree.
        assert_eq!(c.db_statement_timeout, crate::db::pool::DEFAULT_STATEMENT_TIMEOUT);
        let ws = crate::ws::WsSettings::default();
        assert_eq!(c.ws_queue_total_mb * 1024 * 1024, ws.queue_total_bytes);
    }

    #[test]
    fn a_statement_timeout_of_zero_is_no_limit_and_the_ceiling_is_postgresqls() {
        let (c, _) = layer(None, &[("DB_STATEMENT_TIMEOUT_MS", "0")], &[]).unwrap();
        assert!(c.db_statement_timeout.is_zero());
        let (c, _) = layer(None, &[("DB_STATEMENT_TIMEOUT_MS", "2147483647")], &[]).unwrap();
        assert_eq!(c.db_statement_timeout, Duration::from_millis(2_147_483_647));
        let err = layer(None, &[("DB_STATEMENT_TIMEOUT_MS", "2147483648")], &[]).unwrap_err().0;
        assert!(err.contains("DB_STATEMENT_TIMEOUT_MS"), "{err}");
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
        assert!(err.contains("WORKERS") && err.contains("between 1 and"), "{err}");
        assert!(layer(None, &[], &["--port"]).unwrap_err().0.contains("--port needs a value"));
        assert!(layer(None, &[("WS_AUTH", "maybe")], &[]).is_err());
        assert!(layer(None, &[("ALLOW_SIGNUP", "perhaps")], &[]).is_err());
        let err = layer(None, &[("CLUSTER", "redis")], &[]).err().unwrap().0;
        assert!(err.contains("CLUSTER") && err.contains("postgres"), "{err}");
        assert!(layer(None, &[("CLUSTER_PRESENCE_TIMEOUT_SECS", "0")], &[]).is_err());
        assert!(layer(None, &[("INSTANCE_ID", "a\nb")], &[]).is_err());
        let (c, _) = layer(None, &[("CLUSTER", "Postgres"), ("INSTANCE_ID", "node-1")], &[]).unwrap();
        assert!(c.cluster && c.instance_id.as_deref() == Some("node-1"));
        let (c, _) = layer(None, &[], &[]).unwrap();
        assert!(!c.cluster && c.instance_id.is_none() && c.cluster_presence_timeout == Duration::from_secs(15));
        assert!(c.ws_io_uring, "io_uring batches are on unless turned off");
        assert!(!layer(None, &[], &["--ws-io-uring", "Off"]).unwrap().0.ws_io_uring);
        let err = layer(None, &[("WS_IO_URING", "on")], &[]).err().unwrap().0;
        assert!(err.contains("WS_IO_URING") && err.contains("auto or off"), "{err}");
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
        for s in SETTINGS {
            assert!(help_text().contains(s.var), "{} missing from --help", s.var);
        }
    }

    #[test]
    fn secrets_have_no_flags_and_help_says_why() {
        for s in SETTINGS.iter().filter(|s| s.secret) {
            assert!(s.flag.is_empty(), "{} has a flag", s.var);
            let flag = refused_secret_flag(s.var);
            for args in [vec![flag.clone(), "x".repeat(40)], vec![format!("{flag}={}", "x".repeat(40))]] {
                let err = layer(None, &[], &args.iter().map(String::as_str).collect::<Vec<_>>()).unwrap_err().0;
                assert!(err.starts_with(&format!("{flag} is not accepted")), "{err}");
                assert!(err.contains("command line") && err.contains(&format!("{}_FILE", s.var)), "{err}");
                assert!(!err.contains(&"x".repeat(40)), "the refused value is not repeated: {err}");
            }
        }
        let help = help_text();
        assert!(help.contains("(no flag: a secret)"), "{help}");
        assert!(help.contains("can read a process's command line"), "{help}");
        for var in ["SECRET_KEY_FILE", "DB_PASSWORD_FILE", "DATABASE_URL_FILE"] {
            assert!(help.contains(var), "{var} missing from --help");
        }
    }

    /// A temp file removed on drop.
    struct TempFile(PathBuf);
    impl TempFile {
        fn new(content: &str) -> TempFile {
            static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
            let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let path = std::env::temp_dir().join(format!("adc-config-test-{}-{n}", std::process::id()));
            std::fs::write(&path, content).unwrap();
            TempFile(path)
        }
        fn path(&self) -> &str {
            self.0.to_str().unwrap()
        }
    }
    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    #[test]
    fn secrets_come_from_files() {
        let key = "k".repeat(40);
        let file = TempFile::new(&format!("{key}\n"));
        let (c, _) = layer(None, &[("SECRET_KEY_FILE", file.path())], &[]).unwrap();
        assert_eq!(c.secret_key.as_deref(), Some(key.as_str()), "one trailing newline removed");
        let pw = TempFile::new("p@ss word\r\n");
        let (c, _) = layer(None, &[], &["--db-password-file", pw.path()]).unwrap();
        assert_eq!(c.db_password, "p@ss word");
        // A later layer wins, whichever of the two it gives.
        let dotenv = format!("SECRET_KEY={}\n", "d".repeat(40));
        let (c, _) = layer(Some(&dotenv), &[("SECRET_KEY_FILE", file.path())], &[]).unwrap();
        assert_eq!(c.secret_key.as_deref(), Some(key.as_str()));
        let dotenv = format!("SECRET_KEY_FILE={}\n", file.path());
        let (c, _) = layer(Some(&dotenv), &[("SECRET_KEY", &"e".repeat(40))], &[]).unwrap();
        assert_eq!(c.secret_key, Some("e".repeat(40)));
        // Both in one place, a missing file, an empty file: errors that say so.
        let err = layer(None, &[("SECRET_KEY", &"e".repeat(40)), ("SECRET_KEY_FILE", file.path())], &[]).unwrap_err().0;
        assert!(err.contains("both SECRET_KEY and SECRET_KEY_FILE"), "{err}");
        let err = layer(None, &[("DB_PASSWORD_FILE", "/nonexistent/pw")], &[]).unwrap_err().0;
        assert!(err.starts_with("DB_PASSWORD_FILE=/nonexistent/pw: cannot read the file"), "{err}");
        let empty = TempFile::new("\n");
        let err = layer(None, &[("SECRET_KEY_FILE", empty.path())], &[]).unwrap_err().0;
        assert!(err.contains("the file is empty"), "{err}");
    }

    #[test]
    fn empty_values_count_as_unset() {
        // In .env, in the environment and as a flag: the default (or the earlier layer) stands.
        let (c, _) = layer(Some("ALLOW_SIGNUP=\nPORT=\nWS_AUTH=''\n"), &[], &[]).unwrap();
        assert!(c.allow_signup, "ALLOW_SIGNUP= keeps sign-up open (the default)");
        assert_eq!(c.port, 8000);
        assert_eq!(c.ws_auth, WsAuth::Optional);
        let (c, _) = layer(Some("PORT=9000\n"), &[("PORT", ""), ("ALLOW_SIGNUP", "")], &["--workers="]).unwrap();
        assert_eq!((c.port, c.allow_signup, c.workers), (9000, true, auto_workers()));
        let (c, _) = layer(None, &[("SECRET_KEY", "")], &[]).unwrap();
        assert!(c.secret_key.is_none());
    }

    #[test]
    fn dotenv_errors_name_the_file_and_line() {
        let env = |_: &str| None;
        let text = "# settings\nPORT=9000\n\nDB_NAME\n";
        let err = RawConfig::layer_named(Some(("/srv/app/.env", text)), &env, &[]).unwrap_err().0;
        assert_eq!(
            err,
            "/srv/app/.env:4: expected KEY=VALUE, found a line without `=` (not shown: it may hold a secret)"
        );
        // Never the value: a line whose `=` is missing, or text after a quoted value, may be a secret.
        for text in ["DB_PASSWORD hunter2\n", "DB_PASSWORD=\"x\"hunter2\n"] {
            let err = RawConfig::layer_named(Some((".env", text)), &env, &[]).unwrap_err().0;
            assert!(!err.contains("hunter2"), "{err}");
        }
        for (text, line, says) in [
            ("=value\n", 1, "is not a valid name"),
            ("A=1\nMY KEY=1\n", 2, "is not a valid name"),
            ("A=1\nB=2\nSECRET_KEY=\"abc\n", 3, "quote that is not closed"),
            ("X='a' b\n", 1, "after the quoted value"),
        ] {
            let err = parse_dotenv(text).unwrap_err();
            assert_eq!(err.line, line, "{text:?}");
            assert!(err.message.contains(says), "{text:?}: {}", err.message);
        }
        let ok = parse_dotenv("export  A = 'x # y' # c\nB=\"\"\nC=plain # note\nD=a=b\n").unwrap();
        let ok: Vec<(&str, &str)> = ok.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(ok, vec![("A", "x # y"), ("B", ""), ("C", "plain"), ("D", "a=b")]);
    }

    #[test]
    fn the_pool_is_two_and_the_workers_sixteen_per_core_unless_set() {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as u32;
        let auto = (2 * cores).max(4);
        assert_eq!(layer(None, &[], &[]).unwrap().0.db_pool_size, auto);
        assert_eq!(layer(None, &[("DB_POOL_SIZE", "Auto")], &[]).unwrap().0.db_pool_size, auto);
        assert_eq!(layer(None, &[("DB_POOL_SIZE", "9")], &[]).unwrap().0.db_pool_size, 9);
        let err = layer(None, &[("DB_POOL_SIZE", "0")], &[]).unwrap_err().0;
        assert_eq!(err, "DB_POOL_SIZE=0 must be between 1 and 10000");
        // Workers the same way: 16 per core unless set.
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(layer(None, &[], &[]).unwrap().0.workers, 16 * cores);
        assert_eq!(layer(None, &[("WORKERS", "Auto")], &[]).unwrap().0.workers, 16 * cores);
        assert_eq!(layer(None, &[("WORKERS", "5")], &[]).unwrap().0.workers, 5);
    }

    #[test]
    fn numbers_out_of_range_say_the_range() {
        let err = layer(None, &[("PORT", "70000")], &[]).unwrap_err().0;
        assert_eq!(err, "PORT=70000 must be between 0 and 65535");
        let err = layer(None, &[("DB_PORT", "0")], &[]).unwrap_err().0;
        assert_eq!(err, "DB_PORT=0 must be between 1 and 65535");
        let err = layer(None, &[("PORT", "eighty")], &[]).unwrap_err().0;
        assert_eq!(err, "PORT=\"eighty\" is not a whole number (between 0 and 65535)");
        let err = layer(None, &[("WORKERS", "-1")], &[]).unwrap_err().0;
        assert_eq!(err, "WORKERS=-1 must be between 1 and 65536");
        let err = layer(None, &[("BODY_TIMEOUT_SECS", "99999999999")], &[]).unwrap_err().0;
        assert_eq!(err, "BODY_TIMEOUT_SECS=99999999999 must be between 1 and 31536000");
        let err = layer(None, &[("MAX_UPLOAD_MB", "0")], &[]).unwrap_err().0;
        assert!(err.starts_with("MAX_UPLOAD_MB=0 must be between 1 and "), "{err}");
        // The edges themselves are accepted.
        let (c, _) = layer(None, &[("PORT", "65535"), ("DB_PORT", "1")], &[]).unwrap();
        assert_eq!((c.port, c.db_port), (65535, 1));
    }
}
