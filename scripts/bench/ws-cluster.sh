#!/usr/bin/env bash
# scripts/bench.sh ws-cluster: WebSocket messaging across instances (CLUSTER=postgres), side by
# side with one instance, in the same run, on the same database server, driven by tools/ws-bench.
#
#   (b) /send_to latency: BENCH_WS_RTT_CLIENTS clients in pairs, BENCH_WS_RTT_RATE msg/s in total.
#       Single: both ends of every pair on the one instance. Cluster: clients spread round-robin
#       over 3 instances, so the two ends of every pair are on different instances.
#   (c) /group fan-out to BENCH_WS_MEMBERS members (one group) at BENCH_WS_FANOUT_RATE msg/s:
#       first and last receiver. Cluster: the members spread over the 3 instances.
#   (d) the same group flat out (at most BENCH_WS_WINDOW messages in flight): deliveries/s.
#
# Goals (from the issue): cluster (b) p99 <= 2 x single p99 + 5 ms; cluster (d) deliveries/s >=
# 50% of single. Results replace the "## ws-cluster" section of BENCH_MD.
#
# With BENCH_WS_REF_BIN=<another adcluster binary> (e.g. one built from main), each round also
# runs the single-instance scenarios with it, first, and the table gets a column for it: the A/B
# that shows whether CLUSTER=off costs the single instance anything. BENCH_WS_REF_DESC says what
# it is (e.g. "main at fef8b32") in the section.
#
# Environment: BENCH_SECONDS (10), BENCH_ROUNDS (1; each round runs single then cluster),
# BENCH_MD, BENCH_SERVER_BIN, BENCH_KEEP_TMP, BENCH_WS_RTT_CLIENTS (200), BENCH_WS_RTT_RATE (1000),
# BENCH_WS_MEMBERS (1000), BENCH_WS_FANOUT_RATE (10), BENCH_WS_WINDOW (8), and DB_HOST, DB_PORT,
# DB_USER, DB_PASSWORD (127.0.0.1, 5432, postgres, none): a fresh database is created there and
# dropped at exit. Leaves no process or database behind (cleanup runs on every exit).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
BENCH_MD="${BENCH_MD:-${BENCHMARKS_FILE:-$ROOT/BENCHMARKS.md}}"
BENCH_SECONDS="${BENCH_SECONDS:-10}"
BENCH_ROUNDS="${BENCH_ROUNDS:-1}"
BENCH_WS_RTT_CLIENTS="${BENCH_WS_RTT_CLIENTS:-200}"
BENCH_WS_RTT_RATE="${BENCH_WS_RTT_RATE:-1000}"
BENCH_WS_MEMBERS="${BENCH_WS_MEMBERS:-1000}"
BENCH_WS_FANOUT_RATE="${BENCH_WS_FANOUT_RATE:-10}"
BENCH_WS_WINDOW="${BENCH_WS_WINDOW:-8}"
for v in BENCH_SECONDS BENCH_ROUNDS BENCH_WS_RTT_CLIENTS BENCH_WS_RTT_RATE BENCH_WS_MEMBERS BENCH_WS_FANOUT_RATE BENCH_WS_WINDOW; do
    [[ "${!v}" =~ ^[1-9][0-9]*$ ]] || { echo "bench: error: $v must be a positive integer, not '${!v}'" >&2; exit 2; }
done
export PGHOST="${DB_HOST:-127.0.0.1}" PGPORT="${DB_PORT:-5432}" PGUSER="${DB_USER:-postgres}"
[ -n "${DB_PASSWORD:-}" ] && export PGPASSWORD="$DB_PASSWORD"

die() { echo "bench: error: $*" >&2; exit 1; }
log() { echo "bench: $*" >&2; }
for t in psql cargo awk setsid; do command -v "$t" >/dev/null || die "$t is needed (install it first)"; done

TMP="$(mktemp -d "${TMPDIR:-/tmp}/adc-bench-cluster.XXXXXX")"
DB="adc_bench_cluster_$$"
PIDS=()
cleanup() {
    local p
    for p in "${PIDS[@]}"; do kill -TERM -- "-$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do
        for _ in $(seq 1 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
        kill -KILL -- "-$p" 2>/dev/null || true
    done
    psql -X -q -d postgres -c "DROP DATABASE IF EXISTS \"$DB\" WITH (FORCE)" >/dev/null 2>&1 || true
    if [ -n "${BENCH_KEEP_TMP:-}" ]; then log "kept $TMP"; else rm -rf "$TMP"; fi
}
trap cleanup EXIT

target="${CARGO_TARGET_DIR:-$ROOT/target}"
case "$target" in /*) ;; *) target="$ROOT/$target" ;; esac
if [ -n "${BENCH_SERVER_BIN:-}" ]; then
    BIN="$BENCH_SERVER_BIN"
else
    log "cargo build --release"
    (cd "$ROOT" && cargo build --release) >&2 || die "cargo build --release failed"
    BIN="$target/release/adcluster"
fi
(cd "$ROOT" && cargo build -p ws-bench --release) >&2 || die "cargo build -p ws-bench --release failed"
WSB="$target/release/ws-bench"

ulimit -Sn "$(ulimit -Hn)" 2>/dev/null || true
psql -X -q -d postgres -c "CREATE DATABASE \"$DB\"" >/dev/null || die "cannot create database $DB on $PGHOST:$PGPORT"
SECRET="$(od -An -tx1 -N32 /dev/urandom | tr -d ' \n')"

# start NAME [VAR=VALUE...]: one server in its own process group (setsid: cleanup stops it by
# that id); sets PORT.
start() {
    local name=$1 logf="$TMP/$1.log" port=""
    shift
    mkdir -p "$TMP/$name"
    # From its own directory, so that no .env of the caller's directory is read.
    env -C "$TMP/$name" DB_HOST="$PGHOST" DB_PORT="$PGPORT" DB_USER="$PGUSER" DB_PASSWORD="${PGPASSWORD:-}" \
        DB_NAME="$DB" SECRET_KEY="$SECRET" DATA_DIR="$TMP/$name/data" UPLOAD_DIR="$TMP/$name/uploads" \
        WS_MAX_CLIENTS=5000 WS_MAX_CLIENTS_PER_ADDR=0 LOG_LEVEL=info "$@" setsid "${START_BIN:-$BIN}" serve --host 127.0.0.1 --port 0 >"$logf" 2>&1 </dev/null &
    local pid=$!
    PIDS+=("$pid")
    for _ in $(seq 1 100); do
        port="$(grep -oE 'listening on http://127\.0\.0\.1:[0-9]+' "$logf" 2>/dev/null | head -n1 | sed 's/.*://' || true)"
        [ -n "$port" ] && { PORT=$port; return 0; }
        kill -0 "$pid" 2>/dev/null || { tail -n 20 "$logf" >&2; die "$name exited before listening"; }
        sleep 0.1
    done
    die "$name was not listening within 10 s"
}

stop_all() {
    local p
    for p in "${PIDS[@]}"; do kill -TERM -- "-$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do for _ in $(seq 1 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done; done
    PIDS=()
}

# run LABEL URLS ARGS...: one ws-bench run; its `key value` lines go to $TMP/LABEL.txt.
run() {
    local label=$1 urls=$2
    shift 2
    log "$label: ws-bench --url $urls $*"
    "$WSB" --url "$urls" "$@" >"$TMP/$label.txt" 2>"$TMP/$label.log" || { tail -n 20 "$TMP/$label.log" >&2; die "ws-bench failed ($label)"; }
}
wsv() { awk -v k="$2" '$1 == k { v = $2 } END { print v }' "$1"; }

b_args=(--clients "$BENCH_WS_RTT_CLIENTS" --members 2 --mode rtt --rate "$BENCH_WS_RTT_RATE" --seconds "$BENCH_SECONDS")
cd_args=(--clients "$BENCH_WS_MEMBERS" --groups 1 --mode fanout,flat --rate "$BENCH_WS_FANOUT_RATE" --window "$BENCH_WS_WINDOW" --seconds "$BENCH_SECONDS")

REF="${BENCH_WS_REF_BIN:-}"
[ -z "$REF" ] || [ -x "$REF" ] || die "BENCH_WS_REF_BIN=$REF is not an executable"
for r in $(seq 1 "$BENCH_ROUNDS"); do
    if [ -n "$REF" ]; then
        START_BIN="$REF" start ref
        run "rtt-ref-$r" "ws://127.0.0.1:$PORT" "${b_args[@]}" --id-prefix "r$r"
        run "fan-ref-$r" "ws://127.0.0.1:$PORT" "${cd_args[@]}" --id-prefix "r$r"
        stop_all
    fi
    start single CLUSTER=off
    p=$PORT
    run "rtt-single-$r" "ws://127.0.0.1:$p" "${b_args[@]}" --id-prefix "s$r"
    run "fan-single-$r" "ws://127.0.0.1:$p" "${cd_args[@]}" --id-prefix "s$r"
    stop_all
    urls=""
    for n in 1 2 3; do
        start "n$n" CLUSTER=postgres INSTANCE_ID="bench-n$n"
        urls+="${urls:+,}ws://127.0.0.1:$PORT"
    done
    # Ready when every instance listens and has heard the others (a heartbeat each way).
    for _ in $(seq 1 100); do
        [ "$(grep -l 'cluster: instance bench-n. listening' "$TMP"/n?.log 2>/dev/null | wc -l)" = 3 ] && break
        sleep 0.1
    done
    sleep 1
    run "rtt-cluster-$r" "$urls" "${b_args[@]}" --id-prefix "c$r"
    run "fan-cluster-$r" "$urls" "${cd_args[@]}" --id-prefix "c$r"
    stop_all
done

# --- the section: the best round of each side (lowest p99, highest deliveries/s) ---------------
best() { # PREFIX KEY min|max
    local f v out=""
    for f in "$TMP"/"$1"-*.txt; do
        v="$(wsv "$f" "$2")"
        [ -z "$v" ] && continue
        if [ -z "$out" ] || awk -v a="$v" -v b="$out" -v m="$3" 'BEGIN { exit !((m == "min") ? a < b : a > b) }'; then out=$v; fi
    done
    echo "${out:-n/a}"
}
s50="$(best rtt-single rtt.private_p50_ms min)" s99="$(best rtt-single rtt.private_p99_ms min)"
c50="$(best rtt-cluster rtt.private_p50_ms min)" c99="$(best rtt-cluster rtt.private_p99_ms min)"
sl="$(best rtt-single rtt.lost min)" cl="$(best rtt-cluster rtt.lost min)"
sf50="$(best fan-single fanout.last_p50_ms min)" sf99="$(best fan-single fanout.last_p99_ms min)"
cf50="$(best fan-cluster fanout.last_p50_ms min)" cf99="$(best fan-cluster fanout.last_p99_ms min)"
sfi="$(best fan-single fanout.incomplete min)" cfi="$(best fan-cluster fanout.incomplete min)"
sd="$(best fan-single flat.deliveries_per_s max)" cd="$(best fan-cluster flat.deliveries_per_s max)"
lat_ok="$(awk -v c="$c99" -v s="$s99" 'BEGIN { print ((c + 0 <= 2 * s + 5) ? "PASS" : "FAIL") }')"
thr_ok="$(awk -v c="$cd" -v s="$sd" 'BEGIN { print ((c + 0 >= 0.5 * s) ? "PASS" : "FAIL") }')"
ratio="$(awk -v c="$cd" -v s="$sd" 'BEGIN { printf "%.2f", (s > 0 ? c / s : 0) }')"
# The reference column (BENCH_WS_REF_BIN), or nothing.
refcol() { if [ -n "$REF" ]; then echo " $(best "$1" "$2" "$3") |"; fi; }

mem="$(free -g | awk '/^Mem:/ { print $2 }')"
os=""
# shellcheck source=/dev/null
[ -r /etc/os-release ] && os="$(. /etc/os-release && echo "${PRETTY_NAME:-}")"
pgv="$(psql -X -q -A -t -d postgres -c 'SHOW server_version')"
sec="$TMP/section.md"
{
    echo "## ws-cluster"
    echo
    echo "WebSocket messaging across three instances (\`CLUSTER=postgres\`, one database, LISTEN/NOTIFY) side by side with one instance, same run, same machine, driven by \`tools/ws-bench\` (\`scripts/bench/ws-cluster.sh\`)."
    echo
    echo "- Date: $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "- Machine: $(nproc) cores (nproc), ${mem} GiB RAM (free -g), kernel $(uname -r), ${os}; CPU $(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)"
    echo "- Command: \`scripts/bench.sh ws-cluster\` (BENCH_SECONDS=$BENCH_SECONDS, BENCH_ROUNDS=$BENCH_ROUNDS, BENCH_WS_RTT_CLIENTS=$BENCH_WS_RTT_CLIENTS, BENCH_WS_RTT_RATE=$BENCH_WS_RTT_RATE, BENCH_WS_MEMBERS=$BENCH_WS_MEMBERS, BENCH_WS_FANOUT_RATE=$BENCH_WS_FANOUT_RATE, BENCH_WS_WINDOW=$BENCH_WS_WINDOW)"
    echo "- Servers: \`target/release/adcluster serve\` on 127.0.0.1, LOG_LEVEL=info, WS_MAX_CLIENTS=5000, WS_MAX_CLIENTS_PER_ADDR=0; single: CLUSTER=off; cluster: three processes with CLUSTER=postgres, INSTANCE_ID=bench-n1..3, other settings default; PostgreSQL $pgv on $PGHOST:$PGPORT, a fresh database dropped after the run. All processes share the machine's cores with the load generator (and with whatever else runs on it)."
    echo "- Clients: \`ws-bench --url ws://A[,ws://B,ws://C]\`: client i connects to the (i mod 3)-th instance, so the two ends of each /send_to pair are always on different instances and 2/3 of the group's members are remote to the sender."
    [ -n "$REF" ] && echo "- Reference: BENCH_WS_REF_BIN=\`$REF\`${BENCH_WS_REF_DESC:+ ($BENCH_WS_REF_DESC)}, CLUSTER unset, run first in each round with the same scenarios: the A/B of the single instance before and after this feature."
    echo "- Load average at the end of the run: $(cut -d' ' -f1-3 /proc/loadavg) (the machine is shared; every figure is noisy to that extent)"
    echo
    if [ -n "$REF" ]; then
        echo "| measure | single instance, reference binary | single instance (CLUSTER=off) | 3 instances | goal | result |"
        echo "|---|---|---|---|---|---|"
    else
        echo "| measure | single instance | 3 instances | goal | result |"
        echo "|---|---|---|---|---|"
    fi
    echo "| (b) /send_to at $BENCH_WS_RTT_RATE msg/s: p50, ms |$(refcol rtt-ref rtt.private_p50_ms min) $s50 | $c50 | | |"
    echo "| (b) /send_to at $BENCH_WS_RTT_RATE msg/s: p99, ms |$(refcol rtt-ref rtt.private_p99_ms min) $s99 | $c99 | cluster <= 2 x single + 5 | $lat_ok |"
    echo "| (b) messages lost |$(refcol rtt-ref rtt.lost min) $sl | $cl | 0 | |"
    echo "| (c) /group to $BENCH_WS_MEMBERS members at $BENCH_WS_FANOUT_RATE msg/s, last receiver p50, ms |$(refcol fan-ref fanout.last_p50_ms min) $sf50 | $cf50 | | |"
    echo "| (c) same, last receiver p99, ms |$(refcol fan-ref fanout.last_p99_ms min) $sf99 | $cf99 | | |"
    echo "| (c) messages not delivered to every member |$(refcol fan-ref fanout.incomplete min) $sfi | $cfi | 0 | |"
    echo "| (d) /group flat out (window $BENCH_WS_WINDOW): deliveries/s |$(refcol fan-ref flat.deliveries_per_s max) $sd | $cd | cluster >= 50% of single | $thr_ok (ratio $ratio) |"
    echo
    echo "Best round of each side (lowest latency, highest deliveries/s). The raw \`key value\` outputs are in the run's temp dir (BENCH_KEEP_TMP=1 keeps it)."
} >"$sec"
cat "$sec" >&2
[ -f "$BENCH_MD" ] || printf '# Benchmarks\n\n' >"$BENCH_MD"
tmpf="$(mktemp)"
awk -v h="## ws-cluster" -v bf="$sec" '
    function emit(   line) { while ((getline line < bf) > 0) print line; close(bf); done = 1 }
    $0 == h && !done { emit(); skip = 1; next }
    skip && /^## / { skip = 0 }
    skip { next }
    { print; last = $0 }
    END { if (!done) { if (last != "") print ""; emit() } }
' "$BENCH_MD" >"$tmpf"
cat "$tmpf" >"$BENCH_MD"
rm -f "$tmpf"
log "wrote section '## ws-cluster' of $BENCH_MD"
