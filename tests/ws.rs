//! The contract's "WebSocket" and "WebSocket REST API" sections against the running binary,
//! with real WebSocket clients: every command and frame, the errors that keep a connection
//! open, the limits that close it, takeover, slow consumers, ordering, pings, and shutdown.

mod common;

use std::io::{Read, Write};
use std::net::Shutdown;
use std::time::{Duration, Instant};

use common::ws::{eventually, masked_frame, raw_handshake, raw_handshake_head, upgrade_response, WsClient};
use common::{Opts, Resp, TestServer};
use serde_json::{json, Value};

const SECRET: &str = "test-secret-key-0123456789abcdef-0123456789";

fn server() -> TestServer {
    TestServer::start_with(Opts::default().env("SECRET_KEY", SECRET))
}

fn post_json(srv: &TestServer, path: &str, token: Option<&str>, body: &str) -> Resp {
    let bearer = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("Content-Type", "application/json")];
    if let Some(b) = &bearer {
        headers.push(("Authorization", b));
    }
    srv.request("POST", path, &headers, body.as_bytes())
}

/// Sign up and log in a user; returns its token.
fn token(srv: &TestServer, email: &str) -> String {
    let body = json!({ "email": email, "password": "password1" }).to_string();
    let r = post_json(srv, "/users/", None, &body);
    assert_eq!(r.status, 201, "{}", r.text());
    let r = post_json(srv, "/auth/login", None, &body);
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["access_token"].as_str().unwrap().to_string()
}

fn get_json(srv: &TestServer, path: &str) -> Value {
    let r = srv.get(path);
    assert_eq!(r.status, 200, "{path}: {}", r.text());
    assert_eq!(r.header("content-type"), Some("application/json"));
    r.json()
}

fn assert_timestamp(v: &Value) {
    let ts = v["timestamp"].as_str().unwrap_or_else(|| panic!("no timestamp: {v}"));
    assert!(ts.len() >= 20 && ts.ends_with('Z') && ts.as_bytes()[10] == b'T', "{ts}");
}

#[test]
fn connect_welcome_join_and_rest_listings() {
    let srv = server();
    let (mut anon, w) = WsClient::join(&srv, "/ws");
    let anon_id = w["client_id"].as_str().unwrap().to_string();
    assert!(anon_id.starts_with("anon-") && anon_id.len() == 13, "{anon_id}");
    assert!(anon_id[5..].bytes().all(|b| b.is_ascii_hexdigit()), "{anon_id}");
    assert_eq!(w["group"], Value::Null);
    assert_timestamp(&w);

    let (_alice, w) = WsClient::join(&srv, "/ws/alice");
    assert_eq!((w["client_id"].as_str(), w["group"].clone()), (Some("alice"), Value::Null));
    let (mut bob, w) = WsClient::join(&srv, "/ws/bob/room.1");
    assert_eq!((w["client_id"].as_str(), w["group"].as_str()), (Some("bob"), Some("room.1")));
    let (_carol, _) = WsClient::join(&srv, "/ws/carol/room.1");
    let j = bob.recv();
    assert_eq!(j["type"], "join");
    assert_eq!((j["client_id"].as_str(), j["group"].as_str()), (Some("carol"), Some("room.1")));
    assert_timestamp(&j);
    // Nobody outside the group hears the join.
    anon.assert_silent(Duration::from_millis(200));

    let clients = get_json(&srv, "/api/ws/clients");
    assert_eq!(clients["count"], 4);
    let list = clients["clients"].as_array().unwrap();
    let ids: Vec<&str> = list.iter().map(|c| c["client_id"].as_str().unwrap()).collect();
    assert_eq!(ids, [anon_id.as_str(), "alice", "bob", "carol"]);
    assert_eq!(list[2]["group"], "room.1");
    assert_eq!(list[1]["group"], Value::Null);
    for c in list {
        let at = c["connected_at"].as_str().unwrap();
        assert!(at.ends_with('Z') && at.as_bytes()[10] == b'T', "{at}");
    }
    assert_eq!(
        get_json(&srv, "/api/ws/groups"),
        json!({"groups": [{"name": "room.1", "member_count": 2}], "count": 1})
    );
    assert_eq!(
        get_json(&srv, "/api/ws/groups/room.1"),
        json!({"group": "room.1", "members": ["bob", "carol"], "member_count": 2})
    );
    let r = srv.get("/api/ws/groups/nope");
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["detail"], "Group not found");
}

#[test]
fn bad_ids_and_plain_requests_are_refused_before_the_upgrade() {
    let srv = server();
    let long = "x".repeat(65);
    for path in [
        format!("/ws/{long}"),
        "/ws/a%20b".to_string(),
        "/ws/%C3%A9".to_string(),
        "/ws/a:b".to_string(),
        "/ws/a%2Fb".to_string(),
        format!("/ws/ok/{long}"),
        "/ws/ok/bad%21".to_string(),
        "/ws/b%40d/room".to_string(),
    ] {
        let r = upgrade_response(&srv, &path, &[]);
        assert_eq!(r.status, 400, "{path}: {}", r.text());
        assert!(r.json()["detail"].as_str().unwrap().starts_with("Invalid"), "{}", r.text());
    }
    // 64 characters is fine.
    let (_c, w) = WsClient::join(&srv, &format!("/ws/{}/{}", "y".repeat(64), "z".repeat(64)));
    assert_eq!(w["client_id"].as_str().unwrap().len(), 64);
    // Not a WebSocket handshake at all.
    let r = srv.get("/ws/alice");
    assert_eq!(r.status, 426, "{}", r.text());
    assert_eq!(r.header("upgrade"), Some("websocket"));
    let r = srv.request(
        "GET",
        "/ws/alice",
        &[("Upgrade", "websocket"), ("Connection", "Upgrade"), ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")],
        b"",
    );
    assert_eq!(r.status, 426);
    assert_eq!(r.header("sec-websocket-version"), Some("13"));
    let r = srv.request(
        "GET",
        "/ws/alice",
        &[("Upgrade", "websocket"), ("Connection", "Upgrade"), ("Sec-WebSocket-Version", "13")],
        b"",
    );
    assert_eq!(r.status, 400);
    // A key or a version given twice is a malformed handshake (RFC 6455 §11.3.1, §11.3.5), and
    // so is a body: what follows the head of a handshake is the WebSocket's.
    let r = upgrade_response(&srv, "/ws/alice", &[("Sec-WebSocket-Key", "AQIDBAUGBwgJCgsMDQ4PEA==")]);
    assert_eq!((r.status, r.json()["detail"].as_str()), (400, Some("Duplicate Sec-WebSocket-Key header")));
    let r = upgrade_response(&srv, "/ws/alice", &[("Sec-WebSocket-Version", "8")]);
    assert_eq!((r.status, r.json()["detail"].as_str()), (400, Some("Duplicate Sec-WebSocket-Version header")));
    let mut headers = common::ws::upgrade_headers();
    headers.push(("Content-Type", "text/plain"));
    let r = srv.request("GET", "/ws/alice", &headers, b"hello");
    assert_eq!((r.status, r.json()["detail"].as_str()), (400, Some("A WebSocket handshake has no body")));
    assert_eq!(get_json(&srv, "/api/ws/clients")["count"], 1);
}

#[test]
fn ws_auth_required_wants_a_valid_token_before_the_upgrade() {
    let srv = TestServer::start_with(Opts::default().env("SECRET_KEY", SECRET).env("WS_AUTH", "required"));
    let assert_401 = |r: &Resp| {
        assert_eq!(r.status, 401, "{}", r.text());
        assert_eq!(r.header("www-authenticate"), Some("Bearer"));
        assert_eq!(r.json()["detail"], "Could not validate credentials");
    };
    assert_401(&upgrade_response(&srv, "/ws/alice", &[]));
    assert_401(&upgrade_response(&srv, "/ws/alice?token=garbage", &[]));
    assert_401(&upgrade_response(&srv, "/ws", &[("Authorization", "Bearer not.a.token")]));
    let t = token(&srv, "ws@example.com");
    let (_c, w) = WsClient::join(&srv, &format!("/ws/alice?token={t}"));
    assert_eq!(w["client_id"], "alice");
    let mut c = WsClient::try_connect(srv.addr, "/ws/bob/g", &[("Authorization", &format!("Bearer {t}"))]).unwrap();
    assert_eq!(c.recv()["type"], "welcome");
    // The token never reaches the log.
    assert!(!srv.log().contains(&t), "the log shows a token");
    // (The request line is logged once the 101 is written, maybe after the welcome arrived.)
    assert!(eventually(Duration::from_secs(5), || srv.log().contains("GET /ws/alice 101")), "{}", srv.log());
}

#[test]
fn ws_auth_optional_takes_a_bad_token_as_none() {
    // The contract answers 401 only with WS_AUTH=required; with optional a token that is not
    // valid is no token: the client connects, and is no superuser.
    let srv = TestServer::start_with(Opts::default().env("SECRET_KEY", SECRET));
    let (_c, _) = WsClient::join(&srv, "/ws/alice");
    let ghost = signed_token(999_999);
    let forged = ["expired.or.forged", ghost.as_str()];
    for (i, bad) in forged.iter().enumerate() {
        let (mut c, w) = WsClient::join(&srv, &format!("/ws/bob{i}?token={bad}"));
        assert_eq!(w["client_id"], format!("bob{i}"));
        let mut h =
            WsClient::try_connect(srv.addr, &format!("/ws/carol{i}"), &[("Authorization", &format!("Bearer {bad}"))])
                .unwrap();
        assert_eq!(h.recv()["type"], "welcome");
        // ... and is not a superuser: the reserved group stays closed to it.
        let r = upgrade_response(&srv, &format!("/ws/dave{i}/admins?token={bad}"), &[]);
        assert_eq!(r.status, 403, "{}", r.text());
        c.send("/join admins");
        assert_eq!(c.recv()["error"], "forbidden");
    }
    let t = token(&srv, "opt@example.com");
    let (_c, _) = WsClient::join(&srv, &format!("/ws/erin?token={t}"));
    // The REST API's POST routes still want a valid token.
    let r = post_json(&srv, "/api/ws/send_to/alice", Some(&ghost), r#"{"message": "x"}"#);
    assert_eq!(r.status, 401, "{}", r.text());
}

#[test]
fn private_messages_and_errors_that_keep_the_connection_open() {
    let srv = server();
    let (mut a, _) = WsClient::join(&srv, "/ws/a");
    let (mut b, _) = WsClient::join(&srv, "/ws/b");
    a.send("/send_to b hello  there ");
    let p = b.recv();
    assert_eq!(p["type"], "private");
    assert_eq!(
        (p["from"].as_str(), p["to"].as_str(), p["message"].as_str()),
        (Some("a"), Some("b"), Some("hello  there "))
    );
    assert_timestamp(&p);
    let s = a.recv();
    assert_eq!(
        (s["type"].as_str(), s["to"].as_str(), s["message"].as_str()),
        (Some("sent"), Some("b"), Some("hello  there "))
    );

    let expect_error = |c: &mut WsClient, frame: &str, code: &str| {
        c.send(frame);
        let e = c.recv();
        assert_eq!((e["type"].as_str(), e["error"].as_str()), (Some("error"), Some(code)), "{frame}: {e}");
        assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()));
        assert_timestamp(&e);
    };
    expect_error(&mut a, "/send_to nobody hi", "client_not_found");
    expect_error(&mut a, "/send_to b", "bad_request");
    expect_error(&mut a, "/send_to", "bad_request");
    expect_error(&mut a, "/group hi", "not_in_group");
    expect_error(&mut a, "/leave", "not_in_group");
    expect_error(&mut a, "/members", "not_in_group");
    expect_error(&mut a, "/join", "bad_request");
    expect_error(&mut a, "/join bad/name", "bad_request");
    expect_error(&mut a, "/frobnicate", "unknown_command");
    expect_error(&mut a, "{not json", "bad_request");
    expect_error(&mut a, r#"{"action": "send_to", "to": "b"}"#, "bad_request");
    expect_error(&mut a, r#"{"message": "no action"}"#, "bad_request");
    expect_error(&mut a, r#"{"action": "fly"}"#, "unknown_command");
    expect_error(&mut a, r#"{"action": "send_to", "to": "ghost", "message": "x"}"#, "client_not_found");
    let deep = format!("{}{}", "[".repeat(20_000), "]".repeat(20_000));
    expect_error(&mut a, &format!("{{\"action\": \"group\", \"message\": {deep}}}"), "bad_request");
    a.send_binary(b"\x00\x01binary");
    let e = a.recv();
    assert_eq!(e["error"], "unsupported");
    // Still open, still working.
    a.send(r#"{"action": "send_to", "to": "b", "message": "json works"}"#);
    assert_eq!(b.recv()["message"], "json works");
    assert_eq!(a.recv()["type"], "sent");
    // b heard nothing of a's mistakes.
    b.assert_silent(Duration::from_millis(200));
}

#[test]
fn groups_join_leave_members_and_broadcast() {
    let srv = server();
    let (mut a, _) = WsClient::join(&srv, "/ws/a/g1");
    let (mut b, _) = WsClient::join(&srv, "/ws/b/g1");
    let (mut c, _) = WsClient::join(&srv, "/ws/c");
    assert_eq!(a.recv()["type"], "join");

    // /group reaches every member, the sender included; not the others.
    a.send("/group hi group");
    for x in [&mut a, &mut b] {
        let g = x.recv();
        assert_eq!(g["type"], "group");
        assert_eq!(
            (g["from"].as_str(), g["group"].as_str(), g["message"].as_str()),
            (Some("a"), Some("g1"), Some("hi group"))
        );
    }
    // Plain text in a group is a group message; JSON group too.
    b.send("plain words");
    assert_eq!(a.recv()["message"], "plain words");
    assert_eq!(b.recv()["type"], "group");
    b.send(r#"{"action": "group", "message": "from json"}"#);
    assert_eq!(a.recv()["message"], "from json");
    assert_eq!(b.recv()["message"], "from json");
    c.assert_silent(Duration::from_millis(200));

    // Plain text outside a group is a broadcast to every connected client.
    c.send("hello everyone");
    for x in [&mut a, &mut b, &mut c] {
        let v = x.recv();
        assert_eq!(
            (v["type"].as_str(), v["from"].as_str(), v["message"].as_str()),
            (Some("broadcast"), Some("c"), Some("hello everyone"))
        );
    }

    // c joins g1 (JSON action): members hear join, c gets joined.
    c.send(r#"{"action": "join", "group": "g1"}"#);
    let j = c.recv();
    assert_eq!((j["type"].as_str(), j["group"].as_str()), (Some("joined"), Some("g1")));
    for x in [&mut a, &mut b] {
        let j = x.recv();
        assert_eq!(
            (j["type"].as_str(), j["client_id"].as_str(), j["group"].as_str()),
            (Some("join"), Some("c"), Some("g1"))
        );
    }
    // /members (own group and named), /groups.
    c.send("/members");
    let m = c.recv();
    assert_eq!((m["type"].as_str(), m["group"].as_str()), (Some("members"), Some("g1")));
    assert_eq!(m["members"], json!(["a", "b", "c"]));
    // b moves to g2: g1 hears leave, b gets joined, g2 exists.
    b.send("/join g2");
    let j = b.recv();
    assert_eq!((j["type"].as_str(), j["group"].as_str()), (Some("joined"), Some("g2")));
    for x in [&mut a, &mut c] {
        let l = x.recv();
        assert_eq!(
            (l["type"].as_str(), l["client_id"].as_str(), l["group"].as_str()),
            (Some("leave"), Some("b"), Some("g1"))
        );
    }
    a.send("/groups");
    let g = a.recv();
    assert_eq!(g["type"], "groups");
    assert_eq!(g["groups"], json!([{"name": "g1", "member_count": 2}, {"name": "g2", "member_count": 1}]));
    a.send("/members g2");
    assert_eq!(a.recv()["members"], json!(["b"]));
    // /leave: the last member leaving makes the group vanish.
    b.send("/leave");
    let l = b.recv();
    assert_eq!((l["type"].as_str(), l["group"].as_str()), (Some("left"), Some("g2")));
    assert_eq!(srv.get("/api/ws/groups/g2").status, 404);
    assert_eq!(get_json(&srv, "/api/ws/groups")["count"], 1);
    a.send("/members g2");
    assert_eq!(a.recv()["members"], json!([]));
    b.send("/group anyone?");
    assert_eq!(b.recv()["error"], "not_in_group");
}

#[test]
fn leave_on_close_frame_dropped_tcp_and_ping_timeout() {
    let srv = TestServer::start_with(
        Opts::default().env("SECRET_KEY", SECRET).env("WS_PING_INTERVAL_SECS", "1").env("WS_PING_TIMEOUT_SECS", "2"),
    );
    let (mut w, _) = WsClient::join(&srv, "/ws/watcher/room");
    let expect_leave = |w: &mut WsClient, id: &str| {
        let l = w.recv_type("leave");
        assert_eq!((l["client_id"].as_str(), l["group"].as_str()), (Some(id), Some("room")), "{l}");
    };

    // A close frame: the server answers with a close frame and the group hears leave.
    let (c, _) = WsClient::join(&srv, "/ws/closer/room");
    assert_eq!(w.recv()["type"], "join");
    c.close();
    expect_leave(&mut w, "closer");

    // An abrupt TCP close, no close frame.
    let (c, _) = WsClient::join(&srv, "/ws/dropper/room");
    assert_eq!(w.recv()["type"], "join");
    let stream = c.ws.get_ref().try_clone().unwrap();
    stream.shutdown(Shutdown::Both).unwrap();
    drop(c);
    expect_leave(&mut w, "dropper");

    // A client that never answers pings (a raw socket nobody reads) is dropped after 2 s.
    let silent = raw_handshake(&srv, "/ws/silent/room");
    assert_eq!(w.recv()["type"], "join");
    let started = Instant::now();
    expect_leave(&mut w, "silent");
    assert!(started.elapsed() >= Duration::from_millis(1500), "dropped too early: {:?}", started.elapsed());
    drop(silent);

    // The watcher itself answers pings (tungstenite does) and stays: it was pinged meanwhile.
    assert!(get_json(&srv, "/api/ws/clients")["clients"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["client_id"] == "watcher"));
    assert_eq!(get_json(&srv, "/api/ws/clients")["count"], 1);
}

/// A client that sends a frame a byte at a time, never finishing it, is silent: only whole
/// messages count as signs of life, so it is dropped at the ping timeout, not when (or if) its
/// frame is done. 500 such clients must not hold 500 sessions for as long as they like.
#[test]
fn a_client_trickling_a_frame_is_dropped_at_the_ping_timeout() {
    let srv = TestServer::start_with(
        Opts::default().env("SECRET_KEY", SECRET).env("WS_PING_INTERVAL_SECS", "1").env("WS_PING_TIMEOUT_SECS", "2"),
    );
    let (mut w, _) = WsClient::join(&srv, "/ws/watcher/room");
    let mut slow = raw_handshake(&srv, "/ws/slow/room");
    assert_eq!(w.recv()["type"], "join");
    // 400 bytes at one every 50 ms would take 20 s to finish.
    let frame = masked_frame(0x1, "/group x".repeat(50).as_bytes());
    let started = Instant::now();
    let trickle = std::thread::spawn(move || {
        for b in &frame {
            if slow.write_all(std::slice::from_ref(b)).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    let l = w.recv_type("leave");
    assert_eq!(l["client_id"], "slow", "{l}");
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(1500) && took < Duration::from_secs(10), "dropped after {took:?}");
    trickle.join().unwrap();
}

#[test]
fn the_server_pings() {
    let srv =
        TestServer::start_with(Opts::default().env("WS_PING_INTERVAL_SECS", "1").env("WS_PING_TIMEOUT_SECS", "5"));
    let mut c = WsClient::connect(&srv, "/ws/p");
    let until = Instant::now() + Duration::from_secs(10);
    let mut pinged = false;
    while Instant::now() < until && !pinged {
        match c.ws.read() {
            Ok(tungstenite::Message::Ping(_)) => pinged = true,
            Ok(_) => {}
            Err(e) => panic!("{e}"),
        }
    }
    assert!(pinged, "no ping within 10 s");
    // A client ping is answered with a pong.
    c.ws.send(tungstenite::Message::Ping(b"hey".to_vec().into())).unwrap();
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        assert!(Instant::now() < until, "no pong");
        if let Ok(tungstenite::Message::Pong(p)) = c.ws.read() {
            assert_eq!(&p[..], b"hey");
            break;
        }
    }
}

#[test]
fn message_size_limit_closes_with_1009() {
    let srv = server();
    let (mut w, _) = WsClient::join(&srv, "/ws/w/g");
    let (mut big, _) = WsClient::join(&srv, "/ws/big/g");
    assert_eq!(w.recv()["type"], "join");
    // Exactly 64 KiB of text is accepted.
    let prefix = "/group ";
    let msg = "m".repeat(64 * 1024 - prefix.len());
    big.send(&format!("{prefix}{msg}"));
    assert_eq!(w.recv()["message"].as_str().map(str::len), Some(msg.len()));
    assert_eq!(big.recv()["type"], "group");
    // 65 KiB closes the connection with 1009.
    big.send(&"x".repeat(65 * 1024));
    assert_eq!(big.expect_close().0, 1009);
    let l = w.recv();
    assert_eq!((l["type"].as_str(), l["client_id"].as_str()), (Some("leave"), Some("big")));
    // A 65 KiB frame declared by its header is refused before its payload is read.
    let mut raw = raw_handshake(&srv, "/ws/raw/g");
    assert_eq!(w.recv()["type"], "join");
    raw.write_all(&masked_frame(0x1, &vec![b'y'; 65 * 1024])).unwrap();
    let mut c = WsClient::from_raw(raw);
    assert_eq!(c.recv()["type"], "welcome");
    assert_eq!(c.expect_close().0, 1009);
    assert_eq!(w.recv()["type"], "leave");
}

#[test]
fn a_thousand_messages_arrive_in_order() {
    let srv = server();
    let (mut a, _) = WsClient::join(&srv, "/ws/a");
    let (mut b, _) = WsClient::join(&srv, "/ws/b");
    for i in 0..1000 {
        a.write(&format!("/send_to b m{i}"));
    }
    a.flush();
    for i in 0..1000 {
        let p = b.recv();
        assert_eq!(p["message"], format!("m{i}"), "{p}");
    }
    for i in 0..1000 {
        assert_eq!(a.recv()["message"], format!("m{i}"));
    }
}

#[test]
fn a_client_that_never_reads_is_dropped_with_1008_and_holds_nobody_up() {
    let srv = server();
    let slow = raw_handshake(&srv, "/ws/slow");
    let (mut sender, _) = WsClient::join(&srv, "/ws/sender");
    let (mut third, _) = WsClient::join(&srv, "/ws/third");
    let chunk = "f".repeat(16 * 1024);
    let mut sent_bytes = 0usize;
    let mut evicted = false;
    let mut checks = 0;
    // Flood in batches of 32 messages, reading the sender's acknowledgements as we go.
    while !evicted && sent_bytes < 256 * 1024 * 1024 {
        for _ in 0..32 {
            sender.write(&format!("/send_to slow {chunk}"));
        }
        sender.flush();
        sent_bytes += 32 * chunk.len();
        for _ in 0..32 {
            let v = sender.recv();
            match v["type"].as_str() {
                Some("sent") => {}
                Some("error") if v["error"] == "client_not_found" => evicted = true,
                _ => panic!("unexpected {v}"),
            }
        }
        // Every 4 MB, the third client must still get a private message within a second.
        if sent_bytes / (4 << 20) > checks {
            checks += 1;
            let started = Instant::now();
            sender.send(&format!("/send_to third check {checks}"));
            let p = third.recv();
            let took = started.elapsed();
            assert_eq!(p["message"], format!("check {checks}"));
            assert!(took < Duration::from_secs(1), "private message took {took:?} during the flood");
            assert_eq!(sender.recv_type("sent")["to"], "third");
        }
    }
    assert!(evicted, "the slow client was never disconnected after {sent_bytes} bytes");
    eprintln!("the slow client was disconnected after {} KiB were sent to it", sent_bytes / 1024);
    assert!(sent_bytes >= 2 << 20, "evicted after only {sent_bytes} bytes");
    // After the flood the third client still gets messages at once.
    let started = Instant::now();
    sender.send("/send_to third after");
    assert_eq!(third.recv()["message"], "after");
    assert!(started.elapsed() < Duration::from_secs(1));
    // The slow client, reading at last, finds the frames that fit in the buffers, then 1008.
    let mut slow = WsClient::from_raw(slow);
    let (code, reason) = slow.expect_close();
    assert_eq!(code, 1008, "{reason}");
    let clients = get_json(&srv, "/api/ws/clients");
    assert_eq!(clients["count"], 2, "{clients}");
}

#[test]
fn clients_that_never_read_are_closed_when_all_queues_together_are_full() {
    // Each client's own limits out of reach (1 GiB, a million frames): only the total can act.
    let srv = TestServer::start_with(
        Opts::default()
            .env("SECRET_KEY", SECRET)
            .env("WS_QUEUE_KB", "1048576")
            .env("WS_QUEUE_FRAMES", "1000000")
            .env("WS_QUEUE_TOTAL_MB", "4")
            // A share of the total per client of 400 KiB: the sender's receipts stay far below.
            .env("WS_MAX_CLIENTS", "10"),
    );
    let slow: Vec<_> = (0..3).map(|i| raw_handshake(&srv, &format!("/ws/slow{i}"))).collect();
    let (mut sender, _) = WsClient::join(&srv, "/ws/sender");
    let (mut third, _) = WsClient::join(&srv, "/ws/third");
    let chunk = "f".repeat(16 * 1024);
    let mut sent_bytes = 0usize;
    let mut evicted = [false; 3];
    // Round the three non-readers until the total closes them (or 96 MiB went out: the kernel's
    // buffers take a few MiB per socket first).
    while !evicted.iter().all(|e| *e) && sent_bytes < 96 << 20 {
        for i in 0..3 {
            for _ in 0..16 {
                sender.write(&format!("/send_to slow{i} {chunk}"));
            }
        }
        sender.flush();
        for _ in 0..48 {
            let v = sender.recv();
            match (v["type"].as_str(), v["error"].as_str()) {
                (Some("sent"), _) => sent_bytes += chunk.len(),
                (Some("error"), Some("client_not_found")) => {}
                _ => panic!("unexpected {v}"),
            }
        }
        let clients = get_json(&srv, "/api/ws/clients");
        for (i, e) in evicted.iter_mut().enumerate() {
            let id = format!("slow{i}");
            *e = !clients["clients"].as_array().unwrap().iter().any(|c| c["client_id"] == id.as_str());
        }
    }
    assert!(evicted.iter().all(|e| *e), "not all closed after {} KiB: {evicted:?}", sent_bytes / 1024);
    eprintln!("three non-readers closed after {} KiB were sent to them", sent_bytes / 1024);
    // The clients that read were never behind: still here, and served at once.
    sender.send("/send_to third after");
    assert_eq!(third.recv()["message"], "after");
    assert_eq!(get_json(&srv, "/api/ws/clients")["count"], 2);
    for raw in slow {
        let (code, reason) = WsClient::from_raw(raw).expect_close();
        assert_eq!(code, 1008, "{reason}");
    }
}

#[test]
fn a_second_connection_takes_the_id_over() {
    let srv = server();
    let (mut w, _) = WsClient::join(&srv, "/ws/w/g");
    let (mut old, _) = WsClient::join(&srv, "/ws/x/g");
    assert_eq!(w.recv()["type"], "join");
    let (mut new, _) = WsClient::join(&srv, "/ws/x/g");
    assert_eq!(old.expect_close(), (4000, "replaced".to_string()));
    // Same group: the members see the new connection join, and never a leave for x.
    let j = w.recv();
    assert_eq!((j["type"].as_str(), j["client_id"].as_str()), (Some("join"), Some("x")));
    w.assert_silent(Duration::from_millis(500));
    assert_eq!(get_json(&srv, "/api/ws/clients")["count"], 2);
    assert_eq!(get_json(&srv, "/api/ws/groups/g")["members"], json!(["w", "x"]));
    // The new connection works.
    w.send("/send_to x still here?");
    assert_eq!(new.recv()["message"], "still here?");
    new.send("/group yes");
    assert_eq!(w.recv_type("group")["from"], "x");
}

#[test]
fn the_session_limit_refuses_with_503() {
    let srv = TestServer::start_with(Opts::default().env("WS_MAX_CLIENTS", "2"));
    let (_a, _) = WsClient::join(&srv, "/ws/a");
    let (b, _) = WsClient::join(&srv, "/ws/b");
    let r = upgrade_response(&srv, "/ws/c", &[]);
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.json()["detail"].as_str().unwrap().contains("Too many"));
    // A place frees when a session ends.
    b.close();
    assert!(eventually(Duration::from_secs(10), || upgrade_response(&srv, "/ws/c", &[]).status == 101));
}

#[test]
fn one_address_cannot_take_every_session() {
    let srv = TestServer::start_with(Opts::default().env("WS_MAX_CLIENTS", "10").env("WS_MAX_CLIENTS_PER_ADDR", "2"));
    let (_a, _) = WsClient::join(&srv, "/ws/a");
    let (b, _) = WsClient::join(&srv, "/ws/b");
    // A third from 127.0.0.1: 429, with the contract's Retry-After.
    let r = upgrade_response(&srv, "/ws/c", &[]);
    assert_eq!(r.status, 429, "{}", r.text());
    assert_eq!(r.json()["detail"], "Too many WebSocket sessions from your address");
    assert_eq!(r.header("retry-after"), Some("5"));
    // Another address still gets in.
    let other = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    other.bind(&"127.0.0.2:0".parse::<std::net::SocketAddr>().unwrap().into()).unwrap();
    other.connect(&srv.addr.into()).unwrap();
    let mut other: std::net::TcpStream = other.into();
    let mut req = String::from("GET /ws/d HTTP/1.1\r\nHost: test\r\n");
    for (k, v) in common::ws::upgrade_headers() {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    other.write_all(format!("{req}\r\n").as_bytes()).unwrap();
    other.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut head = [0u8; 12];
    other.read_exact(&mut head).unwrap();
    assert_eq!(&head, b"HTTP/1.1 101");
    // The address's place frees when one of its sessions ends.
    b.close();
    assert!(eventually(Duration::from_secs(10), || upgrade_response(&srv, "/ws/c", &[]).status == 101));
}

#[test]
fn rest_send_to_and_broadcast_to_group() {
    let srv = server();
    let t = token(&srv, "rest@example.com");
    let (mut a, _) = WsClient::join(&srv, "/ws/a/team");
    let (mut b, _) = WsClient::join(&srv, "/ws/b/team");
    assert_eq!(a.recv()["type"], "join");

    let r = post_json(&srv, "/api/ws/send_to/a", Some(&t), r#"{"message": "from the server"}"#);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json(), json!({"status": "sent", "client_id": "a"}));
    let p = a.recv();
    assert_eq!(
        (p["type"].as_str(), p["from"].as_str(), p["to"].as_str(), p["message"].as_str()),
        (Some("private"), Some("server"), Some("a"), Some("from the server"))
    );
    assert_timestamp(&p);

    let r = post_json(&srv, "/api/ws/broadcast_to_group/team", Some(&t), r#"{"message": "all hands"}"#);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json(), json!({"status": "sent", "group": "team", "recipients": 2}));
    assert_eq!(r.header("x-data-stale"), None, "the token was checked in the database");
    for x in [&mut a, &mut b] {
        let g = x.recv();
        assert_eq!(
            (g["type"].as_str(), g["from"].as_str(), g["group"].as_str(), g["message"].as_str()),
            (Some("group"), Some("server"), Some("team"), Some("all hands"))
        );
    }

    // Errors: 404, 422, 401.
    let r = post_json(&srv, "/api/ws/send_to/ghost", Some(&t), r#"{"message": "x"}"#);
    assert_eq!((r.status, r.json()["detail"].as_str()), (404, Some("Client not connected")));
    let r = post_json(&srv, "/api/ws/broadcast_to_group/nope", Some(&t), r#"{"message": "x"}"#);
    assert_eq!((r.status, r.json()["detail"].as_str()), (404, Some("Group not found")));
    for body in ["{}", r#"{"message": 5}"#, "not json", "", r#"{"message": "a\u0000b"}"#] {
        let r = post_json(&srv, "/api/ws/send_to/a", Some(&t), body);
        assert_eq!(r.status, 422, "{body}: {}", r.text());
        assert!(r.json()["detail"].is_array());
    }
    let r = post_json(&srv, "/api/ws/send_to/a", Some(&t), "{}");
    assert_eq!(r.json()["detail"][0]["loc"], json!(["body", "message"]));
    // A message's limit is a WebSocket message's: 64 KiB of UTF-8, here counted in bytes ("é" is 2).
    let at_limit = format!("{}{}", "é".repeat(32 * 1024 - 1), "xy");
    assert_eq!(at_limit.len(), 64 * 1024);
    for path in ["/api/ws/send_to/a", "/api/ws/broadcast_to_group/team"] {
        let r = post_json(&srv, path, Some(&t), &json!({ "message": at_limit }).to_string());
        assert_eq!(r.status, 200, "{}", r.text());
        let over = json!({ "message": format!("{at_limit}z") }).to_string();
        let r = post_json(&srv, path, Some(&t), &over);
        assert_eq!(r.status, 422, "{}", r.text());
        assert_eq!(r.json()["detail"][0]["loc"], json!(["body", "message"]));
        assert_eq!(r.json()["detail"][0]["type"], "string_too_long");
    }
    assert_eq!(a.recv()["message"].as_str().map(str::len), Some(64 * 1024));
    for x in [&mut a, &mut b] {
        assert_eq!(x.recv()["message"].as_str().map(str::len), Some(64 * 1024));
    }
    for token in [None, Some("garbage")] {
        for path in ["/api/ws/send_to/a", "/api/ws/broadcast_to_group/team"] {
            let r = post_json(&srv, path, token, r#"{"message": "x"}"#);
            assert_eq!(r.status, 401, "{}", r.text());
            assert_eq!(r.header("www-authenticate"), Some("Bearer"));
        }
    }
    a.assert_silent(Duration::from_millis(200));
    // The GET routes are open to everyone.
    assert_eq!(get_json(&srv, "/api/ws/groups/team")["member_count"], 2);
}

#[test]
fn openapi_lists_the_rest_routes_but_not_the_upgrade_routes() {
    let srv = server();
    let doc = get_json(&srv, "/openapi.json");
    let paths = doc["paths"].as_object().unwrap();
    for (path, method) in [
        ("/api/ws/clients", "get"),
        ("/api/ws/groups", "get"),
        ("/api/ws/groups/{group_name}", "get"),
        ("/api/ws/send_to/{client_id}", "post"),
        ("/api/ws/broadcast_to_group/{group_name}", "post"),
    ] {
        assert!(paths.get(path).and_then(|p| p.get(method)).is_some(), "{method} {path} missing");
    }
    assert!(paths.keys().all(|p| p != "/ws" && !p.starts_with("/ws/")));
    assert!(paths["/api/ws/send_to/{client_id}"]["post"]["security"].is_array());
}

#[test]
fn shutdown_closes_sessions_with_1001() {
    let mut srv = server();
    let (mut c, _) = WsClient::join(&srv, "/ws/bye");
    srv.signal(libc::SIGTERM);
    assert_eq!(c.expect_close().0, 1001);
    assert_eq!(srv.wait_exit(Duration::from_secs(20)), Some(0));
}

#[test]
fn leftover_bytes_after_the_handshake_are_not_lost() {
    // A client may send its first frame in the same packet as the handshake.
    let srv = server();
    let (mut w, _) = WsClient::join(&srv, "/ws/w");
    let mut s = std::net::TcpStream::connect(srv.addr).unwrap();
    let mut req = String::from("GET /ws/eager HTTP/1.1\r\nHost: t\r\n");
    for (k, v) in common::ws::upgrade_headers() {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(&masked_frame(0x1, b"/send_to w early bird"));
    s.write_all(&bytes).unwrap();
    assert_eq!(w.recv()["message"], "early bird");
    let mut buf = [0u8; 16];
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    assert!(s.read(&mut buf).unwrap() > 0);
}

#[test]
fn the_test_pages_are_served_from_the_binary_without_external_assets() {
    let srv = server();
    for (path, content_type, needle) in [
        ("/socket_test.html", "text/html; charset=utf-8", "<title>WebSocket test"),
        ("/group_messaging_test.html", "text/html; charset=utf-8", "<title>Group messaging test"),
        ("/static/ws-tools.js", "text/javascript; charset=utf-8", "const WsTools"),
        ("/static/ws-tools.css", "text/css; charset=utf-8", ".badge"),
    ] {
        let r = srv.get(path);
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(r.header("content-type"), Some(content_type), "{path}");
        let text = r.text();
        assert!(text.contains(needle), "{path}");
        for external in ["src=\"http", "href=\"http", "src=\"//", "href=\"//", "@import", "url(http"] {
            assert!(!text.contains(external), "{path} loads an external asset ({external})");
        }
    }
}

/// An HS256 token for user `sub`, signed with the test key, valid for ten minutes.
fn signed_token(sub: i64) -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let claims = json!({ "sub": sub.to_string(), "email": "x@example.com", "iat": now, "exp": now + 600 });
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

#[test]
fn a_token_of_a_user_that_does_not_exist_is_refused_while_the_database_is_up() {
    let srv = TestServer::start_with(Opts::default().env("SECRET_KEY", SECRET).env("WS_AUTH", "required"));
    let ghost = signed_token(999_999);
    let r = upgrade_response(&srv, &format!("/ws/a?token={ghost}"), &[]);
    assert_eq!(r.status, 401, "{}", r.text());
    let (_a, _) = WsClient::join(&srv, &format!("/ws/a?token={}", token(&srv, "real@example.com")));
    let r = post_json(&srv, "/api/ws/send_to/a", Some(&ghost), r#"{"message": "x"}"#);
    assert_eq!(r.status, 401, "{}", r.text());
}

#[test]
fn messaging_and_the_rest_api_keep_working_without_the_database() {
    // DB_PORT points at nothing: the server runs in degraded mode from the start.
    let srv = TestServer::start_with(
        Opts::default().env("SECRET_KEY", SECRET).env("WS_AUTH", "required").env("DB_PORT", "9"),
    );
    assert_eq!(get_json(&srv, "/health")["database"], "down");
    // A well-signed, unexpired token is enough while the database cannot be asked.
    let t = signed_token(1);
    let (mut a, _) = WsClient::join(&srv, &format!("/ws/a/g?token={t}"));
    let (mut b, _) = WsClient::join(&srv, &format!("/ws/b/g?token={t}"));
    assert_eq!(a.recv()["type"], "join");
    a.send("/group still here");
    assert_eq!(b.recv()["message"], "still here");
    assert_eq!(a.recv()["message"], "still here");
    let r = post_json(&srv, "/api/ws/broadcast_to_group/g", Some(&t), r#"{"message": "from REST"}"#);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["recipients"], 2);
    // Its token was checked without the database: the answer says so, as every answer from
    // memory does; so does a 101.
    assert_eq!(r.header("x-data-stale"), Some("true"));
    assert_eq!(b.recv()["from"], "server");
    assert_eq!(a.recv()["from"], "server");
    let r = post_json(&srv, "/api/ws/send_to/a", Some(&t), r#"{"message": "to a"}"#);
    assert_eq!((r.status, r.header("x-data-stale")), (200, Some("true")), "{}", r.text());
    assert_eq!(a.recv()["message"], "to a");
    let (_d, head) = raw_handshake_head(&srv, &format!("/ws/d?token={t}"));
    assert!(head.contains("\r\nx-data-stale: true\r\n"), "{head}");
    assert_eq!(get_json(&srv, "/api/ws/groups/g")["member_count"], 2);
    // A bad token is still refused.
    assert_eq!(upgrade_response(&srv, "/ws/c?token=forged", &[]).status, 401);
    assert_eq!(post_json(&srv, "/api/ws/send_to/a", Some("forged"), r#"{"message": "x"}"#).status, 401);
}

#[test]
fn a_client_can_be_reached_as_soon_as_it_has_read_its_101() {
    // The client is registered before the 101 is written, and its welcome comes first.
    let srv = server();
    let (mut a, _) = WsClient::join(&srv, "/ws/a");
    for i in 0..20 {
        let raw = raw_handshake(&srv, &format!("/ws/r{i}"));
        a.send(&format!("/send_to r{i} hi {i}"));
        assert_eq!(a.recv()["type"], "sent", "r{i} was not reachable right after its 101");
        let mut c = WsClient::from_raw(raw);
        assert_eq!(c.recv()["type"], "welcome");
        assert_eq!(c.recv()["message"], format!("hi {i}"));
    }
}

#[test]
fn a_client_that_sends_but_never_reads_is_evicted_too() {
    // Its own pongs fill its queue past the high-water mark (8 of 16 frames here): it is no
    // longer read, and once its queue has not drained for the ping timeout it is dropped — it
    // must not hold its session forever.
    let srv = TestServer::start_with(
        Opts::default()
            .env("WS_QUEUE_FRAMES", "16")
            .env("WS_QUEUE_KB", "64")
            .env("WS_PING_INTERVAL_SECS", "1")
            .env("WS_PING_TIMEOUT_SECS", "3"),
    );
    let mut pinger = raw_handshake(&srv, "/ws/pinger");
    pinger.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
    // 125 bytes: the most a control frame may carry.
    let ping = masked_frame(0x9, &[b'p'; 125]);
    let gone = eventually(Duration::from_secs(20), || {
        for _ in 0..2048 {
            if pinger.write_all(&ping).is_err() {
                break;
            }
        }
        let clients = srv.get("/api/ws/clients").json();
        !clients["clients"].as_array().unwrap().iter().any(|c| c["client_id"] == "pinger")
    });
    assert!(gone, "a client that never reads kept its session");
    assert!(srv.log().contains("pinger is not reading"), "{}", srv.log());
}

#[test]
fn a_sender_flooding_its_own_group_is_slowed_not_closed() {
    // The contract: a client whose own queue fills because it sends faster than it reads (its
    // copies of its /group messages) is slowed down, not disconnected. 256 x 60 KB is ~15 MB,
    // far over the 1 MiB queue set here.
    let srv = TestServer::start_with(Opts::default().env("WS_QUEUE_KB", "1024"));
    let stream = raw_handshake(&srv, "/ws/flooder/room");
    let mut writer = stream.try_clone().unwrap();
    let (mut a, _) = WsClient::join(&srv, "/ws/a");
    let (mut b, _) = WsClient::join(&srv, "/ws/b");
    const N: usize = 256;
    let flood = std::thread::spawn(move || {
        for i in 0..N {
            let text = format!("/group {i:04} {}", "x".repeat(60_000));
            writer.write_all(&masked_frame(0x1, text.as_bytes())).expect("the flooder's connection was closed");
        }
        writer
    });
    let mut flooder = WsClient::from_raw(stream);
    assert_eq!(flooder.recv()["type"], "welcome");
    for i in 0..N {
        let g = flooder.recv();
        assert_eq!(g["type"], "group", "copy {i}: {}", &g.to_string()[..g.to_string().len().min(200)]);
        let m = g["message"].as_str().unwrap();
        assert_eq!(&m[..4], format!("{i:04}"), "copies arrive in order");
        assert_eq!(m.len(), 5 + 60_000);
        if i == N / 2 {
            // Mid-flood, others are served at once.
            a.send("/send_to b still served");
            let p = b.recv_type("private");
            assert_eq!((p["from"].as_str(), p["message"].as_str()), (Some("a"), Some("still served")));
        }
    }
    let mut writer = flood.join().unwrap();
    writer.write_all(&masked_frame(0x1, b"/members")).unwrap();
    let m = flooder.recv_type("members");
    assert_eq!(m["members"], json!(["flooder"]), "still connected and in its group");
    assert!(!srv.log().contains("flooder is not reading"), "{}", srv.log());
}

#[test]
fn members_that_never_read_do_not_hold_their_group_up() {
    // Found by a probe: with a dozen members of a group not reading, the sender's fan-out was
    // counted once per queue holding it, passed WS_QUEUE_KB while each of those queues was far
    // from its own limit, and the sender (so the whole group) was held to one message a second
    // until the queues filled at that pace. The contract: a client that is not reading never
    // holds up delivery to the others; it is closed 1008 when its queue is full.
    let srv = TestServer::start_with(Opts::default().env("WS_QUEUE_FRAMES", "64"));
    let silent: Vec<_> = (0..12).map(|i| raw_handshake(&srv, &format!("/ws/quiet{i}/room"))).collect();
    let (mut reader, _) = WsClient::join(&srv, "/ws/reader/room");
    let stream = raw_handshake(&srv, "/ws/sender/room");
    let mut writer = stream.try_clone().unwrap();
    const N: usize = 600;
    let flood = std::thread::spawn(move || {
        for i in 0..N {
            let text = format!("/group {i:04} {}", "x".repeat(16 * 1024));
            writer.write_all(&masked_frame(0x1, text.as_bytes())).expect("the sender's connection was closed");
        }
    });
    // The sender reads its own copies as they come (else its own queue would pace it).
    let copies = std::thread::spawn(move || {
        let mut sender = WsClient::from_raw(stream);
        (0..N).map(|_| group_number(&mut sender)).collect::<Vec<_>>()
    });
    let got: Vec<usize> = (0..N).map(|_| group_number(&mut reader)).collect();
    assert_eq!(got, (0..N).collect::<Vec<_>>(), "the reader gets every message, in order");
    flood.join().unwrap();
    assert_eq!(copies.join().unwrap(), (0..N).collect::<Vec<_>>());
    for raw in silent {
        let (code, reason) = WsClient::from_raw(raw).expect_close();
        assert_eq!(code, 1008, "{reason}");
    }
}

/// The number at the front of the next `group` message (`join` and `leave` notices skipped).
fn group_number(c: &mut WsClient) -> usize {
    loop {
        let v = c.recv();
        match v["type"].as_str() {
            Some("join") | Some("leave") | Some("welcome") => continue,
            Some("group") => return v["message"].as_str().unwrap()[..4].parse().unwrap(),
            _ => panic!("unexpected {}", &v.to_string()[..v.to_string().len().min(200)]),
        }
    }
}

#[test]
fn a_sender_that_reads_slowly_behind_a_full_socket_is_slowed_not_closed() {
    // Found by a probe: a client sending `/group` messages flat out and reading its copies at a
    // few KB/s was dropped at the ping timeout as "not reading". Progress was only our queue
    // shrinking, and behind a send buffer of megabytes the socket has no room for our queue for
    // far longer than that (it is writable again only once a third of it has been read). Now the
    // socket's own send queue shrinking counts too. 9 s of reading at about 80 KB/s here, three
    // times the ping timeout: the socket moves each time the client's window opens again (on
    // loopback, every 64 KiB or so it reads), but our queue could move only after a third of the
    // send buffer (over a megabyte) had been read.
    let srv = TestServer::start_with(
        Opts::default().env("WS_QUEUE_KB", "256").env("WS_PING_INTERVAL_SECS", "1").env("WS_PING_TIMEOUT_SECS", "2"),
    );
    let stream = raw_handshake(&srv, "/ws/slow/room");
    let writer = stream.try_clone().unwrap();
    writer.set_write_timeout(Some(Duration::from_millis(100))).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop_writing = stop.clone();
    let flood = std::thread::spawn(move || {
        let frame = masked_frame(0x1, format!("/group {}", "q".repeat(2000)).as_bytes());
        let mut writer = writer;
        'frames: while !stop_writing.load(std::sync::atomic::Ordering::Relaxed) {
            let mut at = 0;
            // Whole frames only: a write that times out while the server is not reading us is
            // resumed where it stopped.
            while at < frame.len() {
                match writer.write(&frame[at..]) {
                    Ok(n) => at += n,
                    Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                        if stop_writing.load(std::sync::atomic::Ordering::Relaxed) {
                            break 'frames;
                        }
                    }
                    Err(_) => break 'frames,
                }
            }
        }
    });
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 8192];
    let (t0, mut got) = (Instant::now(), 0usize);
    while t0.elapsed() < Duration::from_secs(9) {
        match (&stream).read(&mut buf) {
            Ok(0) => panic!("closed by the server after {got} bytes read in {:?}: {}", t0.elapsed(), srv.log()),
            Ok(n) => got += n,
            Err(e) => panic!("read: {e} after {got} bytes: {}", srv.log()),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!srv.log().contains("slow is not reading"), "{}", srv.log());
    let clients = srv.get("/api/ws/clients").json();
    assert!(clients["clients"].as_array().unwrap().iter().any(|c| c["client_id"] == "slow"), "{clients}");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = stream.shutdown(Shutdown::Both);
    flood.join().unwrap();
}

#[test]
fn a_broadcast_flood_reaches_every_reader_in_order() {
    // A groupless client's text goes to every client; its reading is paused while that fan-out
    // is queued, so readers keep up and nobody is evicted.
    let srv = TestServer::start_with(Opts::default().env("WS_QUEUE_KB", "256"));
    let mut readers: Vec<WsClient> = (0..4).map(|i| WsClient::join(&srv, &format!("/ws/r{i}")).0).collect();
    let stream = raw_handshake(&srv, "/ws/caster");
    let mut writer = stream.try_clone().unwrap();
    const N: usize = 64;
    let flood = std::thread::spawn(move || {
        for i in 0..N {
            let text = format!("{i:04} {}", "y".repeat(30_000));
            writer.write_all(&masked_frame(0x1, text.as_bytes())).unwrap();
        }
    });
    let mut caster = WsClient::from_raw(stream);
    let drain_caster = std::thread::spawn(move || {
        assert_eq!(caster.recv()["type"], "welcome");
        for _ in 0..N {
            assert_eq!(caster.recv()["type"], "broadcast");
        }
        caster
    });
    for r in readers.iter_mut() {
        for i in 0..N {
            let v = r.recv_type("broadcast");
            assert_eq!(&v["message"].as_str().unwrap()[..4], format!("{i:04}"));
        }
    }
    flood.join().unwrap();
    let _caster = drain_caster.join().unwrap();
    assert_eq!(get_json(&srv, "/api/ws/clients")["count"], 5, "nobody was evicted");
}

fn superuser_token(srv: &TestServer, email: &str) -> String {
    let out = srv.cli(&["user", "create", "--email", email, "--password", "password1", "--superuser"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let body = json!({ "email": email, "password": "password1" }).to_string();
    let r = post_json(srv, "/auth/login", None, &body);
    r.json()["access_token"].as_str().unwrap().to_string()
}

#[test]
fn the_admins_group_is_reserved_for_superusers() {
    let srv = server();
    let user = token(&srv, "user@example.com");
    let boss = superuser_token(&srv, "boss@example.com");
    // Before the upgrade: 403 without a token and with an ordinary user's.
    for path in ["/ws/x/admins".to_string(), format!("/ws/x/admins?token={user}")] {
        let r = upgrade_response(&srv, &path, &[]);
        assert_eq!(r.status, 403, "{path}: {}", r.text());
        assert!(r.json()["detail"].as_str().unwrap().contains("superuser"));
    }
    let (mut ops, w) = WsClient::join(&srv, &format!("/ws/ops/admins?token={boss}"));
    assert_eq!(w["group"], "admins");
    // `/join admins` without one: `forbidden`, and the client stays where it was.
    let (mut u, _) = WsClient::join(&srv, &format!("/ws/u/room?token={user}"));
    u.send("/join admins");
    let e = u.recv_type("error");
    assert_eq!(e["error"], "forbidden");
    u.send(r#"{"action": "join", "group": "admins"}"#);
    assert_eq!(u.recv_type("error")["error"], "forbidden");
    assert_eq!(get_json(&srv, "/api/ws/groups/admins")["members"], json!(["ops"]));
    assert_eq!(get_json(&srv, "/api/ws/groups/room")["members"], json!(["u"]));
    ops.assert_silent(Duration::from_millis(200));
    // A superuser connected elsewhere may join it.
    let (mut boss2, _) = WsClient::join(&srv, &format!("/ws/boss2?token={boss}"));
    boss2.send("/join admins");
    assert_eq!(boss2.recv_type("joined")["group"], "admins");
    assert_eq!(ops.recv_type("join")["client_id"], "boss2");
}

#[test]
fn no_websocket_upgrade_over_http_1_0() {
    let srv = server();
    let mut c = srv.connect();
    let mut req = "GET /ws HTTP/1.0\r\n".to_string();
    for (k, v) in common::ws::upgrade_headers() {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    c.write(req.as_bytes());
    let r = c.read_response(false);
    assert_eq!(r.status, 426, "{}", r.text());
    assert_eq!(get_json(&srv, "/api/ws/clients")["count"], 0);
}
