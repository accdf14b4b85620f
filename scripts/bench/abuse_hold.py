#!/usr/bin/env python3
"""Hold N hostile connections of one kind against a server until killed (scripts/bench.sh abuse).

    abuse_hold.py PORT KIND N

Kinds (each the same as a case of tests/abuse.rs):
  chunked   POST head with Transfer-Encoding: chunked, then nothing
  continue  POST head with Expect: 100-continue and Content-Length: 40, then nothing
  large     POST head with Content-Length: 100000, then one byte per socket every second
  unread    16 pipelined GET /openapi.json on a socket with a 4 KiB receive buffer, never read
  loris     a request head sent one byte per socket every second

A socket the server closes is opened again, so N stay held. Prints "held N" once all are open.
Standard library only.
"""
import select
import socket
import sys
import time

HEADS = {
    "chunked": b"POST /auth/login HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n",
    "continue": b"POST /auth/login HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\nExpect: 100-continue\r\nContent-Length: 40\r\n\r\n",
    "large": b"POST /auth/login HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n{",
    "unread": b"GET /openapi.json HTTP/1.1\r\nHost: a\r\n\r\n" * 16,
    "loris": b"",
}
LORIS = b"GET /health HTTP/1.1\r\nHost: a\r\nX-Slow: " + b"a" * 4000


def open_one(port, kind):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if kind == "unread":
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(("127.0.0.1", port))
    s.sendall(HEADS[kind])
    s.setblocking(False)
    return s


def main():
    port, kind, n = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    if kind not in HEADS:
        sys.exit(f"abuse_hold: unknown kind {kind!r} ({', '.join(HEADS)})")
    socks = [open_one(port, kind) for _ in range(n)]
    pos = [0] * n
    print(f"held {n}", flush=True)
    reopened = 0
    next_tick = time.monotonic() + 1.0
    while True:
        # A readable socket: for the kinds that never read, only a close (or an error answer)
        # makes it readable. Read what is there; reopen on EOF or error.
        timeout = max(0.0, next_tick - time.monotonic())
        watch = [] if kind == "unread" else socks
        r, _, _ = select.select(watch, [], [], min(timeout, 1.0)) if watch else ([], [], time.sleep(timeout))
        for s in r:
            i = socks.index(s)
            try:
                data = s.recv(65536)
            except OSError:
                data = b""
            if not data or data.startswith(b"HTTP/1.1 4") or data.startswith(b"HTTP/1.1 5"):
                s.close()
                socks[i] = open_one(port, kind)
                pos[i] = 0
                reopened += 1
        if time.monotonic() >= next_tick:
            next_tick += 1.0
            for i, s in enumerate(socks):
                try:
                    if kind == "large":
                        s.send(b" ")
                    elif kind == "loris" and pos[i] < len(LORIS):
                        s.send(LORIS[pos[i] : pos[i] + 1])
                        pos[i] += 1
                except OSError:
                    s.close()
                    socks[i] = open_one(port, kind)
                    pos[i] = 0
                    reopened += 1


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        pass
