#!/usr/bin/env python3
"""The outage drill's load and its report (run by scripts/bench/drill.sh; Python 3 stdlib only).

A steady mixed load against a running server for DURATION seconds; at OUTAGE_AT it runs
STOP_CMD (the private cluster's `pg_ctl stop -m immediate`), at OUTAGE_AT + OUTAGE_FOR START_CMD.
Meanwhile it polls /health every 50 ms. Afterwards it waits for the spool to drain, checks that
every upload answered 201 is listed by GET /api/files exactly once, and writes the "## drill"
section of BENCHMARKS.md.

Load (each a thread, paced, one request at a time on a keep-alive connection):
  reads      GET /users/me (memory while down), GET /api/files (needs the database),
             GET /uploads/... of a file stored before the run (no database)
  logins     POST /auth/login, JSON (memory while down)
  uploads    POST /api/upload of a small file (spooled while down)
  signups    POST /users/ (needs the database: refused with 503 while down)
  ws         two WebSocket clients sending /send_to to each other; every message must arrive
  ws-api     GET /api/ws/groups (no database)
An answer is "ok" when it is what the contract says for the state: 2xx; or, for the endpoints
that need the database, 503 with Retry-After while it is down ("refused"). Anything else, a
timeout or a dropped connection is an error.
"""

import argparse
import base64
import http.client
import json
import os
import re
import socket
import struct
import subprocess
import sys
import threading
import time
import uuid

BOUNDARY = "----adcDrillBoundary"
NEEDS_DB = {"GET /api/files", "POST /users/"}


class Clock:
    def __init__(self):
        self.t0 = time.monotonic()

    def now(self):
        return time.monotonic() - self.t0


class Recorder:
    def __init__(self, clock):
        self.clock = clock
        self.lock = threading.Lock()
        self.events = []  # (t, endpoint, outcome, ms)  outcome: ok | refused | error:<what>
        self.uploaded = []  # filenames answered 201

    def add(self, endpoint, outcome, ms):
        with self.lock:
            self.events.append((self.clock.now(), endpoint, outcome, ms))


class Http:
    def __init__(self, port, timeout=10):
        self.port, self.timeout, self.c = port, timeout, None

    def request(self, method, path, body=None, headers=None):
        for attempt in range(2):
            if self.c is None:
                self.c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
            try:
                self.c.request(method, path, body=body, headers=headers or {})
                r = self.c.getresponse()
                data = r.read()
                if r.getheader("connection", "").lower() == "close":
                    self.c.close()
                    self.c = None
                return r.status, dict((k.lower(), v) for k, v in r.getheaders()), data
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as e:
                # A keep-alive connection the server closed while idle: one retry on a new one.
                self.c.close()
                self.c = None
                if attempt == 1:
                    raise e


def judge(endpoint, status, headers):
    if 200 <= status < 300:
        return "ok"
    if endpoint in NEEDS_DB and status == 503 and "retry-after" in headers:
        return "refused"
    return "error:%d" % status


def paced(stop, interval, fn):
    nxt = time.monotonic()
    while not stop.is_set():
        fn()
        nxt += interval
        d = nxt - time.monotonic()
        if d > 0:
            stop.wait(d)
        else:
            nxt = time.monotonic()


def timed(rec, endpoint, fn):
    t = time.monotonic()
    try:
        status, headers, data = fn()
        outcome = judge(endpoint, status, headers)
    except Exception as e:  # noqa: BLE001 - every failure is counted, whatever it is
        status, headers, data = 0, {}, b""
        outcome = "error:" + type(e).__name__
    rec.add(endpoint, outcome, (time.monotonic() - t) * 1000)
    return status, data


def form(name, content):
    return (
        "--%s\r\nContent-Disposition: form-data; name=\"file\"; filename=\"%s\"\r\n"
        "Content-Type: text/plain\r\n\r\n" % (BOUNDARY, name)
    ).encode() + content + ("\r\n--%s--\r\n" % BOUNDARY).encode()


# --- WebSocket (RFC 6455, just what the drill needs) -------------------------------------------


class Ws:
    def __init__(self, port, path):
        self.s = socket.create_connection(("127.0.0.1", port), timeout=10)
        key = base64.b64encode(os.urandom(16)).decode()
        self.s.sendall(
            (
                "GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n" % (path, key)
            ).encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.s.recv(4096)
            if not chunk:
                raise ConnectionError("closed during the handshake")
            head += chunk
        head, self.buf = head.split(b"\r\n\r\n", 1)
        if b" 101 " not in head.split(b"\r\n")[0]:
            raise ConnectionError("no 101: %r" % head[:80])
        self.s.settimeout(None)
        self.wlock = threading.Lock()

    def send(self, text):
        payload = text.encode()
        mask = os.urandom(4)
        n = len(payload)
        if n < 126:
            hdr = struct.pack("!BB", 0x81, 0x80 | n)
        else:
            hdr = struct.pack("!BBH", 0x81, 0x80 | 126, n)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        with self.wlock:
            self.s.sendall(hdr + mask + masked)

    def _read(self, n):
        while len(self.buf) < n:
            chunk = self.s.recv(65536)
            if not chunk:
                raise ConnectionError("closed")
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def recv(self):
        """The next text message (answers pings)."""
        while True:
            b0, b1 = self._read(2)
            n = b1 & 0x7F
            if n == 126:
                n = struct.unpack("!H", self._read(2))[0]
            elif n == 127:
                n = struct.unpack("!Q", self._read(8))[0]
            payload = self._read(n)
            op = b0 & 0x0F
            if op == 0x9:  # ping -> pong
                mask = os.urandom(4)
                with self.wlock:
                    self.s.sendall(struct.pack("!BB", 0x8A, 0x80 | len(payload)) + mask
                                   + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))
            elif op == 0x8:
                raise ConnectionError("close frame")
            elif op == 0x1:
                return payload.decode()


def replace_section(md, heading, text):
    """Replace the section of `md` that starts with the line `heading` (up to the next "## ")
    by `text`, or append `text` when there is none. Other sections stay as they are."""
    try:
        with open(md) as f:
            lines = f.read().split("\n")
    except FileNotFoundError:
        lines = ["# Benchmarks", ""]
    out, skip, done = [], False, False
    for line in lines:
        if line == heading and not done:
            out.extend(text.rstrip("\n").split("\n"))
            out.append("")
            skip, done = True, True
            continue
        if skip and line.startswith("## "):
            skip = False
        if not skip:
            out.append(line)
    if not done:
        while out and out[-1] == "":
            out.pop()
        out.extend(["", *text.rstrip("\n").split("\n"), ""])
    with open(md, "w") as f:
        f.write("\n".join(out).rstrip("\n") + "\n")


# --- the drill ---------------------------------------------------------------------------------


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--duration", type=float, default=60)
    ap.add_argument("--outage-at", type=float, default=20)
    ap.add_argument("--outage-for", type=float, default=20)
    ap.add_argument("--stop-cmd", required=True)
    ap.add_argument("--start-cmd", required=True)
    ap.add_argument("--server-log", required=True)
    ap.add_argument("--out", required=True, help="the report (markdown body of the section)")
    ap.add_argument("--json", required=True, help="the raw figures")
    a = ap.parse_args()

    port = a.port
    setup = Http(port)
    email = "drill-%s@example.com" % uuid.uuid4().hex[:8]
    cred = json.dumps({"email": email, "password": "drill-password-1"})
    st, _, body = setup.request("POST", "/users/", cred, {"Content-Type": "application/json"})
    assert st == 201, (st, body)
    st, _, body = setup.request("POST", "/auth/login", cred, {"Content-Type": "application/json"})
    assert st == 200, (st, body)
    token = json.loads(body)["access_token"]
    auth = {"Authorization": "Bearer " + token}
    st, _, body = setup.request("POST", "/api/upload", form("seed.txt", b"seed"),
                                dict(auth, **{"Content-Type": "multipart/form-data; boundary=" + BOUNDARY}))
    assert st == 201, (st, body)
    seed = json.loads(body)
    uploaded_before = [seed["filename"]]

    clock = Clock()
    rec = Recorder(clock)
    stop = threading.Event()
    threads = []

    def worker(interval, fn):
        th = threading.Thread(target=paced, args=(stop, interval, fn), daemon=True)
        threads.append(th)

    def reads():
        c = Http(port)

        def go():
            timed(rec, "GET /users/me", lambda: c.request("GET", "/users/me", headers=auth))
            timed(rec, "GET /api/files", lambda: c.request("GET", "/api/files?mine=true", headers=auth))
            timed(rec, "GET /uploads/...", lambda: c.request("GET", seed["url"]))
            timed(rec, "GET /api/ws/groups", lambda: c.request("GET", "/api/ws/groups"))
            timed(rec, "GET /health", lambda: c.request("GET", "/health"))
        return go

    def logins():
        c = Http(port)
        return lambda: timed(rec, "POST /auth/login",
                             lambda: c.request("POST", "/auth/login", cred, {"Content-Type": "application/json"}))

    def uploads():
        c = Http(port)
        n = [0]

        def go():
            n[0] += 1
            body = form("drill-%d.txt" % n[0], ("drill upload %d" % n[0]).encode())
            st, data = timed(rec, "POST /api/upload", lambda: c.request(
                "POST", "/api/upload", body, dict(auth, **{"Content-Type": "multipart/form-data; boundary=" + BOUNDARY})))
            if st == 201:
                with rec.lock:
                    rec.uploaded.append(json.loads(data)["filename"])
        return go

    def signups():
        c = Http(port)

        def go():
            b = json.dumps({"email": "s-%s@example.com" % uuid.uuid4().hex[:12], "password": "password1"})
            timed(rec, "POST /users/", lambda: c.request("POST", "/users/", b, {"Content-Type": "application/json"}))
        return go

    for _ in range(2):
        worker(0.1, reads())
    worker(0.25, logins())  # each login is an Argon2 hash: 4/s is a steady, not a flood
    worker(0.1, uploads())
    worker(0.5, signups())

    # WebSocket: a and b send each other /send_to every 50 ms; every message must arrive.
    ws_stats = {"sent": 0, "received": 0, "errors": 0}
    wa = Ws(port, "/ws/drill-a/drill")
    wb = Ws(port, "/ws/drill-b/drill")
    for w in (wa, wb):
        w.recv()  # welcome
    got = {"drill-a": set(), "drill-b": set()}

    def ws_reader(w, me):
        while not stop.is_set():
            try:
                m = json.loads(w.recv())
            except Exception:  # noqa: BLE001
                if not stop.is_set():
                    ws_stats["errors"] += 1
                return
            if m.get("type") == "private":
                with rec.lock:
                    got[me].add(m["message"])

    def ws_sender():
        i = [0]

        def go():
            i[0] += 1
            for w, to in ((wa, "drill-b"), (wb, "drill-a")):
                msg = "m%d" % i[0]
                t = time.monotonic()
                try:
                    w.send("/send_to %s %s" % (to, msg))
                    rec.add("WS /send_to", "ok", (time.monotonic() - t) * 1000)
                    ws_stats["sent"] += 1
                except Exception as e:  # noqa: BLE001
                    rec.add("WS /send_to", "error:" + type(e).__name__, 0)
        return go

    for w, me in ((wa, "drill-a"), (wb, "drill-b")):
        th = threading.Thread(target=ws_reader, args=(w, me), daemon=True)
        th.start()
    worker(0.05, ws_sender())

    # /health every 50 ms on its own connection: the state timeline.
    health = []  # (t, database, spool)

    def health_poll():
        c = Http(port, timeout=5)
        while not stop.is_set():
            try:
                st, _, body = c.request("GET", "/health")
                h = json.loads(body)
                health.append((clock.now(), h.get("database"), h.get("spool", 0)))
            except Exception:  # noqa: BLE001
                health.append((clock.now(), "error", None))
            stop.wait(0.05)

    hp = threading.Thread(target=health_poll, daemon=True)
    for th in threads:
        th.start()
    hp.start()

    time.sleep(max(0, a.outage_at - clock.now()))
    t_stop = clock.now()
    subprocess.run(a.stop_cmd, shell=True, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t_stopped = clock.now()
    time.sleep(max(0, a.outage_at + a.outage_for - clock.now()))
    t_start = clock.now()
    subprocess.run(a.start_cmd, shell=True, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t_started = clock.now()  # pg_ctl start -w: accepting connections from here
    time.sleep(max(0, a.duration - clock.now()))
    stop.set()
    for th in threads:
        th.join(15)
    hp.join(5)
    time.sleep(1)  # messages sent just before the end are still on their way
    ws_stats["received"] = sum(len(v) for v in got.values())
    t_end = clock.now()

    # Drain, then exactly-once.
    drained_at = None
    c = Http(port)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        st, _, body = c.request("GET", "/health")
        if json.loads(body).get("spool", 0) == 0:
            drained_at = clock.now()
            break
        time.sleep(0.05)
    st, _, body = c.request("GET", "/api/files?mine=true", headers=auth)
    assert st == 200, (st, body)
    listed = {}
    for f in json.loads(body)["files"]:
        listed[f["filename"]] = listed.get(f["filename"], 0) + 1
    answered = uploaded_before + rec.uploaded
    lost = [f for f in answered if listed.get(f, 0) == 0]
    doubled = [f for f, n in listed.items() if n > 1]
    unexpected = [f for f in listed if f not in set(answered)]

    down_seen = next((t for t, db, _ in health if t >= t_stop and db == "down"), None)
    up_seen = next((t for t, db, _ in health if t >= t_start and db == "up"), None)
    spool_peak = max((s or 0) for _, _, s in health) if health else 0
    replayed = 0
    try:
        with open(a.server_log) as f:
            for line in f:
                m = re.search(r"replayed (\d+) upload record", line)
                if m:
                    replayed += int(m.group(1))
    except OSError:
        pass

    phases = [("before", 0, t_stop), ("during", t_stop, t_started), ("after", t_started, t_end)]
    table = {}
    for t, ep, outcome, ms in rec.events:
        for name, lo, hi in phases:
            if lo <= t < hi:
                row = table.setdefault(ep, {}).setdefault(name, {"n": 0, "ok": 0, "refused": 0, "errors": 0, "what": {}, "max_ms": 0})
                row["n"] += 1
                row["max_ms"] = max(row["max_ms"], ms)
                if outcome == "ok":
                    row["ok"] += 1
                elif outcome == "refused":
                    row["refused"] += 1
                else:
                    row["errors"] += 1
                    row["what"][outcome] = row["what"].get(outcome, 0) + 1
    ws_lost = ws_stats["sent"] - ws_stats["received"]
    detect = None if down_seen is None else down_seen - t_stop
    recover = None if up_seen is None else up_seen - t_started
    # Drained: the first /health after the return with "spool": 0 (during the run; else the
    # poll after it).
    drained_seen = next((t for t, db, sp in health if up_seen is not None and t >= up_seen and sp == 0), drained_at)
    drain = None if drained_seen is None or up_seen is None else drained_seen - up_seen
    no_db_errors = sum(r["errors"] for ep, rows in table.items() for r in rows.values())
    figures = {
        "detect_s": detect, "recover_s": recover, "drain_after_up_s": drain,
        "stop_cmd_s": t_stopped - t_stop, "start_cmd_s": t_started - t_start,
        "uploads_201": len(answered), "listed": len(listed), "lost": len(lost), "doubled": len(doubled),
        "unexpected": len(unexpected), "replayed": replayed, "spool_peak": spool_peak,
        "ws_sent": ws_stats["sent"], "ws_received": ws_stats["received"], "ws_lost": ws_lost,
        "ws_reader_errors": ws_stats["errors"], "errors_total": no_db_errors, "table": table,
    }
    with open(a.json, "w") as f:
        json.dump(figures, f, indent=1)

    def fmt(x):
        return "—" if x is None else "%.2f s" % x

    goals = [
        ("zero errors on every endpoint (503 with Retry-After for the endpoints that need the database while "
         "it is down counts as the contract, not an error)", no_db_errors == 0 and ws_lost == 0 and ws_stats["errors"] == 0),
        ("zero lost and zero doubled upload records", not lost and not doubled and not unexpected),
        ("outage detected in under 5 s", detect is not None and detect < 5),
        ("return detected in under 5 s", recover is not None and recover < 5),
    ]
    out = []
    out.append("| endpoint | phase | requests | ok | refused (503, contract) | errors | slowest ms |")
    out.append("|---|---|---:|---:|---:|---:|---:|")
    for ep in sorted(table):
        for name, _, _ in phases:
            r = table[ep].get(name)
            if not r:
                continue
            what = ", ".join("%s ×%d" % (k, v) for k, v in sorted(r["what"].items()))
            out.append("| %s | %s | %d | %d | %d | %d%s | %.0f |" % (
                ep, name, r["n"], r["ok"], r["refused"], r["errors"], (" (" + what + ")") if what else "", r["max_ms"]))
    out.append("")
    out.append("- Outage: `pg_ctl stop -m immediate` at %.1f s (took %.2f s), `pg_ctl start -w` at %.1f s "
               "(accepting connections %.2f s later), run ends at %.1f s." % (t_stop, t_stopped - t_stop, t_start,
                                                                               t_started - t_start, t_end))
    out.append("- Time to detect (stop command → first `/health` saying `down`, polled every 50 ms): **%s**" % fmt(detect))
    out.append("- Time to recover (PostgreSQL accepting again → first `/health` saying `up`): **%s**; spool "
               "drained %s after that" % (fmt(recover), fmt(drain)))
    out.append("- Uploads answered 201: %d (spool peak %d); listed afterwards: %d; lost %d, doubled %d, "
               "unexpected %d; replayed from the spool (server log): %d" % (
                   len(answered), spool_peak, len(listed), len(lost), len(doubled), len(unexpected), replayed))
    out.append("- WebSocket `/send_to`: %d sent, %d received, %d lost; reader errors %d" % (
        ws_stats["sent"], ws_stats["received"], ws_lost, ws_stats["errors"]))
    out.append("")
    out.append("Goals:")
    out.append("")
    for g, ok in goals:
        out.append("- %s: **%s**" % (g, "PASS" if ok else "FAIL"))
    with open(a.out, "w") as f:
        f.write("\n".join(out) + "\n")
    print("\n".join(out))
    return 0 if all(ok for _, ok in goals) else 1


def compare(ours, ref):
    """One line comparing two runs' figures (drill.py --compare OURS.json REF.json)."""
    def during(f, key):
        return sum(rows.get("during", {}).get(key, 0) for ep, rows in f["table"].items() if not ep.startswith("WS"))
    o, r = (json.load(open(p)) for p in (ours, ref))
    ratio = during(o, "n") / during(r, "n") if during(r, "n") else float("inf")
    return ("Side by side, during the outage: HTTP requests answered %d (ours) vs %d (reference), %.1fx; errors "
            "%d vs %d; upload records kept %d vs %d." % (during(o, "n"), during(r, "n"), ratio, during(o, "errors"),
                                                        during(r, "errors"), o["spool_peak"], r["spool_peak"]))


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--compare":
        print(compare(sys.argv[2], sys.argv[3]))
        sys.exit(0)
    if len(sys.argv) == 5 and sys.argv[1] == "--write-section":
        # drill.py --write-section BENCHMARKS.md HEAD BODY: "## drill" := HEAD + BODY.
        _, _, md, head, body = sys.argv
        with open(head) as h, open(body) as b:
            replace_section(md, "## drill", h.read().rstrip("\n") + "\n\n" + b.read())
        sys.exit(0)
    sys.exit(main())
