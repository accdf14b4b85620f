#!/usr/bin/env bash
# scripts/bench/ws-ab.sh — an alternating A/B of WebSocket servers on one scenario, a fresh server
# per measurement: the hand measurements behind BENCHMARKS.md's notes on the ws CPU goals
# (2026-12-04: one build against another, ours against Node, and either with or without a
# session of its own).
#
# Usage: scripts/bench/ws-ab.sh [ROUNDS] SIDE SIDE...
#   SIDE is `ours` (target/release/adcluster), `ours@/path/to/adcluster` (another build), `node`
#   (scripts/bench/ws-node/server.mjs) or `minimal` (target/release/ws-minimal: Node's shape, one
#   thread and one send per delivery, with next to no work of its own; see
#   tools/ws-bench/src/bin/ws-minimal.rs). An `ours` side may carry settings after
#   `~`, comma-separated (`ours~WS_IO_URING=off`). `:setsid` appended starts that side in a
#   session of its own (a scheduler autogroup of its own when kernel.sched_autogroup_enabled is 1).
#   Rounds alternate the order of the sides (odd rounds as given, even rounds reversed).
# Environment: WS_AB_ARGS, the ws-bench arguments after --url/--pid (default: 2,000 clients in 20
#   groups, flat out, window 8, 8 s); PGHOST/PGPORT/PGUSER as for psql (default 127.0.0.1, 5432,
#   postgres). Needs PostgreSQL, node 20+ for `node` (run `npm ci` in scripts/bench/ws-node
#   first), and `cargo build --release --workspace`.
#   WS_AB_PERF=SECONDS (optional, needs `perf` and root or kernel.perf_event_paranoid <= 0):
#   also profile the whole machine (`perf record -a -g`) for SECONDS of the flat phase and add,
#   for the server's process, how many samples it had (`perf.samples`) and where they were:
#   `perf.user` (its own code and libraries),
#   `perf.send` (inside send/sendmsg/writev), `perf.rx` (inside net_rx_action: on loopback the
#   kernel runs the receiving socket's TCP input, the client's, in the sender's softirq) and
#   `perf.wake` (sock_def_readable: waking the client's reader). Shares of the server's samples,
#   in %. The CPU figures of a profiled run carry perf's own cost; take them from unprofiled runs.
#   WS_AB_PERF_KEEP=DIR keeps each profile as DIR/ROUND-SIDE.perf.data for `perf report -i`.
# Output: one line per measurement, `SIDE key value ...` with ws-bench's CPU per delivery, its
#   kernel part, deliveries/s, first- and last-receiver p99 and its teardown figures (how long until the
#   server had ended every connection, how many it had not after 15 s, and the server's CPU
#   from the first close until it was quiet), and the perf shares with WS_AB_PERF.
#
# Example (the session A/B): scripts/bench/ws-ab.sh 2 ours ours:setsid node node:setsid
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
WSB="$ROOT/target/release/ws-bench"
ROUNDS=2
if [[ "${1:-}" =~ ^[0-9]+$ ]]; then ROUNDS=$1; shift; fi
[ $# -ge 1 ] || { echo "usage: $0 [ROUNDS] SIDE SIDE... (ours, ours@BIN, ours~VAR=VALUE, node, minimal; :setsid)" >&2; exit 2; }
[ -x "$WSB" ] || { echo "error: no $WSB: run cargo build --release --workspace" >&2; exit 1; }
read -r -a WS_ARGS <<<"${WS_AB_ARGS:---clients 2000 --groups 20 --mode flat --window 8 --seconds 8}"
export PGHOST="${PGHOST:-127.0.0.1}" PGPORT="${PGPORT:-5432}" PGUSER="${PGUSER:-postgres}"
ulimit -n 20000 2>/dev/null || true

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# measure SIDE: start it, run ws-bench against it, print the line, stop it.
measure() {
    local side=$1 how="" kind bin port pid dir db="" out extra=()
    case "$side" in *:setsid) how=setsid ;; esac
    kind=${side%%:*}
    case "$kind" in *~*) IFS=, read -r -a extra <<<"${kind#*~}"; kind=${kind%%~*} ;; esac
    port=$(free_port)
    dir=$(mktemp -d)
    case "$kind" in
        ours | ours@*)
            bin="$ROOT/target/release/adcluster"
            [ "$kind" = ours ] || bin=${kind#ours@}
            db="ws_ab_$$_$RANDOM"
            psql -q -c "CREATE DATABASE $db" postgres >/dev/null
            (cd "$dir" && exec $how env DB_HOST="$PGHOST" DB_PORT="$PGPORT" DB_USER="$PGUSER" DB_NAME="$db" \
                SECRET_KEY=ws-ab-secret-0123456789abcdefghijklmnop LOG_LEVEL=warn WS_MAX_CLIENTS=10100 \
                WS_MAX_CLIENTS_PER_ADDR=0 DATA_DIR="$dir/data" UPLOAD_DIR="$dir/uploads" "${extra[@]}" \
                "$bin" serve --host 127.0.0.1 --port "$port") >"$dir/log" 2>&1 &
            ;;
        node)
            (cd "$ROOT/scripts/bench/ws-node" && exec $how node server.mjs --host 127.0.0.1 --port "$port") >"$dir/log" 2>&1 &
            ;;
        minimal)
            (exec $how "$ROOT/target/release/ws-minimal" --host 127.0.0.1 --port "$port") >"$dir/log" 2>&1 &
            ;;
        *) echo "error: unknown side $side" >&2; exit 2 ;;
    esac
    pid=$!
    for _ in $(seq 1 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
        sleep 0.1
    done
    "$WSB" --url "ws://127.0.0.1:$port" --pid "$pid" "${WS_ARGS[@]}" >"$dir/bench.out" 2>"$dir/bench.err" &
    local bench=$!
    [ -z "${WS_AB_PERF:-}" ] || profile "$pid" "$dir" "$bench"
    wait "$bench" || true
    out=$(grep -E 'server_cpu_us_per_delivery|server_sys_us_per_delivery|deliveries_per_s|first_p99_ms|last_p99_ms|teardown' "$dir/bench.out" | tr '\n' ' ')
    echo "$side $out$(cat "$dir/perf.out" 2>/dev/null)"
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    [ -z "$db" ] || psql -q -c "DROP DATABASE $db" postgres >/dev/null
    rm -rf "$dir"
}

# profile PID DIR BENCH: once ws-bench's flat phase has run 1 s, `perf record -a -g` for
# WS_AB_PERF seconds; writes the server's shares (see the header) to DIR/perf.out.
profile() {
    local pid=$1 dir=$2 bench=$3 total
    until grep -q 'flat:' "$dir/bench.err" 2>/dev/null; do
        kill -0 "$bench" 2>/dev/null || return 0
        sleep 0.2
    done
    sleep 1
    perf record -q -a -g -o "$dir/perf.data" -- sleep "$WS_AB_PERF" >/dev/null 2>&1 || {
        echo "error: perf record failed (root, or kernel.perf_event_paranoid <= 0?)" >&2; return 0; }
    # One pass over the server's samples (`perf script`: a header line, then one line per
    # frame, innermost first): a sample counts as user space when its innermost frame is, and as
    # send / rx / wake when that kernel function is anywhere on its stack.
    total=$(perf script -i "$dir/perf.data" --pid "$pid" -F pid,ip,sym,dso 2>/dev/null | awk '
        function flush() {
            if (!n) return
            t++; if (top !~ /kernel/) u++; if (sd) s++; if (rx) r++; if (wk) w++
            n = 0; sd = rx = wk = 0
        }
        /^[^\t]/ || /^$/ { flush(); next }
        {
            if (!n) top = $NF
            n++
            if ($2 ~ /^(__sys_sendto|__sys_sendmsg|do_writev|ksys_write)$/) sd = 1
            if ($2 == "net_rx_action") rx = 1
            if ($2 == "sock_def_readable") wk = 1
        }
        END {
            flush()
            if (t) printf "perf.samples %d perf.user %.1f perf.send %.1f perf.rx %.1f perf.wake %.1f", t, 100*u/t, 100*s/t, 100*r/t, 100*w/t
        }')
    echo " $total" >"$dir/perf.out"
    [ -z "${WS_AB_PERF_KEEP:-}" ] || cp "$dir/perf.data" "$WS_AB_PERF_KEEP/$r-${side//[:\/@]/_}.perf.data"
}

for r in $(seq 1 "$ROUNDS"); do
    sides=("$@")
    if [ $((r % 2)) = 0 ]; then
        sides=(); for s in "$@"; do sides=("$s" "${sides[@]}"); done
    fi
    for s in "${sides[@]}"; do measure "$s"; done
done
