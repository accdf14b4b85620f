# shellcheck shell=bash
# `scripts/bench.sh abuse`: /health under a normal wrk client while hostile sockets are held,
# against the same with none. Sourced by scripts/bench.sh (its helpers: build_server,
# start_server, run_wrk, section_head, write_section, ...).
#
# For each kind of scripts/bench/abuse_hold.py (stalled chunked bodies, stalled 100-continue
# bodies, dribbled large bodies, unread responses, slow-loris heads), BENCH_ABUSE_SOCKETS (500)
# sockets are held while `wrk -t2 -c64` measures GET /health. A baseline run (no hostile socket)
# comes before each kind and after the last, and each kind is compared with the mean of the
# baselines on either side of it (the machine is shared: its load drifts between runs). The goal:
# the normal client keeps at least 0.8x its throughput and a p99 under 50 ms.

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
    local holder="$ROOT/scripts/bench/abuse_hold.py" rows="" kind res prev next pid line i=0 bases=""
    prev="$(abuse_run none-0)"
    log "baseline: req/s p99_ms non2xx socket_errors: $prev"
    bases+="$prev"$'\n'
    for kind in $BENCH_ABUSE_KINDS; do
        i=$((i + 1))
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
        stop_group "$pid"
        server_alive
        sleep 1
        next="$(abuse_run "none-$i")"
        log "baseline: req/s p99_ms non2xx socket_errors: $next"
        bases+="$next"$'\n'
        # kind, its figures, and the mean req/s of the baselines before and after it.
        rows+="$kind $res $(awk -v a="${prev%% *}" -v b="${next%% *}" 'BEGIN { printf "%.2f", (a + b) / 2 }')"$'\n'
        prev=$next
    done

    local rps p99 non2xx serr ref r all_ok=1 ok_r ok_p
    local sec="$TMP/section-abuse.md"
    {
        section_head abuse "\`GET /health\` for a normal client while hostile sockets are held, against the same with none (issue 8: slow peers cost a socket, not a worker)." "BENCH_ABUSE_SOCKETS=$BENCH_ABUSE_SOCKETS"
        echo "- Load: \`$WRK_CMD_DESC http://127.0.0.1:PORT/health\` while \`scripts/bench/abuse_hold.py PORT KIND $BENCH_ABUSE_SOCKETS\` holds the sockets (one kind at a time; a socket the server closes is reopened)"
        echo "- Server: \`target/release/adcluster serve\` with its defaults (WORKERS=64, TRANSFER_WORKERS=32, MAX_TRANSFERS_PER_ADDR=0: half of TRANSFER_WORKERS, MAX_CONNECTIONS_PER_ADDR=1024; every socket here comes from 127.0.0.1)"
        echo "- Baselines (no hostile socket) before each kind and after the last; each kind's reference is the mean req/s of the baselines on either side of it. Baselines, req/s and p99 ms: $(echo "$bases" | awk 'NF { printf "%s%s (%s)", (n++ ? ", " : ""), $1, $2 }')"
        echo
        echo "| hostile sockets | req/s | p99 (ms) | reference req/s | ratio | non-2xx | socket errors | goal (>= $GOAL_ABUSE_RATIO, p99 < $GOAL_ABUSE_P99_MS ms) |"
        echo "|---|---:|---:|---:|---:|---:|---:|---|"
        while read -r kind rps p99 non2xx serr ref; do
            [ -n "$kind" ] || continue
            r="$(ratio "$rps" "$ref")"
            ok_r="$(at_least "$r" "$GOAL_ABUSE_RATIO")"
            ok_p="$(below "$p99" "$GOAL_ABUSE_P99_MS")"
            [ "$ok_r" = 1 ] && [ "$ok_p" = 1 ] || all_ok=0
            line="| $BENCH_ABUSE_SOCKETS $kind | $rps | $p99 | $ref | $r | $non2xx | $serr | $(pass_fail "$((ok_r * ok_p))") |"
            echo "$line"
        done <<<"$rows"
        echo
        echo "Kinds: \`chunked\` a POST head with \`Transfer-Encoding: chunked\`, then nothing; \`continue\` \`Expect: 100-continue\` and \`Content-Length: 40\`, then nothing; \`large\` \`Content-Length: 100000\`, one byte a second; \`unread\` 16 pipelined \`GET /openapi.json\` on a socket with a 4 KiB receive buffer, never read; \`loris\` a request head one byte a second."
        echo
    } >"$sec"
    cat "$sec"
    write_section abuse "$sec"
}
