//! The server on its own, as a new user meets it: the start-up log (absolute paths, the "started
//! from the wrong folder" warning), `.env` and setting errors, secrets only from the environment,
//! `.env` or a file, and one 413 wording for the upload limit. The real binary, a real database.

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};

use common::{Opts, TempDir, TestServer};
use serde_json::json;

/// Run the binary in `dir` with only `env` (and PATH); for errors that come before any database.
fn run_in(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_adcluster"))
        .args(args)
        .current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("run adcluster")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The one `error:` line and exit code 2 (bad usage / bad configuration).
fn assert_usage_error(out: &Output, want: &str) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert_eq!(err.trim_end(), format!("error: {want}"));
}

#[test]
fn the_start_up_log_shows_absolute_paths() {
    let srv = TestServer::start_with(
        Opts::default().env("UPLOAD_DIR", "uploads").env("DATA_DIR", "state/data").env("BACKUP_DIR", "dbBackup"),
    );
    let log = srv.log();
    let dir = srv.dir.path().canonicalize().unwrap();
    let start = log.lines().find(|l| l.contains("starting adcluster")).expect("a start line");
    assert!(start.contains("(debug build)"), "{start}");
    for (key, rel) in [("upload_dir", "uploads"), ("data_dir", "state/data"), ("backup_dir", "dbBackup")] {
        let want = format!("{key}={}", dir.join(rel).display());
        assert!(start.contains(&want), "{want} not in {start}");
    }
    let generated = log.lines().find(|l| l.contains("SECRET_KEY is not set")).expect("the generated-key warning");
    assert!(generated.contains(&dir.join("state/data/secret_key").display().to_string()), "{generated}");
    assert!(!log.contains("already holds files"), "a fresh folder is no wrong folder:\n{log}");
}

#[test]
fn a_new_data_dir_beside_existing_uploads_is_warned_about() {
    // Uploads from an earlier life of the server, elsewhere; DATA_DIR (relative) does not exist.
    let old = TempDir::new("old-uploads");
    std::fs::create_dir_all(old.path().join("images")).unwrap();
    std::fs::write(old.path().join("images/3f2a.png"), b"png").unwrap();
    let mut srv =
        TestServer::start_with(Opts::default().env("UPLOAD_DIR", old.path().to_str().unwrap()).env("DATA_DIR", "data"));
    let dir = srv.dir.path().canonicalize().unwrap();
    let log = srv.log();
    let warning =
        log.lines().find(|l| l.contains("already holds files")).unwrap_or_else(|| panic!("no warning:\n{log}"));
    assert!(warning.contains("WARN"), "{warning}");
    assert!(warning.contains(&format!("DATA_DIR {} is new", dir.join("data").display())), "{warning}");
    assert!(warning.contains(&format!("UPLOAD_DIR {}", old.path().display())), "{warning}");
    assert!(warning.contains(&format!("working directory {}", dir.display())), "{warning}");
    // Started again where its data/ now is: no warning.
    srv.restart();
    assert!(!srv.log().contains("already holds files"), "{}", srv.log());

    // Only dotfiles (the repository's uploads/.gitkeep, the .tmp folder): not "holding files".
    let empty = TempDir::new("empty-uploads");
    std::fs::write(empty.path().join(".gitkeep"), b"").unwrap();
    std::fs::create_dir_all(empty.path().join(".tmp")).unwrap();
    std::fs::write(empty.path().join(".tmp/partial"), b"x").unwrap();
    let srv = TestServer::start_with(
        Opts::default().env("UPLOAD_DIR", empty.path().to_str().unwrap()).env("DATA_DIR", "data"),
    );
    assert!(!srv.log().contains("already holds files"), "{}", srv.log());
}

#[test]
fn a_malformed_env_line_is_an_error_naming_the_file_and_line() {
    let dir = TempDir::new("dotenv");
    std::fs::write(dir.path().join(".env"), "# ours\nPORT=9000\n\nALLOW_SIGNUP\n").unwrap();
    let out = run_in(dir.path(), &["serve"], &[]);
    let path = dir.path().canonicalize().unwrap().join(".env");
    assert_usage_error(
        &out,
        &format!(
            "{}:4: expected KEY=VALUE, found a line without `=` (not shown: it may hold a secret)",
            path.display()
        ),
    );
    // The same for every command that reads the settings.
    let out = run_in(dir.path(), &["migrate"], &[]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains(".env:4: expected KEY=VALUE"), "{}", stderr(&out));

    std::fs::write(dir.path().join(".env"), "SECRET_KEY=\"unterminated\n").unwrap();
    let out = run_in(dir.path(), &["serve"], &[]);
    assert_usage_error(
        &out,
        &format!("{}:1: the value of SECRET_KEY opens a \" quote that is not closed on this line", path.display()),
    );
    assert!(!stderr(&out).contains("unterminated"), "the value is not echoed");
}

#[test]
fn bad_addresses_keys_urls_and_worker_counts_are_bad_settings() {
    // Each of these exited 1 ("the server failed") or crashed; a bad setting is exit 2 with a
    // line that names it (found by a probe).
    let dir = TempDir::new("bad-settings");
    let key = "k".repeat(40);
    let cases: [(&[(&str, &str)], &str); 6] = [
        (&[("SECRET_KEY", "short")], "SECRET_KEY must be at least 32 bytes"),
        (&[("SECRET_KEY", &key), ("HOST", "notanip")], "HOST: \"notanip:8000\" is not an address to listen on"),
        (&[("SECRET_KEY", &key), ("METRICS_ADDR", "127.0.0.1:99999")], "METRICS_ADDR: \"127.0.0.1:99999\""),
        (&[("SECRET_KEY", &key), ("DATABASE_URL", "mysql://x")], "database configuration error: DATABASE_URL is not"),
        (
            &[("SECRET_KEY", &key), ("DATABASE_URL", "postgres://u:hunter2@h:99999/x")],
            "database configuration error: DATABASE_URL is not",
        ),
        (&[("SECRET_KEY", &key), ("WORKERS", "65536")], "WORKERS=65536 is more threads than this machine can start"),
    ];
    for (env, want) in cases {
        let out = run_in(dir.path(), &["serve"], env);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{env:?}: {err}");
        assert!(err.starts_with(&format!("error: {want}")), "{env:?}: {err}");
        assert!(!err.contains("hunter2"), "{err}");
    }
    std::fs::write(dir.path().join("key"), "shortkey\n").unwrap();
    let out = run_in(dir.path(), &["serve"], &[("SECRET_KEY_FILE", "key")]);
    assert_usage_error(
        &out,
        "SECRET_KEY_FILE=key: SECRET_KEY must be at least 32 bytes; generate one with `openssl rand -hex 32`",
    );
    // An UPLOAD_DIR that cannot be a folder stops the start, as a DATA_DIR does (it used to start,
    // warn without naming it, and answer every upload 500).
    std::fs::write(dir.path().join("a-file"), b"").unwrap();
    let out = run_in(
        dir.path(),
        &["serve"],
        &[("SECRET_KEY", &key), ("DB_PORT", "1"), ("PORT", "0"), ("UPLOAD_DIR", "a-file/uploads")],
    );
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("error: cannot use UPLOAD_DIR ") && err.contains("a-file/uploads"), "{err}");
}

#[test]
fn out_of_range_numbers_say_the_range() {
    let dir = TempDir::new("range");
    let out = run_in(dir.path(), &["serve"], &[("PORT", "70000")]);
    assert_usage_error(&out, "PORT=70000 must be between 0 and 65535");
    let out = run_in(dir.path(), &["serve", "--port", "-1"], &[]);
    assert_usage_error(&out, "PORT=-1 must be between 0 and 65535");
    std::fs::write(dir.path().join(".env"), "WS_QUEUE_KB=0\n").unwrap();
    let out = run_in(dir.path(), &["serve"], &[]);
    assert_usage_error(&out, "WS_QUEUE_KB=0 must be between 1 and 4294967295");
}

#[test]
fn secrets_are_refused_as_flags_and_read_from_files() {
    let dir = TempDir::new("secret-flags");
    let key = "flag-secret-0123456789abcdefghijklmnopq";
    for (flag, var) in
        [("--secret-key", "SECRET_KEY"), ("--db-password", "DB_PASSWORD"), ("--database-url", "DATABASE_URL")]
    {
        let out = run_in(dir.path(), &["serve", flag, key], &[]);
        assert_usage_error(
            &out,
            &format!(
                "{flag} is not accepted: every user of this machine can read a command line. Set {var} in the \
                 environment or in .env, or put it in a file named by {var}_FILE"
            ),
        );
    }
    let help = run_in(dir.path(), &["--help"], &[]);
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("SECRET_KEY, DB_PASSWORD, DATABASE_URL and DB_GUI_TOKEN have no flags"), "{help}");
    assert!(help.contains("can read a process's command line"), "{help}");

    // SECRET_KEY_FILE: the key comes from the file, nothing is generated, tokens work.
    let keyfile = TempDir::new("keyfile");
    let path = keyfile.path().join("secret_key");
    std::fs::write(&path, format!("{key}\n")).unwrap();
    let srv = TestServer::start_with(Opts::default().env("SECRET_KEY_FILE", path.to_str().unwrap()));
    assert!(!srv.log().contains("SECRET_KEY is not set"), "{}", srv.log());
    assert!(!srv.dir.path().join("data/secret_key").exists(), "no key generated");
    assert!(!srv.log().contains(key), "the key is never logged");
    let body = json!({ "email": "file@example.com", "password": "password1" }).to_string();
    let r = srv.request("POST", "/users/", &[("Content-Type", "application/json")], body.as_bytes());
    assert_eq!(r.status, 201, "{}", r.text());
    let r = srv.request("POST", "/auth/login", &[("Content-Type", "application/json")], body.as_bytes());
    let token = r.json()["access_token"].as_str().unwrap().to_string();
    // The token verifies with the file's key (and only with it).
    use jsonwebtoken::{decode, Algorithm, DecodingKey, Validation};
    let check = |k: &str| {
        decode::<serde_json::Value>(&token, &DecodingKey::from_secret(k.as_bytes()), &Validation::new(Algorithm::HS256))
    };
    assert_eq!(check(key).expect("signed with the key from SECRET_KEY_FILE").claims["email"], "file@example.com");
    assert!(check(&key.replace('0', "1")).is_err());
}

#[test]
fn an_empty_allow_signup_in_env_keeps_the_default() {
    let mut srv = TestServer::start();
    let signup = |srv: &TestServer, email: &str| {
        let body = json!({ "email": email, "password": "password1" }).to_string();
        srv.request("POST", "/users/", &[("Content-Type", "application/json")], body.as_bytes())
    };
    // The rule's counterpart first: an explicit false closes sign-up (a superuser's token is
    // needed, so an anonymous sign-up is 401)...
    std::fs::write(srv.dir.path().join(".env"), "ALLOW_SIGNUP=false\n").unwrap();
    srv.restart();
    assert_eq!(signup(&srv, "closed@example.com").status, 401);
    // ...and an empty value is no value: the default (open) stands.
    std::fs::write(srv.dir.path().join(".env"), "ALLOW_SIGNUP=\nWS_AUTH=''\n").unwrap();
    srv.restart();
    let r = signup(&srv, "open@example.com");
    assert_eq!(r.status, 201, "{}", r.text());
}

#[test]
fn one_message_for_the_upload_limit() {
    let srv = TestServer::start_with(Opts::default().env("MAX_UPLOAD_MB", "1"));
    let body = json!({ "email": "limit@example.com", "password": "password1" }).to_string();
    assert_eq!(srv.request("POST", "/users/", &[("Content-Type", "application/json")], body.as_bytes()).status, 201);
    let r = srv.request("POST", "/auth/login", &[("Content-Type", "application/json")], body.as_bytes());
    let auth = format!("Bearer {}", r.json()["access_token"].as_str().unwrap());
    let boundary = "adcLimitBoundary";
    let form = |field: &str, size: usize| {
        let mut b = format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"big.bin\"\r\n\
             Content-Type: application/octet-stream\r\n\r\n"
        )
        .into_bytes();
        b.extend(std::iter::repeat_n(b'x', size));
        b.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
        b
    };
    let ct = format!("multipart/form-data; boundary={boundary}");
    let want = json!({ "detail": "File too large (limit 1048576 bytes per file)" });
    // 5 MB: over the body limit, refused on its declared length; 1.5 MB: within the body limit,
    // over the per-file limit while reading. Same limit, same words, both routes.
    for (path, field) in [("/api/upload", "file"), ("/api/upload/multiple", "files")] {
        for size in [5_000_000, 1_500_000] {
            // The server may answer and close before the body is sent: a failed write is fine.
            let body = form(field, size);
            let mut c = srv.connect();
            let head = format!(
                "POST {path} HTTP/1.1\r\nHost: t\r\nAuthorization: {auth}\r\nContent-Type: {ct}\r\nContent-Length: {}\r\n\r\n",
                body.len()
            );
            let _ = std::io::Write::write_all(&mut c.stream, head.as_bytes())
                .and_then(|_| std::io::Write::write_all(&mut c.stream, &body));
            let r = c.read_response(false);
            assert_eq!(r.status, 413, "{path} {size}: {}", r.text());
            assert_eq!(r.json(), want, "{path} {size}");
        }
    }
    // 5 MB in chunked encoding (no length up front) crosses the body limit while reading.
    let mut c = srv.connect();
    let big = form("file", 5_000_000);
    let mut req = format!(
        "POST /api/upload HTTP/1.1\r\nHost: t\r\nAuthorization: {auth}\r\nContent-Type: {ct}\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    .into_bytes();
    for chunk in big.chunks(256 * 1024) {
        req.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        req.extend_from_slice(chunk);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    let _ = std::io::Write::write_all(&mut c.stream, &req);
    let r = c.read_response(false);
    assert_eq!(r.status, 413);
    assert_eq!(r.json(), want);
}

/// The README's quick start, extracted from its first ```sh block after `## Quick start`, run
/// as written with bash against a fresh server. Only the address (`localhost:8000`) is replaced
/// by the test server's; the database comes through the environment (`DB_NAME` etc.), as it
/// would from `.env`. `adcluster` on `PATH` is the binary under test (the block's
/// `target/release` does not exist in the server's temp folder, so the test binary is found).
#[test]
fn the_readme_quick_start_runs_as_written() {
    let readme = include_str!("../README.md");
    let section = readme.split("\n## Quick start\n").nth(1).expect("README has a ## Quick start section");
    let block = section.split("```sh\n").nth(1).and_then(|b| b.split("\n```").next()).expect("a ```sh block");
    for step in ["adcluster user create", "/auth/login", "/users/me", "/api/upload", "/api/files"] {
        assert!(block.contains(step), "the quick start no longer shows {step}:\n{block}");
    }
    let srv = TestServer::start();
    let script = block.replace("localhost:8000", &srv.addr.to_string());
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_adcluster")).parent().unwrap().to_path_buf();
    let env: Vec<(String, String)> = srv
        .env
        .iter()
        .map(
            |(k, v)| {
                if k == "PATH" {
                    (k.clone(), format!("{}:{v}", bin_dir.display()))
                } else {
                    (k.clone(), v.clone())
                }
            },
        )
        .collect();
    let out = Command::new("bash")
        .args(["-euo", "pipefail", "-c", &script])
        .current_dir(srv.dir.path())
        .env_clear()
        .envs(env)
        .stdin(Stdio::null())
        .output()
        .expect("run bash");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "the quick start failed ({}):\n{stdout}\n{}", out.status, stderr(&out));
    let mut lines = stdout.lines();
    assert_eq!(lines.next(), Some("created user 1 <admin@example.com> (superuser)"), "{stdout}");
    // Each curl prints one JSON document; the token itself is not printed.
    let rest: String = lines.collect::<Vec<_>>().join("\n");
    let docs: Vec<serde_json::Value> =
        serde_json::Deserializer::from_str(&rest).into_iter().map(|v| v.expect("JSON from curl")).collect();
    assert_eq!(docs.len(), 3, "/users/me, the upload, the listing:\n{stdout}");
    assert_eq!(docs[0]["email"], "admin@example.com");
    assert_eq!(docs[0]["is_superuser"], true);
    assert_eq!(docs[1]["original_filename"], "hello.txt");
    assert_eq!(docs[1]["size"], "hello, adcluster\n".len());
    assert_eq!(docs[2]["count"], 1);
    assert_eq!(docs[2]["files"][0]["filename"], docs[1]["filename"]);
    // The stored file is the one the block wrote.
    let url = docs[1]["url"].as_str().unwrap();
    assert_eq!(srv.get(url).body, b"hello, adcluster\n");
    // And every page the README says to open answers.
    let mut pages = Vec::new();
    for line in section.split("\n## ").next().unwrap().lines() {
        for part in line.split("<http://localhost:8000").skip(1) {
            let path = part.split('>').next().unwrap();
            pages.push(path.to_string());
            let r = srv.get(path);
            assert_eq!(r.status, 200, "{path}");
            assert!(r.header("content-type").unwrap_or("").starts_with("text/html"), "{path}");
        }
    }
    for want in ["/docs", "/redoc", "/socket_test.html", "/group_messaging_test.html"] {
        assert!(pages.iter().any(|p| p == want), "the quick start does not give {want} as a URL: {pages:?}");
    }
}
