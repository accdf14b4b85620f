//! The systemd units in `deploy/`: `systemd-analyze verify` must accept them without a single
//! warning (it exits 0 on unknown keys and bad values, so its output is what counts), and
//! `systemd-analyze security --offline` must rate the server's unit's exposure as low.
//! Where `systemd-analyze` is missing (scripts/test.sh installs it when it can), the test says
//! so and checks nothing else.

mod common;

use std::path::Path;
use std::process::Command;

use common::TempDir;

const UNITS: [&str; 3] = ["adcluster.service", "adcluster-backup.service", "adcluster-backup.timer"];

fn analyze_available() -> bool {
    Command::new("systemd-analyze").arg("--version").output().map(|o| o.status.success()).unwrap_or(false)
}

/// The units copied to a temp dir with the binary path pointed at the one just built (verify
/// checks that ExecStart exists and is executable).
fn copies(edit: impl Fn(&str, String) -> String) -> TempDir {
    let dir = TempDir::new("units");
    let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy");
    for unit in UNITS {
        let text = std::fs::read_to_string(deploy.join(unit)).unwrap();
        assert!(
            unit.ends_with(".timer") || text.contains("/opt/adcluster/adcluster "),
            "{unit} runs /opt/adcluster/adcluster"
        );
        let text = text.replace("/opt/adcluster/adcluster ", &format!("{} ", env!("CARGO_BIN_EXE_adcluster")));
        std::fs::write(dir.path().join(unit), edit(unit, text)).unwrap();
    }
    dir
}

fn verify(dir: &Path) -> (bool, String) {
    let o = Command::new("systemd-analyze")
        .arg("verify")
        .args(UNITS.iter().map(|u| format!("./{u}")))
        .current_dir(dir)
        .env("SYSTEMD_LOG_COLOR", "0")
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    (o.status.success(), text)
}

#[test]
fn the_units_verify_cleanly() {
    if !analyze_available() {
        eprintln!("SKIPPED: systemd-analyze is not installed (apt-get install systemd); the units were not verified");
        return;
    }
    let dir = copies(|_, t| t);
    let (ok, out) = verify(dir.path());
    assert!(ok && out.trim().is_empty(), "systemd-analyze verify complained:\n{out}");
    // The check can fail: a misspelt key in a copy is reported.
    let bad =
        copies(
            |unit, t| {
                if unit == "adcluster.service" {
                    t.replace("Restart=on-failure", "Restart=sometimes")
                } else {
                    t
                }
            },
        );
    let (_, out) = verify(bad.path());
    assert!(out.contains("restart specifier"), "a bad value went unnoticed: {out}");
}

#[test]
fn the_server_unit_is_hardened() {
    let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy");
    let unit = std::fs::read_to_string(deploy.join("adcluster.service")).unwrap();
    for line in [
        "User=adcluster",
        "ProtectSystem=strict",
        "ReadWritePaths=/opt/adcluster/uploads /opt/adcluster/data /opt/adcluster/dbBackup",
        "Restart=on-failure",
        "NoNewPrivileges=yes",
    ] {
        assert!(unit.lines().any(|l| l == line), "adcluster.service lacks {line}");
    }
    // A thread per WebSocket session: systemd's default TasksMax (15% of the pid limit) would
    // cap the default WS_MAX_CLIENTS (10000) at about 4,850 sessions.
    let tasks_max: usize = unit
        .lines()
        .find_map(|l| l.strip_prefix("TasksMax="))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("adcluster.service sets no numeric TasksMax"));
    assert!(tasks_max >= 10_000 + 256, "TasksMax={tasks_max} is short of the default WS_MAX_CLIENTS");
    let timer = std::fs::read_to_string(deploy.join("adcluster-backup.timer")).unwrap();
    assert!(timer.contains("OnCalendar=") && timer.contains("Persistent=true"));
    let backup = std::fs::read_to_string(deploy.join("adcluster-backup.service")).unwrap();
    assert!(backup.lines().any(|l| l.starts_with("ExecStart=") && l.contains("backup --keep ")), "{backup}");
    if !analyze_available() {
        eprintln!("SKIPPED: systemd-analyze is not installed; the exposure was not rated");
        return;
    }
    let dir = copies(|_, t| t);
    let o = Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--no-pager", "./adcluster.service"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    if !o.status.success() && out.is_empty() {
        eprintln!("SKIPPED: this systemd-analyze cannot rate units offline: {}", String::from_utf8_lossy(&o.stderr));
        return;
    }
    // "→ Overall exposure level for adcluster.service: 1.6 OK 🙂"
    let level: f64 = out
        .lines()
        .find_map(|l| l.split("Overall exposure level for adcluster.service:").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{out}"));
    assert!(level <= 2.5, "exposure {level} (10 is unprotected); output:\n{out}");
}
