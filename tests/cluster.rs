//! The contract's "Several instances" section: three real server processes with `CLUSTER=postgres`
//! on one real database, WebSocket clients on different instances, and every part of the
//! WebSocket contract run across them — private and group messages, notices, lists, the REST
//! API, takeover, order, a message over NOTIFY's limit, an instance killed with SIGKILL, a
//! database stopped and started under traffic (a private PostgreSQL cluster), and `CLUSTER=off`.

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::process::Child;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::pgcluster::PgCluster;
use common::ws::{eventually, WsClient};
use common::{base_env, spawn_server, Conn, Resp, TempDir, TestDb};
use serde_json::{json, Value};

const SECRET: &str = "test-secret-key-0123456789abcdef-0123456789";

/// One instance: the real binary, on a database it shares with the others.
struct Node {
    id: String,
    addr: SocketAddr,
    child: Option<Child>,
    log: Arc<Mutex<String>>,
    env: Vec<(String, String)>,
    dir: TempDir,
}

impl Node {
    fn start(db_name: &str, id: &str, extra: &[(&str, &str)]) -> Node {
        let dir = TempDir::new("node");
        let mut env = base_env(db_name, dir.path());
        env.push(("SECRET_KEY".into(), SECRET.into()));
        env.push(("INSTANCE_ID".into(), id.into()));
        for (k, v) in extra {
            env.push((k.to_string(), v.to_string()));
        }
        let (child, addr, log) = spawn_server(&env, &[], dir.path());
        Node { id: id.into(), addr, child: Some(child), log, env, dir }
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start again with the same settings (and `INSTANCE_ID`).
    fn restart(&mut self) {
        self.kill9();
        let (child, addr, log) = spawn_server(&self.env, &[], self.dir.path());
        self.child = Some(child);
        self.addr = addr;
        self.log = log;
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    fn request(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Resp {
        Conn::open(self.addr).send(method, path, headers, body)
    }

    fn get(&self, path: &str) -> Value {
        let r = self.request("GET", path, &[], b"");
        assert_eq!(r.status, 200, "{} {path}: {}", self.id, r.text());
        r.json()
    }

    fn post(&self, path: &str, token: Option<&str>, body: &Value) -> Resp {
        let bearer = token.map(|t| format!("Bearer {t}"));
        let mut headers = vec![("Content-Type", "application/json")];
        if let Some(b) = &bearer {
            headers.push(("Authorization", b));
        }
        self.request("POST", path, &headers, body.to_string().as_bytes())
    }

    /// A WebSocket client, its welcome read.
    fn join(&self, path: &str) -> WsClient {
        let mut c = WsClient::try_connect(self.addr, path, &[]).unwrap_or_else(|e| panic!("{path}: {e}"));
        let w = c.recv();
        assert_eq!(w["type"], "welcome", "{w}");
        c
    }

    /// The client ids this instance lists.
    fn client_ids(&self) -> BTreeSet<String> {
        let v = self.get("/api/ws/clients");
        v["clients"].as_array().unwrap().iter().map(|c| c["client_id"].as_str().unwrap().to_string()).collect()
    }

    /// Wait until this instance lists exactly `ids`.
    fn sees(&self, ids: &[&str]) {
        let want: BTreeSet<String> = ids.iter().map(|s| s.to_string()).collect();
        let mut last = BTreeSet::new();
        let ok = eventually(Duration::from_secs(15), || {
            last = self.client_ids();
            last == want
        });
        assert!(ok, "{} lists {last:?}, expected {want:?}; log:\n{}", self.id, self.log());
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// `n` instances on one fresh database, the presence timeout `timeout` seconds.
fn cluster(n: usize, timeout: u64) -> (TestDb, Vec<Node>) {
    let db = TestDb::create();
    let t = timeout.to_string();
    let nodes = (1..=n)
        .map(|i| {
            Node::start(&db.name, &format!("n{i}"), &[("CLUSTER", "postgres"), ("CLUSTER_PRESENCE_TIMEOUT_SECS", &t)])
        })
        .collect();
    (db, nodes)
}

/// Sign up and log in on `node`; returns the token (valid on every instance: same key).
fn token(node: &Node, email: &str) -> String {
    let body = json!({ "email": email, "password": "password1" });
    let r = node.post("/users/", None, &body);
    assert_eq!(r.status, 201, "{}", r.text());
    let r = node.post("/auth/login", None, &body);
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["access_token"].as_str().unwrap().to_string()
}

fn kind(v: &Value) -> &str {
    v["type"].as_str().unwrap_or("")
}

#[test]
fn private_messages_cross_instances_in_order_and_at_64_kib() {
    let (db, nodes) = cluster(3, 15);
    let mut alice = nodes[0].join("/ws/alice");
    let mut bob = nodes[1].join("/ws/bob");
    for n in &nodes {
        n.sees(&["alice", "bob"]);
    }

    alice.send("/send_to bob hello from n1");
    let p = bob.recv();
    assert_eq!(
        (kind(&p), p["from"].as_str(), p["to"].as_str(), p["message"].as_str()),
        ("private", Some("alice"), Some("bob"), Some("hello from n1")),
        "{p}"
    );
    let s = alice.recv();
    assert_eq!((kind(&s), s["to"].as_str(), s["message"].as_str()), ("sent", Some("bob"), Some("hello from n1")));
    bob.send("/send_to alice and back");
    assert_eq!(alice.recv()["message"], "and back");
    assert_eq!(bob.recv_type("sent")["to"], "alice");
    alice.send(&json!({"action": "send_to", "to": "bob", "message": "as json"}).to_string());
    assert_eq!(bob.recv()["message"], "as json");
    alice.recv_type("sent");

    // 1,000 messages from one sender to one recipient on another instance: all, in order.
    for i in 0..1000 {
        alice.write(&format!("/send_to bob m{i}"));
    }
    alice.flush();
    for i in 0..1000 {
        let p = bob.recv();
        assert_eq!(p["message"], format!("m{i}"), "message {i} out of order: {p}");
    }
    for _ in 0..1000 {
        assert_eq!(alice.recv()["type"], "sent");
    }

    // Over NOTIFY's 8000-byte limit, up to the 64 KiB frame limit, between small ones: in order.
    let prefix = "/send_to bob ";
    let big: String = (0..64 * 1024 - prefix.len()).map(|i| (b'a' + (i % 26) as u8) as char).collect();
    alice.send("/send_to bob before");
    alice.send(&format!("{prefix}{big}"));
    alice.send("/send_to bob after");
    assert_eq!(bob.recv()["message"], "before");
    let p = bob.recv();
    assert_eq!(p["message"].as_str().map(str::len), Some(big.len()));
    assert!(p["message"] == big.as_str(), "the 64 KiB message changed on the way");
    assert_eq!(bob.recv()["message"], "after");
    // A private message's payload row is read by its one recipient, which removes it.
    let mut c = db.client();
    let ok = eventually(Duration::from_secs(5), || {
        c.query_one("SELECT count(*) FROM ws_cluster_payloads", &[]).unwrap().get::<_, i64>(0) == 0
    });
    assert!(ok, "the payload row of a delivered private message is left behind");

    // A client nobody holds is still client_not_found.
    alice.send("/send_to nobody hi");
    let e = alice.recv_type("error");
    assert_eq!(e["error"], "client_not_found");
}

#[test]
fn groups_notices_lists_and_the_rest_api_span_the_instances() {
    let (_db, nodes) = cluster(3, 15);
    let mut alice = nodes[0].join("/ws/alice/room");
    nodes[1].sees(&["alice"]);
    // A join on n2 is announced to the member on n1.
    let mut bob = nodes[1].join("/ws/bob/room");
    let j = alice.recv();
    assert_eq!((kind(&j), j["client_id"].as_str(), j["group"].as_str()), ("join", Some("bob"), Some("room")), "{j}");
    let mut carol = nodes[2].join("/ws/carol");
    for n in &nodes {
        n.sees(&["alice", "bob", "carol"]);
    }

    // Lists are cluster-wide, on every instance.
    for n in &nodes {
        let v = n.get("/api/ws/clients");
        assert_eq!(v["count"], 3, "{}: {v}", n.id);
        let bob_entry = v["clients"].as_array().unwrap().iter().find(|c| c["client_id"] == "bob").unwrap().clone();
        assert_eq!(bob_entry["group"], "room");
        assert!(bob_entry["connected_at"].as_str().unwrap().ends_with('Z'));
        assert_eq!(n.get("/api/ws/groups"), json!({"groups": [{"name": "room", "member_count": 2}], "count": 1}));
        assert_eq!(
            n.get("/api/ws/groups/room"),
            json!({"group": "room", "members": ["alice", "bob"], "member_count": 2})
        );
    }
    carol.send("/groups");
    assert_eq!(carol.recv()["groups"], json!([{"name": "room", "member_count": 2}]));
    carol.send("/members room");
    assert_eq!(carol.recv()["members"], json!(["alice", "bob"]));

    // A group message reaches the members on every instance, the sender included; not carol.
    bob.send("/group hello room");
    for c in [&mut alice, &mut bob] {
        let g = c.recv();
        assert_eq!(
            (kind(&g), g["from"].as_str(), g["group"].as_str(), g["message"].as_str()),
            ("group", Some("bob"), Some("room"), Some("hello room")),
            "{g}"
        );
    }
    // Plain text in a group is a group message too.
    alice.send("plain words");
    assert_eq!(bob.recv()["message"], "plain words");
    assert_eq!(alice.recv()["message"], "plain words");

    // carol (n3) joins: members on n1 and n2 hear it; then her group messages reach them.
    carol.send("/join room");
    let j = carol.recv();
    assert_eq!((kind(&j), j["group"].as_str()), ("joined", Some("room")), "{j}");
    for c in [&mut alice, &mut bob] {
        let j = c.recv();
        assert_eq!((kind(&j), j["client_id"].as_str()), ("join", Some("carol")), "{j}");
    }
    nodes[0].sees(&["alice", "bob", "carol"]);
    assert!(eventually(Duration::from_secs(10), || nodes[0].get("/api/ws/groups/room")["member_count"] == 3));
    carol.send("/group from n3");
    for c in [&mut alice, &mut bob] {
        assert_eq!(c.recv()["message"], "from n3");
    }
    // carol may also get the group messages sent on n1/n2 just before she joined on n3 ("hello
    // room", "plain words": a known limit, n3 can apply her join before their relay arrives; see
    // docs/cluster.md), in their order and never anything else.
    let mut early = Vec::new();
    let mut g = carol.recv();
    while g["message"] == "hello room" || g["message"] == "plain words" {
        early.push(g["message"].as_str().unwrap_or_default().to_string());
        g = carol.recv();
    }
    assert!(early.windows(2).all(|w| w[0] != w[1] && w[0] == "hello room"), "{early:?}");
    assert_eq!(g["message"], "from n3", "{g}");
    alice.send("/members");
    assert_eq!(alice.recv()["members"], json!(["alice", "bob", "carol"]));
    // A group message over NOTIFY's limit (through a shared payload row) reaches every instance.
    let big: String = (0..60_000).map(|i| (b'A' + (i % 26) as u8) as char).collect();
    carol.send(&format!("/group {big}"));
    for c in [&mut alice, &mut bob, &mut carol] {
        let g = c.recv();
        assert!(g["type"] == "group" && g["message"] == big.as_str(), "a 60 KB group message changed on the way");
    }

    // REST, through any instance, to clients held by another.
    let token = token(&nodes[0], "ops@example.com");
    let r = nodes[0].post("/api/ws/send_to/carol", Some(&token), &json!({"message": "from the server"}));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json(), json!({"status": "sent", "client_id": "carol"}));
    let p = carol.recv();
    assert_eq!(
        (kind(&p), p["from"].as_str(), p["message"].as_str()),
        ("private", Some("server"), Some("from the server"))
    );
    let r = nodes[1].post("/api/ws/broadcast_to_group/room", Some(&token), &json!({"message": "to all rooms"}));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json(), json!({"status": "sent", "group": "room", "recipients": 3}));
    for c in [&mut alice, &mut bob, &mut carol] {
        let g = c.recv();
        assert_eq!(
            (kind(&g), g["from"].as_str(), g["message"].as_str()),
            ("group", Some("server"), Some("to all rooms"))
        );
    }
    let r = nodes[2].post("/api/ws/send_to/nobody", Some(&token), &json!({"message": "x"}));
    assert_eq!(r.status, 404);
    let r = nodes[2].post("/api/ws/broadcast_to_group/nothing", Some(&token), &json!({"message": "x"}));
    assert_eq!(r.status, 404);

    // Leaving: /leave on n2 and a closed connection on n3 are leave notices on n1.
    bob.send("/leave");
    assert_eq!(bob.recv()["type"], "left");
    let l = alice.recv();
    assert_eq!((kind(&l), l["client_id"].as_str(), l["group"].as_str()), ("leave", Some("bob"), Some("room")), "{l}");
    assert_eq!(carol.recv()["type"], "leave");
    carol.close();
    let l = alice.recv();
    assert_eq!((kind(&l), l["client_id"].as_str()), ("leave", Some("carol")), "{l}");
    for n in &nodes {
        n.sees(&["alice", "bob"]);
    }
    assert!(eventually(Duration::from_secs(10), || nodes[2].get("/api/ws/groups")["count"] == 1));

    // Without a group, plain text is a broadcast to every client of the cluster.
    let mut dave = nodes[2].join("/ws/dave");
    nodes[1].sees(&["alice", "bob", "dave"]);
    nodes[0].sees(&["alice", "bob", "dave"]);
    bob.send("to everyone");
    for c in [&mut alice, &mut bob, &mut dave] {
        let b = c.recv_type("broadcast");
        assert_eq!((b["from"].as_str(), b["message"].as_str()), (Some("bob"), Some("to everyone")));
    }
}

#[test]
fn an_id_taken_over_on_another_instance_closes_the_old_connection_with_4000() {
    let (_db, nodes) = cluster(3, 15);
    let mut watcher = nodes[2].join("/ws/watcher/room");
    let mut old = nodes[0].join("/ws/x/room");
    assert_eq!(watcher.recv()["type"], "join");
    for n in &nodes {
        n.sees(&["watcher", "x"]);
    }
    let mut new = nodes[1].join("/ws/x/room");
    assert_eq!(old.expect_close(), (4000, "replaced".to_string()));
    // Same group: the watcher hears a join for the new connection, and no leave.
    let j = watcher.recv();
    assert_eq!((kind(&j), j["client_id"].as_str()), ("join", Some("x")), "{j}");
    for n in &nodes {
        n.sees(&["watcher", "x"]);
        assert!(eventually(Duration::from_secs(10), || n.get("/api/ws/groups/room")["member_count"] == 2));
    }
    // Messages for x reach the new connection, from any instance.
    watcher.send("/send_to x still there?");
    assert_eq!(new.recv()["message"], "still there?");
    assert_eq!(watcher.recv()["type"], "sent");
    // Taking it over again, back on n1 and into no group: a leave for the room.
    let _newer = nodes[0].join("/ws/x");
    assert_eq!(new.expect_close().0, 4000);
    let l = watcher.recv();
    assert_eq!((kind(&l), l["client_id"].as_str()), ("leave", Some("x")), "{l}");
    for n in &nodes {
        n.sees(&["watcher", "x"]);
    }
    watcher.assert_silent(Duration::from_millis(500));
}

#[test]
fn a_killed_instance_is_dropped_everywhere_within_the_timeout_and_cleans_up_when_restarted() {
    const TIMEOUT: u64 = 3;
    let (db, mut nodes) = cluster(3, TIMEOUT);
    let mut alice = nodes[0].join("/ws/alice/room");
    let _carol = nodes[2].join("/ws/carol/room");
    let _dan = nodes[2].join("/ws/dan");
    assert_eq!(alice.recv()["client_id"], "carol");
    for n in &nodes {
        n.sees(&["alice", "carol", "dan"]);
    }
    // Heartbeats have been going for a while: the instance is not new.
    std::thread::sleep(Duration::from_secs(1));
    let killed = Instant::now();
    nodes[2].kill9();
    let l = alice.recv();
    let took = killed.elapsed();
    assert_eq!((kind(&l), l["client_id"].as_str(), l["group"].as_str()), ("leave", Some("carol"), Some("room")), "{l}");
    assert!(took <= Duration::from_secs(TIMEOUT), "leave after {took:?}, over CLUSTER_PRESENCE_TIMEOUT_SECS={TIMEOUT}");
    nodes[0].sees(&["alice"]);
    nodes[1].sees(&["alice"]);
    let mut c = db.client();
    let rows: i64 = c.query_one("SELECT count(*) FROM ws_clients WHERE instance_id = 'n3'", &[]).unwrap().get(0);
    assert_eq!(rows, 0, "the dead instance's rows are reaped");

    // Killed again and restarted at once with the same INSTANCE_ID, before anyone reaps it:
    // the new process clears what the old one left, and the others drop those clients.
    nodes[2].restart();
    let _erin = nodes[2].join("/ws/erin/room");
    assert_eq!(alice.recv()["client_id"], "erin");
    for n in &nodes {
        n.sees(&["alice", "erin"]);
    }
    nodes[2].kill9();
    let mut erin_env = nodes[2].env.clone();
    erin_env.retain(|(k, _)| k != "CLUSTER_PRESENCE_TIMEOUT_SECS");
    // A long timeout on the restarted process, so that only its start-up can clear erin quickly.
    erin_env.push(("CLUSTER_PRESENCE_TIMEOUT_SECS".into(), "600".into()));
    nodes[2].env = erin_env;
    nodes[2].restart();
    let l = alice.recv();
    assert_eq!((kind(&l), l["client_id"].as_str()), ("leave", Some("erin")), "{l}");
    nodes[2].sees(&["alice"]);
    let rows: i64 = c.query_one("SELECT count(*) FROM ws_clients WHERE instance_id = 'n3'", &[]).unwrap().get(0);
    assert_eq!(rows, 0);
    // That leave came from the restart, not from a reaper: n3 was reaped once, the first time.
    let reaped = |n: &Node| n.log().matches("instance n3 stopped heartbeating").count();
    assert_eq!(reaped(&nodes[0]) + reaped(&nodes[1]), 1, "{}\n{}", nodes[0].log(), nodes[1].log());
}

#[test]
fn with_cluster_off_instances_on_one_database_stay_apart() {
    let db = TestDb::create();
    let n1 = Node::start(&db.name, "n1", &[]);
    let n2 = Node::start(&db.name, "n2", &[("CLUSTER", "off")]);
    let mut alice = n1.join("/ws/alice/room");
    let _bob = n2.join("/ws/bob/room");
    alice.assert_silent(Duration::from_millis(500));
    assert_eq!(n1.client_ids(), BTreeSet::from(["alice".to_string()]));
    assert_eq!(n2.client_ids(), BTreeSet::from(["bob".to_string()]));
    alice.send("/send_to bob hi");
    assert_eq!(alice.recv()["error"], "client_not_found");
    // No presence written, no listening connection.
    let mut c = db.client();
    let rows: i64 = c
        .query_one("SELECT (SELECT count(*) FROM ws_instances) + (SELECT count(*) FROM ws_clients)", &[])
        .unwrap()
        .get(0);
    assert_eq!(rows, 0);
    let listeners: i64 = c
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND application_name = 'adcluster-cluster'",
            &[&db.name],
        )
        .unwrap()
        .get(0);
    assert_eq!(listeners, 0);
    assert!(!n1.log().contains("cluster:") && !n2.log().contains("cluster:"), "{}", n1.log());
}

#[test]
fn the_database_stopped_and_restarted_under_traffic() {
    let mut pg = PgCluster::start();
    let env = [
        ("CLUSTER", "postgres"),
        ("CLUSTER_PRESENCE_TIMEOUT_SECS", "3"),
        ("DB_HOST", "127.0.0.1"),
        ("DB_USER", "postgres"),
        ("DB_PASSWORD", ""),
    ];
    let port = pg.port.to_string();
    let mut env: Vec<(&str, &str)> = env.to_vec();
    env.push(("DB_PORT", &port));
    let n1 = Node::start("adc_outage", "n1", &env);
    let n2 = Node::start("adc_outage", "n2", &env);
    let mut alice = n1.join("/ws/alice");
    let mut carol = n1.join("/ws/carol");
    let mut bob = n2.join("/ws/bob");
    n1.sees(&["alice", "bob", "carol"]);
    n2.sees(&["alice", "bob", "carol"]);
    alice.send("/send_to bob before");
    assert_eq!(bob.recv()["message"], "before");
    assert_eq!(alice.recv()["type"], "sent");

    // Traffic from alice to bob (n2) and carol (n1) while the database goes away.
    let mut to_bob = 0;
    let mut answers = Vec::new();
    let mut outage = false;
    let started = Instant::now();
    loop {
        if to_bob == 5 && !outage {
            pg.stop_immediate();
            outage = true;
        }
        alice.send(&format!("/send_to bob m{to_bob}"));
        alice.send(&format!("/send_to carol c{to_bob}"));
        to_bob += 1;
        // carol is on alice's instance: delivered whatever the database does.
        let c = carol.recv();
        assert_eq!(c["message"], format!("c{}", to_bob - 1), "{c}");
        // Every message gets an answer: sent, or an error saying it could not go.
        let mut got = Vec::new();
        while got.len() < 2 {
            let v = alice.recv();
            got.push(v);
        }
        answers.extend(got.clone());
        let refused = got.iter().any(|v| v["type"] == "error" && v["error"] == "client_not_found");
        if outage && refused {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "never refused during the outage: {answers:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let e = answers.iter().rev().find(|v| v["type"] == "error").unwrap();
    assert!(e["message"].as_str().unwrap().contains("another instance"), "{e}");
    // What bob got arrived in order, nothing twice.
    let mut last = -1i64;
    while let Some(tungstenite::Message::Text(t)) = bob.next(Duration::from_millis(300)) {
        let v: Value = serde_json::from_str(t.as_str()).unwrap();
        let i: i64 = v["message"].as_str().unwrap()[1..].parse().unwrap();
        assert!(i > last, "out of order or duplicated: {i} after {last}");
        last = i;
    }
    // A client connecting to n2 meanwhile is served there, and known on n1 once the database is back.
    let mut dave = n2.join("/ws/dave");
    // Refused, not queued: bob gets nothing while the database is down.
    alice.send("/send_to bob during");
    assert_eq!(alice.recv()["error"], "client_not_found");

    pg.start_again();
    n1.sees(&["alice", "bob", "carol", "dave"]);
    n2.sees(&["alice", "bob", "carol", "dave"]);
    // Cross-instance delivery resumes (after the instances have heard each other again).
    let ok = eventually(Duration::from_secs(20), || {
        alice.send("/send_to dave back");
        alice.recv()["type"] == "sent"
    });
    assert!(ok, "cross-instance delivery did not resume; n1 log:\n{}", n1.log());
    assert_eq!(dave.recv()["message"], "back");
    let ok = eventually(Duration::from_secs(20), || {
        bob.send("/send_to carol hello again");
        bob.recv()["type"] == "sent"
    });
    assert!(ok, "cross-instance delivery did not resume; n2 log:\n{}", n2.log());
    assert_eq!(carol.recv()["message"], "hello again");
    bob.assert_silent(Duration::from_millis(300));
    assert!(n1.log().contains("cluster: listening again"), "{}", n1.log());
}

#[test]
fn an_instance_is_not_sent_to_before_it_listens() {
    // n2's listener takes 2 s to `LISTEN` (a debug-build hook); its publisher connects at once.
    // Until n2 listens, a message for its client must be refused: sent, it would be lost.
    let db = TestDb::create();
    let env = [("CLUSTER", "postgres"), ("CLUSTER_PRESENCE_TIMEOUT_SECS", "3")];
    let n1 = Node::start(&db.name, "n1", &env);
    let mut alice = n1.join("/ws/alice");
    let listening = eventually(Duration::from_secs(10), || n1.log().contains("instance n1 listening"));
    assert!(listening, "{}", n1.log());
    let mut slow = env.to_vec();
    slow.push(("ADCLUSTER_TEST_LISTEN_DELAY_MS", "2000"));
    let n2 = Node::start(&db.name, "n2", &slow);
    let mut bob = n2.join("/ws/bob");
    let mut refused = 0;
    let sent = eventually(Duration::from_secs(20), || {
        alice.send("/send_to bob hello");
        let v = alice.recv();
        if v["type"] == "error" {
            assert_eq!(v["error"], "client_not_found", "{v}");
            refused += 1;
        }
        v["type"] == "sent"
    });
    assert!(sent, "never sent; n1 log:\n{}", n1.log());
    assert!(refused > 0, "bob was reachable at once: the delay did not hold n2's listener back");
    assert_eq!(bob.recv()["message"], "hello", "answered sent, so bob must have it");
    bob.assert_silent(Duration::from_millis(300));
}

#[test]
fn an_instance_stopped_with_sigterm_says_goodbye() {
    // The default presence timeout (15 s): only the goodbye can drop bob within a few seconds.
    let (_db, mut nodes) = cluster(2, 15);
    let mut alice = nodes[0].join("/ws/alice/room");
    let mut bob = nodes[1].join("/ws/bob/room");
    assert_eq!(alice.recv()["client_id"], "bob");
    nodes[0].sees(&["alice", "bob"]);
    let pid = nodes[1].child.as_ref().unwrap().id();
    let stopped = Instant::now();
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    assert_eq!(bob.expect_close().0, 1001);
    let l = alice.recv();
    assert_eq!((kind(&l), l["client_id"].as_str()), ("leave", Some("bob")), "{l}");
    assert!(stopped.elapsed() < Duration::from_secs(5), "leave after {:?}", stopped.elapsed());
    nodes[0].sees(&["alice"]);
    let exited = eventually(Duration::from_secs(10), || nodes[1].child.as_mut().unwrap().try_wait().unwrap().is_some());
    assert!(exited, "the instance did not exit after SIGTERM");
}

#[test]
fn notifications_from_nowhere_are_skipped_or_forgotten() {
    let (db, nodes) = cluster(2, 2);
    let mut alice = nodes[0].join("/ws/alice/room");
    nodes[1].sees(&["alice"]);
    let mut c = db.client();
    // Garbage on the shared channel, and a reference to a payload row that does not exist.
    for junk in ["not json", "{\"o\":\"x\",\"k\":\"zz\"}", "@987654", "@dnope"] {
        c.execute("SELECT pg_notify('adcluster', $1)", &[&junk]).unwrap();
    }
    // A client announced by an instance that never registered (no row, no heartbeat).
    let now_us = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_micros() as i64;
    let fake = json!({"o": "ghost", "k": "c", "id": "phantom", "s": 1, "g": "room", "t": now_us}).to_string();
    c.execute("SELECT pg_notify('adcluster', $1)", &[&fake]).unwrap();
    let j = alice.recv();
    assert_eq!((kind(&j), j["client_id"].as_str()), ("join", Some("phantom")), "{j}");
    nodes[0].sees(&["alice", "phantom"]);
    // Neither registered nor heard: dropped with a leave, on every instance.
    let l = alice.recv();
    assert_eq!((kind(&l), l["client_id"].as_str()), ("leave", Some("phantom")), "{l}");
    for n in &nodes {
        n.sees(&["alice"]);
    }
    // Both instances are still serving, and still linked.
    let mut bob = nodes[1].join("/ws/bob");
    nodes[0].sees(&["alice", "bob"]);
    alice.send("/send_to bob still fine");
    assert_eq!(bob.recv()["message"], "still fine");
    let log = nodes[0].log();
    assert!(log.contains("does not parse was skipped") && log.contains("is gone"), "{log}");
}
