#!/usr/bin/env bash
# Benchmarks for the Adcluster server. Results go to BENCHMARKS.md at the repo root, one
# "## <subcommand>" section per subcommand; re-running a subcommand replaces only its own section.
#
#   scripts/bench.sh http     GET / and GET /health under wrk, side by side with nginx returning
#                             the same JSON
#   scripts/bench.sh users    GET /users/{id} under wrk, side by side with pgbench -M prepared
#                             running the same SELECT on the same database (as many clients as our
#                             pool) and with a FastAPI reference; a 60 s run for the worst request;
#                             then POST /auth/login at full load with GET /health latency under it
#   scripts/bench.sh sizing   GET /users/{id} for each WORKERS x DB_POOL_SIZE of BENCH_SIZING_GRID
#                             (default "64:8 64:16 64:32 64:64 32:16 16:16"): req/s, p99, the
#                             server's CPU time and wake-ups per request: evidence for the defaults
#   scripts/bench.sh counts   system calls (strace -c -f) and heap allocations (perf uprobes on
#                             libc's malloc) per GET / and GET /health
#   scripts/bench.sh files    one 1 GiB upload (POST /api/upload) side by side with dd writing the
#                             same bytes to the same disk, the server's RSS during it, the download
#                             (GET /uploads/...) side by side with nginx serving the same stored
#                             file, then 64 concurrent 1 MiB uploads
#   scripts/bench.sh ws       WebSocket: tools/ws-bench against our server and, in the same run,
#                             a Node `ws` server speaking the same protocol subset
#                             (scripts/bench/ws-node): 10,000 idle clients held (connect rate, RSS
#                             per idle client), /send_to latency at a fixed rate, /group fan-out to
#                             1,000 members at 10 msg/s (first and last receiver), and flat out
#                             (deliveries/s, server CPU time per delivery)
#   scripts/bench.sh dbgui    a 1,000,000-row CSV export from `adcluster db-gui` side by side with
#                             psql --csv of the same statement, the JSON export, the GUI's peak RSS
#                             (scripts/bench/dbgui.sh; BENCH_DBGUI_ROWS=1000000)
#
# Every subcommand writes its figures only into BENCH_MD, and leaves no server, load generator or
# database behind (cleanup runs on every exit).
#
# Environment:
#   BENCH_SECONDS=10          duration of each wrk / pgbench run
#   BENCH_ROUNDS=2            rounds per target; targets alternate (ours, reference, ours, ...)
#   BENCH_MD=<path>           where to write the results (default: <repo>/BENCHMARKS.md);
#                             BENCHMARKS_FILE is accepted as another name for it
#   BENCH_SERVER_BIN=<path>   use this prebuilt adcluster binary instead of building the repo's
#                             (e.g. one built from another branch); every subcommand honours it
#   BENCH_KEEP_TMP=1          keep the temp dir (wrk and pgbench outputs, server log) for a look;
#                             files over 8 MiB in it (files' uploads) are removed all the same
#   http (and files):
#   BENCH_NGINX_WORKERS=auto  nginx worker_processes (see "Why worker_processes auto" below)
#   BENCH_SERVER_CMD=...      run this instead of building and starting target/release/adcluster
#                             (a stand-in for testing this script; http only). It is run with bash -c,
#                             gets DATA_DIR, UPLOAD_DIR and LOG_LEVEL like the real server, must listen
#                             on 127.0.0.1, print "listening on http://127.0.0.1:<port>" to stdout or
#                             stderr (or be the process that listens, for `ss` to find), and must
#                             answer GET /health with 200.
#   users:
#   BENCH_USERS=1000          rows inserted by SQL (plus the one login account made by the CLI)
#   BENCH_HEALTH_CONNS=4      connections of the paced /health probe during the login load
#   BENCH_HEALTH_DELAY_MS=20  pause of each probe connection before each request
#   BENCH_LONG_SECONDS=60     the long GET /users/{id} run (its worst request); 0: none
#   BENCH_FASTAPI=1           also measure the FastAPI reference (scripts/bench/fastapi-ref; pip
#                             installs its pinned requirements into target/bench-fastapi-venv)
#   DB_HOST, DB_PORT, DB_USER, DB_PASSWORD   PostgreSQL (default 127.0.0.1:5432, postgres, none);
#                             a fresh database is created there and dropped at exit (users, files)
#   files (BENCH_SECONDS is not used: each run moves one file; BENCH_ROUNDS alternates the sides):
#   BENCH_FILE_MB=1024        size of the big file, MiB (at most 1100: the server runs with
#                             MAX_UPLOAD_MB=1100)
#   BENCH_CONCURRENT=64       concurrent small uploads
#   BENCH_CONCURRENT_KB=1024  size of each, KiB
#   BENCH_FILES_DIR=<repo>/target   where the run's temp dir goes (source file, UPLOAD_DIR, dd's
#                             output: one filesystem); needs 3 x BENCH_FILE_MB free. Refused on
#                             tmpfs/ramfs. See "Why target/" below
#   BENCH_DROP_CACHES=1       sync and drop the page cache before every timed run (root only; the
#                             section says when it was not permitted); 0: only sync. The cache is
#                             the whole machine's: others' builds re-read their files afterwards
#   BENCH_NGINX_SENDFILE=on   nginx's `sendfile` for the download reference (nginx's built-in
#                             default is off; Debian's stock config and most deployments say on)
#
#   ws (needs PostgreSQL like users; node 20+ and npm; the tool's own target/release/ws-bench):
#   BENCH_WS_TARGETS="ours node"  which servers to run (e.g. "node" alone to check the tooling
#                             while our server has no WebSocket side)
#   BENCH_WS_CLIENTS=10000    idle clients held in scenario (a), in groups of BENCH_WS_IDLE_MEMBERS=10
#   BENCH_WS_RTT_CLIENTS=200  clients of scenario (b), in pairs; BENCH_WS_RTT_RATE=1000 msg/s in total
#   BENCH_WS_MEMBERS=1000     members of the fan-out group of (c) and (d)
#   BENCH_WS_FANOUT_RATE=10   /group messages per second in (c)
#   BENCH_WS_WINDOW=8         (d) flat out: most /group messages in flight
#   BENCH_WS_SCENARIOS="idle rtt fanout fanout20 fanout10k"  which runs: (a) idle, (b) rtt,
#                             (c, d) fanout (1 group of BENCH_WS_MEMBERS), (e) fanout20 (2,000
#                             clients in 20 groups, one sender each), (f) fanout10k (10,000
#                             clients in 10 groups of 1,000, 10 senders)
#   BENCH_SECONDS is the hold time of (a) and the measured time of (b), (c) and (d) each.
#
# Why worker_processes auto: this machine has 2 cores and our server uses both (its worker pool is
# not pinned to one core), so the fair reference is nginx with one worker per core, which is what
# `auto` gives. wrk runs on the same 2 cores (-t2), so neither side has the machine to itself; the
# choice is recorded in each section BENCHMARKS.md gets.
#
# Why target/ for files: /tmp may be a tmpfs (memory), where fsync is free and dd and our upload
# would measure memcpy, not the disk. The repo's target/ is where the build already writes: on the
# repo's disk, git-ignored, writable by whoever builds, and cleaned by `cargo clean` if a run is
# ever killed with SIGKILL. /var/tmp is disk-backed too but may be a small partition of its own.
# Whatever the directory, the source file, UPLOAD_DIR and dd's output share it, so both sides of the
# comparison write to the same filesystem, and `stat -f` refuses tmpfs/ramfs.
#
# Why pgbench -M prepared with DB_POOL_SIZE clients is the users reference: our server prepares
# its statements once per pooled connection and runs them on at most DB_POOL_SIZE connections, so
# that is what PostgreSQL alone can do with the same statement and the same connections; the
# ratio says what the HTTP layer, the token check and JSON cost on top.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LUA_DIR="$ROOT/scripts/bench"
BENCH_MD="${BENCH_MD:-${BENCHMARKS_FILE:-$ROOT/BENCHMARKS.md}}"
BENCH_SECONDS="${BENCH_SECONDS:-10}"
BENCH_ROUNDS="${BENCH_ROUNDS:-2}"
BENCH_NGINX_WORKERS="${BENCH_NGINX_WORKERS:-auto}"
BENCH_USERS="${BENCH_USERS:-1000}"
BENCH_HEALTH_CONNS="${BENCH_HEALTH_CONNS:-4}"
BENCH_HEALTH_DELAY_MS="${BENCH_HEALTH_DELAY_MS:-20}"
BENCH_LONG_SECONDS="${BENCH_LONG_SECONDS:-60}"
BENCH_FASTAPI="${BENCH_FASTAPI:-1}"
BENCH_FILE_MB="${BENCH_FILE_MB:-1024}"
BENCH_CONCURRENT="${BENCH_CONCURRENT:-64}"
BENCH_CONCURRENT_KB="${BENCH_CONCURRENT_KB:-1024}"
BENCH_FILES_DIR="${BENCH_FILES_DIR:-$ROOT/target}"
BENCH_DROP_CACHES="${BENCH_DROP_CACHES:-1}"
BENCH_NGINX_SENDFILE="${BENCH_NGINX_SENDFILE:-on}"
BENCH_WS_TARGETS="${BENCH_WS_TARGETS:-ours node}"
BENCH_WS_CLIENTS="${BENCH_WS_CLIENTS:-10000}"
BENCH_WS_IDLE_MEMBERS="${BENCH_WS_IDLE_MEMBERS:-10}"
BENCH_WS_RTT_CLIENTS="${BENCH_WS_RTT_CLIENTS:-200}"
BENCH_WS_RTT_RATE="${BENCH_WS_RTT_RATE:-1000}"
BENCH_WS_MEMBERS="${BENCH_WS_MEMBERS:-1000}"
BENCH_WS_FANOUT_RATE="${BENCH_WS_FANOUT_RATE:-10}"
BENCH_WS_WINDOW="${BENCH_WS_WINDOW:-8}"
BENCH_WS_SCENARIOS="${BENCH_WS_SCENARIOS:-idle rtt fanout fanout20 fanout10k}"
WRK_THREADS=2
WRK_CONNS=64

for v in BENCH_SECONDS BENCH_ROUNDS BENCH_USERS BENCH_HEALTH_CONNS BENCH_HEALTH_DELAY_MS \
    BENCH_FILE_MB BENCH_CONCURRENT BENCH_CONCURRENT_KB BENCH_WS_CLIENTS BENCH_WS_IDLE_MEMBERS \
    BENCH_WS_RTT_CLIENTS BENCH_WS_RTT_RATE BENCH_WS_MEMBERS BENCH_WS_FANOUT_RATE BENCH_WS_WINDOW; do
    [[ "${!v}" =~ ^[1-9][0-9]*$ ]] || { echo "bench: error: $v must be a positive integer, not '${!v}'" >&2; exit 2; }
done
[ "$BENCH_FILE_MB" -le 1100 ] || { echo "bench: error: BENCH_FILE_MB must be at most 1100 (MAX_UPLOAD_MB)" >&2; exit 2; }
[[ "$BENCH_LONG_SECONDS" =~ ^[0-9]+$ ]] || { echo "bench: error: BENCH_LONG_SECONDS must be a whole number of seconds (0: no long run)" >&2; exit 2; }
[[ "$BENCH_FASTAPI" =~ ^[01]$ ]] || { echo "bench: error: BENCH_FASTAPI must be 0 or 1" >&2; exit 2; }
[[ "$BENCH_DROP_CACHES" =~ ^[01]$ ]] || { echo "bench: error: BENCH_DROP_CACHES must be 0 or 1" >&2; exit 2; }
[[ "$BENCH_NGINX_SENDFILE" =~ ^(on|off)$ ]] || { echo "bench: error: BENCH_NGINX_SENDFILE must be on or off" >&2; exit 2; }

# Goals of the http section.
GOAL_HTTP_RATIO=0.8   # GET /: ours/nginx req/s at least this (and our p99 below nginx's)
# Goals of the users section.
GOAL_HEALTH_UNDER_LOGIN_P99_MS=20  # /health p99 while logins saturate the hashing gate, below this
GOAL_USERS_P99_MS=10               # GET /users/{id} p99 at 64 connections at most this
GOAL_USERS_P99_VS_FASTAPI=0.2      # ... and at most this times the FastAPI reference's p99
GOAL_USERS_PGBENCH_RATIO=0.5       # ours/pgbench -M prepared (as many clients as our pool) at least this
GOAL_USERS_MAX_MS=100              # no GET /users/{id} slower than this in the long run
# Goals of the files section.
GOAL_FILES_UPLOAD_RATIO=0.7    # ours/dd MB/s at least this
GOAL_FILES_RSS_MIB=32          # server VmRSS peak during the big upload at most this above idle
GOAL_FILES_DOWNLOAD_RATIO=0.7  # ours/nginx MB/s at least this
                               # (and the concurrent uploads: every one 201)
# Goals of the ws section (the issue's four).
GOAL_WS_CLIENTS=10000          # concurrent clients held (connected, idle, every one answering a ping)
GOAL_WS_CPU_RATIO=1.0          # our server CPU per delivery (flat out) at most Node's times this
GOAL_WS_FANOUT_LAST_P99_MS=30  # /group to 1,000 members at 10 msg/s: last receiver p99 below this
GOAL_WS_CPU_VS_NODE=0.6        # each fan-out scenario: server CPU per delivery (flat) at most Node's times this
GOAL_WS_RSS_PER_CLIENT_KIB=64  # server RSS per idle client below this

TMP=""
SERVER_PID=""
NGINX_PID=""
SERVER_PORT=""
NGINX_PORT=""
BG_PIDS=()    # other process groups we started (background load generators)
BENCH_DB=""   # the database we created, dropped at exit

die() { echo "bench: error: $*" >&2; exit 1; }
log() { echo "bench: $*" >&2; }

# ---------------------------------------------------------------------------------------------
# cleanup

# new_group CMD ARGS...: runs CMD as the leader of a process group of its own (so that stop_group
# can stop all of it), in this script's session. Not `setsid`, unless BENCH_OWN_SESSION=1: a new
# session is a new scheduler autogroup when kernel.sched_autogroup_enabled is 1 (Debian's
# default), and the kernel then shares the cores between the servers and the load generator
# group by group, which changes the figures more than some of the differences measured: on
# 2026-12-04 our WebSocket server's CPU per delivery (20 groups of 100, flat out) was 5.4-6.7 µs
# in a session of its own against 3.8-4.8 in the load generator's, and Node's 6.2-7.7 against
# 7.5-8.7 (BENCHMARKS.md, notes). With every process in one session, none is favoured by it.
new_group() {
    if [ "${BENCH_OWN_SESSION:-0}" = 1 ]; then
        exec setsid "$@"
    fi
    exec perl -e 'setpgrp(0, 0); exec { $ARGV[0] } @ARGV or die "exec $ARGV[0]: $!\n"' "$@"
}

# session_note: how the servers were started, for a section's head.
session_note() {
    local ag
    ag="$(cat /proc/sys/kernel/sched_autogroup_enabled 2>/dev/null || echo '?')"
    if [ "${BENCH_OWN_SESSION:-0}" = 1 ]; then
        printf 'Servers each in a session of their own (BENCH_OWN_SESSION=1, setsid): with kernel.sched_autogroup_enabled=%s, each its own scheduler group\n' "$ag"
    else
        printf 'Servers in the benchmark'"'"'s session, as process-group leaders (not setsid): one scheduler group with the load generator (kernel.sched_autogroup_enabled=%s); see `docs/decisions.md`, "The session the benchmark starts a server in"\n' "$ag"
    fi
}

stop_group() { # pid: the leader of a process group we started with new_group
    local pid=$1
    [ -n "$pid" ] || return 0
    kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.1
    done
    kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
}

cleanup() {
    local rc=$? pid
    trap - EXIT INT TERM
    for pid in "${BG_PIDS[@]}"; do stop_group "$pid"; done
    stop_group "$SERVER_PID"
    stop_group "$NGINX_PID"
    wait 2>/dev/null || true
    drop_bench_db
    if [ -n "$TMP" ] && [ -d "$TMP" ]; then
        if [ "${BENCH_KEEP_TMP:-0}" = 1 ]; then
            # Logs and outputs are kept; the big files (files' 1 GiB uploads) are not.
            find "$TMP" -type f -size +8M -delete 2>/dev/null || true
            log "kept $TMP (BENCH_KEEP_TMP=1; files over 8 MiB removed)"
        else
            rm -rf "$TMP"
        fi
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

make_tmp() {
    [ -n "$TMP" ] || TMP="$(mktemp -d "${TMPDIR:-/tmp}/adcluster-bench.XXXXXX")"
}
# ---------------------------------------------------------------------------------------------
# tools

# need_tools "cmd:package" ... : install the packages of missing commands with apt-get, or fail.
need_tools() {
    local spec cmd pkg missing=()
    for spec in "$@"; do
        cmd=${spec%%:*}
        pkg=${spec#*:}
        command -v "$cmd" >/dev/null 2>&1 || [ -x "/usr/sbin/$cmd" ] || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    log "installing ${missing[*]} with apt-get"
    command -v apt-get >/dev/null 2>&1 || die "need ${missing[*]}, and apt-get is not available"
    local sudo=()
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null 2>&1 || die "need ${missing[*]}: run as root or install them"
        sudo=(sudo)
    fi
    # Wait for the dpkg lock (another install may be running) instead of failing.
    local apt=("${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600)
    if ! "${apt[@]}" install -y --no-install-recommends "${missing[@]}" >&2; then
        "${apt[@]}" update >&2 || die "apt-get update failed"
        "${apt[@]}" install -y --no-install-recommends "${missing[@]}" >&2 \
            || die "apt-get install ${missing[*]} failed"
    fi
    for spec in "$@"; do
        cmd=${spec%%:*}
        command -v "$cmd" >/dev/null 2>&1 || [ -x "/usr/sbin/$cmd" ] \
            || die "$cmd still missing after installing ${missing[*]}"
    done
}

nginx_bin() { command -v nginx 2>/dev/null || echo /usr/sbin/nginx; }

# pgbench from PATH, else the newest /usr/lib/postgresql/*/bin/pgbench.
pgbench_bin() {
    local p
    p="$(command -v pgbench 2>/dev/null || true)"
    if [ -z "$p" ]; then
        p="$(find /usr/lib/postgresql -path '*/bin/pgbench' 2>/dev/null | sort -V | tail -n1 || true)"
    fi
    if [ -z "$p" ] || [ ! -x "$p" ]; then
        die "pgbench not found (it comes with PostgreSQL: apt-get install postgresql-client)"
    fi
    echo "$p"
}

# random_hex N: 2N hex characters from the kernel's random source.
random_hex() { od -An -tx1 -N"$1" /dev/urandom | tr -d ' \n'; }

# ---------------------------------------------------------------------------------------------
# processes

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# A port below the kernel's ephemeral range (so no client socket holds it) that no socket uses.
free_port() {
    local lo=32768 p
    if [ -r /proc/sys/net/ipv4/ip_local_port_range ]; then
        read -r lo _ </proc/sys/net/ipv4/ip_local_port_range
    fi
    [ "$lo" -gt 11000 ] || lo=61000
    for _ in $(seq 1 200); do
        if [ "$lo" -eq 61000 ]; then p=$((61000 + RANDOM % 4000)); else p=$((10000 + RANDOM % (lo - 10000))); fi
        port_open "$p" && continue
        if command -v ss >/dev/null 2>&1 && [ -n "$(ss -Htan "( sport = :$p )" 2>/dev/null)" ]; then
            continue
        fi
        echo "$p"
        return 0
    done
    die "no free port found"
}

build_server() {
    if [ -n "${BENCH_SERVER_BIN:-}" ]; then
        [ -x "$BENCH_SERVER_BIN" ] || die "BENCH_SERVER_BIN=$BENCH_SERVER_BIN is not an executable file"
        log "BENCH_SERVER_BIN is set: not building, using $BENCH_SERVER_BIN"
        return 0
    fi
    if [ -n "${BENCH_SERVER_CMD:-}" ]; then
        log "BENCH_SERVER_CMD is set: not building, using the stand-in"
        return 0
    fi
    command -v cargo >/dev/null 2>&1 || die "cargo not found"
    log "cargo build --release (in $ROOT)"
    (cd "$ROOT" && cargo build --release) >&2 || die "cargo build --release failed"
    [ -x "$(server_bin)" ] || die "no $(server_bin) after the build"
}

# The cargo target dir (honours CARGO_TARGET_DIR, absolute or relative to the repo root).
target_dir() {
    local t="${CARGO_TARGET_DIR:-target}"
    case "$t" in /*) ;; *) t="$ROOT/$t" ;; esac
    echo "$t"
}

# target/release/adcluster, or BENCH_SERVER_BIN when set.
server_bin() {
    if [ -n "${BENCH_SERVER_BIN:-}" ]; then echo "$BENCH_SERVER_BIN"; return 0; fi
    echo "$(target_dir)/release/adcluster"
}

# A setting as the server will see it: from the environment, else its default from --help.
server_setting() {
    local v=$1 val
    if [ -n "${!v:-}" ]; then val="${!v}"; else
        val="$("$(server_bin)" --help 2>/dev/null | awk -v v="$v" '$1 ~ /^--/ && $3 == v { print $4; exit }')"
    fi
    if [ "$v" = DB_POOL_SIZE ] && [ "${val,,}" = auto ]; then
        # The server's rule (config::auto_pool_size): 2 per core, at least 4.
        val=$(( $(nproc) * 2 )); [ "$val" -ge 4 ] || val=4
    fi
    if [ "$v" = WORKERS ] && [ "${val,,}" = auto ]; then
        # The server's rule (config::auto_workers): 16 per core.
        val=$(( $(nproc) * 16 ))
    fi
    echo "$val"
}

# wait_listening LOGFILE PID: prints the port the process listens on: the first
# "http://127.0.0.1:<port>" it logs or, as the server logs that line at info level and runs here
# with LOG_LEVEL=warn, the TCP socket that `ss` shows it listening on. Fails when the process exits
# first or takes over 10 s.
wait_listening() {
    local logf=$1 pid=$2 port=""
    for _ in $(seq 1 100); do
        port="$(grep -oE 'http://127\.0\.0\.1:[0-9]+' "$logf" 2>/dev/null | head -n1 | sed 's/.*://' || true)"
        if [ -z "$port" ]; then
            port="$(ss -Hltnp 2>/dev/null | awk -v p="pid=$pid," 'index($0, p) { n = split($4, a, ":"); print a[n]; exit }' || true)"
        fi
        [ -n "$port" ] && { echo "$port"; return 0; }
        kill -0 "$pid" 2>/dev/null || { tail -n 20 "$logf" >&2; die "the server exited before listening"; }
        sleep 0.1
    done
    tail -n 20 "$logf" >&2
    die "the server (pid $pid) was not listening within 10 s"
}

# start_server [VAR=VALUE ...]: starts the server (or BENCH_SERVER_CMD) with DATA_DIR, UPLOAD_DIR
# in the temp dir, LOG_LEVEL=warn, and these extra variables; sets SERVER_PID, SERVER_PORT.
start_server() {
    make_tmp
    mkdir -p "$TMP/data" "$TMP/uploads"
    local logf="$TMP/server.log" cmd
    if [ -n "${BENCH_SERVER_CMD:-}" ]; then
        cmd="$BENCH_SERVER_CMD"
    else
        # From the temp dir, so that no .env of the caller's directory is read.
        cmd="cd '$TMP' && exec '$(server_bin)' serve --host 127.0.0.1 --port 0"
    fi
    # new_group: the server leads its own process group, so cleanup can stop all of it by that id.
    (new_group env DATA_DIR="$TMP/data" UPLOAD_DIR="$TMP/uploads" LOG_LEVEL=warn "$@" \
        bash -c "$cmd") >"$logf" 2>&1 </dev/null &
    SERVER_PID=$!
    SERVER_PORT="$(wait_listening "$logf" "$SERVER_PID")"
    local code
    code="$(curl -sS -o /dev/null -w '%{http_code}' --max-time 5 "http://127.0.0.1:$SERVER_PORT/health" || true)"
    [ "$code" = 200 ] || { tail -n 20 "$logf" >&2; die "GET /health on our server answered '$code', not 200"; }
    log "server pid $SERVER_PID on port $SERVER_PORT"
}

server_alive() {
    kill -0 "$SERVER_PID" 2>/dev/null || { tail -n 20 "$TMP/server.log" >&2; die "our server died during the run"; }
}

# start_nginx BODY: nginx returning the JSON BODY for every request (see start_nginx_with).
start_nginx() {
    start_nginx_with "" "        location / {
            default_type application/json;
            return 200 '$1';
        }"
}

# start_nginx_with MAIN LOCATIONS: starts nginx in the foreground with its own config, MAIN
# (directives of the main context, may be empty) and LOCATIONS (the server block's content
# besides listen); sets NGINX_PID, NGINX_PORT. The config is $TMP/nginx/nginx.conf.
start_nginx_with() {
    make_tmp
    local main=$1 locations=$2 dir="$TMP/nginx"
    mkdir -p "$dir/logs" "$dir/tmp"
    NGINX_PORT="$(free_port)"
    cat >"$dir/nginx.conf" <<EOF
# Written by scripts/bench.sh; lives only for one run.
worker_processes $BENCH_NGINX_WORKERS;
daemon off;
$main
pid $dir/nginx.pid;
error_log $dir/logs/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 1000000;
    keepalive_timeout 75s;
    client_body_temp_path $dir/tmp/body;
    proxy_temp_path $dir/tmp/proxy;
    fastcgi_temp_path $dir/tmp/fastcgi;
    uwsgi_temp_path $dir/tmp/uwsgi;
    scgi_temp_path $dir/tmp/scgi;
    server {
        listen 127.0.0.1:$NGINX_PORT;
$locations
    }
}
EOF
    local attempt
    for attempt in 1 2 3 4 5; do
        [ "$attempt" = 1 ] || { NGINX_PORT="$(free_port)"; sed -i "s/listen 127\.0\.0\.1:[0-9]*;/listen 127.0.0.1:$NGINX_PORT;/" "$dir/nginx.conf"; }
        (new_group "$(nginx_bin)" -p "$dir" -c "$dir/nginx.conf" -e "$dir/logs/error.log") \
            >"$dir/logs/stdout.log" 2>&1 </dev/null &
        NGINX_PID=$!
        for _ in $(seq 1 100); do
            port_open "$NGINX_PORT" && break
            kill -0 "$NGINX_PID" 2>/dev/null || break
            sleep 0.1
        done
        port_open "$NGINX_PORT" && break
        stop_group "$NGINX_PID"
        NGINX_PID=""
        log "nginx did not start on port $NGINX_PORT (attempt $attempt):"
        tail -n 5 "$dir/logs/stdout.log" "$dir/logs/error.log" >&2 || true
    done
    [ -n "$NGINX_PID" ] || die "nginx would not start"
    log "nginx pid $NGINX_PID on port $NGINX_PORT (worker_processes $BENCH_NGINX_WORKERS)"
}


# ---------------------------------------------------------------------------------------------
# wrk and pgbench

# wrk_std: the standard load of every section's main measurement.
WRK_STD=(-t"$WRK_THREADS" -c"$WRK_CONNS" -d"${BENCH_SECONDS}s" --latency)
WRK_CMD_DESC="wrk -t$WRK_THREADS -c$WRK_CONNS -d${BENCH_SECONDS}s --latency"

# parse_wrk OUTFILE: prints "<req/s> <p99 ms> <non-2xx> <socket errors>" from wrk's report.
parse_wrk() {
    awk '
        function ms(v,   n, u) {
            n = v; sub(/[a-z]+$/, "", n); u = v; sub(/^[0-9.]+/, "", u)
            if (u == "us") return n / 1000
            if (u == "ms") return n + 0
            if (u == "s")  return n * 1000
            if (u == "m")  return n * 60000
            return -1
        }
        /^Requests\/sec:/ { rps = $2 }
        $1 == "99%" && p99 == "" { p99 = ms($2) }
        /Non-2xx or 3xx responses:/ { non2xx = $NF }
        /Socket errors:/ { gsub(/,/, ""); serr = $4 + $6 + $8 + $10 }
        END {
            if (rps == "" || p99 == "") exit 1
            printf "%.2f %.3f %d %d\n", rps, p99, non2xx + 0, serr + 0
        }' "$1" || { cat "$1" >&2; die "could not parse the wrk output in $1"; }
}

# run_wrk OUTFILE WRK_ARGS...: runs wrk, prints what parse_wrk prints.
run_wrk() {
    local out=$1
    shift
    wrk "$@" >"$out" 2>&1 || { cat "$out" >&2; die "wrk failed (output above)"; }
    parse_wrk "$out"
}

# Lines printed by scripts/bench/statuses.lua (wrk runs with one of our -s scripts):
# wrk_status OUTFILE CODE: how many responses had that status (0 if none).
wrk_status() { awk -v c="$2" '$1 == "status" && $2 == c { n += $3 } END { print n + 0 }' "$1"; }
# wrk_statuses OUTFILE: "200=1234 503=56", or "none".
wrk_statuses() {
    awk '$1 == "status" { s = s (s == "" ? "" : " ") $2 "=" $3 } END { print (s == "" ? "none" : s) }' "$1"
}
# wrk_responses OUTFILE: all responses counted by status.
wrk_responses() { awk '$1 == "status" { n += $3 } END { print n + 0 }' "$1"; }
# wrk_seconds OUTFILE: the run's duration as wrk measured it.
wrk_seconds() {
    awk '$1 == "duration_us" { d = $2 / 1e6 } END { if (d <= 0) exit 1; printf "%.3f\n", d }' "$1" \
        || die "no duration_us line in $1 (was it run with a scripts/bench/*.lua script?)"
}

# is_better NEW OLD: true when OLD is empty or NEW's first field is larger (best-of selection).
is_better() {
    [ -z "$2" ] && return 0
    awk -v a="$1" -v b="$2" 'BEGIN { split(a, x, " "); split(b, y, " "); exit !(x[1] + 0 > y[1] + 0) }'
}

# ratio A B: A/B with two decimals (0 when B is 0).
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", (b > 0 ? a / b : 0) }'; }
# at_least X GOAL / below X GOAL: 1 or 0.
at_least() { awk -v x="$1" -v g="$2" 'BEGIN { print ((x + 0 >= g + 0) ? 1 : 0) }'; }
below() { awk -v x="$1" -v g="$2" 'BEGIN { print ((x + 0 < g + 0) ? 1 : 0) }'; }

# run_pgbench OUTFILE PGBENCH_ARGS...: prints "<tps> <latency average ms> <failed transactions>".
run_pgbench() {
    local out=$1
    shift
    if ! "$PGBENCH" "$@" >"$out" 2>&1; then
        cat "$out" >&2
        if grep -q 'too many clients' "$out"; then
            die "pgbench failed: PostgreSQL's max_connections is too small for pgbench's $WRK_CONNS clients besides our pool (DB_POOL_SIZE) and other sessions"
        fi
        die "pgbench failed (output above)"
    fi
    awk '
        /^tps = / { tps = $3 }
        /^latency average = / { lat = $4 }
        /^number of failed transactions: / { failed = $5 }
        END {
            if (tps == "") exit 1
            printf "%.2f %.3f %d\n", tps, lat, failed + 0
        }' "$out" || { cat "$out" >&2; die "could not parse the pgbench output in $out"; }
}

# ---------------------------------------------------------------------------------------------
# PostgreSQL (users): psql and pgbench reach the same server as ours, through PG* variables.

PGBENCH=""

pg_env() {
    export PGHOST="${DB_HOST:-127.0.0.1}" PGPORT="${DB_PORT:-5432}" PGUSER="${DB_USER:-postgres}"
    if [ -n "${DB_PASSWORD:-}" ]; then export PGPASSWORD="$DB_PASSWORD"; fi
    unset PGDATABASE PGSERVICE
}

# pg [psql args...]: psql without ~/.psqlrc, stopping at the first error, unaligned, tuples only.
pg() { psql -X -q -A -t -v ON_ERROR_STOP=1 "$@"; }

# Creates a fresh database and sets BENCH_DB (dropped by cleanup).
create_bench_db() {
    local name
    name="adcluster_bench_$(date +%Y%m%d%H%M%S)_$$"
    pg_isready -q -t 10 2>/dev/null || pg -d postgres -c 'SELECT 1' >/dev/null \
        || die "PostgreSQL at $PGHOST:$PGPORT (user $PGUSER) does not answer"
    pg -d postgres -c "CREATE DATABASE \"$name\"" || die "cannot create database $name"
    BENCH_DB=$name
    db_env_init
    log "database $BENCH_DB on $PGHOST:$PGPORT"
}

drop_bench_db() {
    [ -n "$BENCH_DB" ] || return 0
    # WITH (FORCE): ends sessions still open (a killed server's, a stopped pgbench's).
    if pg -d postgres -c "DROP DATABASE IF EXISTS \"$BENCH_DB\" WITH (FORCE)" 2>/dev/null; then
        log "dropped database $BENCH_DB"
    else
        log "warning: could not drop database $BENCH_DB: drop it by hand"
    fi
    BENCH_DB=""
}

# The server's database settings for BENCH_DB, as VAR=VALUE words for env (set by db_env_init,
# which create_bench_db calls).
DB_ENV=()

db_env_init() {
    # DATABASE_URL would win over DB_NAME: the server must use our database.
    unset DATABASE_URL
    DB_ENV=(DB_HOST="$PGHOST" DB_PORT="$PGPORT" DB_USER="$PGUSER" DB_NAME="$BENCH_DB")
    if [ -n "${DB_PASSWORD:-}" ]; then DB_ENV+=(DB_PASSWORD="$DB_PASSWORD"); fi
}

# create_account EMAIL PASSWORD FULL_NAME: `adcluster user create` on BENCH_DB (which also
# migrates the new database).
create_account() {
    log "creating the account $1 with 'adcluster user create' (migrates the new database)"
    (cd "$TMP" && env "${DB_ENV[@]}" DATA_DIR="$TMP/data" LOG_LEVEL=warn \
        "$(server_bin)" user create --email "$1" --password "$2" --full-name "$3") \
        >"$TMP/user-create.log" 2>&1 || { cat "$TMP/user-create.log" >&2; die "adcluster user create failed"; }
}

# login_token BASE_URL EMAIL PASSWORD: POST /auth/login, prints the access token. Leaves the
# login body in $TMP/login.json for reuse.
login_token() {
    local base=$1 resp code token
    printf '{"email":"%s","password":"%s"}' "$2" "$3" >"$TMP/login.json"
    resp="$(curl -sS --max-time 30 -H 'Content-Type: application/json' --data-binary @"$TMP/login.json" \
        -w '\n%{http_code}' "$base/auth/login")" || die "POST /auth/login failed"
    code="${resp##*$'\n'}"
    [ "$code" = 200 ] || die "POST /auth/login answered $code: ${resp%$'\n'*}"
    token="$(printf '%s' "${resp%$'\n'*}" | grep -oE '"access_token" *: *"[^"]+"' | sed -E 's/.*"([^"]+)"$/\1/' || true)"
    [ -n "$token" ] || die "no access_token in the login response"
    echo "$token"
}

# ---------------------------------------------------------------------------------------------
# BENCHMARKS.md

machine_line() {
    local mem
    mem="$(free -g | awk '/^Mem:/ { print $2 }')"
    local os=""
    # shellcheck source=/dev/null
    [ -r /etc/os-release ] && os="$(. /etc/os-release && echo "${PRETTY_NAME:-}")"
    echo "$(nproc) cores (nproc), ${mem} GiB RAM (free -g), kernel $(uname -r), ${os}"
}

ensure_bench_md() {
    [ -f "$BENCH_MD" ] && return 0
    cat >"$BENCH_MD" <<EOF2
# Benchmarks

Written by \`scripts/bench.sh <section>\` (each run replaces only its own \`## <section>\`).

- Machine: $(machine_line)
- File started: $(date -u '+%Y-%m-%d %H:%M UTC')

EOF2
}

# md_replace_section FILE HEADING BODYFILE: replace the section that starts with the line HEADING
# (up to the next "## " line) by the contents of BODYFILE (which starts with HEADING), or append
# it at the end if there is no such section. Other sections are left as they are.
md_replace_section() {
    local file=$1 heading=$2 bodyf=$3 tmpf
    tmpf="$(mktemp)"
    awk -v h="$heading" -v bf="$bodyf" '
        function emit(   line) {
            while ((getline line < bf) > 0) { print line; last = line }
            close(bf); done = 1
        }
        $0 == h && !done { emit(); skip = 1; next }
        skip && /^## / { skip = 0 }
        skip { next }
        { print; last = $0 }
        END { if (!done) { if (last != "") print ""; emit() } }
    ' "$file" >"$tmpf"
    cat "$tmpf" >"$file"   # keeps the file's mode and owner
    rm -f "$tmpf"
}

# section_head NAME INTRO: the first lines every section has (heading, what, date, machine,
# command with the settings that shape the run). Extra "VAR=value" settings may follow.
section_head() {
    local name=$1 intro=$2
    shift 2
    local settings="BENCH_SECONDS=$BENCH_SECONDS, BENCH_ROUNDS=$BENCH_ROUNDS" s
    # files has no timed runs: each run moves one file, however long that takes.
    [ "$name" = files ] && settings="BENCH_ROUNDS=$BENCH_ROUNDS"
    for s in "$@"; do settings+=", $s"; done
    echo "## $name"
    echo
    echo "$intro"
    echo
    echo "- Date: $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "- Machine: $(machine_line)"
    echo "- Command: \`scripts/bench.sh $name\` ($settings)"
}

# write_section NAME BODYFILE: BODYFILE (starting with "## NAME") replaces that section of
# BENCH_MD, which is created when missing.
write_section() {
    ensure_bench_md
    md_replace_section "$BENCH_MD" "## $1" "$2"
    log "wrote section '## $1' of $BENCH_MD"
}

pass_fail() { if [ "$1" = 1 ]; then echo PASS; else echo FAIL; fi; }

# ---------------------------------------------------------------------------------------------
# subcommand: http

# What nginx returns for each path: the same JSON our server answers (GET / is fixed; /health's
# uptime differs in digits only).
ROOT_BODY='{"docs":"/docs","message":"Welcome to Adcluster API","version":"0.1.0"}'
HEALTH_BODY='{"database":"up","spool":0,"status":"ok","uptime_seconds":1.5,"version":"0.1.0"}'

# http_url WHO PATH: the URL of PATH on our server (ours) or on nginx (http).
http_url() {
    if [ "$1" = nginx ]; then echo "http://127.0.0.1:$NGINX_PORT$2"; else echo "http://127.0.0.1:$SERVER_PORT$2"; fi
}

cmd_http() {
    need_tools wrk:wrk nginx:nginx curl:curl ss:iproute2
    build_server
    start_server
    start_nginx_with "" "        default_type application/json;
        location = / { return 200 '$ROOT_BODY'; }
        location = /health { return 200 '$HEALTH_BODY'; }"

    local load_before
    load_before="$(cut -d' ' -f1-3 /proc/loadavg)"
    local path who url r res all="" key
    declare -A best=()
    # A 2 s warm-up of each target and path, not counted: the first run against a fresh server
    # would otherwise also pay for its threads' first touch of their stacks and buffers.
    for path in / /health; do
        for who in ours nginx; do
            wrk -t"$WRK_THREADS" -c"$WRK_CONNS" -d2s "$(http_url "$who" "$path")" >/dev/null 2>&1 \
                || die "the warm-up of $who GET $path failed"
        done
    done
    for r in $(seq 1 "$BENCH_ROUNDS"); do
        for path in / /health; do
            for who in ours nginx; do
                url="$(http_url "$who" "$path")"
                log "round $r: $who GET $path (${BENCH_SECONDS}s)"
                res="$(run_wrk "$TMP/wrk-$who-${path//\//_}-$r.txt" "${WRK_STD[@]}" "$url")"
                log "  req/s p99_ms non2xx socket_errors: $res"
                all+="| $r | $who | \`GET $path\` | $(echo "$res" | awk '{ printf "%s | %.2f | %s | %s", $1, $2, $3, $4 }') |"$'\n'
                key="$who $path"
                if is_better "$res" "${best[$key]:-}"; then best[$key]=$res; fi
            done
            server_alive
        done
    done
    local load_after
    load_after="$(cut -d' ' -f1-3 /proc/loadavg)"

    local rows="" goals="" note="" o_rps o_p99 o_non2xx o_serr n_rps n_p99 n_non2xx n_serr ratio_v ratio_ok p99_ok
    for path in / /health; do
        read -r o_rps o_p99 o_non2xx o_serr <<<"${best[ours $path]}"
        read -r n_rps n_p99 n_non2xx n_serr <<<"${best[nginx $path]}"
        ratio_v="$(ratio "$o_rps" "$n_rps")"
        rows+="| \`GET $path\` | $o_rps | $o_p99 | $n_rps | $n_p99 | $ratio_v |"$'\n'
        if [ "$path" = / ]; then
            ratio_ok="$(at_least "$ratio_v" "$GOAL_HTTP_RATIO")"
            p99_ok="$(below "$o_p99" "$n_p99")"
            goals+="| \`GET /\`: ours/nginx req/s >= $GOAL_HTTP_RATIO | $ratio_v | $(pass_fail "$ratio_ok") |"$'\n'
            goals+="| \`GET /\`: our p99 below nginx's | $o_p99 ms vs $n_p99 ms | $(pass_fail "$p99_ok") |"$'\n'
        fi
        if [ "$o_non2xx" != 0 ] || [ "$o_serr" != 0 ]; then
            note="${note:+$note }Warning: our best GET $path run had $o_non2xx non-2xx responses and $o_serr socket errors."
        fi
        if [ "$n_non2xx" != 0 ] || [ "$n_serr" != 0 ]; then
            note="${note:+$note }Warning: nginx's best GET $path run had $n_non2xx non-2xx responses and $n_serr socket errors."
        fi
    done

    local server_desc="target/release/adcluster serve --host 127.0.0.1 --port 0"
    [ -n "${BENCH_SERVER_CMD:-}" ] && server_desc="stand-in (BENCH_SERVER_CMD): ${BENCH_SERVER_CMD}"
    local sec="$TMP/section-http.md"
    {
        section_head http "\`GET /\` and \`GET /health\` on our server against nginx returning the same JSON (\`return 200\`), same run, same machine."
        echo "- Load: \`$WRK_CMD_DESC URL\`, targets alternating (ours, nginx; \`/\` then \`/health\`) for $BENCH_ROUNDS rounds after a 2 s warm-up of each (not counted); best req/s of each, p99 from that same run"
        echo "- Ours: \`$server_desc\` (defaults: WORKERS=$(server_setting WORKERS); LOG_LEVEL=warn, DATA_DIR and UPLOAD_DIR in a temp dir; \`/health\` reads the database state the monitor keeps, it does not query)"
        echo "- nginx: $("$(nginx_bin)" -v 2>&1 | sed 's/^nginx version: //'), \`worker_processes $BENCH_NGINX_WORKERS\` (one worker per core on this machine; our server also uses all cores), \`keepalive_requests 1000000\`, \`return 200\` of the JSON body"
        echo "- Machine load average (1/5/15 min, shared with other engineers' builds): $load_before before, $load_after after"
        echo
        echo "| | ours req/s | ours p99 (ms) | nginx req/s | nginx p99 (ms) | ratio ours/nginx |"
        echo "|---|---:|---:|---:|---:|---:|"
        printf '%s' "$rows"
        echo
        echo "| goal | measured | result |"
        echo "|---|---:|---|"
        printf '%s' "$goals"
        echo
        echo "All runs:"
        echo
        echo "| round | target | request | req/s | p99 (ms) | non-2xx | socket errors |"
        echo "|---:|---|---|---:|---:|---:|---:|"
        printf '%s' "$all"
        if [ -n "$note" ]; then echo; echo "$note"; fi
        echo
    } >"$sec"

    echo
    cat "$sec"
    write_section http "$sec"
}

# ---------------------------------------------------------------------------------------------
# subcommand: users

# wrk_avg_ms OUTFILE: the mean latency of wrk's "Thread Stats" table, in ms.
wrk_avg_ms() {
    awk '$1 == "Latency" && avg == "" {
            v = $2; n = v; sub(/[a-z]+$/, "", n); u = v; sub(/^[0-9.]+/, "", u)
            avg = (u == "us") ? n / 1000 : (u == "s") ? n * 1000 : n + 0
        }
        END { printf "%.3f\n", avg + 0 }' "$1"
}

# wrk_us_ms OUTFILE KEY: a "KEY <microseconds>" line of users_get.lua's output, in ms.
wrk_us_ms() { awk -v k="$2" '$1 == k { printf "%.2f\n", $2 / 1000; f = 1 } END { if (!f) print "?" }' "$1"; }

FASTAPI_DIR="$ROOT/scripts/bench/fastapi-ref"
FASTAPI_PID=""
FASTAPI_PORT=""

fastapi_venv() { echo "$(target_dir)/bench-fastapi-venv"; }

# The reference's pinned requirements in target/bench-fastapi-venv (pip from PyPI), once.
ensure_fastapi() {
    local venv stamp
    venv="$(fastapi_venv)"
    stamp="$venv/.requirements.txt"
    if [ -x "$venv/bin/uvicorn" ] && cmp -s "$FASTAPI_DIR/requirements.txt" "$stamp"; then return 0; fi
    command -v python3 >/dev/null 2>&1 || die "the FastAPI reference needs python3 (or run with BENCH_FASTAPI=0)"
    log "pip install -r scripts/bench/fastapi-ref/requirements.txt into $venv"
    python3 -m venv "$venv" >&2 || die "python3 -m venv failed (Debian: apt-get install python3-venv)"
    "$venv/bin/pip" install -q -r "$FASTAPI_DIR/requirements.txt" >&2 || die "pip install of the FastAPI reference failed"
    cp "$FASTAPI_DIR/requirements.txt" "$stamp"
}

fastapi_versions() {
    "$(fastapi_venv)/bin/python" -c 'import fastapi, uvicorn, asyncpg; print(f"fastapi {fastapi.__version__}, uvicorn {uvicorn.__version__}, asyncpg {asyncpg.__version__}")' 2>/dev/null || echo "versions unknown"
}

# start_fastapi POOL_PER_WORKER: the reference on BENCH_DB with our server's SECRET_KEY
# ($BENCH_SECRET); sets FASTAPI_PID (its process group) and FASTAPI_PORT.
start_fastapi() {
    ensure_fastapi
    FASTAPI_PORT="$(free_port)"
    (new_group env SECRET_KEY="$BENCH_SECRET" "${DB_ENV[@]}" DB_POOL_SIZE="$1" \
        bash -c "cd '$FASTAPI_DIR' && exec '$(fastapi_venv)/bin/uvicorn' app:app --workers 2 --host 127.0.0.1 --port $FASTAPI_PORT --no-access-log --log-level warning") \
        >"$TMP/fastapi.log" 2>&1 </dev/null &
    FASTAPI_PID=$!
    BG_PIDS+=("$FASTAPI_PID")
    local _
    for _ in $(seq 1 100); do
        curl -sf -o /dev/null --max-time 1 "http://127.0.0.1:$FASTAPI_PORT/health" && { log "FastAPI reference pid $FASTAPI_PID on port $FASTAPI_PORT"; return 0; }
        kill -0 "$FASTAPI_PID" 2>/dev/null || break
        sleep 0.2
    done
    tail -n 20 "$TMP/fastapi.log" >&2
    die "the FastAPI reference did not start"
}

stop_fastapi() {
    stop_group "$FASTAPI_PID"
    bg_forget "$FASTAPI_PID"
    FASTAPI_PID=""
}

cmd_users() {
    [ -z "${BENCH_SERVER_CMD:-}" ] \
        || die "users runs the real server (and 'adcluster user create'): unset BENCH_SERVER_CMD"
    need_tools wrk:wrk curl:curl ss:iproute2 psql:postgresql-client
    PGBENCH="$(pgbench_bin)"
    pg_env
    build_server
    make_tmp
    create_bench_db

    # --- setup: the database, the users, the server, a token -----------------------------------
    local email="bench-login@example.com" password
    password="bench-$(random_hex 12)"
    create_account "$email" "$password" "Bench Login"
    local hash
    hash="$(pg -d "$BENCH_DB" -c "SELECT hashed_password FROM users WHERE lower(email) = lower('$email')")"
    [[ "$hash" == "\$argon2id\$"* ]] || die "no Argon2id hash stored for $email"
    log "inserting $BENCH_USERS users by SQL, each with a copy of that hash"
    pg -d "$BENCH_DB" -v hash="$hash" -v n="$BENCH_USERS" <<'SQL' || die "the bulk insert failed"
INSERT INTO users (email, hashed_password, full_name)
SELECT 'bench-user-' || g || '@example.com', :'hash', 'Bench User ' || g
FROM generate_series(1, :n) AS g;
ANALYZE users;
SQL
    local min_id max_id n_users
    read -r min_id max_id n_users <<<"$(pg -d "$BENCH_DB" -F ' ' -c 'SELECT min(id), max(id), count(*) FROM users')"
    if [ "$((max_id - min_id + 1))" != "$n_users" ]; then
        log "warning: ids $min_id..$max_id have gaps ($n_users users): some reads will be 404 (counted below)"
    fi

    # A token that outlives any run length (the default lifetime is 30 minutes).
    BENCH_SECRET="$(random_hex 32)"
    start_server "${DB_ENV[@]}" SECRET_KEY="$BENCH_SECRET" ACCESS_TOKEN_EXPIRE_MINUTES=1440
    local base="http://127.0.0.1:$SERVER_PORT"
    local code token
    token="$(login_token "$base" "$email" "$password")"
    code="$(curl -sS -o /dev/null -w '%{http_code}' --max-time 5 -H "Authorization: Bearer $token" "$base/users/$max_id" || true)"
    [ "$code" = 200 ] || die "GET /users/$max_id with the token answered '$code', not 200"
    # What one login costs with nothing else running (median of 5): the Argon2 verification
    # dominates, so about cores / this is the ceiling of logins/s.
    local login_ms samples
    samples="$(for _ in 1 2 3 4 5; do
        curl -sS -o /dev/null -w '%{http_code} %{time_total}\n' --max-time 30 -H 'Content-Type: application/json' \
            --data-binary @"$TMP/login.json" "$base/auth/login" || true
    done)"
    if awk '$1 != 200 { bad = 1 } END { exit !(bad || NR != 5) }' <<<"$samples"; then
        die "a login with the right password failed: $samples"
    fi
    login_ms="$(awk '{ printf "%.1f\n", $2 * 1000 }' <<<"$samples" | sort -n | sed -n 3p)"
    log "one login alone: $login_ms ms (median of 5)"

    local free_slots pool_size workers
    free_slots="$(pg -d postgres -c "SELECT current_setting('max_connections')::int - count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'")"
    pool_size="$(server_setting DB_POOL_SIZE)"
    workers="$(server_setting WORKERS)"
    if [ "$free_slots" -lt $((3 * pool_size)) ]; then
        log "warning: PostgreSQL has $free_slots free connection slots; pgbench and the FastAPI reference need $pool_size each besides our pool's $pool_size"
    fi

    # --- read: GET /users/{id} against pgbench's same SELECT and FastAPI, alternating ----------
    local caller_id
    caller_id="$(pg -d "$BENCH_DB" -c "SELECT id FROM users WHERE lower(email) = lower('$email')")"
    local fa_port=""
    if [ "$BENCH_FASTAPI" = 1 ]; then
        start_fastapi "$((pool_size / 2 > 0 ? pool_size / 2 : 1))"
        fa_port=$FASTAPI_PORT
        code="$(curl -sS -o /dev/null -w '%{http_code}' --max-time 5 -H "Authorization: Bearer $token" "http://127.0.0.1:$fa_port/users/$max_id" || true)"
        [ "$code" = 200 ] || die "GET /users/$max_id on the FastAPI reference answered '$code', not 200"
    fi
    local ours_args=("${WRK_STD[@]}" -H "Authorization: Bearer $token" -s "$LUA_DIR/users_get.lua" "$base" -- "$min_id" "$max_id")
    local fa_args=("${WRK_STD[@]}" -H "Authorization: Bearer $token" -s "$LUA_DIR/users_get.lua" "http://127.0.0.1:$fa_port" -- "$min_id" "$max_id")
    local pgb_args=(-n -M prepared -c "$pool_size" -j "$WRK_THREADS" -T "$BENCH_SECONDS" -f "$LUA_DIR/users_select_ours.pgbench"
        -D "caller=$caller_id" -D "min_id=$min_id" -D "max_id=$max_id")
    local load_before
    load_before="$(cut -d' ' -f1-3 /proc/loadavg)"
    local best_ours="" best_pgb="" best_fa="" r res out runs="" who
    for r in $(seq 1 "$BENCH_ROUNDS"); do
        for who in ours fastapi; do
            [ "$who" = fastapi ] && [ -z "$fa_port" ] && continue
            out="$TMP/read-$who-$r.txt"
            log "round $r: $who, GET /users/{id} (${BENCH_SECONDS}s)"
            if [ "$who" = ours ]; then res="$(run_wrk "$out" "${ours_args[@]}")"; else res="$(run_wrk "$out" "${fa_args[@]}")"; fi
            # req/s p99 non2xx socket_errors avg_ms count_200 responses statuses max_ms
            res+=" $(wrk_avg_ms "$out") $(wrk_status "$out" 200) $(wrk_responses "$out") $(wrk_statuses "$out" | tr ' ' ',') $(wrk_us_ms "$out" latency_max_us)"
            log "  req/s p99_ms non2xx socket_errors avg_ms n200 responses statuses max_ms: $res"
            runs+="$(echo "$res" | awk -v r="$r" -v w="$who" '{ printf "| %s | %s | %s | %.2f | %.2f | %.2f | %s non-200, %s socket errors |", r, (w == "ours" ? "adcluster" : "FastAPI"), $1, $2, $9, $5, $7 - $6, $4 }')"$'\n'
            if [ "$who" = ours ]; then
                if is_better "$res" "$best_ours"; then best_ours=$res; fi
                server_alive
            else
                if is_better "$res" "$best_fa"; then best_fa=$res; fi
            fi
        done
        out="$TMP/read-pgbench-$r.txt"
        log "round $r: pgbench -M prepared -c $pool_size (${BENCH_SECONDS}s)"
        res="$(run_pgbench "$out" "${pgb_args[@]}" "$BENCH_DB")"
        log "  tps latency_avg_ms failed: $res"
        runs+="$(echo "$res" | awk -v r="$r" -v c="$pool_size" '{ printf "| %s | pgbench -M prepared -c %s | %s | | | %.2f | %s failed |", r, c, $1, $2, $3 }')"$'\n'
        if is_better "$res" "$best_pgb"; then best_pgb=$res; fi
    done
    [ -n "$fa_port" ] && stop_fastapi

    # --- the long run: GET /users/{id} for BENCH_LONG_SECONDS, the worst request ----------------
    local long_res="" long_out="$TMP/read-ours-long.txt"
    if [ "$BENCH_LONG_SECONDS" -gt 0 ]; then
        log "long run: ours, GET /users/{id} (${BENCH_LONG_SECONDS}s)"
        long_res="$(run_wrk "$long_out" -t"$WRK_THREADS" -c"$WRK_CONNS" -d"${BENCH_LONG_SECONDS}s" --latency \
            -H "Authorization: Bearer $token" -s "$LUA_DIR/users_get.lua" "$base" -- "$min_id" "$max_id")"
        # req/s p99 non2xx socket_errors max_ms p999_ms over_100ms_pct
        long_res+=" $(wrk_us_ms "$long_out" latency_max_us) $(wrk_us_ms "$long_out" latency_p999_us) $(awk '$1 == "over_100ms_pct" { print $2 }' "$long_out")"
        log "  req/s p99_ms non2xx socket_errors max_ms p999_ms over_100ms_pct: $long_res"
        server_alive
    fi
    local load_after
    load_after="$(cut -d' ' -f1-3 /proc/loadavg)"

    # --- login: POST /auth/login at full load, a paced /health probe alongside ----------------
    local probe_args=(-t1 -c"$BENCH_HEALTH_CONNS" -d"${BENCH_SECONDS}s" --latency -s "$LUA_DIR/health_paced.lua"
        "$base/health" -- "$BENCH_HEALTH_DELAY_MS")
    local login_args=("${WRK_STD[@]}" -s "$LUA_DIR/login.lua" "$base" -- "$email" "$password")
    log "baseline: the /health probe alone (${BENCH_SECONDS}s)"
    local idle idle_other
    idle="$(run_wrk "$TMP/health-idle.txt" "${probe_args[@]}")"
    idle_other=$(($(wrk_responses "$TMP/health-idle.txt") - $(wrk_status "$TMP/health-idle.txt" 200)))
    log "  req/s p99_ms non2xx socket_errors: $idle"
    local best_login="" worst_probe="" logins="" hpid lres hres n200 n503 nall secs lps bad_probe=0 bad_login=0
    local h_rps h_p99 h_serr h_other
    for r in $(seq 1 "$BENCH_ROUNDS"); do
        log "round $r: POST /auth/login at $WRK_CONNS connections, /health probe alongside (${BENCH_SECONDS}s)"
        (new_group wrk "${probe_args[@]}") >"$TMP/login-probe-$r.txt" 2>&1 </dev/null &
        hpid=$!
        BG_PIDS+=("$hpid")
        lres="$(run_wrk "$TMP/login-$r.txt" "${login_args[@]}")"
        wait "$hpid" || { cat "$TMP/login-probe-$r.txt" >&2; die "the /health probe failed"; }
        BG_PIDS=()
        server_alive
        hres="$(parse_wrk "$TMP/login-probe-$r.txt")"
        read -r h_rps h_p99 _ h_serr <<<"$hres"
        h_other=$(($(wrk_responses "$TMP/login-probe-$r.txt") - $(wrk_status "$TMP/login-probe-$r.txt" 200)))
        n200="$(wrk_status "$TMP/login-$r.txt" 200)"
        n503="$(wrk_status "$TMP/login-$r.txt" 503)"
        nall="$(wrk_responses "$TMP/login-$r.txt")"
        secs="$(wrk_seconds "$TMP/login-$r.txt")"
        lps="$(awk -v n="$n200" -v s="$secs" 'BEGIN { printf "%.2f", n / s }')"
        # logins/s n200 n503 other socket_errors statuses | probe p99 req/s non-200 socket_errors
        res="$lps $n200 $n503 $((nall - n200 - n503)) $(echo "$lres" | awk '{ print $4 }') $(wrk_statuses "$TMP/login-$r.txt" | tr ' ' ',')"
        log "  logins/s n200 n503 other socket_errors statuses: $res"
        log "  /health probe req/s p99_ms non2xx socket_errors: $hres"
        logins+="| $r | $(echo "$res" | awk '{ printf "%s | %s | %s | %s | %s", $1, $2, $3, $4, $5 }') | $h_p99 | $h_rps | $h_other non-200, $h_serr socket errors |"$'\n'
        if is_better "$res" "$best_login"; then best_login=$res; fi
        # The probe's goal must hold in every round: keep the worst p99.
        if [ -z "$worst_probe" ] || [ "$(below "$h_p99" "${worst_probe%% *}")" = 0 ]; then worst_probe="$h_p99 $r"; fi
        if [ "$h_other" != 0 ] || [ "$h_serr" != 0 ]; then bad_probe=1; fi
        if [ "$n200" = 0 ] || [ "$((nall - n200 - n503))" != 0 ]; then bad_login=1; fi
    done

    # --- results ------------------------------------------------------------------------------
    local o_rps o_p99 o_non2xx o_serr o_avg o_n200 o_all o_statuses o_max
    read -r o_rps o_p99 o_non2xx o_serr o_avg o_n200 o_all o_statuses o_max <<<"$best_ours"
    local f_rps="" f_p99="" f_avg="" f_max="" f_n200="" f_all="" f_statuses=""
    [ -n "$best_fa" ] && read -r f_rps f_p99 _ _ f_avg f_n200 f_all f_statuses f_max <<<"$best_fa"
    local p_tps p_lat p_failed
    read -r p_tps p_lat p_failed <<<"$best_pgb"
    local ratio_p ratio_ok p99_ratio="" p99_ratio_ok=0 p99_abs_ok
    ratio_p="$(ratio "$o_rps" "$p_tps")"
    ratio_ok="$(at_least "$ratio_p" "$GOAL_USERS_PGBENCH_RATIO")"
    p99_abs_ok="$(at_least "$GOAL_USERS_P99_MS" "$o_p99")"
    if [ -n "$f_p99" ]; then
        p99_ratio="$(awk -v a="$o_p99" -v b="$f_p99" 'BEGIN { printf "%.3f", (b > 0 ? a / b : 0) }')"
        p99_ratio_ok="$(at_least "$GOAL_USERS_P99_VS_FASTAPI" "$p99_ratio")"
    fi
    local lg_rps="" lg_p99="" lg_non2xx="" lg_serr="" lg_max="" lg_p999="" lg_over="" long_ok=0
    if [ -n "$long_res" ]; then
        read -r lg_rps lg_p99 lg_non2xx lg_serr lg_max lg_p999 lg_over <<<"$long_res"
        long_ok="$(at_least "$GOAL_USERS_MAX_MS" "$lg_max")"
    fi
    local l_lps l_n200 l_n503 l_other l_serr l_statuses
    read -r l_lps l_n200 l_n503 l_other l_serr l_statuses <<<"$best_login"
    local w_p99 w_round p99_ok
    read -r w_p99 w_round <<<"$worst_probe"
    p99_ok="$(below "$w_p99" "$GOAL_HEALTH_UNDER_LOGIN_P99_MS")"
    [ "$bad_probe" = 0 ] || p99_ok=0
    local note=""
    if [ "$o_n200" != "$o_all" ] || [ "$o_serr" != 0 ]; then
        note="Warning: our best read run had $((o_all - o_n200)) non-200 responses ($o_statuses) and $o_serr socket errors."
    fi
    if [ "$p_failed" != 0 ]; then
        note="${note:+$note }Warning: pgbench's best run had $p_failed failed transactions."
    fi
    if [ -n "$f_n200" ] && [ "$f_n200" != "$f_all" ]; then
        note="${note:+$note }Warning: FastAPI's best run had $((f_all - f_n200)) non-200 responses ($f_statuses)."
    fi
    if [ -n "$long_res" ] && { [ "$lg_non2xx" != 0 ] || [ "$lg_serr" != 0 ]; }; then
        note="${note:+$note }Warning: the long run had $lg_non2xx non-2xx responses and $lg_serr socket errors."
    fi
    if [ "$bad_probe" != 0 ]; then
        note="${note:+$note }Warning: the /health probe saw non-200 answers or socket errors (timeouts) under the login load; its goal counts as FAIL."
    fi
    if [ "$bad_login" != 0 ]; then
        note="${note:+$note }Warning: a login round had no 200 at all, or answers other than 200 and 503."
    fi
    local pg_version cores
    pg_version="$(pg -d postgres -c 'SHOW server_version')"
    cores="$(nproc)"

    local sec="$TMP/section-users.md"
    {
        section_head users "\`GET /users/{id}\` (token-checked primary-key read) against pgbench running the same \`SELECT\` and against the seed's stack (FastAPI) serving the same read, same run, same machine; a ${BENCH_LONG_SECONDS} s run for the worst request; then \`POST /auth/login\` at full load, with \`GET /health\` latency measured under it." \
            "BENCH_USERS=$BENCH_USERS, BENCH_LONG_SECONDS=$BENCH_LONG_SECONDS, BENCH_FASTAPI=$BENCH_FASTAPI"
        echo "- Ours: \`target/release/adcluster serve --host 127.0.0.1 --port 0\`, LOG_LEVEL=warn, SECRET_KEY random (64 hex chars), ACCESS_TOKEN_EXPIRE_MINUTES=1440, WORKERS=$workers, DB_POOL_SIZE=$pool_size; DATA_DIR and UPLOAD_DIR in a temp dir"
        echo "- PostgreSQL $pg_version at $PGHOST:$PGPORT; a fresh database made for the run and dropped after it; $n_users users (ids $min_id..$max_id): one made by \`adcluster user create\` (the login account), $BENCH_USERS inserted by SQL with a copy of its Argon2id hash"
        echo "- Load average of the machine (shared with other engineers' builds and tests; /proc/loadavg, 1/5/15 min): $load_before before the read runs, $load_after after them. Absolute latencies move with it; the ratios are from runs side by side"
        echo
        echo "### Read: \`GET /users/{id}\` against pgbench and FastAPI"
        echo
        echo "- Ours: \`$WRK_CMD_DESC -H 'Authorization: Bearer <token>' -s scripts/bench/users_get.lua URL -- $min_id $max_id\` (a uniformly random id per request; the server reads the caller and the user in one prepared statement, which it shares with the other requests reading users at that moment: \`src/db/batch.rs\`)"
        echo "- pgbench: \`pgbench -n -M prepared -c $pool_size -j $WRK_THREADS -T $BENCH_SECONDS -f scripts/bench/users_select_ours.pgbench -D caller=$caller_id -D min_id=$min_id -D max_id=$max_id\`: our very statement (\`SELECT id, email, hashed_password, full_name, is_active, is_superuser, created_at FROM users WHERE id = ANY(ARRAY[:caller, :id]::bigint[])\`), prepared, with as many clients as our pool has connections (DB_POOL_SIZE=$pool_size): what PostgreSQL alone does with those connections"
        if [ -n "$f_rps" ]; then
            echo "- FastAPI: \`scripts/bench/fastapi-ref/app.py\` under \`uvicorn app:app --workers 2\` (uvloop, httptools; $(fastapi_versions)), asyncpg pool of $((pool_size / 2 > 0 ? pool_size / 2 : 1)) per worker, the same token (HS256, same key) and the same one-query read; loaded with the same wrk command"
        else
            echo "- FastAPI: not measured (BENCH_FASTAPI=0)"
        fi
        echo "- Rounds alternate (ours, FastAPI, pgbench) $BENCH_ROUNDS times; best req/s of each, p99 and max from that same run. pgbench gives an average latency, not percentiles"
        echo
        echo "| | req/s or tps | p99 (ms) | max (ms) | avg latency (ms) |"
        echo "|---|---:|---:|---:|---:|"
        echo "| adcluster \`GET /users/{id}\` | $o_rps | $o_p99 | $o_max | $o_avg |"
        [ -n "$f_rps" ] && echo "| FastAPI \`GET /users/{id}\` | $f_rps | $f_p99 | $f_max | $f_avg |"
        echo "| pgbench \`-M prepared -c $pool_size\`, same statement | $p_tps | | | $p_lat |"
        echo "| ratio ours / pgbench (throughput) | $ratio_p | | | |"
        [ -n "$f_rps" ] && echo "| ratio ours / FastAPI | $(ratio "$o_rps" "$f_rps") | $p99_ratio | | |"
        if [ -n "$long_res" ]; then
            echo
            echo "Long run, ours alone: \`wrk -t$WRK_THREADS -c$WRK_CONNS -d${BENCH_LONG_SECONDS}s --latency ... users_get.lua\`: $lg_rps req/s, p99 $lg_p99 ms, p99.9 $lg_p999 ms, **max $lg_max ms**, $lg_over % of requests over 100 ms ($lg_non2xx non-2xx, $lg_serr socket errors)."
        fi
        echo
        echo "### Login: \`POST /auth/login\` at full load, \`/health\` latency under it"
        echo
        echo "- Logins: \`$WRK_CMD_DESC -s scripts/bench/login.lua URL -- <email> <password>\`, the right password every time (the login rate limit counts only failures); logins/s counts only \`200\` answers (the script counts statuses), over wrk's measured duration"
        echo "- \`503 Server busy\` is the hashing gate refusing work beyond $cores hashing + $((workers / 4)) queued (cores, WORKERS/4): expected at this load, counted apart"
        echo "- \`/health\` probe, in the same run: \`wrk -t1 -c$BENCH_HEALTH_CONNS -d${BENCH_SECONDS}s --latency -s scripts/bench/health_paced.lua URL/health -- $BENCH_HEALTH_DELAY_MS\`: each connection pauses $BENCH_HEALTH_DELAY_MS ms before each request (at most about $((BENCH_HEALTH_CONNS * 1000 / BENCH_HEALTH_DELAY_MS)) req/s; closed loop, as wrk has no fixed-rate mode)"
        echo "- $BENCH_ROUNDS rounds; logins/s from the best round, \`/health\` p99 from the worst round (the goal must hold in every round)"
        echo
        echo "| | measured |"
        echo "|---|---:|"
        echo "| logins/s (200 only), best round | $l_lps |"
        echo "| one login alone, median of 5 sequential (curl) | $login_ms ms (so at most about $(awk -v c="$cores" -v t="$login_ms" 'BEGIN { printf "%.0f", (t > 0 ? c * 1000 / t : 0) }') logins/s on $cores cores) |"
        echo "| answers in that round: 200 / 503 busy / other | $l_n200 / $l_n503 / $l_other |"
        echo "| statuses in that round; login socket errors | $l_statuses; $l_serr |"
        echo "| \`/health\` p99 under login load, worst round (round $w_round) | $w_p99 ms |"
        echo "| \`/health\` p99 with no other load (baseline) | $(echo "$idle" | awk '{ printf "%.3f", $2 }') ms ($idle_other non-200, $(echo "$idle" | awk '{ print $4 }') socket errors) |"
        echo
        echo "### Goals"
        echo
        echo "| goal | measured | result |"
        echo "|---|---:|---|"
        echo "| \`/health\` p99 under login load < $GOAL_HEALTH_UNDER_LOGIN_P99_MS ms, every round, all 200 | $w_p99 ms | $(pass_fail "$p99_ok") |"
        echo "| read: our p99 at $WRK_CONNS connections <= $GOAL_USERS_P99_MS ms | $o_p99 ms | $(pass_fail "$p99_abs_ok") |"
        if [ -n "$p99_ratio" ]; then
            echo "| read: our p99 <= $GOAL_USERS_P99_VS_FASTAPI x FastAPI's | $p99_ratio | $(pass_fail "$p99_ratio_ok") |"
        else
            echo "| read: our p99 <= $GOAL_USERS_P99_VS_FASTAPI x FastAPI's | not measured | – |"
        fi
        echo "| read: ours >= $GOAL_USERS_PGBENCH_RATIO x pgbench -M prepared -c $pool_size | $ratio_p | $(pass_fail "$ratio_ok") |"
        if [ -n "$long_res" ]; then
            echo "| read: no request over $GOAL_USERS_MAX_MS ms in ${BENCH_LONG_SECONDS} s | max $lg_max ms | $(pass_fail "$long_ok") |"
        fi
        echo
        echo "All read runs:"
        echo
        echo "| round | target | req/s or tps | p99 (ms) | max (ms) | avg (ms) | errors |"
        echo "|---:|---|---:|---:|---:|---:|---|"
        printf '%s' "$runs"
        echo
        echo "All login runs:"
        echo
        echo "| round | logins/s | 200 | 503 | other | login socket errors | \`/health\` p99 (ms) | \`/health\` req/s | \`/health\` errors |"
        echo "|---:|---:|---:|---:|---:|---:|---:|---:|---|"
        printf '%s' "$logins"
        if [ -n "$note" ]; then echo; echo "$note"; fi
        echo
    } >"$sec"

    echo
    cat "$sec"
    write_section users "$sec"
}

# ---------------------------------------------------------------------------------------------
# subcommand: sizing

# proc_cpu_ticks PID: user + system CPU ticks of a process (all its threads).
proc_cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
# proc_ctxsw PID: voluntary context switches of all its threads (a thread's sleep on a lock, a
# socket or a queue: what each request pays in wake-ups).
proc_ctxsw() { cat "/proc/$1"/task/*/status 2>/dev/null | awk '/^voluntary_ctxt_switches/ { n += $2 } END { print n + 0 }'; }

# pg_backends_ticks DB: CPU ticks of every PostgreSQL backend connected to database DB.
pg_backends_ticks() {
    local pid t=0
    for pid in $(pg -d postgres -c "SELECT pid FROM pg_stat_activity WHERE datname = '$1'"); do
        [ -r "/proc/$pid/stat" ] && t=$((t + $(proc_cpu_ticks "$pid")))
    done
    echo "$t"
}

# The WORKERS x DB_POOL_SIZE grid of `sizing` (pairs "workers:pool").
BENCH_SIZING_GRID="${BENCH_SIZING_GRID:-64:8 64:16 64:32 64:64 32:16 16:16}"

cmd_sizing() {
    [ -z "${BENCH_SERVER_CMD:-}" ] || die "sizing runs the real server: unset BENCH_SERVER_CMD"
    need_tools wrk:wrk curl:curl ss:iproute2 psql:postgresql-client
    pg_env
    build_server
    make_tmp
    create_bench_db
    local email="bench-login@example.com" password
    password="bench-$(random_hex 12)"
    create_account "$email" "$password" "Bench Login"
    pg -d "$BENCH_DB" -v n="$BENCH_USERS" <<'SQL' || die "the bulk insert failed"
INSERT INTO users (email, hashed_password, full_name)
SELECT 'bench-user-' || g || '@example.com', 'not-a-hash', 'Bench User ' || g FROM generate_series(1, :n) AS g;
ANALYZE users;
SQL
    local min_id max_id
    read -r min_id max_id <<<"$(pg -d "$BENCH_DB" -F ' ' -c 'SELECT min(id), max(id) FROM users')"
    BENCH_SECRET="$(random_hex 32)"
    local cores load_before rows="" r cell w p res out t0 t1 c0 c1 g0 g1 n cpu_us csw pg_us
    cores="$(nproc)"
    load_before="$(cut -d' ' -f1-3 /proc/loadavg)"
    for r in $(seq 1 "$BENCH_ROUNDS"); do
        for cell in $BENCH_SIZING_GRID; do
            w=${cell%%:*} p=${cell#*:}
            [[ "$w" =~ ^[1-9][0-9]*$ && "$p" =~ ^[1-9][0-9]*$ ]] || die "BENCH_SIZING_GRID: '$cell' is not WORKERS:POOL"
            start_server "${DB_ENV[@]}" SECRET_KEY="$BENCH_SECRET" ACCESS_TOKEN_EXPIRE_MINUTES=1440 WORKERS="$w" DB_POOL_SIZE="$p"
            local base="http://127.0.0.1:$SERVER_PORT" token
            token="$(login_token "$base" "$email" "$password")"
            # Warm the pool (connections opened, statements prepared) before measuring.
            wrk -t1 -c"$p" -d1s -H "Authorization: Bearer $token" -s "$LUA_DIR/users_get.lua" "$base" -- "$min_id" "$max_id" >/dev/null 2>&1 || true
            out="$TMP/sizing-$w-$p-$r.txt"
            log "round $r: WORKERS=$w DB_POOL_SIZE=$p (${BENCH_SECONDS}s)"
            t0="$(proc_cpu_ticks "$SERVER_PID")" c0="$(proc_ctxsw "$SERVER_PID")" g0="$(pg_backends_ticks "$BENCH_DB")"
            res="$(run_wrk "$out" "${WRK_STD[@]}" -H "Authorization: Bearer $token" -s "$LUA_DIR/users_get.lua" "$base" -- "$min_id" "$max_id")"
            t1="$(proc_cpu_ticks "$SERVER_PID")" c1="$(proc_ctxsw "$SERVER_PID")" g1="$(pg_backends_ticks "$BENCH_DB")"
            n="$(wrk_responses "$out")"
            cpu_us="$(awk -v a="$t0" -v b="$t1" -v n="$n" -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.1f", (n > 0 ? (b - a) / hz * 1e6 / n : 0) }')"
            csw="$(awk -v a="$c0" -v b="$c1" -v n="$n" 'BEGIN { printf "%.2f", (n > 0 ? (b - a) / n : 0) }')"
            # Backends that ended during the run are missed; ours live as long as the pool.
            pg_us="$(awk -v a="$g0" -v b="$g1" -v n="$n" -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.1f", (n > 0 ? (b - a) / hz * 1e6 / n : 0) }')"
            log "  req/s p99_ms non2xx socket_errors: $res; server CPU $cpu_us us/request, $csw wake-ups/request, PostgreSQL CPU $pg_us us/request"
            rows+="| $r | $w | $p | $(echo "$res" | awk '{ printf "%s | %.2f", $1, $2 }') | $(wrk_us_ms "$out" latency_max_us) | $cpu_us | $pg_us | $csw | $(echo "$res" | awk '{ print $3 + $4 }') |"$'\n'
            server_alive
            stop_group "$SERVER_PID"
            SERVER_PID=""
        done
    done
    local load_after
    load_after="$(cut -d' ' -f1-3 /proc/loadavg)"
    local sec="$TMP/section-sizing.md"
    {
        section_head sizing "How many HTTP workers and pooled connections: \`GET /users/{id}\` (the token-checked one-query read) at $WRK_CONNS connections for each WORKERS x DB_POOL_SIZE, with the server's CPU time and voluntary context switches (wake-ups) per request. The evidence for the defaults in \`docs/decisions.md\`." \
            "BENCH_USERS=$BENCH_USERS, BENCH_SIZING_GRID=\"$BENCH_SIZING_GRID\""
        echo "- Load: \`$WRK_CMD_DESC -H 'Authorization: Bearer <token>' -s scripts/bench/users_get.lua URL -- $min_id $max_id\` after a 1 s warm-up; a fresh server for every cell, cells alternating within each of $BENCH_ROUNDS rounds"
        echo "- CPU per request: utime + stime of the server process (/proc/PID/stat) over the run / responses, and the same for the PostgreSQL backends of the run's database (pg_stat_activity); wake-ups: the sum of the server threads' \`voluntary_ctxt_switches\`, per response. CPU time is what the shared machine's load disturbs least; req/s and p99 move with it"
        echo "- Machine load average (1/5/15 min, shared with other engineers): $load_before before, $load_after after"
        echo
        echo "| round | WORKERS | DB_POOL_SIZE | req/s | p99 (ms) | max (ms) | server CPU (µs/request) | PostgreSQL CPU (µs/request) | server wake-ups/request | errors |"
        echo "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        printf '%s' "$rows"
        echo
    } >"$sec"
    echo
    cat "$sec"
    write_section sizing "$sec"
}

# ---------------------------------------------------------------------------------------------
# subcommand: counts

# libc's path, for the malloc uprobe.
libc_path() { ldd "$(server_bin)" | awk '/libc\.so/ { print $3; exit }'; }

# count_run PATH OUT: `wrk` for BENCH_SECONDS on PATH of our server with `perf stat` counting
# malloc/realloc/calloc (uprobes), then again under `strace -c -f`; prints
# "requests mallocs syscalls" per request and leaves the strace table in OUT.
count_run() {
    local path=$1 out=$2 url="http://127.0.0.1:$SERVER_PORT$1" ps st n1 n2
    wrk -t2 -c"$WRK_CONNS" -d1s "$url" >/dev/null 2>&1 || true
    perf stat -x, -e probe_libc:malloc,probe_libc:realloc,probe_libc:calloc -p "$SERVER_PID" -o "$out.perf" &
    ps=$!
    sleep 0.5
    wrk -t2 -c"$WRK_CONNS" -d"${BENCH_SECONDS}s" "$url" >"$out.wrk1" 2>&1
    kill -INT "$ps"; wait "$ps" 2>/dev/null || true
    strace -c -f -p "$SERVER_PID" -o "$out" 2>/dev/null &
    st=$!
    sleep 1
    wrk -t2 -c"$WRK_CONNS" -d"${BENCH_SECONDS}s" "$url" >"$out.wrk2" 2>&1
    sleep 0.3
    kill -INT "$st"; wait "$st" 2>/dev/null || true
    n1="$(awk '/requests in/ { print $1 }' "$out.wrk1")"
    n2="$(awk '/requests in/ { print $1 }' "$out.wrk2")"
    echo "$n1 $(awk -F, -v n="$n1" '/probe_libc/ { s += $1 } END { printf "%.2f", (n > 0 ? s / n : 0) }' "$out.perf") $(awk -v n="$n2" '$NF == "total" { printf "%.2f", (n > 0 ? $4 / n : 0) }' "$out")"
}

cmd_counts() {
    [ -z "${BENCH_SERVER_CMD:-}" ] || die "counts runs the real server: unset BENCH_SERVER_CMD"
    need_tools wrk:wrk strace:strace perf:linux-perf curl:curl ss:iproute2
    build_server
    make_tmp
    local libc
    libc="$(libc_path)"
    [ -n "$libc" ] || die "cannot find the libc the server links"
    local f
    for f in malloc realloc calloc; do
        perf probe -q -x "$libc" "$f" 2>/dev/null || perf probe -l 2>/dev/null | grep -q "probe_libc:$f" \
            || die "perf probe -x $libc $f failed (needs root and uprobes)"
    done
    start_server
    local rows="" path res table=""
    for path in / /health; do
        log "GET $path: allocations, then system calls (${BENCH_SECONDS}s each)"
        res="$(count_run "$path" "$TMP/strace-${path//\//_}.txt")"
        log "  requests mallocs/request syscalls/request: $res"
        rows+="| \`GET $path\` | $(echo "$res" | awk '{ print $2 " | " $3 }') |"$'\n'
        table+="\`GET $path\`: $(awk -v n="$(awk '/requests in/ { print $1 }' "$TMP/strace-${path//\//_}.txt.wrk2")" '$4 ~ /^[0-9]+$/ && $NF != "total" && $4 / n >= 0.01 { printf "%s%s %.2f", sep, $NF, $4 / n; sep = ", " }' "$TMP/strace-${path//\//_}.txt")"$'\n\n'
        server_alive
    done
    local sec="$TMP/section-counts.md"
    {
        section_head counts "What one request costs our server in system calls and heap allocations, at $WRK_CONNS keep-alive connections (counts per request move little with the machine's load)."
        echo "- System calls: \`strace -c -f -p PID\` during \`$WRK_CMD_DESC URL\`, divided by wrk's request count (strace slows the server; the counts per request are what matters)"
        echo "- Allocations: uprobes on the server's libc (\`perf probe -x $libc malloc\`, realloc, calloc), \`perf stat -p PID\` during a separate wrk run of the same length"
        echo "- Ours: \`target/release/adcluster serve --host 127.0.0.1 --port 0\`, LOG_LEVEL=warn"
        echo
        echo "| request | allocations per request | system calls per request |"
        echo "|---|---:|---:|"
        printf '%s' "$rows"
        echo
        echo "By call (at least 0.01 per request):"
        echo
        printf '%s' "$table"
    } >"$sec"
    echo
    cat "$sec"
    write_section counts "$sec"
}

# ---------------------------------------------------------------------------------------------
# subcommand: files

# status_kib PID FIELD: the value of "FIELD: N kB" in /proc/PID/status, in KiB ("" when gone).
status_kib() {
    local k v _
    { while read -r k v _; do
        if [ "$k" = "$2:" ]; then echo "$v"; return 0; fi
    done <"/proc/$1/status"; } 2>/dev/null || true
    echo ""
}

# rss_sampler PID OUTFILE STOPFILE: appends PID's VmRSS (KiB) to OUTFILE about every 50 ms until
# STOPFILE exists or the process is gone. Reads /proc with builtins only (no fork per sample
# besides sleep).
rss_sampler() {
    local k v _
    while [ ! -e "$3" ]; do
        { while read -r k v _; do
            if [ "$k" = VmRSS: ]; then echo "$v" >>"$2"; break; fi
        done <"/proc/$1/status"; } 2>/dev/null || return 0
        sleep 0.05
    done
}

SAMPLER_PID=""
RSS_MAX_KIB=0     # set by stop_rss_sampler: the largest sample
RSS_SAMPLES=0     # and how many samples there were

# bg_forget PID: PID has been waited for; cleanup need not stop it.
bg_forget() {
    local p keep=()
    for p in "${BG_PIDS[@]}"; do [ "$p" = "$1" ] || keep+=("$p"); done
    BG_PIDS=("${keep[@]}")
}

# start_rss_sampler OUTFILE: samples the server's VmRSS into OUTFILE in the background.
start_rss_sampler() {
    rm -f "$TMP/rss.stop" "$1"
    : >"$1"
    rss_sampler "$SERVER_PID" "$1" "$TMP/rss.stop" &
    SAMPLER_PID=$!
    BG_PIDS+=("$SAMPLER_PID")
}

# stop_rss_sampler OUTFILE: stops the sampler; sets RSS_MAX_KIB and RSS_SAMPLES from OUTFILE.
# (Not to be called in $(...): wait only works in the shell that started the sampler.)
stop_rss_sampler() {
    touch "$TMP/rss.stop"
    wait "$SAMPLER_PID" 2>/dev/null || true
    bg_forget "$SAMPLER_PID"
    SAMPLER_PID=""
    read -r RSS_MAX_KIB RSS_SAMPLES <<<"$(awk '$1 + 0 > m { m = $1 + 0 } END { print m + 0, NR }' "$1")"
}

# reset_hwm: resets the server's VmHWM to its current RSS (echo 5 > /proc/PID/clear_refs, Linux
# 4.0+, needs the right to ptrace it). True when it worked.
reset_hwm() { (echo 5 >"/proc/$SERVER_PID/clear_refs") 2>/dev/null; }

DROP_CACHES_OK=0   # 1: this run can drop the page cache

# settle FILE...: before every timed run: write back dirty pages (sync), drop the page cache when
# permitted (so no run inherits the previous run's cached or dirty pages), then read each FILE
# once so that it is served from the cache (the source of an upload, the file of a download:
# the same for both sides of a comparison).
settle() {
    sync
    if [ "$DROP_CACHES_OK" = 1 ]; then
        (echo 3 >/proc/sys/vm/drop_caches) 2>/dev/null || log "warning: drop_caches failed this time"
    fi
    local f
    for f in "$@"; do cat "$f" >/dev/null; done
}

# kib_mib KIB: in MiB, one decimal.
kib_mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }

# mbps BYTES SECONDS: MB/s with MB = 10^6 bytes (dd's unit), one decimal.
mbps() { awk -v b="$1" -v s="$2" 'BEGIN { printf "%.1f", (s > 0 ? b / s / 1e6 : 0) }'; }

# json_field FILE NAME: the value of "NAME": <number> or "NAME": "<string>" in a flat JSON object.
json_field() {
    grep -oE "\"$2\" *: *(\"[^\"]*\"|[0-9]+)" "$1" | head -n1 | sed -E 's/^[^:]*: *//; s/^"//; s/"$//' || true
}

cmd_files() {
    [ -z "${BENCH_SERVER_CMD:-}" ] \
        || die "files runs the real server (and 'adcluster user create'): unset BENCH_SERVER_CMD"
    need_tools nginx:nginx curl:curl ss:iproute2 psql:postgresql-client dd:coreutils cmp:diffutils
    pg_env

    # --- where the bytes go ---------------------------------------------------------------------
    local fdir="$BENCH_FILES_DIR" fstype mount_desc need_kib avail_kib
    mkdir -p "$fdir" || die "cannot create $fdir"
    fdir="$(cd "$fdir" && pwd)"
    fstype="$(stat -f -c %T "$fdir")"
    case "$fstype" in
        tmpfs | ramfs) die "$fdir is on $fstype (memory, fsync costs nothing there): set BENCH_FILES_DIR to a directory on disk" ;;
    esac
    mount_desc="$(findmnt -n -o SOURCE,FSTYPE,TARGET -T "$fdir" 2>/dev/null | awk '{ printf "%s (%s, mounted on %s)", $1, $2, $3 }' || true)"
    [ -n "$mount_desc" ] || mount_desc="$fstype"
    # The source, one stored upload, the next upload in flight or dd's output, the small ones.
    need_kib=$(((3 * BENCH_FILE_MB + BENCH_CONCURRENT * BENCH_CONCURRENT_KB / 1024 + 256) * 1024))
    avail_kib="$(df -Pk "$fdir" | awk 'NR == 2 { print $4 }')"
    [ "$avail_kib" -ge "$need_kib" ] \
        || die "$fdir has $((avail_kib / 1024)) MiB free; this run needs $((need_kib / 1024)) MiB"
    # TMP holds everything of this run (start_server puts UPLOAD_DIR in it): one disk for the
    # upload, dd's output and the source file.
    TMP="$(mktemp -d "$fdir/adcluster-bench-files.XXXXXX")"
    log "temp dir $TMP on $mount_desc"

    if [ "$BENCH_DROP_CACHES" = 1 ]; then
        sync
        if (echo 3 >/proc/sys/vm/drop_caches) 2>/dev/null; then
            DROP_CACHES_OK=1
        else
            log "warning: cannot write /proc/sys/vm/drop_caches (not root, or /proc/sys read-only): runs start with a warm cache"
        fi
    fi
    local cache_desc
    if [ "$DROP_CACHES_OK" = 1 ]; then
        cache_desc="before every timed run: \`sync; echo 3 > /proc/sys/vm/drop_caches\`, then the run's source file read once (\`cat FILE > /dev/null\`) so that both sides read it from the page cache"
    elif [ "$BENCH_DROP_CACHES" = 1 ]; then
        cache_desc="page cache NOT dropped (writing /proc/sys/vm/drop_caches was not permitted); before every timed run: \`sync\`, then the run's source file read once so that both sides read it from the page cache"
    else
        cache_desc="page cache not dropped (BENCH_DROP_CACHES=0); before every timed run: \`sync\`, then the run's source file read once so that both sides read it from the page cache"
    fi

    build_server
    create_bench_db

    local bytes=$((BENCH_FILE_MB * 1024 * 1024)) small_bytes=$((BENCH_CONCURRENT_KB * 1024))
    log "writing $BENCH_FILE_MB MiB of random bytes to $TMP/big.bin"
    head -c "$bytes" /dev/urandom >"$TMP/big.bin"
    head -c "$small_bytes" /dev/urandom >"$TMP/small.bin"
    [ "$(stat -c %s "$TMP/big.bin")" = "$bytes" ] || die "big.bin is not $bytes bytes"

    # --- server, account, token -----------------------------------------------------------------
    local email="bench-files@example.com" password
    password="bench-$(random_hex 12)"
    create_account "$email" "$password" "Bench Files"
    BENCH_SECRET="$(random_hex 32)"
    start_server "${DB_ENV[@]}" SECRET_KEY="$BENCH_SECRET" ACCESS_TOKEN_EXPIRE_MINUTES=1440 MAX_UPLOAD_MB=1100
    local base="http://127.0.0.1:$SERVER_PORT" token
    token="$(login_token "$base" "$email" "$password")"
    local workers pool_size body_timeout
    workers="$(server_setting WORKERS)"
    pool_size="$(server_setting DB_POOL_SIZE)"
    body_timeout="$(server_setting BODY_TIMEOUT_SECS)"

    # --- upload: ours against dd, alternating ---------------------------------------------------
    local idle_kib hwm_reset=1
    sleep 1
    idle_kib="$(status_kib "$SERVER_PID" VmRSS)"
    [ -n "$idle_kib" ] || die "cannot read /proc/$SERVER_PID/status"
    log "server idle: VmRSS $idle_kib KiB"
    local r out code secs size name prev="" stored_name="" url_path="" rate runs="" rss_rows=""
    local best_up="" best_dd="" peak_kib=0 hwm_kib max_hwm=0 dd_bytes
    for r in $(seq 1 "$BENCH_ROUNDS"); do
        # ours
        if [ -n "$prev" ]; then
            # Only the last upload is kept (for the downloads): disk space.
            code="$(curl -sS -o /dev/null -w '%{http_code}' --max-time 60 -X DELETE \
                -H "Authorization: Bearer $token" "$base/api/files/$prev" || true)"
            [ "$code" = 200 ] || die "DELETE /api/files/$prev answered '$code', not 200"
        fi
        settle "$TMP/big.bin"
        reset_hwm || hwm_reset=0
        start_rss_sampler "$TMP/rss-upload-$r.txt"
        log "round $r: ours, POST /api/upload of $BENCH_FILE_MB MiB"
        out="$(cd "$TMP" && curl -sS -o "upload-$r.json" -w '%{http_code} %{time_total}' --max-time 1800 \
            -H "Authorization: Bearer $token" -F "file=@big.bin" "$base/api/upload")" \
            || { stop_rss_sampler "$TMP/rss-upload-$r.txt"; die "the upload failed (curl: $out)"; }
        stop_rss_sampler "$TMP/rss-upload-$r.txt"
        hwm_kib="$(status_kib "$SERVER_PID" VmHWM)"
        server_alive
        read -r code secs <<<"$out"
        [ "$code" = 201 ] || { cat "$TMP/upload-$r.json" >&2; die "POST /api/upload answered $code, not 201"; }
        size="$(json_field "$TMP/upload-$r.json" size)"
        [ "$size" = "$bytes" ] || die "the upload's record says size '$size', not $bytes"
        name="$(json_field "$TMP/upload-$r.json" filename)"
        url_path="$(json_field "$TMP/upload-$r.json" url)"
        if [ -z "$name" ] || [ -z "$url_path" ]; then die "no filename or url in the upload's record"; fi
        prev=$name
        stored_name=$name
        rate="$(mbps "$bytes" "$secs")"
        log "  $code, $secs s, $rate MB/s; VmRSS peak $RSS_MAX_KIB KiB ($RSS_SAMPLES samples), VmHWM $hwm_kib KiB"
        runs+="| $r | adcluster \`POST /api/upload\` | $code | $secs | $rate |"$'\n'
        rss_rows+="| $r | $RSS_MAX_KIB | $RSS_SAMPLES | $hwm_kib |"$'\n'
        if is_better "$rate $secs" "$best_up"; then best_up="$rate $secs"; fi
        [ "$RSS_MAX_KIB" -gt "$peak_kib" ] && peak_kib=$RSS_MAX_KIB
        [ "${hwm_kib:-0}" -gt "$max_hwm" ] && max_hwm=$hwm_kib

        # dd
        settle "$TMP/big.bin"
        log "round $r: dd if=big.bin of=dd.out bs=1M conv=fsync"
        (cd "$TMP" && LC_ALL=C dd if=big.bin of=dd.out bs=1M conv=fsync) 2>"$TMP/dd-$r.txt" \
            || { cat "$TMP/dd-$r.txt" >&2; die "dd failed"; }
        rm -f "$TMP/dd.out"
        read -r dd_bytes secs <<<"$(awk '/ copied, / { for (i = 1; i <= NF; i++) if ($i == "s,") print $1, $(i - 1) }' "$TMP/dd-$r.txt")"
        [ "$dd_bytes" = "$bytes" ] || { cat "$TMP/dd-$r.txt" >&2; die "dd copied '$dd_bytes' bytes, not $bytes"; }
        rate="$(mbps "$bytes" "$secs")"
        log "  $secs s, $rate MB/s ($(tail -n1 "$TMP/dd-$r.txt"))"
        runs+="| $r | \`dd bs=1M conv=fsync\` | | $secs | $rate |"$'\n'
        if is_better "$rate $secs" "$best_dd"; then best_dd="$rate $secs"; fi
    done
    local after_kib
    after_kib="$(status_kib "$SERVER_PID" VmRSS)"

    # The stored file is the file sent, byte for byte, and nothing is left in the temp folder.
    local stored="$TMP/uploads/files/$stored_name" integrity
    [ "$url_path" = "/uploads/files/$stored_name" ] || die "unexpected url '$url_path' for $stored_name"
    cmp -s "$TMP/big.bin" "$stored" || die "$stored differs from big.bin"
    integrity="stored file identical to the source (\`cmp\`)"

    # --- download: ours against nginx, alternating ----------------------------------------------
    local nginx_main=""
    # Run as root, nginx's workers would run as nobody, who cannot enter the 0700 temp dir.
    [ "$(id -u)" = 0 ] && nginx_main="user root $(id -gn);"
    start_nginx_with "$nginx_main" "        location /uploads/ {
            root $TMP;
            sendfile $BENCH_NGINX_SENDFILE;
            default_type application/octet-stream;
        }
        location / { return 404; }"
    log "check: GET $url_path from our server, compared byte for byte (untimed)"
    curl -sS --max-time 1800 "$base$url_path" | cmp -s - "$TMP/big.bin" \
        || die "GET $url_path from our server did not return the uploaded bytes"
    integrity+="; one untimed \`GET\` of it from our server identical too"
    local who url size_dl best_ours_dl="" best_nginx_dl=""
    for r in $(seq 1 "$BENCH_ROUNDS"); do
        for who in ours nginx; do
            url="$base$url_path"
            [ "$who" = nginx ] && url="http://127.0.0.1:$NGINX_PORT$url_path"
            settle "$stored"
            log "round $r: $who, GET $url_path"
            out="$(curl -sS -o /dev/null -w '%{http_code} %{size_download} %{time_total}' --max-time 1800 "$url")" \
                || die "the download from $who failed (curl: $out)"
            read -r code size_dl secs <<<"$out"
            [ "$code" = 200 ] || die "GET $url answered $code, not 200"
            [ "$size_dl" = "$bytes" ] || die "GET $url gave $size_dl bytes, not $bytes"
            rate="$(mbps "$bytes" "$secs")"
            log "  $code, $size_dl bytes, $secs s, $rate MB/s"
            if [ "$who" = ours ]; then
                runs+="| $r | adcluster \`GET /uploads/...\` | $code | $secs | $rate |"$'\n'
                if is_better "$rate $secs" "$best_ours_dl"; then best_ours_dl="$rate $secs"; fi
            else
                runs+="| $r | nginx \`GET /uploads/...\` | $code | $secs | $rate |"$'\n'
                if is_better "$rate $secs" "$best_nginx_dl"; then best_nginx_dl="$rate $secs"; fi
            fi
        done
        server_alive
    done
    stop_group "$NGINX_PID"
    NGINX_PID=""

    # --- concurrency: many small uploads at once ------------------------------------------------
    settle "$TMP/small.bin"
    log "$BENCH_CONCURRENT concurrent uploads of $BENCH_CONCURRENT_KB KiB"
    local pids=() i pid t0 t1 wall curl_fail=0
    start_rss_sampler "$TMP/rss-concurrent.txt"
    t0="$(date +%s%N)"
    for i in $(seq 1 "$BENCH_CONCURRENT"); do
        (cd "$TMP" && exec curl -sS -o "conc-$i.json" -w '%{http_code} %{time_total}\n' --max-time 600 \
            -H "Authorization: Bearer $token" -F "file=@small.bin" "$base/api/upload") \
            >"$TMP/conc-$i.out" 2>"$TMP/conc-$i.err" &
        pids+=("$!")
        BG_PIDS+=("$!")
    done
    for pid in "${pids[@]}"; do
        wait "$pid" || curl_fail=$((curl_fail + 1))
        bg_forget "$pid"
    done
    t1="$(date +%s%N)"
    stop_rss_sampler "$TMP/rss-concurrent.txt"
    server_alive
    wall="$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", (b - a) / 1e9 }')"
    local n201=0 bad_size=0 statuses slowest
    for i in $(seq 1 "$BENCH_CONCURRENT"); do
        read -r code _ <"$TMP/conc-$i.out" || code=000
        if [ "$code" = 201 ]; then
            n201=$((n201 + 1))
            [ "$(json_field "$TMP/conc-$i.json" size)" = "$small_bytes" ] || bad_size=$((bad_size + 1))
        fi
    done
    statuses="$(cat "$TMP"/conc-*.out | awk '{ n[$1 == "" ? "none" : $1]++ } END { for (s in n) printf "%s%s=%d", (k++ ? "," : ""), s, n[s] }')"
    slowest="$(cat "$TMP"/conc-*.out | awk '$2 + 0 > m { m = $2 + 0 } END { printf "%.3f", m }')"
    local conc_errors=$((BENCH_CONCURRENT - n201 + bad_size))
    log "  wall $wall s; 201: $n201/$BENCH_CONCURRENT; statuses $statuses; curl failures $curl_fail; size mismatches $bad_size; slowest $slowest s; VmRSS peak $RSS_MAX_KIB KiB"
    if [ "$conc_errors" != 0 ]; then
        for i in $(seq 1 "$BENCH_CONCURRENT"); do
            [ -s "$TMP/conc-$i.err" ] && { log "  upload $i: $(head -c 300 "$TMP/conc-$i.err")"; break; }
        done
    fi
    local conc_peak=$RSS_MAX_KIB
    # Every accepted upload has its record and its file; no temp file is left.
    local listed on_disk left_tmp
    listed="$(curl -sS --max-time 30 -H "Authorization: Bearer $token" "$base/api/files?category=files" \
        | grep -oE '"count" *: *[0-9]+' | grep -oE '[0-9]+$' || echo '?')"
    on_disk="$(find "$TMP/uploads/files" -maxdepth 1 -type f | wc -l)"
    left_tmp="$(find "$TMP/uploads/.tmp" -type f ! -name "*.lock" 2>/dev/null | wc -l)"

    # --- results ----------------------------------------------------------------------------------
    local up_rate up_secs dd_rate dd_secs o_rate o_secs n_rate n_secs
    read -r up_rate up_secs <<<"$best_up"
    read -r dd_rate dd_secs <<<"$best_dd"
    read -r o_rate o_secs <<<"$best_ours_dl"
    read -r n_rate n_secs <<<"$best_nginx_dl"
    local up_ratio dl_ratio up_ok dl_ok
    up_ratio="$(ratio "$up_rate" "$dd_rate")"
    dl_ratio="$(ratio "$o_rate" "$n_rate")"
    up_ok="$(at_least "$up_ratio" "$GOAL_FILES_UPLOAD_RATIO")"
    dl_ok="$(at_least "$dl_ratio" "$GOAL_FILES_DOWNLOAD_RATIO")"
    # The peak: the largest sample, or VmHWM when it could be reset before each upload (then it
    # is the exact peak of that upload, which 50 ms samples can miss).
    local peak_all=$peak_kib hwm_desc
    if [ "$hwm_reset" = 1 ]; then
        [ "$max_hwm" -gt "$peak_all" ] && peak_all=$max_hwm
        hwm_desc="reset before each upload (\`echo 5 > /proc/PID/clear_refs\`), read after it: the exact peak of that upload"
    else
        hwm_desc="could not be reset (\`/proc/PID/clear_refs\` not writable): the peak since the server started, login included"
    fi
    local growth_kib=$((peak_all - idle_kib)) rss_ok
    rss_ok="$(awk -v g="$growth_kib" -v m="$GOAL_FILES_RSS_MIB" 'BEGIN { print (g <= m * 1024 ? 1 : 0) }')"
    local conc_ok=0
    [ "$conc_errors" = 0 ] && [ "$curl_fail" = 0 ] && conc_ok=1

    local pg_version nginx_version cpu
    pg_version="$(pg -d postgres -c 'SHOW server_version')"
    nginx_version="$("$(nginx_bin)" -v 2>&1 | sed 's/^nginx version: //')"
    cpu="$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)"
    local fdir_desc="$fdir"
    case "$fdir" in "$ROOT"/*) fdir_desc="${fdir#"$ROOT"/}" ;; esac

    local sec="$TMP/section-files.md"
    {
        section_head files "Uploads and downloads of one ${BENCH_FILE_MB} MiB file (random bytes): \`POST /api/upload\` against \`dd\` writing the same bytes to the same disk, \`GET /uploads/...\` against nginx serving the same stored file; server memory during the upload; $BENCH_CONCURRENT concurrent small uploads. Same run, same machine." \
            "BENCH_FILE_MB=$BENCH_FILE_MB" "BENCH_CONCURRENT=$BENCH_CONCURRENT" "BENCH_CONCURRENT_KB=$BENCH_CONCURRENT_KB" \
            "BENCH_FILES_DIR=$fdir_desc" "BENCH_DROP_CACHES=$BENCH_DROP_CACHES" "BENCH_NGINX_SENDFILE=$BENCH_NGINX_SENDFILE"
        echo "- CPU: $cpu"
        echo "- Disk: every file of the run (source, UPLOAD_DIR, dd's output) in one temp dir under \`$fdir_desc\`, on $mount_desc; not /tmp, which may be tmpfs (memory), where fsync costs nothing"
        echo "- Cache: $cache_desc"
        echo "- Ours: \`target/release/adcluster serve --host 127.0.0.1 --port 0\`, MAX_UPLOAD_MB=1100, LOG_LEVEL=warn, WORKERS=$workers, DB_POOL_SIZE=$pool_size, BODY_TIMEOUT_SECS=$body_timeout, UPLOAD_DIR and DATA_DIR in the temp dir; PostgreSQL $pg_version at $PGHOST:$PGPORT, a fresh database dropped after the run; the account made by \`adcluster user create\`, the token from \`POST /auth/login\`"
        echo "- MB/s is 10^6 bytes per second (dd's unit), of the file's $bytes bytes; $BENCH_ROUNDS rounds, the two sides alternating within each; best of each side"
        echo "- Checks: every upload \`201\` with \`size\` $bytes; $integrity; every download \`200\` with $bytes bytes"
        echo
        echo "### Upload: \`POST /api/upload\` against \`dd\`"
        echo
        echo "- Ours: \`curl -sS -o resp.json -w '%{http_code} %{time_total}' -H 'Authorization: Bearer <token>' -F file=@big.bin URL/api/upload\`: time from connect to the \`201\` (multipart parse, SHA-256, write, fsync, rename, directory fsync, database record)"
        echo "- Reference: \`dd if=big.bin of=dd.out bs=1M conv=fsync\` in the same directory, dd's own time (write and fsync); dd.out removed after each round, earlier uploads deleted through \`DELETE /api/files/{filename}\` before the next"
        echo
        echo "| | seconds | MB/s |"
        echo "|---|---:|---:|"
        echo "| adcluster \`POST /api/upload\` (best) | $up_secs | $up_rate |"
        echo "| \`dd bs=1M conv=fsync\` (best) | $dd_secs | $dd_rate |"
        echo "| ratio ours/dd | | $up_ratio |"
        echo
        echo "### Server memory during the upload"
        echo
        echo "- VmRSS from \`/proc/<pid>/status\`, sampled every ~50 ms during each upload; VmHWM $hwm_desc"
        echo "- Idle: VmRSS after start-up and login, 1 s before the first upload"
        echo
        echo "| round | VmRSS peak, sampled (KiB) | samples | VmHWM (KiB) |"
        echo "|---:|---:|---:|---:|"
        printf '%s' "$rss_rows"
        echo
        echo "| | KiB | MiB |"
        echo "|---|---:|---:|"
        echo "| idle VmRSS | $idle_kib | $(kib_mib "$idle_kib") |"
        echo "| peak during the uploads | $peak_all | $(kib_mib "$peak_all") |"
        echo "| peak − idle | $growth_kib | $(kib_mib "$growth_kib") |"
        echo "| VmRSS after the uploads | $after_kib | $(kib_mib "$after_kib") |"
        echo
        echo "### Download: \`GET /uploads/...\` against nginx"
        echo
        echo "- Both: \`curl -sS -o /dev/null -w '%{http_code} %{size_download} %{time_total}' URL\` for the stored file (\`/uploads/files/<name>.bin\`)"
        echo "- nginx: $nginx_version, \`worker_processes $BENCH_NGINX_WORKERS\`${nginx_main:+, \`$nginx_main\` (the temp dir is 0700)}, \`location /uploads/ { root <temp dir>; sendfile $BENCH_NGINX_SENDFILE; }\` on UPLOAD_DIR itself. nginx's built-in default is \`sendfile off\`; Debian's stock nginx.conf (and most deployments) turn it on, so it is set explicitly"
        echo
        echo "| | seconds | MB/s |"
        echo "|---|---:|---:|"
        echo "| adcluster (best) | $o_secs | $o_rate |"
        echo "| nginx, sendfile $BENCH_NGINX_SENDFILE (best) | $n_secs | $n_rate |"
        echo "| ratio ours/nginx | | $dl_ratio |"
        echo
        echo "### Concurrency: $BENCH_CONCURRENT uploads of $BENCH_CONCURRENT_KB KiB at once"
        echo
        echo "- $BENCH_CONCURRENT background \`curl -F file=@small.bin\` (the upload command above), started together; wall time from the first start to the last exit"
        echo
        echo "| | measured |"
        echo "|---|---:|"
        echo "| wall time | $wall s |"
        echo "| slowest single upload (curl time_total) | $slowest s |"
        echo "| \`201\` with the right size | $((n201 - bad_size)) / $BENCH_CONCURRENT |"
        echo "| statuses; curl failures | $statuses; $curl_fail |"
        echo "| records listed afterwards (\`GET /api/files?category=files\`, incl. the kept big file) | $listed |"
        echo "| files in UPLOAD_DIR/files; left in UPLOAD_DIR/.tmp (not counting the owner lock) | $on_disk; $left_tmp |"
        echo "| server VmRSS peak, sampled (KiB) | $conc_peak (idle $idle_kib) |"
        echo
        echo "### Goals"
        echo
        echo "| goal | measured | result |"
        echo "|---|---:|---|"
        echo "| upload ours/dd >= $GOAL_FILES_UPLOAD_RATIO | $up_ratio | $(pass_fail "$up_ok") |"
        echo "| upload peak RSS within $GOAL_FILES_RSS_MIB MiB of idle | +$(kib_mib "$growth_kib") MiB | $(pass_fail "$rss_ok") |"
        echo "| download ours/nginx >= $GOAL_FILES_DOWNLOAD_RATIO | $dl_ratio | $(pass_fail "$dl_ok") |"
        echo "| $BENCH_CONCURRENT concurrent uploads: no error | $conc_errors errors, $curl_fail curl failures | $(pass_fail "$conc_ok") |"
        echo
        echo "All runs:"
        echo
        echo "| round | target | status | seconds | MB/s |"
        echo "|---:|---|---:|---:|---:|"
        printf '%s' "$runs"
        echo
    } >"$sec"

    echo
    cat "$sec"
    write_section files "$sec"
}

# ---------------------------------------------------------------------------------------------
# subcommand: ws

WS_NODE_DIR="$ROOT/scripts/bench/ws-node"
NODE_PID=""
NODE_PORT=""

ws_bench_bin() { echo "$(target_dir)/release/ws-bench"; }

build_ws_bench() {
    command -v cargo >/dev/null 2>&1 || die "cargo not found"
    log "cargo build -p ws-bench --release (in $ROOT)"
    (cd "$ROOT" && cargo build -p ws-bench --release) >&2 || die "cargo build -p ws-bench --release failed"
    [ -x "$(ws_bench_bin)" ] || die "no $(ws_bench_bin) after the build"
}

# The pinned `ws` in scripts/bench/ws-node/node_modules: `npm ci` from the lock file when it is
# missing or another version (node_modules/ is git-ignored).
ensure_ws_node() {
    local want have
    want="$(node -p 'require(process.argv[1]).dependencies.ws' "$WS_NODE_DIR/package.json")" \
        || die "cannot read $WS_NODE_DIR/package.json"
    have="$(node -p 'require(process.argv[1]).version' "$WS_NODE_DIR/node_modules/ws/package.json" 2>/dev/null || true)"
    if [ "$have" != "$want" ]; then
        log "npm ci in scripts/bench/ws-node (ws $want)"
        (cd "$WS_NODE_DIR" && npm ci --ignore-scripts --no-audit --no-fund) >&2 || die "npm ci failed in $WS_NODE_DIR"
    fi
}

# Starts the Node reference server; sets NODE_PID (node itself, for /proc) and NODE_PORT.
start_node() {
    make_tmp
    local logf="$TMP/node.log"
    (new_group bash -c "cd '$WS_NODE_DIR' && exec node server.mjs --host 127.0.0.1 --port 0") >"$logf" 2>&1 </dev/null &
    NODE_PID=$!
    BG_PIDS+=("$NODE_PID")
    NODE_PORT="$(wait_listening "$logf" "$NODE_PID")"
    [ "$(cat "/proc/$NODE_PID/comm" 2>/dev/null)" = node ] || die "pid $NODE_PID is not the node process"
    log "node pid $NODE_PID on port $NODE_PORT"
}

stop_node() {
    stop_group "$NODE_PID"
    bg_forget "$NODE_PID"
    NODE_PID=""
}

# ws_run WHO SCENARIO ROUND ARGS...: ws-bench against WHO (ours or node); its `key value` lines go
# to $TMP/ws-SCENARIO-WHO-ROUND.txt, its progress to the .log beside it.
ws_run() {
    local who=$1 scen=$2 r=$3 port pid
    shift 3
    if [ "$who" = ours ]; then port=$SERVER_PORT pid=$SERVER_PID; else port=$NODE_PORT pid=$NODE_PID; fi
    local out="$TMP/ws-$scen-$who-$r.txt"
    log "round $r: $who, $scen: ws-bench $*"
    # Each scenario's peak is its own: without the reset, a server's VmHWM at the end of (f) was
    # its peak since start, for Node the 1,000-member flat-out phase of (d).
    (echo 5 >"/proc/$pid/clear_refs") 2>/dev/null || WS_HWM_SINCE_START=1
    "$(ws_bench_bin)" --url "ws://127.0.0.1:$port" --pid "$pid" "$@" >"$out" 2>"${out%.txt}.log" \
        || { tail -n 20 "${out%.txt}.log" >&2; die "ws-bench failed against $who ($scen, round $r)"; }
    grep -E '^ws-bench: (connected|settled|after|closed|drain|flat: no|note)' "${out%.txt}.log" | sed 's/^ws-bench: /  /' >&2 || true
    kill -0 "$pid" 2>/dev/null || die "$who died during $scen (round $r)"
}

# wsv FILE KEY: the value of KEY in a ws-bench output (the rest of its line; empty when absent).
wsv() { [ -f "$1" ] || return 0; awk -v k="$2" '$1 == k { v = substr($0, length(k) + 2) } END { print v }' "$1"; }

# ws_pick SCENARIO WHO KEY min|max: the best value of KEY over the rounds (empty when none).
ws_pick() {
    local scen=$1 who=$2 key=$3 dir=$4 r f
    for r in $(seq 1 "$BENCH_ROUNDS"); do
        f="$TMP/ws-$scen-$who-$r.txt"
        # A scenario left out of BENCH_WS_SCENARIOS has no file: no value (not a failure).
        if [ -f "$f" ]; then wsv "$f" "$key"; fi
    done | awk -v d="$dir" 'NF { if (b == "" || (d == "min" ? $1 + 0 < b + 0 : $1 + 0 > b + 0)) b = $1 } END { print b }'
}

# ws_row LABEL SCENARIO KEY min|max: a table row "| LABEL | ours | node | ours/node |".
ws_row() {
    local label=$1 scen=$2 key=$3 dir=$4 o="" n="" rt=""
    [ -n "$WS_HAS_OURS" ] && o="$(ws_pick "$scen" ours "$key" "$dir")"
    [ -n "$WS_HAS_NODE" ] && n="$(ws_pick "$scen" node "$key" "$dir")"
    [ -n "$o" ] && [ -n "$n" ] && rt="$(ratio "$o" "$n")"
    echo "| $label | ${o:-–} | ${n:-–} | ${rt:-–} |"
}

cmd_ws() {
    need_tools node:nodejs npm:npm curl:curl ss:iproute2 psql:postgresql-client
    local targets=() t
    for t in $BENCH_WS_TARGETS; do
        case "$t" in ours | node) targets+=("$t") ;; *) die "BENCH_WS_TARGETS: unknown target '$t' (ours, node)" ;; esac
    done
    [ ${#targets[@]} -gt 0 ] || die "BENCH_WS_TARGETS is empty"
    WS_HAS_OURS="" WS_HAS_NODE=""
    for t in "${targets[@]}"; do
        if [ "$t" = ours ]; then WS_HAS_OURS=1; else WS_HAS_NODE=1; fi
    done
    # 10,000 sockets on each side of the loopback, plus the server's own files.
    local biggest=$BENCH_WS_CLIENTS want hard
    [ "$BENCH_WS_MEMBERS" -gt "$biggest" ] && biggest=$BENCH_WS_MEMBERS
    [ "$BENCH_WS_RTT_CLIENTS" -gt "$biggest" ] && biggest=$BENCH_WS_RTT_CLIENTS
    want=$((biggest * 2 + 4096))
    [ "$want" -ge 65536 ] || want=65536
    hard="$(ulimit -Hn)"
    if [ "$hard" != unlimited ] && [ "$hard" -lt "$want" ]; then
        ulimit -Hn "$want" 2>/dev/null || log "warning: cannot raise the hard open-files limit from $hard to $want"
        hard="$(ulimit -Hn)"
        [ "$hard" = unlimited ] || [ "$hard" -ge "$want" ] || want=$hard
    fi
    ulimit -Sn "$want" || die "cannot set the open-files limit to $want"
    log "open-files limit $(ulimit -Sn) (servers and ws-bench inherit it)"

    build_ws_bench
    [ -n "$WS_HAS_NODE" ] && ensure_ws_node
    if [ -n "$WS_HAS_OURS" ]; then
        pg_env
        build_server
        make_tmp
        create_bench_db
    fi
    make_tmp
    local ws_max=$((biggest + 100)) secret
    secret="$(random_hex 32)"
    local server_env=(WS_MAX_CLIENTS="$ws_max" WS_MAX_CLIENTS_PER_ADDR=0 SECRET_KEY="$secret")

    local a_args=(--clients "$BENCH_WS_CLIENTS" --members "$BENCH_WS_IDLE_MEMBERS" --mode idle --seconds "$BENCH_SECONDS")
    local b_args=(--clients "$BENCH_WS_RTT_CLIENTS" --members 2 --mode rtt --rate "$BENCH_WS_RTT_RATE" --seconds "$BENCH_SECONDS")
    local cd_modes="fanout,flat"
    local cd_args=(--clients "$BENCH_WS_MEMBERS" --groups 1 --mode "$cd_modes" --rate "$BENCH_WS_FANOUT_RATE"
        --window "$BENCH_WS_WINDOW" --seconds "$BENCH_SECONDS")

    local e_args=(--clients 2000 --groups 20 --mode "$cd_modes" --rate "$BENCH_WS_FANOUT_RATE"
        --window "$BENCH_WS_WINDOW" --seconds "$BENCH_SECONDS")
    local f_args=(--clients 10000 --groups 10 --mode "$cd_modes" --rate "$BENCH_WS_FANOUT_RATE"
        --window "$BENCH_WS_WINDOW" --seconds "$BENCH_SECONDS" --connect-threads 16)
    for scen in $BENCH_WS_SCENARIOS; do
        case "$scen" in idle | rtt | fanout | fanout20 | fanout10k) ;; *) die "BENCH_WS_SCENARIOS: unknown '$scen' (idle rtt fanout fanout20 fanout10k)" ;; esac
    done

    local r who scen order=()
    for r in $(seq 1 "$BENCH_ROUNDS"); do
        # Fresh processes each round: RSS per idle client is measured on a server that has not
        # yet grown its heap for an earlier scenario. Odd rounds ours first, even rounds Node first.
        if [ $((r % 2)) = 1 ]; then order=("${targets[@]}"); else order=(); for t in "${targets[@]}"; do order=("$t" "${order[@]}"); done; fi
        if [ -n "$WS_HAS_OURS" ]; then
            start_server "${DB_ENV[@]}" "${server_env[@]}"
            [ "$(cat "/proc/$SERVER_PID/comm" 2>/dev/null)" = adcluster ] || log "warning: pid $SERVER_PID is $(cat "/proc/$SERVER_PID/comm" 2>/dev/null), not adcluster"
            if [ "$r" = 1 ]; then
                "$(ws_bench_bin)" --url "ws://127.0.0.1:$SERVER_PORT" --clients 1 --groups 0 --mode connect \
                    --id-prefix probe >"$TMP/ws-probe.txt" 2>"$TMP/ws-probe.log" || true
                if [ "$(wsv "$TMP/ws-probe.txt" connect.ok)" != 1 ]; then
                    cat "$TMP/ws-probe.log" >&2
                    die "our server did not accept a WebSocket client ($(wsv "$TMP/ws-probe.txt" connect.error0)); it may have no WebSocket side yet: run with BENCH_WS_TARGETS=node, or BENCH_SERVER_BIN=<an adcluster binary that has it>"
                fi
            fi
        fi
        [ -n "$WS_HAS_NODE" ] && start_node
        for scen in $BENCH_WS_SCENARIOS; do
            for who in "${order[@]}"; do
                case "$scen" in
                    idle) ws_run "$who" idle "$r" "${a_args[@]}" ;;
                    rtt) ws_run "$who" rtt "$r" "${b_args[@]}" ;;
                    fanout) ws_run "$who" fanout "$r" "${cd_args[@]}" ;;
                    fanout20) ws_run "$who" fanout20 "$r" "${e_args[@]}" ;;
                    fanout10k) ws_run "$who" fanout10k "$r" "${f_args[@]}" ;;
                esac
            done
        done
        if [ -n "$WS_HAS_OURS" ]; then server_alive; stop_group "$SERVER_PID"; SERVER_PID=""; fi
        [ -n "$WS_HAS_NODE" ] && stop_node
    done

    # --- goals: every round must meet the absolute ones; the CPU goal compares best with best ---
    local held_ok="" rss_ok="" p99_ok="" cpu_ok="" worst_rss="" worst_p99="" held_desc="" f
    if [ -n "$WS_HAS_OURS" ]; then
        held_ok=1 rss_ok=1 p99_ok=1
        for r in $(seq 1 "$BENCH_ROUNDS"); do
            f="$TMP/ws-idle-ours-$r.txt"
            [ "$(wsv "$f" connect.ok)" = "$BENCH_WS_CLIENTS" ] && [ "$(wsv "$f" idle.held)" = 1 ] || held_ok=0
            held_desc+="${held_desc:+; }round $r: $(wsv "$f" connect.ok) connected, $(wsv "$f" idle.open_after_hold) open after ${BENCH_SECONDS} s, $(wsv "$f" idle.pongs) pongs"
            local v
            v="$(wsv "$f" idle.rss_per_client_kib)"
            [ -n "$v" ] && [ "$(below "$v" "$GOAL_WS_RSS_PER_CLIENT_KIB")" = 1 ] || rss_ok=0
            if [ -z "$worst_rss" ] || [ "$(below "$worst_rss" "${v:-0}")" = 1 ]; then worst_rss=$v; fi
            f="$TMP/ws-fanout-ours-$r.txt"
            v="$(wsv "$f" fanout.last_p99_ms)"
            [ -n "$v" ] && [ "$(below "$v" "$GOAL_WS_FANOUT_LAST_P99_MS")" = 1 ] && [ "$(wsv "$f" fanout.incomplete)" = 0 ] || p99_ok=0
            if [ -z "$worst_p99" ] || [ "$(below "$worst_p99" "${v:-0}")" = 1 ]; then worst_p99=$v; fi
        done
        [ "$BENCH_WS_CLIENTS" -ge "$GOAL_WS_CLIENTS" ] || held_ok=0
        if [ -n "$WS_HAS_NODE" ]; then
            local oc nc
            oc="$(ws_pick fanout ours flat.server_cpu_us_per_delivery min)"
            nc="$(ws_pick fanout node flat.server_cpu_us_per_delivery min)"
            cpu_ok="$(awk -v o="$oc" -v n="$nc" -v g="$GOAL_WS_CPU_RATIO" 'BEGIN { print ((o != "" && n != "" && o + 0 <= n * g) ? 1 : 0) }')"
        fi
    fi
    goal_cell() { if [ -z "$1" ]; then echo "not measured"; else pass_fail "$1"; fi; }

    # --- the section ---------------------------------------------------------------------------
    local cpu node_v ws_v server_desc pg_version=""
    cpu="$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)"
    node_v="$(node --version)"
    ws_v="$(node -p 'require(process.argv[1]).version' "$WS_NODE_DIR/node_modules/ws/package.json" 2>/dev/null || echo '?')"
    server_desc="target/release/adcluster serve --host 127.0.0.1 --port 0"
    [ -n "${BENCH_SERVER_BIN:-}" ] && server_desc="$BENCH_SERVER_BIN serve --host 127.0.0.1 --port 0 (BENCH_SERVER_BIN)"
    [ -n "$WS_HAS_OURS" ] && pg_version="$(pg -d postgres -c 'SHOW server_version')"
    local tool="target/release/ws-bench --url ws://127.0.0.1:PORT --pid PID"
    local sec="$TMP/section-ws.md"
    {
        section_head ws "WebSocket: our server against a Node \`ws\` server speaking the same protocol subset (\`scripts/bench/ws-node/server.mjs\`), driven by \`tools/ws-bench\`, same run, same machine." \
            "BENCH_WS_TARGETS=${targets[*]}" "BENCH_WS_CLIENTS=$BENCH_WS_CLIENTS" "BENCH_WS_RTT_CLIENTS=$BENCH_WS_RTT_CLIENTS" \
            "BENCH_WS_RTT_RATE=$BENCH_WS_RTT_RATE" "BENCH_WS_MEMBERS=$BENCH_WS_MEMBERS" "BENCH_WS_FANOUT_RATE=$BENCH_WS_FANOUT_RATE" \
            "BENCH_WS_WINDOW=$BENCH_WS_WINDOW"
        echo "- CPU: $cpu"
        if [ -n "$WS_HAS_OURS" ]; then
            echo "- Ours: \`$server_desc\`, LOG_LEVEL=warn, WS_MAX_CLIENTS=$ws_max, WS_MAX_CLIENTS_PER_ADDR=0 (every client comes from 127.0.0.1), other settings default; PostgreSQL $pg_version, a fresh database dropped after the run"
        else
            echo "- Ours: not run (BENCH_WS_TARGETS=${targets[*]})"
        fi
        echo "- Node: $node_v, ws $ws_v, \`node server.mjs\` (one process, one thread; each fan-out frame serialised once into a Buffer shared by every recipient; no permessage-deflate, no native add-ons)"
        echo "- Load: \`tools/ws-bench\` (release) on the same 2 cores: 2 epoll reader threads, 8 connect threads; latencies from its own monotonic clock (send time in the message text, taken right before the write; arrival right after the reader's \`recv\`). Server CPU is utime+stime of \`/proc/PID/stat\` over the measured window (all threads), divided by the frames delivered in it (for (e) and (f) also its stime alone: the kernel's part, on loopback the receiver's TCP input and wake-up included); RSS from \`/proc/PID/status\`"
        echo "- $(session_note)"
        echo "- Open-files limit $(ulimit -Sn); each round starts both servers afresh; $BENCH_ROUNDS rounds, the two sides alternating (ours first in odd rounds, Node first in even ones); the table shows each side's best round per figure, the goals hold only if they hold in every round (the CPU goal: best against best)"
        echo
        echo "Scenarios (each a separate ws-bench run, after the server is quiet):"
        echo
        echo "- (a) hold: \`$tool ${a_args[*]}\`: $BENCH_WS_CLIENTS clients in groups of $BENCH_WS_IDLE_MEMBERS, idle for $BENCH_SECONDS s, then a ping from every client; RSS per idle client = (VmRSS with them connected and quiet − VmRSS before) / clients"
        echo "- (b) \`/send_to\`: \`$tool ${b_args[*]}\`: client 2k sends \`/send_to b-(2k+1) <mark>\`; latency = the recipient's \`private\` frame (one way, exact: both ends in one process), and the sender's \`sent\` frame (round trip)"
        echo "- (c) fan-out: \`$tool ${cd_args[*]}\`, phase fanout: the first member sends \`/group <mark>\` at $BENCH_WS_FANOUT_RATE msg/s to its $BENCH_WS_MEMBERS-member group (sender included); per message the first and the last member's arrival"
        echo "- (d) flat out: same run, phase flat: a new \`/group\` message whenever fewer than $BENCH_WS_WINDOW are in flight (sent, not yet at every member)"
        echo "- (e) \`$tool ${e_args[*]}\`: 2,000 clients in 20 groups of 100, one sender per group (messages go round the groups); both phases"
        echo "- (f) \`$tool ${f_args[*]}\`: 10,000 clients in 10 groups of 1,000, one sender per group; both phases; the server's peak RSS (VmHWM) at the end"
        echo "- Teardown (after (f)'s phases): every client sends its close frame at once and waits for the server to end its connection (at most 15 s); the server's CPU is counted from the first close until it is quiet again (the \`leave\` notices to the rest of each group included)"
        if [ -n "${WS_HWM_SINCE_START:-}" ]; then
            echo "- VmHWM could not be reset (\`/proc/PID/clear_refs\` not writable): each peak is the server's since it started, earlier scenarios of the round included"
        else
            echo "- VmHWM is reset to the current RSS (\`echo 5 > /proc/PID/clear_refs\`) before each scenario, so each peak is that scenario's (plus what the server kept from the earlier ones)"
        fi
        echo "- Each phase sends 1 s of unmeasured messages first; connecting the $BENCH_WS_MEMBERS members costs a join storm first (each connect is announced to the members already there: about $((BENCH_WS_MEMBERS * (BENCH_WS_MEMBERS - 1) / 2)) \`join\` frames), counted in (c)'s connect time but not in any measured window"
        echo
        echo "| figure | ours | Node ws | ours/Node |"
        echo "|---|---:|---:|---:|"
        ws_row "(a) connect rate, clients/s" idle connect.rate_per_s max
        ws_row "(a) connect latency p99, ms" idle connect.p99_ms min
        ws_row "(a) RSS per idle client, KiB" idle idle.rss_per_client_kib min
        ws_row "(a) VmRSS with $BENCH_WS_CLIENTS idle clients, KiB" idle idle.rss_idle_kib min
        ws_row "(a) clients open after ${BENCH_SECONDS} s idle" idle idle.open_after_hold max
        ws_row "(a) pongs to $BENCH_WS_CLIENTS pings" idle idle.pongs max
        ws_row "(a) server VmHWM (peak), KiB" idle server.hwm_end_kib min
        ws_row "(b) \`/send_to\` one-way p50, ms" rtt rtt.private_p50_ms min
        ws_row "(b) \`/send_to\` one-way p99, ms" rtt rtt.private_p99_ms min
        ws_row "(b) \`/send_to\` to \`sent\` p99, ms" rtt rtt.sent_p99_ms min
        ws_row "(b) server CPU per delivery, µs" rtt rtt.server_cpu_us_per_delivery min
        ws_row "(c) first receiver p50, ms" fanout fanout.first_p50_ms min
        ws_row "(c) first receiver p99, ms" fanout fanout.first_p99_ms min
        ws_row "(c) last receiver p50, ms" fanout fanout.last_p50_ms min
        ws_row "(c) last receiver p99, ms" fanout fanout.last_p99_ms min
        ws_row "(c) server CPU per delivery, µs" fanout fanout.server_cpu_us_per_delivery min
        ws_row "(d) deliveries/s" fanout flat.deliveries_per_s max
        ws_row "(d) server CPU per delivery, µs" fanout flat.server_cpu_us_per_delivery min
        ws_row "(d) server CPU, % of one core" fanout flat.server_cpu_pct max
        ws_row "(d) ws-bench CPU, % of one core" fanout flat.tool_cpu_pct min
        ws_row "(d) last receiver p99, ms" fanout flat.last_p99_ms min
        ws_row "(c, d) server VmHWM, KiB" fanout server.hwm_end_kib min
        ws_row "(e) 2,000 in 20 groups: last receiver p99, ms" fanout20 fanout.last_p99_ms min
        ws_row "(e) server CPU per delivery (flat), µs" fanout20 flat.server_cpu_us_per_delivery min
        ws_row "(e) of which in the kernel (stime), µs" fanout20 flat.server_sys_us_per_delivery min
        ws_row "(e) flat last receiver p99, ms" fanout20 flat.last_p99_ms min
        ws_row "(f) 10,000 in 10 groups: last receiver p99, ms" fanout10k fanout.last_p99_ms min
        ws_row "(f) server CPU per delivery (flat), µs" fanout10k flat.server_cpu_us_per_delivery min
        ws_row "(f) of which in the kernel (stime), µs" fanout10k flat.server_sys_us_per_delivery min
        ws_row "(f) flat last receiver p99, ms" fanout10k flat.last_p99_ms min
        ws_row "(f) server VmHWM (peak RSS), KiB" fanout10k server.hwm_end_kib min
        ws_row "(f) teardown, all 10,000 close at once: server CPU, s" fanout10k teardown.server_cpu_s min
        ws_row "(f) teardown: clients the server had not closed after 15 s" fanout10k teardown.unclosed max
        echo
        echo "### Goals"
        echo
        echo "| goal | measured | result |"
        echo "|---|---|---|"
        echo "| $GOAL_WS_CLIENTS concurrent clients held (all connected, all open after ${BENCH_SECONDS} s, all answer a ping) | ${held_desc:-–} | $(goal_cell "$held_ok") |"
        local oc_desc="–" nc_desc="–"
        [ -n "$WS_HAS_OURS" ] && oc_desc="$(ws_pick fanout ours flat.server_cpu_us_per_delivery min) µs"
        [ -n "$WS_HAS_NODE" ] && nc_desc="$(ws_pick fanout node flat.server_cpu_us_per_delivery min) µs"
        echo "| server CPU per delivery (flat out) at most Node's | ours $oc_desc, Node $nc_desc | $(goal_cell "$cpu_ok") |"
        echo "| \`/group\` to $BENCH_WS_MEMBERS members at $BENCH_WS_FANOUT_RATE msg/s: last receiver p99 < $GOAL_WS_FANOUT_LAST_P99_MS ms, every message complete | worst round ${worst_p99:-–} ms | $(goal_cell "$p99_ok") |"
        if [ -n "$WS_HAS_OURS" ] && [ -n "$WS_HAS_NODE" ]; then
            local sc key o n ok
            for sc in fanout fanout20 fanout10k; do
                case " $BENCH_WS_SCENARIOS " in *" $sc "*) ;; *) continue ;; esac
                for key in flat.server_cpu_us_per_delivery fanout.last_p99_ms; do
                    o="$(ws_pick "$sc" ours "$key" min)" n="$(ws_pick "$sc" node "$key" min)"
                    if [ "$key" = flat.server_cpu_us_per_delivery ]; then
                        ok="$(awk -v o="$o" -v n="$n" -v g="$GOAL_WS_CPU_VS_NODE" 'BEGIN { print ((o != "" && n != "" && o + 0 <= n * g) ? 1 : 0) }')"
                        echo "| $sc: server CPU per delivery (flat) <= $GOAL_WS_CPU_VS_NODE x Node's | ours ${o:-–} µs, Node ${n:-–} µs ($(ratio "${o:-0}" "${n:-0}")) | $(pass_fail "$ok") |"
                    else
                        ok="$(awk -v o="$o" -v n="$n" 'BEGIN { print ((o != "" && n != "" && o + 0 <= n + 0) ? 1 : 0) }')"
                        echo "| $sc: last receiver p99 (at $BENCH_WS_FANOUT_RATE msg/s) <= Node's | ours ${o:-–} ms, Node ${n:-–} ms ($(ratio "${o:-0}" "${n:-0}")) | $(pass_fail "$ok") |"
                    fi
                done
            done
            case " $BENCH_WS_SCENARIOS " in
                *" fanout10k "*)
                    o="$(ws_pick fanout10k ours server.hwm_end_kib min)" n="$(ws_pick fanout10k node server.hwm_end_kib min)"
                    ok="$(awk -v o="$o" -v n="$n" 'BEGIN { print ((o != "" && n != "" && o + 0 <= n + 0) ? 1 : 0) }')"
                    echo "| fanout10k: peak RSS <= Node's | ours ${o:-–} KiB, Node ${n:-–} KiB | $(pass_fail "$ok") |"
                    ;;
            esac
        fi
        echo "| server RSS per idle client < $GOAL_WS_RSS_PER_CLIENT_KIB KiB | worst round ${worst_rss:-–} KiB | $(goal_cell "$rss_ok") |"
        echo
        echo "All runs:"
        echo
        echo "| round | target | connect/s | RSS/idle client KiB | held | send_to p99 ms | fan-out first/last p99 ms | complete | flat deliveries/s | flat CPU µs/delivery | ws-bench CPU % (flat) |"
        echo "|---:|---|---:|---:|---|---:|---:|---:|---:|---:|---:|"
        for r in $(seq 1 "$BENCH_ROUNDS"); do
            for who in "${targets[@]}"; do
                local fi_="$TMP/ws-idle-$who-$r.txt" fr="$TMP/ws-rtt-$who-$r.txt" ff="$TMP/ws-fanout-$who-$r.txt"
                echo "| $r | $who | $(wsv "$fi_" connect.rate_per_s) | $(wsv "$fi_" idle.rss_per_client_kib) | $(wsv "$fi_" idle.open_after_hold)/$(wsv "$fi_" connect.ok) open, $(wsv "$fi_" idle.pongs) pongs | $(wsv "$fr" rtt.private_p99_ms) | $(wsv "$ff" fanout.first_p99_ms) / $(wsv "$ff" fanout.last_p99_ms) | $(wsv "$ff" fanout.complete)/$(wsv "$ff" fanout.measured) | $(wsv "$ff" flat.deliveries_per_s) | $(wsv "$ff" flat.server_cpu_us_per_delivery) | $(wsv "$ff" flat.tool_cpu_pct) |"
            done
        done
        echo
    } >"$sec"

    echo
    cat "$sec"
    write_section ws "$sec"
}

# ---------------------------------------------------------------------------------------------

usage() {
    cat >&2 <<EOF2
usage: scripts/bench.sh <subcommand>
  http    GET / and GET /health under wrk, against nginx (writes "## http" in BENCHMARKS.md)
  users   GET /users/{id} against pgbench's same SELECT; logins/s with /health p99 under it
          (writes "## users" in BENCHMARKS.md)
  sizing  GET /users/{id} for each WORKERS x DB_POOL_SIZE of BENCH_SIZING_GRID: req/s, p99, server
          CPU and wake-ups per request (writes "## sizing" in BENCHMARKS.md)
  counts  system calls (strace -c) and allocations (perf uprobes on malloc) per GET / and GET /health
          (writes "## counts" in BENCHMARKS.md)
  files   a 1 GiB upload against dd, RSS during it, its download against nginx, 64 concurrent
          1 MiB uploads (writes "## files" in BENCHMARKS.md)
  ws      10,000 idle clients, /send_to latency, /group fan-out to 1,000 members at 10 msg/s and
          flat out, against a Node ws server (writes "## ws" in BENCHMARKS.md)
  ws-cluster  /send_to latency and /group fan-out across 3 instances (CLUSTER=postgres) against
          one instance (scripts/bench/ws-cluster.sh; writes "## ws-cluster" in BENCHMARKS.md)
  abuse   /health under wrk while 500 hostile sockets of each kind are held, against none
          (scripts/bench/abuse.sh; writes "## abuse" in BENCHMARKS.md)
  drill   60 s of mixed load with a 20 s PostgreSQL outage in the middle (scripts/bench/drill.sh;
          writes "## drill" in BENCHMARKS.md)
  dbgui   a 1,000,000-row CSV export from db-gui against psql --csv, the JSON export, the GUI's
          peak RSS (scripts/bench/dbgui.sh; writes "## dbgui" in BENCHMARKS.md)
  backup  adcluster backup/restore of 100k users and 10k file records against pg_dump/psql by
          hand (scripts/bench/backup.sh; writes "## backup" in BENCHMARKS.md)
EOF2
    exit 2
}

main() {
    [ $# -ge 1 ] || usage
    case "$1" in
        http) cmd_http ;;
        users) cmd_users ;;
        sizing) cmd_sizing ;;
        counts) cmd_counts ;;
        files) cmd_files ;;
        ws) cmd_ws ;;
        ws-cluster) BENCH_MD="$BENCH_MD" exec "$ROOT/scripts/bench/ws-cluster.sh" ;;
        abuse) source "$ROOT/scripts/bench/abuse.sh"; cmd_abuse ;;
        drill) exec "$ROOT/scripts/bench/drill.sh" ;;
        dbgui) source "$LUA_DIR/dbgui.sh" && cmd_dbgui ;;
        backup) exec "$ROOT/scripts/bench/backup.sh" ;;
        -h | --help | help) usage ;;
        *) usage ;;
    esac
}

main "$@"
