# shellcheck shell=bash
# `scripts/bench.sh abuse`: /health under a normal wrk client while hostile sockets are held,
# against the same with none. Sourced by scripts/bench.sh (its helpers: build_server,
# start_server, run_wrk, section_head, write_section, ...).
#
# For each kind of scripts/bench/abuse_hold.py (stalled chunked bodies, stalled 100-continue
# bodies, dribbled large bodies, unread responses, slow-loris heads), BENCH_ABUSE_SOCKETS (500)
# sockets are held while `wrk -t2 -c64` measures GET /health; the baseline (no hostile socket)
# runs first and last, and the better of the two is the reference. The goal: the normal client
# keeps at least 0.8x its throughput and a p99 under 50 ms.

BENCH_ABUSE_SOCKETS="${BENCH_ABUSE_SOCKETS:-500}"
BENCH_ABUSE_KINDS="${BENCH_ABUSE_KINDS:-chunked continue large unread loris}"
GOAL_ABUSE_RATIO=0.8
GOAL_ABUSE_P99_MS=50

# abuse_run NAME: one wrk run against /health; prints "req/s p99_ms non2xx socket_errors".
abuse_run() {
    run_wrk "$TMP/wrk-abuse-$1.txt" "${WRK_STD[@]}" "http://127.0.0.1:$SERVER_PORT/health"
}

cmd_abuse() {
    [[ "$BENCH_ABUSE_SOCKETS" =~ ^[1-9][0-9]*$ ]] || die "BENCH_ABUSE_SOCKETS must be a positive integer"
    need_tools wrk:wrk curl:curl ss:iproute2 python3:python3
    build_server
    start_server
    local holder="$ROOT/scripts/bench/abuse_hold.py" rows="" kind res base1 base2 base pid line
    log "baseline (no hostile sockets, ${BENCH_SECONDS}s)"
    base1="$(abuse_run none-1)"
    log "  req/s p99_ms non2xx socket_errors: $base1"
    for kind in $BENCH_ABUSE_KINDS; do
        log "$kind: holding $BENCH_ABUSE_SOCKETS sockets"
        setsid python3 "$holder" "$SERVER_PORT" "$kind" "$BENCH_ABUSE_SOCKETS" >"$TMP/hold-$kind.txt" 2>&1 &
        pid=$!
        BG_PIDS+=("$pid")
        for _ in $(seq 1 100); do
            grep -q '^held' "$TMP/hold-$kind.txt" 2>/dev/null && break
            kill -0 "$pid" 2>/dev/null || { cat "$TMP/hold-$kind.txt" >&2; die "the $kind holder exited"; }
            sleep 0.1
        done
        grep -q '^held' "$TMP/hold-$kind.txt" || die "the $kind holder did not open its sockets within 10 s"
        sleep 1
        res="$(abuse_run "$kind")"
        log "  req/s p99_ms non2xx socket_errors: $res"
        rows+="$kind $res"$'\n'
        stop_group "$pid"
        server_alive
        sleep 1
    done
    log "baseline again"
    base2="$(abuse_run none-2)"
    log "  req/s p99_ms non2xx socket_errors: $base2"
    base=$base1
    if is_better "$base2" "$base1"; then base=$base2; fi

    local b_rps b_p99 rps p99 non2xx serr r all_ok=1 ok_r ok_p
    read -r b_rps b_p99 _ _ <<<"$base"
    local sec="$TMP/section-abuse.md"
    {
        section_head abuse "\`GET /health\` for a normal client while hostile sockets are held, against the same with none (issue 8: slow peers cost a socket, not a worker)." "BENCH_ABUSE_SOCKETS=$BENCH_ABUSE_SOCKETS"
        echo "- Load: \`$WRK_CMD_DESC http://127.0.0.1:PORT/health\` while \`scripts/bench/abuse_hold.py PORT KIND $BENCH_ABUSE_SOCKETS\` holds the sockets (one kind at a time; a socket the server closes is reopened)"
        echo "- Server: \`target/release/adcluster serve\` with its defaults (WORKERS=64, TRANSFER_WORKERS=32, MAX_TRANSFERS_PER_ADDR=16, MAX_CONNECTIONS_PER_ADDR=1024; every socket here comes from 127.0.0.1)"
        echo "- Baseline: no hostile socket, run first and last; the better run is the reference ($(echo "$base1" | awk '{print $1}') and $(echo "$base2" | awk '{print $1}') req/s)"
        echo
        echo "| hostile sockets | req/s | p99 (ms) | ratio to baseline | non-2xx | socket errors | goal (>= $GOAL_ABUSE_RATIO, p99 < $GOAL_ABUSE_P99_MS ms) |"
        echo "|---|---:|---:|---:|---:|---:|---|"
        echo "| none | $b_rps | $b_p99 | 1.00 | | | |"
        while read -r kind rps p99 non2xx serr; do
            [ -n "$kind" ] || continue
            r="$(ratio "$rps" "$b_rps")"
            ok_r="$(at_least "$r" "$GOAL_ABUSE_RATIO")"
            ok_p="$(below "$p99" "$GOAL_ABUSE_P99_MS")"
            [ "$ok_r" = 1 ] && [ "$ok_p" = 1 ] || all_ok=0
            line="| $BENCH_ABUSE_SOCKETS $kind | $rps | $p99 | $r | $non2xx | $serr | $(pass_fail "$((ok_r * ok_p))") |"
            echo "$line"
        done <<<"$rows"
        echo
        echo "Kinds: \`chunked\` a POST head with \`Transfer-Encoding: chunked\`, then nothing; \`continue\` \`Expect: 100-continue\` and \`Content-Length: 40\`, then nothing; \`large\` \`Content-Length: 100000\`, one byte a second; \`unread\` 16 pipelined \`GET /openapi.json\` on a socket with a 4 KiB receive buffer, never read; \`loris\` a request head one byte a second."
        echo
    } >"$sec"
    cat "$sec"
    write_section abuse "$sec"
}
