#!/usr/bin/env bash
# Benchmarks for the Adcluster server. Results go to BENCHMARKS.md at the repo root, one
# "## <subcommand>" section per subcommand; re-running a subcommand replaces only its own section.
#
#   scripts/bench.sh http     GET /health under wrk, side by side with nginx returning the same JSON
#
# Subcommands to come (one function each, same helpers): users, files, ws.
#
# Environment:
#   BENCH_SECONDS=10          duration of each wrk run
#   BENCH_ROUNDS=2            rounds per target; targets alternate (ours, nginx, ours, nginx, ...)
#   BENCH_NGINX_WORKERS=auto  nginx worker_processes (see "Why worker_processes auto" below)
#   BENCH_SERVER_CMD=...      run this instead of building and starting target/release/adcluster
#                             (a stand-in for testing this script). It is run with bash -c, gets
#                             DATA_DIR, UPLOAD_DIR and LOG_LEVEL like the real server, must listen on
#                             127.0.0.1 and print "listening on http://127.0.0.1:<port>" to stdout or
#                             stderr, and must answer GET /health with 200.
#   BENCH_MD=<path>           where to write the results (default: <repo>/BENCHMARKS.md)
#
# Why worker_processes auto: this machine has 2 cores and our server uses both (its worker pool is
# not pinned to one core), so the fair reference is nginx with one worker per core, which is what
# `auto` gives. wrk runs on the same 2 cores (-t2), so neither side has the machine to itself; the
# choice is recorded in each section BENCHMARKS.md gets.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BENCH_MD="${BENCH_MD:-$ROOT/BENCHMARKS.md}"
BENCH_SECONDS="${BENCH_SECONDS:-10}"
BENCH_ROUNDS="${BENCH_ROUNDS:-2}"
BENCH_NGINX_WORKERS="${BENCH_NGINX_WORKERS:-auto}"
WRK_THREADS=2
WRK_CONNS=64

# Goals of the http section.
GOAL_HTTP_RATIO=0.5   # ours/nginx req/s at least this
GOAL_HTTP_P99_MS=10   # our p99 below this

TMP=""
SERVER_PID=""
NGINX_PID=""
SERVER_PORT=""
NGINX_PORT=""

die() { echo "bench: error: $*" >&2; exit 1; }
log() { echo "bench: $*" >&2; }

# ---------------------------------------------------------------------------------------------
# cleanup

stop_group() { # pid: the leader of a process group we started with setsid
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
    local rc=$?
    trap - EXIT INT TERM
    stop_group "$SERVER_PID"
    stop_group "$NGINX_PID"
    wait 2>/dev/null || true
    if [ -n "$TMP" ] && [ -d "$TMP" ]; then rm -rf "$TMP"; fi
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
    if [ -n "${BENCH_SERVER_CMD:-}" ]; then
        log "BENCH_SERVER_CMD is set: not building, using the stand-in"
        return 0
    fi
    command -v cargo >/dev/null 2>&1 || die "cargo not found"
    log "cargo build --release (in $ROOT)"
    (cd "$ROOT" && cargo build --release) >&2 || die "cargo build --release failed"
    [ -x "$(server_bin)" ] || die "no $(server_bin) after the build"
}

# target/release/adcluster (honours CARGO_TARGET_DIR, absolute or relative to the repo root)
server_bin() {
    local t="${CARGO_TARGET_DIR:-target}"
    case "$t" in /*) ;; *) t="$ROOT/$t" ;; esac
    echo "$t/release/adcluster"
}

# Starts the server (or BENCH_SERVER_CMD) and sets SERVER_PID, SERVER_PORT.
start_server() {
    make_tmp
    mkdir -p "$TMP/data" "$TMP/uploads"
    local logf="$TMP/server.log" cmd
    if [ -n "${BENCH_SERVER_CMD:-}" ]; then
        cmd="$BENCH_SERVER_CMD"
    else
        cmd="exec '$(server_bin)' serve --host 127.0.0.1 --port 0"
    fi
    # setsid: the server leads its own process group, so cleanup can stop all of it by that id.
    DATA_DIR="$TMP/data" UPLOAD_DIR="$TMP/uploads" LOG_LEVEL=warn \
        setsid bash -c "$cmd" >"$logf" 2>&1 </dev/null &
    SERVER_PID=$!
    for _ in $(seq 1 100); do
        SERVER_PORT="$(grep -oE 'http://127\.0\.0\.1:[0-9]+' "$logf" 2>/dev/null | head -n1 | sed 's/.*://' || true)"
        [ -n "$SERVER_PORT" ] && break
        kill -0 "$SERVER_PID" 2>/dev/null || { tail -n 20 "$logf" >&2; die "the server exited before listening"; }
        sleep 0.1
    done
    [ -n "$SERVER_PORT" ] || { tail -n 20 "$logf" >&2; die "no 'listening on http://127.0.0.1:<port>' within 10 s"; }
    local code
    code="$(curl -sS -o /dev/null -w '%{http_code}' --max-time 5 "http://127.0.0.1:$SERVER_PORT/health" || true)"
    [ "$code" = 200 ] || { tail -n 20 "$logf" >&2; die "GET /health on our server answered '$code', not 200"; }
    log "server pid $SERVER_PID on port $SERVER_PORT"
}

# Starts nginx in the foreground with its own config; sets NGINX_PID, NGINX_PORT.
# $1: the JSON body it returns for every request.
start_nginx() {
    make_tmp
    local body=$1 dir="$TMP/nginx"
    mkdir -p "$dir/logs" "$dir/tmp"
    NGINX_PORT="$(free_port)"
    cat >"$dir/nginx.conf" <<EOF
# Written by scripts/bench.sh; lives only for one run.
worker_processes $BENCH_NGINX_WORKERS;
daemon off;
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
        location / {
            default_type application/json;
            return 200 '$body';
        }
    }
}
EOF
    local attempt
    for attempt in 1 2 3 4 5; do
        [ "$attempt" = 1 ] || { NGINX_PORT="$(free_port)"; sed -i "s/listen 127\.0\.0\.1:[0-9]*;/listen 127.0.0.1:$NGINX_PORT;/" "$dir/nginx.conf"; }
        setsid "$(nginx_bin)" -p "$dir" -c "$dir/nginx.conf" -e "$dir/logs/error.log" \
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
# wrk

WRK_CMD_DESC="wrk -t$WRK_THREADS -c$WRK_CONNS -d${BENCH_SECONDS}s --latency URL"

# run_wrk URL OUTFILE: prints "<req/s> <p99 ms> <non-2xx> <socket errors>"
run_wrk() {
    local url=$1 out=$2
    wrk -t"$WRK_THREADS" -c"$WRK_CONNS" -d"${BENCH_SECONDS}s" --latency "$url" >"$out" 2>&1 \
        || { cat "$out" >&2; die "wrk failed on $url"; }
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
        }' "$out" || { cat "$out" >&2; die "could not parse the wrk output for $url"; }
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
    cat >"$BENCH_MD" <<EOF
# Benchmarks

Written by \`scripts/bench.sh <section>\` (each run replaces only its own \`## <section>\`).

- Machine: $(machine_line)
- File started: $(date -u '+%Y-%m-%d %H:%M UTC')

EOF
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

pass_fail() { if [ "$1" = 1 ]; then echo PASS; else echo FAIL; fi; }

# ---------------------------------------------------------------------------------------------
# subcommand: http

HEALTH_BODY='{"status":"ok","database":"up","version":"0.1.0","uptime_seconds":1}'

cmd_http() {
    need_tools wrk:wrk nginx:nginx curl:curl
    build_server
    start_server
    start_nginx "$HEALTH_BODY"

    local ours_url="http://127.0.0.1:$SERVER_PORT/health"
    local nginx_url="http://127.0.0.1:$NGINX_PORT/health"
    local best_ours="" best_nginx="" r res all=""
    for r in $(seq 1 "$BENCH_ROUNDS"); do
        for who in ours nginx; do
            local url=$ours_url
            [ "$who" = nginx ] && url=$nginx_url
            log "round $r: $who ($url, ${BENCH_SECONDS}s)"
            res="$(run_wrk "$url" "$TMP/wrk-$who-$r.txt")"
            log "  req/s p99_ms non2xx socket_errors: $res"
            all+="| $r | $who | $(echo "$res" | awk '{ printf "%s | %.2f | %s | %s", $1, $2, $3, $4 }') |"$'\n'
            if [ "$who" = ours ]; then
                if [ -z "$best_ours" ] || awk -v a="$res" -v b="$best_ours" 'BEGIN { split(a, x, " "); split(b, y, " "); exit !(x[1] > y[1]) }'; then best_ours=$res; fi
            else
                if [ -z "$best_nginx" ] || awk -v a="$res" -v b="$best_nginx" 'BEGIN { split(a, x, " "); split(b, y, " "); exit !(x[1] > y[1]) }'; then best_nginx=$res; fi
            fi
        done
        kill -0 "$SERVER_PID" 2>/dev/null || { tail -n 20 "$TMP/server.log" >&2; die "our server died during the run"; }
    done

    local o_rps o_p99 o_non2xx o_serr n_rps n_p99 n_non2xx n_serr ratio ratio_ok p99_ok
    read -r o_rps o_p99 o_non2xx o_serr <<<"$best_ours"
    read -r n_rps n_p99 n_non2xx n_serr <<<"$best_nginx"
    ratio="$(awk -v a="$o_rps" -v b="$n_rps" 'BEGIN { printf "%.2f", (b > 0 ? a / b : 0) }')"
    ratio_ok="$(awk -v r="$ratio" -v g="$GOAL_HTTP_RATIO" 'BEGIN { print ((r + 0 >= g + 0) ? 1 : 0) }')"
    p99_ok="$(awk -v p="$o_p99" -v g="$GOAL_HTTP_P99_MS" 'BEGIN { print ((p + 0 < g + 0) ? 1 : 0) }')"
    local note=""
    if [ "$o_non2xx" != 0 ] || [ "$o_serr" != 0 ]; then
        note="Warning: our best run had $o_non2xx non-2xx responses and $o_serr socket errors."
    fi
    if [ "$n_non2xx" != 0 ] || [ "$n_serr" != 0 ]; then
        note="${note:+$note }Warning: nginx's best run had $n_non2xx non-2xx responses and $n_serr socket errors."
    fi

    local server_desc="target/release/adcluster serve --host 127.0.0.1 --port 0"
    [ -n "${BENCH_SERVER_CMD:-}" ] && server_desc="stand-in (BENCH_SERVER_CMD): ${BENCH_SERVER_CMD}"
    local sec="$TMP/section-http.md"
    {
        echo "## http"
        echo
        echo "\`GET /health\` on our server against nginx returning the same JSON, same run, same machine."
        echo
        echo "- Date: $(date -u '+%Y-%m-%d %H:%M UTC')"
        echo "- Machine: $(machine_line)"
        echo "- Command: \`scripts/bench.sh http\` (BENCH_SECONDS=$BENCH_SECONDS, BENCH_ROUNDS=$BENCH_ROUNDS)"
        echo "- Load: \`$WRK_CMD_DESC\`, targets alternating (ours, nginx) for $BENCH_ROUNDS rounds; best req/s of each, p99 from that same run"
        echo "- Ours: \`$server_desc\` (LOG_LEVEL=warn, DATA_DIR and UPLOAD_DIR in a temp dir)"
        echo "- nginx: $("$(nginx_bin)" -v 2>&1 | sed 's/^nginx version: //'), \`worker_processes $BENCH_NGINX_WORKERS\` (one worker per core on this machine; our server also uses all cores), \`keepalive_requests 1000000\`, \`return 200\` of the JSON body"
        echo
        echo "| | req/s | p99 (ms) |"
        echo "|---|---:|---:|"
        echo "| adcluster \`GET /health\` | $o_rps | $o_p99 |"
        echo "| nginx \`return 200\` | $n_rps | $n_p99 |"
        echo "| ratio ours/nginx | $ratio | |"
        echo
        echo "| goal | measured | result |"
        echo "|---|---:|---|"
        echo "| ratio ours/nginx >= $GOAL_HTTP_RATIO | $ratio | $(pass_fail "$ratio_ok") |"
        echo "| our p99 < $GOAL_HTTP_P99_MS ms | $o_p99 ms | $(pass_fail "$p99_ok") |"
        echo
        echo "All runs:"
        echo
        echo "| round | target | req/s | p99 (ms) | non-2xx | socket errors |"
        echo "|---:|---|---:|---:|---:|---:|"
        printf '%s' "$all"
        if [ -n "$note" ]; then echo; echo "$note"; fi
        echo
    } >"$sec"

    echo
    printf '%-28s %12s %10s\n' "" "req/s" "p99 ms"
    printf '%-28s %12s %10s\n' "adcluster GET /health" "$o_rps" "$o_p99"
    printf '%-28s %12s %10s\n' "nginx return 200" "$n_rps" "$n_p99"
    printf '%-28s %12s\n' "ratio ours/nginx" "$ratio"
    echo
    printf 'goal ratio >= %s: %s    goal our p99 < %s ms: %s\n' \
        "$GOAL_HTTP_RATIO" "$(pass_fail "$ratio_ok")" "$GOAL_HTTP_P99_MS" "$(pass_fail "$p99_ok")"
    [ -n "$note" ] && echo "$note"

    ensure_bench_md
    md_replace_section "$BENCH_MD" "## http" "$sec"
    log "wrote section '## http' of $BENCH_MD"
}

# ---------------------------------------------------------------------------------------------

usage() {
    cat >&2 <<EOF
usage: scripts/bench.sh <subcommand>
  http    GET /health under wrk, against nginx (writes "## http" in BENCHMARKS.md)
  (to come: users, files, ws)
EOF
    exit 2
}

main() {
    [ $# -ge 1 ] || usage
    case "$1" in
        http) cmd_http ;;
        users | files | ws) die "'$1' is not written yet" ;;
        -h | --help | help) usage ;;
        *) usage ;;
    esac
}

main "$@"
