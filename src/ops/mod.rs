//! Operations: what the server does for the people who run it, beside serving clients.
//! `alert.rs` tells them when the database goes away and comes back; `backup.rs` and
//! `restore.rs` are the `backup` and `restore` commands, over the PostgreSQL client programs that
//! `pgtools.rs` finds and runs; `interrupt.rs` turns a signal into a clean stop of those.
//! Must never: hold up a request, or leak a secret into an alert, a log line, a message or a
//! child's command line.

pub mod alert;
pub mod backup;
pub mod interrupt;
pub mod pgtools;
pub mod restore;

use crate::config::Config;
use crate::db::DbConfig;

/// A failed command: the exit code (1 the operation failed, 2 bad usage or refused) and the
/// message of its `error:` line.
#[derive(Debug)]
pub struct OpsError {
    pub code: u8,
    pub message: String,
}

impl OpsError {
    pub fn usage(message: impl Into<String>) -> OpsError {
        OpsError { code: 2, message: message.into() }
    }
    pub fn failed(message: impl Into<String>) -> OpsError {
        OpsError { code: 1, message: message.into() }
    }
}

/// The server's configuration for a command; any argument left over is a usage error.
pub fn load_config(args: &[String]) -> Result<Config, OpsError> {
    let (cfg, rest) = Config::load(args).map_err(|e| OpsError::usage(e.to_string()))?;
    if let Some(extra) = rest.first() {
        return Err(OpsError::usage(format!("unexpected argument {extra:?}; see --help")));
    }
    crate::util::log::set_level(cfg.log_level);
    Ok(cfg)
}

/// The database settings of the configuration (the server's own, `DATABASE_URL` or `DB_*`).
pub fn db_config(cfg: &Config) -> DbConfig {
    DbConfig {
        host: cfg.db_host.clone(),
        port: cfg.db_port,
        dbname: cfg.db_name.clone(),
        user: cfg.db_user.clone(),
        password: cfg.db_password.clone(),
        url: cfg.database_url.clone(),
        pool_size: cfg.db_pool_size,
        checkout_timeout: cfg.db_checkout_timeout,
        statement_timeout: cfg.db_statement_timeout,
        ..DbConfig::default()
    }
}

/// `path` as printed on standard output: absolute, so that it names the file from wherever the
/// output is read (the wrapper scripts run the binary in the install folder, where a relative
/// `BACKUP_DIR` lives, not where the operator typed the command). `std::path::absolute` joins
/// the working directory without touching the file system; should that fail, the path as given.
pub fn shown(path: &std::path::Path) -> std::path::PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

#[cfg(test)]
mod tests {
    use crate::config::SETTINGS;

    /// The wrapper scripts' list of settings flags whose values are paths (`path_flags=(...)` in
    /// scripts/adcluster-wrapper.sh), which they make absolute before changing directory.
    fn wrapper_path_flags() -> Vec<String> {
        let script = include_str!("../../scripts/adcluster-wrapper.sh");
        let line = script.lines().find_map(|l| l.strip_prefix("path_flags=(")).expect("path_flags=( in the wrapper");
        let list = line.strip_suffix(')').expect("path_flags on one line");
        let mut flags: Vec<String> = list.split_whitespace().map(String::from).collect();
        flags.sort();
        flags
    }

    #[test]
    fn the_wrapper_knows_every_path_setting() {
        let mut from_config: Vec<String> = SETTINGS.iter().filter(|s| s.path).map(|s| s.flag.to_string()).collect();
        from_config.sort();
        assert_eq!(
            wrapper_path_flags(),
            from_config,
            "scripts/adcluster-wrapper.sh's path_flags must list config.rs's path settings' flags"
        );
        // A new folder or file setting not marked as a path would be missed by both.
        for s in SETTINGS.iter().filter(|s| !s.secret) {
            let named_like_a_path = s.var.ends_with("_DIR") || s.var.ends_with("_FILE");
            assert_eq!(s.path, named_like_a_path, "{}: path_setting(...) or s(...)?", s.var);
            assert!(!s.path || !s.flag.is_empty(), "{} has no flag", s.var);
        }
    }
}
