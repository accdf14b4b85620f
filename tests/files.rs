//! The contract's "Files" section against the running binary: byte-exact uploads of awkward
//! sizes (also in tiny irregular writes), categories, listing, deletion, Range/HEAD/304, and the
//! ways an upload can fail (413 mid-stream, client gone, one bad part, the server killed in the
//! middle of the commit) leaving nothing behind, and traversal attempts that must never escape
//! `UPLOAD_DIR`.

mod common;

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use common::{random_bytes, sha256_hex, Opts, Resp, TestServer};
use serde_json::{json, Value};

const BOUNDARY: &str = "----adcTestBoundary7MA4YWxkTrZu0gW";

/// A multipart body with the given (field, filename, bytes) parts.
fn form(parts: &[(&str, Option<&str>, &[u8])]) -> Vec<u8> {
    let mut body = Vec::new();
    for (field, filename, bytes) in parts {
        body.extend_from_slice(format!("--{BOUNDARY}\r\n").as_bytes());
        match filename {
            Some(f) => body.extend_from_slice(
                format!("Content-Disposition: form-data; name=\"{field}\"; filename=\"{f}\"\r\nContent-Type: application/octet-stream\r\n\r\n")
                    .as_bytes(),
            ),
            None => body.extend_from_slice(format!("Content-Disposition: form-data; name=\"{field}\"\r\n\r\n").as_bytes()),
        }
        body.extend_from_slice(bytes);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
    body
}

struct Env {
    srv: TestServer,
    token: String,
}

fn setup(opts: Opts) -> Env {
    let srv = TestServer::start_with(opts.env("SECRET_KEY", "files-test-secret-0123456789abcdefghijklmn"));
    let token = user(&srv, "up@example.com");
    Env { srv, token }
}

fn user(srv: &TestServer, email: &str) -> String {
    let body = json!({ "email": email, "password": "password1" }).to_string();
    let r = srv.request("POST", "/users/", &[("Content-Type", "application/json")], body.as_bytes());
    assert_eq!(r.status, 201, "{}", r.text());
    let r = srv.request("POST", "/auth/login", &[("Content-Type", "application/json")], body.as_bytes());
    r.json()["access_token"].as_str().unwrap().to_string()
}

fn upload_head(path: &str, token: &str, len: usize) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {token}\r\nContent-Type: multipart/form-data; boundary={BOUNDARY}\r\nContent-Length: {len}\r\n\r\n"
    )
}

fn upload(env: &Env, path: &str, body: &[u8]) -> Resp {
    let mut c = env.srv.connect();
    c.write(upload_head(path, &env.token, body.len()).as_bytes());
    c.write(body);
    c.read_response(false)
}

fn upload_one(env: &Env, name: &str, bytes: &[u8]) -> Value {
    let r = upload(env, "/api/upload", &form(&[("file", Some(name), bytes)]));
    assert_eq!(r.status, 201, "{}", r.text());
    r.json()
}

fn download(srv: &TestServer, url: &str) -> Resp {
    srv.get(url)
}

/// Files under UPLOAD_DIR (temp folder included), as relative paths.
fn stored_files(srv: &TestServer) -> Vec<String> {
    fn walk(dir: &Path, root: &Path, out: &mut Vec<String>) {
        if let Ok(entries) = std::fs::read_dir(dir) {
            for e in entries.flatten() {
                let p = e.path();
                if p.is_dir() {
                    walk(&p, root, out);
                } else {
                    let rel = p.strip_prefix(root).unwrap().display().to_string();
                    // The server's own temp-file owner lock (`<pid>-<random>.lock`) is not a file.
                    if !(rel.starts_with(".tmp/") && rel.ends_with(".lock")) {
                        out.push(rel);
                    }
                }
            }
        }
    }
    let root = srv.dir.path().join("uploads");
    let mut out = Vec::new();
    walk(&root, &root, &mut out);
    out.sort();
    out
}

fn record_count(srv: &TestServer) -> i64 {
    srv.db.client().query_one("SELECT count(*) FROM uploads", &[]).unwrap().get(0)
}

#[test]
fn awkward_sizes_come_back_byte_for_byte() {
    let env = setup(Opts::default());
    for (i, size) in [0usize, 1, 8191, 8192, 8193, 1024 * 1024].into_iter().enumerate() {
        let data = random_bytes(size, i as u64 + 1);
        let rec = upload_one(&env, &format!("blob{size}.bin"), &data);
        assert_eq!(rec["size"], size);
        assert_eq!(rec["category"], "files");
        assert_eq!(rec["original_filename"], format!("blob{size}.bin"));
        let url = rec["url"].as_str().unwrap();
        assert_eq!(url, format!("/uploads/files/{}", rec["filename"].as_str().unwrap()));
        let got = download(&env.srv, url);
        assert_eq!(got.status, 200);
        assert_eq!(got.body.len(), size);
        assert_eq!(sha256_hex(&got.body), sha256_hex(&data), "size {size}");
        let stored: String = env
            .srv
            .db
            .client()
            .query_one("SELECT sha256 FROM uploads WHERE filename = $1", &[&rec["filename"].as_str().unwrap()])
            .unwrap()
            .get(0);
        assert_eq!(stored, sha256_hex(&data), "recorded sha256, size {size}");
        assert_eq!(got.header("x-content-type-options"), Some("nosniff"));
        assert_eq!(got.header("content-security-policy"), Some("sandbox"));
    }
}

#[test]
fn tiny_irregular_writes_change_nothing() {
    let env = setup(Opts::default());
    for (i, size) in [0usize, 1, 8191, 8192, 8193, 70_001, 1024 * 1024].into_iter().enumerate() {
        // The payload is full of CR, LF and dashes, and of the boundary's own prefix.
        let mut data = Vec::new();
        let mut k = 0;
        while data.len() < size {
            match k % 5 {
                0 => data.extend_from_slice(b"\r\n--"),
                1 => data.extend_from_slice(&BOUNDARY.as_bytes()[..(k % BOUNDARY.len()).max(1)]),
                2 => data.push(b'\r'),
                3 => data.extend_from_slice(&random_bytes(k % 17 + 1, k as u64)),
                _ => data.extend_from_slice(b"\n-"),
            }
            k += 1;
        }
        data.truncate(size);
        let body = form(&[("file", Some("tricky.dat"), &data)]);
        let mut c = env.srv.connect();
        c.write(upload_head("/api/upload", &env.token, body.len()).as_bytes());
        // Tiny irregular writes; the 1 MiB payload gets somewhat larger ones to keep the test short.
        let scale = if size > 100_000 { 97 } else { 1 };
        let sizes = [1usize, 2, 3, 5, 7, 11, 13, 64, 1, 1, 1000].map(|n| n * scale);
        let mut pos = 0;
        let mut j = i;
        while pos < body.len() {
            let n = sizes[j % sizes.len()].min(body.len() - pos);
            c.stream.write_all(&body[pos..pos + n]).unwrap();
            c.stream.flush().unwrap();
            pos += n;
            j += 1;
        }
        let r = c.read_response(false);
        assert_eq!(r.status, 201, "{}", r.text());
        let got = download(&env.srv, r.json()["url"].as_str().unwrap());
        assert_eq!(sha256_hex(&got.body), sha256_hex(&data), "size {size}");
    }
}

#[test]
fn two_hundred_mib_upload_roundtrip() {
    let env = setup(Opts::default().env("MAX_UPLOAD_MB", "256"));
    let data = random_bytes(200 * 1024 * 1024, 99);
    let rec = upload_one(&env, "big.iso", &data);
    assert_eq!(rec["size"], data.len());
    let got = download(&env.srv, rec["url"].as_str().unwrap());
    assert_eq!(got.body.len(), data.len());
    assert_eq!(sha256_hex(&got.body), sha256_hex(&data));
}

#[test]
fn categories_listing_and_multiple() {
    let env = setup(Opts::default());
    let a = upload_one(&env, "Photo.JPG", b"jpeg bytes");
    let b = upload_one(&env, "report.HWPX", b"hwpx bytes");
    let c = upload_one(&env, "noext", b"plain");
    assert_eq!(
        (a["category"].as_str(), b["category"].as_str(), c["category"].as_str()),
        (Some("images"), Some("documents"), Some("files"))
    );
    assert!(a["filename"].as_str().unwrap().ends_with(".jpg"), "lower-cased extension");
    assert_ne!(a["filename"], "Photo.JPG");

    let body =
        form(&[("files", Some("one.png"), b"1"), ("note", None, b"a plain field"), ("files", Some("two.pdf"), b"22")]);
    let r = upload(&env, "/api/upload/multiple", &body);
    assert_eq!(r.status, 201, "{}", r.text());
    let many = r.json();
    assert_eq!(many["count"], 2);
    assert_eq!(many["files"][0]["original_filename"], "one.png");
    assert_eq!(many["files"][1]["category"], "documents");

    let auth = format!("Bearer {}", env.token);
    let all = env.srv.request("GET", "/api/files", &[("Authorization", &auth)], b"").json();
    assert_eq!(all["count"], 5);
    let names: Vec<&str> =
        all["files"].as_array().unwrap().iter().map(|f| f["original_filename"].as_str().unwrap()).collect();
    assert_eq!(names[2..], ["noext", "report.HWPX", "Photo.JPG"], "newest first");
    // More files than MAX_UPLOAD_FILES (20): a 422 on body.files, and nothing stored.
    let many: Vec<(&str, Option<&str>, &[u8])> = (0..21).map(|_| ("files", Some("n.txt"), b"n".as_slice())).collect();
    let r = upload(&env, "/api/upload/multiple", &form(&many));
    assert_eq!(r.status, 422, "{}", r.text());
    assert_eq!(r.json()["detail"][0]["type"], "too_long");
    // Two `file` parts on the one-file route: a 422 that says so, and neither is stored.
    let before = stored_files(&env.srv);
    let r = upload(&env, "/api/upload", &form(&[("file", Some("a.txt"), b"a"), ("file", Some("b.txt"), b"b")]));
    assert_eq!(r.status, 422, "{}", r.text());
    assert_eq!(r.json()["detail"][0]["type"], "too_long");
    assert_eq!(r.json()["detail"][0]["loc"], json!(["body", "file"]));
    assert!(r.json()["detail"][0]["msg"].as_str().unwrap().contains("/api/upload/multiple"), "{}", r.text());
    assert_eq!(stored_files(&env.srv), before);
    let twenty: Vec<(&str, Option<&str>, &[u8])> = many[..20].to_vec();
    let r = upload(&env, "/api/upload/multiple", &form(&twenty));
    assert_eq!(r.json()["count"], 20);
    let r = env.srv.request("DELETE", "/api/files/x", &[], b"");
    assert_eq!(r.status, 401);
    let images = env.srv.request("GET", "/api/files?category=images", &[("Authorization", &auth)], b"").json();
    assert_eq!(images["count"], 2);
    let r = env.srv.request("GET", "/api/files?category=videos", &[("Authorization", &auth)], b"");
    assert_eq!(r.status, 422);
    assert_eq!(r.json()["detail"][0]["loc"], json!(["query", "category"]));
    assert_eq!(env.srv.get("/api/files").status, 401);
}

#[test]
fn missing_part_and_bad_forms() {
    let env = setup(Opts::default());
    let r = upload(&env, "/api/upload", &form(&[("other", Some("x.txt"), b"x")]));
    assert_eq!(r.status, 422);
    assert_eq!(r.json()["detail"][0]["loc"], json!(["body", "file"]));
    let r = upload(&env, "/api/upload/multiple", &form(&[("file", Some("x.txt"), b"x")]));
    assert_eq!(r.json()["detail"][0]["loc"], json!(["body", "files"]));
    let auth = format!("Bearer {}", env.token);
    let r = env.srv.request(
        "POST",
        "/api/upload",
        &[("Authorization", &auth), ("Content-Type", "application/json")],
        b"{}",
    );
    assert_eq!(r.status, 422);
    // A body that never closes its boundary is refused and leaves nothing.
    let mut body = form(&[("file", Some("x.txt"), b"data")]);
    body.truncate(body.len() - 10);
    let r = upload(&env, "/api/upload", &body);
    assert!(r.status == 400, "{} {}", r.status, r.text());
    assert_eq!(stored_files(&env.srv), Vec::<String>::new());
    assert_eq!(record_count(&env.srv), 0);
    let r = env.srv.request("POST", "/api/upload", &[], b"");
    assert_eq!(r.status, 401);
}

#[test]
fn over_the_limit_is_cut_off_and_leaves_nothing() {
    let env = setup(Opts::default().env("MAX_UPLOAD_MB", "1"));
    // Exactly at the limit is fine.
    upload_one(&env, "edge.bin", &random_bytes(1024 * 1024, 5));
    let before = stored_files(&env.srv);
    // One byte over, declared up front: 413.
    let r = upload(&env, "/api/upload", &form(&[("file", Some("over.bin"), &random_bytes(1024 * 1024 + 1, 6))]));
    assert_eq!(r.status, 413, "{}", r.text());
    // Streamed in chunked encoding (no length up front): cut off once it crosses the limit.
    let body = form(&[("file", Some("stream.bin"), &random_bytes(5 * 1024 * 1024, 7))]);
    let mut c = env.srv.connect();
    c.write(
        format!(
            "POST /api/upload HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {}\r\nContent-Type: multipart/form-data; boundary={BOUNDARY}\r\nTransfer-Encoding: chunked\r\n\r\n",
            env.token
        )
        .as_bytes(),
    );
    for chunk in body.chunks(64 * 1024) {
        if c.stream.write_all(format!("{:x}\r\n", chunk.len()).as_bytes()).is_err()
            || c.stream.write_all(chunk).is_err()
            || c.stream.write_all(b"\r\n").is_err()
        {
            // The server stopped reading once the limit was crossed.
            break;
        }
    }
    let r = c.read_response(false);
    assert_eq!(r.status, 413);
    // In `multiple`, one part over the limit sinks the whole request.
    let body =
        form(&[("files", Some("ok.txt"), b"fine"), ("files", Some("big.bin"), &random_bytes(1024 * 1024 + 10, 8))]);
    let r = upload(&env, "/api/upload/multiple", &body);
    assert_eq!(r.status, 413);
    assert_eq!(stored_files(&env.srv), before, "nothing new on disk");
    assert_eq!(record_count(&env.srv), 1);
}

#[test]
fn an_aborted_upload_leaves_nothing() {
    let env = setup(Opts::default());
    let body = form(&[("file", Some("half.bin"), &random_bytes(2 * 1024 * 1024, 9))]);
    {
        let mut c = env.srv.connect();
        c.write(upload_head("/api/upload", &env.token, body.len()).as_bytes());
        c.write(&body[..body.len() / 2]);
        std::thread::sleep(Duration::from_millis(200));
    } // dropped: the client went away mid-body.
    let until = std::time::Instant::now() + Duration::from_secs(10);
    while !stored_files(&env.srv).is_empty() && std::time::Instant::now() < until {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(stored_files(&env.srv), Vec::<String>::new());
    assert_eq!(record_count(&env.srv), 0);
    // And the server is fine.
    upload_one(&env, "after.txt", b"still works");
}

#[test]
fn ranges_head_and_conditional_requests() {
    let env = setup(Opts::default());
    let data = random_bytes(10_000, 3);
    let rec = upload_one(&env, "r.bin", &data);
    let url = rec["url"].as_str().unwrap();
    let full = env.srv.get(url);
    let etag = full.header("etag").unwrap().to_string();
    assert!(full.header("last-modified").is_some());
    assert_eq!(full.header("content-type"), Some("application/octet-stream"));

    let mut c = env.srv.connect();
    let head = c.send("HEAD", url, &[], b"");
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-length"), Some("10000"));
    assert!(head.body.is_empty());
    let r = c.send("GET", url, &[("Range", "bytes=100-199")], b"");
    assert_eq!(r.status, 206);
    assert_eq!(r.header("content-range"), Some("bytes 100-199/10000"));
    assert_eq!(r.body, data[100..200]);
    let r = c.send("GET", url, &[("Range", "bytes=-10")], b"");
    assert_eq!(r.body, data[9990..]);
    let r = c.send("GET", url, &[("Range", "bytes=10000-")], b"");
    assert_eq!(r.status, 416);
    assert_eq!(r.header("content-range"), Some("bytes */10000"));
    let r = c.send("GET", url, &[("If-None-Match", &etag)], b"");
    assert_eq!(r.status, 304);
    assert!(r.body.is_empty());
    assert_eq!(c.send("GET", url, &[("If-None-Match", "\"other\"")], b"").status, 200);
    // If-Range: the range only for this very version, else the whole file.
    let r = c.send("GET", url, &[("Range", "bytes=0-1"), ("If-Range", &etag)], b"");
    assert_eq!((r.status, r.body.len()), (206, 2));
    let r = c.send("GET", url, &[("Range", "bytes=0-1"), ("If-Range", "\"nope\"")], b"");
    assert_eq!((r.status, r.body.len()), (200, 10_000));
    // Long names keep their extension, so their category.
    let long = upload_one(&env, &format!("{}.png", "a".repeat(300)), b"\x89PNG");
    assert_eq!(long["category"], "images", "{long}");
    assert!(long["filename"].as_str().unwrap().ends_with(".png"), "{long}");
    let img = upload_one(&env, "x.svg", b"<svg xmlns='http://www.w3.org/2000/svg'><script>alert(1)</script></svg>");
    let r = env.srv.get(img["url"].as_str().unwrap());
    assert_eq!(r.header("content-type"), Some("image/svg+xml"));
    assert_eq!(r.header("content-security-policy"), Some("sandbox"));
}

#[test]
fn nothing_outside_the_upload_dir_is_ever_served() {
    let env = setup(Opts::default());
    let rec = upload_one(&env, "inside.txt", b"inside");
    let name = rec["filename"].as_str().unwrap();
    // A secret next to the upload dir, and a symlink planted inside it pointing there.
    let secret = env.srv.dir.path().join("secret.txt");
    std::fs::write(&secret, b"TOP SECRET").unwrap();
    let docs = env.srv.dir.path().join("uploads/documents");
    std::os::unix::fs::symlink(&secret, docs.join("link.txt")).unwrap();
    std::os::unix::fs::symlink(env.srv.dir.path(), env.srv.dir.path().join("uploads/files")).ok();
    for path in [
        "/uploads/documents/link.txt".to_string(),
        "/uploads/documents/../../secret.txt".to_string(),
        "/uploads/documents/%2e%2e/%2e%2e/secret.txt".to_string(),
        "/uploads/documents/..%2f..%2fsecret.txt".to_string(),
        "/uploads/documents/..%5c..%5csecret.txt".to_string(),
        "/uploads/documents/%2Fetc%2Fpasswd".to_string(),
        "/uploads//etc/passwd".to_string(),
        "/uploads/../secret.txt".to_string(),
        "/uploads/%2e%2e/secret.txt".to_string(),
        "/uploads/documents/.".to_string(),
        "/uploads/documents/".to_string(),
        format!("/uploads/images/{name}"),
        "/uploads/files/secret.txt".to_string(),
    ] {
        let r = env.srv.get(&path);
        assert!(r.status == 404 || r.status == 400 || r.status == 307, "{path}: {}", r.status);
        assert!(!r.text().contains("TOP SECRET"), "{path} leaked");
    }
    assert_eq!(env.srv.get(&format!("/uploads/documents/{name}")).text(), "inside");
}

#[test]
fn records_name_their_uploader_and_mine_lists_only_the_callers() {
    let env = setup(Opts::default());
    let me = env.srv.request("GET", "/users/me", &[("Authorization", &format!("Bearer {}", env.token))], b"").json();
    let other = user(&env.srv, "someone@example.com");
    let other_id =
        env.srv.request("GET", "/users/me", &[("Authorization", &format!("Bearer {other}"))], b"").json()["id"].clone();
    let mine = upload_one(&env, "mine.png", b"m");
    assert_eq!(mine["uploaded_by"], me["id"]);
    let many =
        upload(&env, "/api/upload/multiple", &form(&[("files", Some("a.txt"), b"a"), ("files", Some("b"), b"b")]));
    assert!(many.json()["files"].as_array().unwrap().iter().all(|f| f["uploaded_by"] == me["id"]));
    // The other user's upload.
    let r = {
        let mut c = env.srv.connect();
        let body = form(&[("file", Some("theirs.png"), b"t")]);
        c.write(upload_head("/api/upload", &other, body.len()).as_bytes());
        c.write(&body);
        c.read_response(false)
    };
    assert_eq!(r.status, 201);
    assert_eq!(r.json()["uploaded_by"], other_id);
    let list = |token: &str, q: &str| {
        let r =
            env.srv.request("GET", &format!("/api/files{q}"), &[("Authorization", &format!("Bearer {token}"))], b"");
        assert_eq!(r.status, 200, "{q}: {}", r.text());
        r.json()
    };
    let all = list(&env.token, "");
    assert_eq!(all["count"], 4);
    assert!(all["files"].as_array().unwrap().iter().all(|f| f["uploaded_by"].is_i64()), "{all}");
    for q in ["?mine=true", "?mine=1", "?mine=TRUE"] {
        let only = list(&env.token, q);
        assert_eq!(only["count"], 3, "{q}");
        assert!(only["files"].as_array().unwrap().iter().all(|f| f["uploaded_by"] == me["id"]));
    }
    assert_eq!(list(&env.token, "?mine=false")["count"], 4);
    assert_eq!(list(&other, "?mine=true")["count"], 1);
    assert_eq!(list(&other, "?mine=true")["files"][0]["original_filename"], "theirs.png");
    assert_eq!(list(&env.token, "?mine=true&category=images")["count"], 1);
    assert_eq!(list(&env.token, "?mine=true&category=documents")["count"], 1);
    let r =
        env.srv.request("GET", "/api/files?mine=maybe", &[("Authorization", &format!("Bearer {}", env.token))], b"");
    assert_eq!(r.status, 422);
    assert_eq!(r.json()["detail"][0]["loc"], json!(["query", "mine"]));
    // The document says so too.
    let doc = env.srv.get("/openapi.json").json();
    let record = &doc["components"]["schemas"]["FileRecord"];
    assert!(record["required"].as_array().unwrap().contains(&json!("uploaded_by")), "{record}");
    let params = doc["paths"]["/api/files"]["get"]["parameters"].as_array().unwrap();
    assert!(params.iter().any(|p| p["name"] == "mine" && p["schema"]["type"] == "boolean"));
}

#[test]
fn deletion_rules() {
    let env = setup(Opts::default());
    let other = user(&env.srv, "other@example.com");
    let rec = upload_one(&env, "mine.txt", b"mine");
    let name = rec["filename"].as_str().unwrap();
    let del = |token: &str, name: &str| {
        env.srv.request("DELETE", &format!("/api/files/{name}"), &[("Authorization", &format!("Bearer {token}"))], b"")
    };
    assert_eq!(del(&other, name).status, 403);
    // NUL (PostgreSQL refuses it in text: this was a 500) and every other control character.
    for bad in ["..", "a..b", "a%2Fb", "a%5Cb", "x%00y", "%00", "x%01y", "x%0Ay", "x%7Fy", "x%C2%85y"] {
        let r = del(&env.token, bad);
        assert_eq!(r.status, 400, "{bad}: {}", r.text());
        assert_eq!(r.json()["detail"], "Invalid filename", "{bad}");
    }
    assert_eq!(del(&env.token, "nope.txt").status, 404);
    let r = del(&env.token, name);
    assert_eq!(r.status, 200);
    assert_eq!(r.json(), json!({ "status": "deleted", "filename": name }));
    assert_eq!(env.srv.get(rec["url"].as_str().unwrap()).status, 404);
    assert_eq!(del(&env.token, name).status, 404);
    // A superuser may delete anyone's file.
    let out = env.srv.cli(&["user", "create", "--email", "root@example.com", "--password", "rootpass1", "--superuser"]);
    assert!(out.status.success());
    let body = json!({ "email": "root@example.com", "password": "rootpass1" }).to_string();
    let root = env.srv.request("POST", "/auth/login", &[("Content-Type", "application/json")], body.as_bytes()).json()
        ["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    let rec = upload_one(&env, "theirs.txt", b"theirs");
    assert_eq!(del(&root, rec["filename"].as_str().unwrap()).status, 200);
    // Deletes of one file at once: exactly one of them deleted it (the others were all 200).
    for round in 0..10 {
        let rec = upload_one(&env, &format!("race{round}.txt"), b"race");
        let name = rec["filename"].as_str().unwrap().to_string();
        let statuses: Vec<u16> = std::thread::scope(|s| {
            let all: Vec<_> = (0..6).map(|_| s.spawn(|| del(&env.token, &name).status)).collect();
            all.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let mut sorted = statuses.clone();
        sorted.sort();
        assert_eq!(sorted, [200, 404, 404, 404, 404, 404], "round {round}: {statuses:?}");
    }
}

#[test]
fn records_survive_a_restart() {
    let mut env = setup(Opts::default());
    let rec = upload_one(&env, "keep.pdf", b"%PDF-1.4 keep");
    env.srv.restart();
    let auth = format!("Bearer {}", env.token);
    let all = env.srv.request("GET", "/api/files", &[("Authorization", &auth)], b"").json();
    assert_eq!(all["files"][0], rec);
    assert_eq!(env.srv.get(rec["url"].as_str().unwrap()).body, b"%PDF-1.4 keep");
}

#[test]
fn a_slow_reader_of_a_large_download_is_cut_off() {
    // One worker; a download must be read at MIN_BODY_RATE_KB (2 MiB/s here) on average once
    // BODY_TIMEOUT_SECS (1) has passed.
    let env = setup(
        Opts::default()
            .env("WORKERS", "1")
            .env("BODY_TIMEOUT_SECS", "1")
            .env("MIN_BODY_RATE_KB", "2048")
            .env("MAX_UPLOAD_MB", "64"),
    );
    let rec = upload_one(&env, "big.bin", &random_bytes(48 * 1024 * 1024, 11));
    let url = rec["url"].as_str().unwrap().to_string();
    let mut slow = env.srv.connect();
    slow.write(format!("GET {url} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
    let t0 = std::time::Instant::now();
    // Read 1 KiB a second (the kernel's buffers take a few MB, then the server waits on us),
    // and each second see whether the only worker serves anyone else.
    let health_ok = || {
        let mut c = env.srv.connect();
        c.stream.set_read_timeout(Some(Duration::from_millis(900))).unwrap();
        c.write(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n");
        std::io::Read::read(&mut c.stream, &mut [0u8; 16]).is_ok_and(|n| n > 0)
    };
    let mut total = 0usize;
    let mut freed = false;
    while t0.elapsed() < Duration::from_secs(30) {
        let mut buf = [0u8; 1024];
        if let Ok(n) = std::io::Read::read(&mut slow.stream, &mut buf) {
            total += n;
        }
        if health_ok() {
            freed = true;
            break;
        }
    }
    assert!(freed, "the worker was still held after {:?} ({total} bytes read)", t0.elapsed());
}

/// Intents (`DATA_DIR/intents/`) not resolved yet.
/// Upload `name` into a server set to kill itself during the commit; wait for it to die.
fn upload_and_die(env: &mut Env, name: &str) {
    let body = form(&[("file", Some(name), b"crash")]);
    let mut c = env.srv.connect();
    c.write(upload_head("/api/upload", &env.token, body.len()).as_bytes());
    c.write(&body);
    assert!(c.try_read_response(false).is_none(), "the upload was answered: the test hook did not fire");
    assert!(env.srv.wait_exit(Duration::from_secs(10)).is_none(), "not killed by a signal");
}

/// The contract: "A rejected or interrupted upload leaves no file and no record behind" — also
/// when the server dies (kill -9, power loss) in the middle of the commit. Debug builds only:
/// `ADCLUSTER_TEST_CRASH_AT` makes the server SIGKILL itself at that point of the commit.
#[test]
fn a_crash_during_the_commit_leaves_no_file_without_a_record_nor_a_record_without_a_file() {
    let mut env = setup(Opts::default());
    let docs = |srv: &TestServer| -> Vec<String> {
        stored_files(srv).into_iter().filter(|f| f.starts_with("documents/")).collect()
    };

    // Right after the rename, before the record: the file was in place, unrecorded.
    env.srv.restart_with_crash_point(Some("after-rename"));
    upload_and_die(&mut env, "orphan.txt");
    let placed = docs(&env.srv);
    assert_eq!(placed.len(), 1, "the crash came before the rename: {:?}", stored_files(&env.srv));
    assert_eq!(env.srv.intent_files().len(), 1);
    env.srv.restart_with_crash_point(None);
    let r = env.srv.get(&format!("/uploads/{}", placed[0]));
    assert_eq!(r.status, 404, "an orphan file is served after the restart");
    assert_eq!(docs(&env.srv), Vec::<String>::new());
    assert_eq!(record_count(&env.srv), 0);
    assert_eq!(env.srv.intent_files(), Vec::<String>::new());
    assert!(env.srv.log().contains("its upload was interrupted before its record was written"), "{}", env.srv.log());

    // Right before the rename: nothing in place; the temp file is swept.
    env.srv.restart_with_crash_point(Some("before-rename"));
    upload_and_die(&mut env, "early.txt");
    assert_eq!(docs(&env.srv), Vec::<String>::new());
    env.srv.restart_with_crash_point(None);
    assert_eq!(stored_files(&env.srv), Vec::<String>::new(), "temp or category files left behind");
    assert_eq!(record_count(&env.srv), 0);
    assert_eq!(env.srv.intent_files(), Vec::<String>::new());

    // Right after the record, before the intent is cleared: the upload is committed and stays.
    env.srv.restart_with_crash_point(Some("after-record"));
    upload_and_die(&mut env, "kept.txt");
    env.srv.restart_with_crash_point(None);
    let kept = docs(&env.srv);
    assert_eq!(kept.len(), 1, "a recorded file was removed");
    assert_eq!(record_count(&env.srv), 1);
    assert_eq!(env.srv.get(&format!("/uploads/{}", kept[0])).body, b"crash");
    assert_eq!(env.srv.intent_files(), Vec::<String>::new());
}
