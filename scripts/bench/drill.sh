#!/usr/bin/env bash
# scripts/bench.sh drill: the outage drill (degraded mode, docs/degraded.md).
#
# A private PostgreSQL cluster (initdb into a temp dir as the `postgres` OS user, its own port
# and socket dir; never the shared cluster), the release server on it, and a steady mixed load
# (scripts/bench/drill.py: reads, logins, uploads, sign-ups, WebSocket /send_to, /api/ws) for
# DRILL_SECONDS with an outage of DRILL_OUTAGE_SECONDS in the middle (`pg_ctl stop -m immediate`,
# then `pg_ctl start`). Reports errors per endpoint before, during and after the outage, the time
# to detect and to recover (from /health polled every 50 ms), and the upload records replayed
# from the spool, checked exactly once; writes the "## drill" section of BENCHMARKS.md.
#
# Environment:
#   DRILL_SECONDS=60            whole run
#   DRILL_OUTAGE_SECONDS=20     outage length; it starts at (DRILL_SECONDS - DRILL_OUTAGE_SECONDS) / 2
#   BENCH_MD, BENCH_SERVER_BIN, BENCH_KEEP_TMP   as for scripts/bench.sh
#   DRILL_REFERENCE_BIN=<path> also run the same drill against this binary (e.g. one built from an
#                               older commit) and add its report to the section; DRILL_REFERENCE_DESC
#                               names it there
#   PG_BIN                      directory of initdb/pg_ctl (default: newest /usr/lib/postgresql/*/bin)
# Leaves nothing behind: the cluster is stopped and removed, the server stopped, on every exit.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
BENCH_MD="${BENCH_MD:-${BENCHMARKS_FILE:-$ROOT/BENCHMARKS.md}}"
DRILL_SECONDS="${DRILL_SECONDS:-60}"
DRILL_OUTAGE_SECONDS="${DRILL_OUTAGE_SECONDS:-20}"

die() { echo "drill: error: $*" >&2; exit 1; }
log() { echo "drill: $*" >&2; }

for v in DRILL_SECONDS DRILL_OUTAGE_SECONDS; do
    [[ "${!v}" =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive integer, not '${!v}'"
done
[ "$DRILL_OUTAGE_SECONDS" -lt "$DRILL_SECONDS" ] || die "DRILL_OUTAGE_SECONDS must be shorter than DRILL_SECONDS"
command -v python3 >/dev/null || die "python3 is needed (the load generator, stdlib only)"
command -v curl >/dev/null || die "curl is needed"

if [ -n "${PG_BIN:-}" ]; then
    BIN="$PG_BIN"
else
    BIN="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1 || true)"
fi
[ -x "$BIN/initdb" ] && [ -x "$BIN/pg_ctl" ] ||
    die "no initdb/pg_ctl (looked in '${BIN:-/usr/lib/postgresql/*/bin}'): install Debian's postgresql or set PG_BIN"

TMP="$(mktemp -d "${TMPDIR:-/tmp}/adcluster-drill.XXXXXX")"
chmod 755 "$TMP"  # the postgres user must reach its cluster inside
SERVER_PID=""
CLUSTERS=()
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill -TERM -- "-$SERVER_PID" 2>/dev/null || kill -TERM "$SERVER_PID" 2>/dev/null || true
        for _ in $(seq 1 50); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL -- "-$SERVER_PID" 2>/dev/null || true
    fi
    # Whatever the drill left running (it may have been interrupted mid-outage).
    local c
    for c in "${CLUSTERS[@]}"; do as_pg "$BIN/pg_ctl" -D "$c" stop -m immediate -w >/dev/null 2>&1 || true; done
    if [ "${BENCH_KEEP_TMP:-0}" = 1 ]; then log "kept $TMP"; else rm -rf "$TMP"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# The server.
if [ -n "${BENCH_SERVER_BIN:-}" ]; then
    SERVER="$BENCH_SERVER_BIN"
    [ -x "$SERVER" ] || die "BENCH_SERVER_BIN=$SERVER is not an executable file"
else
    log "cargo build --release"
    (cd "$ROOT" && cargo build --release) >&2 || die "cargo build --release failed"
    SERVER="${CARGO_TARGET_DIR:-$ROOT/target}/release/adcluster"
    case "$SERVER" in /*) ;; *) SERVER="$ROOT/$SERVER" ;; esac
fi

OUTAGE_AT=$(((DRILL_SECONDS - DRILL_OUTAGE_SECONDS) / 2))

# stop_server: stop the running server (its process group).
stop_server() {
    [ -n "$SERVER_PID" ] || return 0
    if kill -0 "$SERVER_PID" 2>/dev/null; then
        kill -TERM -- "-$SERVER_PID" 2>/dev/null || kill -TERM "$SERVER_PID" 2>/dev/null || true
        for _ in $(seq 1 50); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL -- "-$SERVER_PID" 2>/dev/null || true
    fi
    SERVER_PID=""
}

# run_one WHO BINARY: a fresh private cluster and server, the load with the outage; the report
# goes to $TMP/WHO/report.md. Returns drill.py's status (0: every goal met).
run_one() {
    local who=$1 server=$2 d="$TMP/$1" port sport rc=0
    mkdir -p "$d/pg" "$d/srv"
    chmod 755 "$d"
    [ "$(id -u)" = 0 ] && chown postgres:postgres "$d/pg"
    port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
    as_pg "$BIN/initdb" -D "$d/pg/data" -U postgres -A trust -E UTF8 --locale=C --no-sync >"$d/initdb.log" 2>&1 ||
        { cat "$d/initdb.log" >&2; die "initdb failed"; }
    local pg_start=("$BIN/pg_ctl" -D "$d/pg/data" start -w -t 60 -l "$d/pg/server.log"
        -o "-p $port -k $d/pg -c listen_addresses=127.0.0.1 -c max_connections=60")
    local pg_stop=("$BIN/pg_ctl" -D "$d/pg/data" stop -m immediate -w)
    CLUSTERS+=("$d/pg/data")
    as_pg "${pg_start[@]}" >/dev/null || { cat "$d/pg/server.log" >&2; die "pg_ctl start failed"; }
    log "$who: private cluster on port $port ($d/pg)"
    (
        cd "$d/srv"
        exec env -i PATH="$PATH" DB_HOST=127.0.0.1 DB_PORT="$port" DB_USER=postgres DB_NAME=adcluster_drill \
            DATA_DIR="$d/srv/data" UPLOAD_DIR="$d/srv/uploads" SECRET_KEY="drill-secret-$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')" \
            LOG_LEVEL=info setsid "$server" serve --host 127.0.0.1 --port 0
    ) >"$d/server.log" 2>&1 </dev/null &
    SERVER_PID=$!
    sport=""
    for _ in $(seq 1 100); do
        sport="$(grep -oE 'listening on http://127\.0\.0\.1:[0-9]+' "$d/server.log" | head -n1 | sed 's/.*://' || true)"
        [ -n "$sport" ] && break
        kill -0 "$SERVER_PID" 2>/dev/null || { tail -n 20 "$d/server.log" >&2; die "$who: the server exited"; }
        sleep 0.1
    done
    [ -n "$sport" ] || die "$who: the server did not listen within 10 s"
    [ "$(curl -s "http://127.0.0.1:$sport/health" | python3 -c 'import json,sys; print(json.load(sys.stdin)["database"])')" = up ] ||
        die "$who: the server does not see its database"
    log "$who: server pid $SERVER_PID on port $sport; load for ${DRILL_SECONDS} s, outage from ${OUTAGE_AT} s for ${DRILL_OUTAGE_SECONDS} s"
    local stop_cmd start_cmd
    stop_cmd="$(printf '%q ' "${pg_stop[@]}")"
    start_cmd="$(printf '%q ' "${pg_start[@]}")"
    if [ "$(id -u)" = 0 ]; then stop_cmd="runuser -u postgres -- $stop_cmd"; start_cmd="runuser -u postgres -- $start_cmd"; fi
    python3 "$ROOT/scripts/bench/drill.py" --port "$sport" --duration "$DRILL_SECONDS" --outage-at "$OUTAGE_AT" \
        --outage-for "$DRILL_OUTAGE_SECONDS" --stop-cmd "$stop_cmd" --start-cmd "$start_cmd" \
        --server-log "$d/server.log" --out "$d/report.md" --json "$d/figures.json" >&2 || rc=$?
    kill -0 "$SERVER_PID" 2>/dev/null || { tail -n 30 "$d/server.log" >&2; die "$who: the server died during the drill"; }
    grep -E ' (WARN|ERROR) ' "$d/server.log" | head -n 20 >&2 || true
    stop_server
    as_pg "${pg_stop[@]}" >/dev/null 2>&1 || true
    return "$rc"
}

{
    echo "## drill"
    echo
    echo "Degraded mode under load (docs/degraded.md): a steady mix — per 100 ms on each of 2 readers \`GET /users/me\`,"
    echo "\`GET /api/files?mine=true\`, \`GET /uploads/...\`, \`GET /api/ws/groups\`, \`GET /health\`; one upload per"
    echo "100 ms, one login per 250 ms, one sign-up per 500 ms, two WebSocket clients sending each other \`/send_to\`"
    echo "every 50 ms — against the release server on a private PostgreSQL cluster that is stopped with"
    echo "\`pg_ctl stop -m immediate\` for ${DRILL_OUTAGE_SECONDS} s in the middle. Phases: before the stop, during (stop"
    echo "to PostgreSQL accepting again), after. Goals: zero errors on every endpoint (for the ones that need"
    echo "the database, \`503\` with \`Retry-After\` while it is down is the contract), zero lost or doubled upload"
    echo "records, detection and recovery each under 5 s. Each load thread sends its next request when the previous"
    echo "one is answered (paced, closed loop), so answers that wait for the pool show up as fewer requests."
    echo "Under load, failing requests wake the monitor at once; the monitor alone (no load) is timed by"
    echo "\`tests/degraded.rs\` (\`the_database_goes_away_and_comes_back\` prints it)."
    echo
    echo "- Date: $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "- Machine: $(nproc) cores (nproc), $(free -g | awk '/^Mem:/ { print $2 }') GiB RAM, kernel $(uname -r); shared with other builds"
    echo "- Command: \`scripts/bench.sh drill\` (DRILL_SECONDS=$DRILL_SECONDS, DRILL_OUTAGE_SECONDS=$DRILL_OUTAGE_SECONDS; PostgreSQL $("$BIN/postgres" --version | awk '{print $3}'))"
    echo "- Server: $(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo unknown)$(cd "$ROOT" && git diff --quiet 2>/dev/null || echo ' (with uncommitted changes)'), release build"
    if [ -n "${DRILL_REFERENCE_BIN:-}" ]; then
        echo "- Reference: ${DRILL_REFERENCE_DESC:-$DRILL_REFERENCE_BIN} (\`DRILL_REFERENCE_BIN\`), the same drill right after ours"
    fi
} >"$TMP/head.md"

status=0
run_one ours "$SERVER" || status=$?
if [ -n "${DRILL_REFERENCE_BIN:-}" ]; then
    [ -x "$DRILL_REFERENCE_BIN" ] || die "DRILL_REFERENCE_BIN=$DRILL_REFERENCE_BIN is not an executable file"
    run_one reference "$DRILL_REFERENCE_BIN" || true
    {
        echo
        echo "### Reference: ${DRILL_REFERENCE_DESC:-$DRILL_REFERENCE_BIN}, the same drill in the same run"
        echo
        python3 "$ROOT/scripts/bench/drill.py" --compare "$TMP/ours/figures.json" "$TMP/reference/figures.json"
        echo
        cat "$TMP/reference/report.md"
    } >>"$TMP/ours/report.md"
fi
python3 "$ROOT/scripts/bench/drill.py" --write-section "$BENCH_MD" "$TMP/head.md" "$TMP/ours/report.md"
log "wrote section '## drill' of $BENCH_MD"
exit "$status"
