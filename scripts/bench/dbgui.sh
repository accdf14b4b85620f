# scripts/bench.sh dbgui — sourced by scripts/bench.sh (its helpers, settings and cleanup apply).
#
# A whole-result CSV export of BENCH_DBGUI_ROWS rows (default 1,000,000) from `adcluster db-gui`
# (the release build, POST /api/export?format=csv through curl) side by side with `psql --csv`
# running the same statement on the same database (the reference: PostgreSQL's own client,
# rows fetched and formatted in C), alternating for BENCH_ROUNDS rounds; then the JSON export;
# the two CSV files compared byte for byte; and the GUI's peak RSS (VmHWM) against its idle RSS.
# Goal: at least GOAL_DBGUI_RATIO of psql's MB/s, and the peak at most GOAL_DBGUI_RSS_MIB above
# idle (an export streams; it must not hold the result).

GOAL_DBGUI_RATIO=0.25
GOAL_DBGUI_RSS_MIB=32

cmd_dbgui() {
    need_tools curl:curl psql:postgresql-client
    local rows="${BENCH_DBGUI_ROWS:-1000000}"
    [[ "$rows" =~ ^[1-9][0-9]*$ ]] || die "BENCH_DBGUI_ROWS must be a positive integer"
    build_server
    make_tmp
    pg_env
    create_bench_db
    log "filling table t with $rows rows"
    pg -d "$BENCH_DB" -c "CREATE TABLE t AS SELECT g AS id, md5(g::text) AS hash,
        timestamptz '2024-01-01 00:00:00+00' + g * interval '1 second' AS at, round(g / 7.0, 2) AS amount,
        CASE WHEN g % 10 = 0 THEN NULL ELSE 'row, \"' || g || '\"' END AS label
        FROM generate_series(1, $rows) g" >/dev/null
    pg -d "$BENCH_DB" -c "VACUUM ANALYZE t" >/dev/null
    local sql="SELECT * FROM t ORDER BY id"

    local port token
    port="$(free_port)"
    token="$(random_hex 16)"
    log "starting db-gui on 127.0.0.1:$port"
    (cd "$TMP" && exec setsid env "${DB_ENV[@]}" DATA_DIR="$TMP/data" LOG_LEVEL=warn DB_GUI_TOKEN="$token" \
        DB_GUI_TIMEOUT_SECS=600 "$(server_bin)" db-gui --port "$port" >"$TMP/dbgui.out" 2>"$TMP/dbgui.log") &
    local gui_pid=$!
    BG_PIDS+=("$gui_pid")
    for _ in $(seq 1 100); do port_open "$port" && break; sleep 0.1; done
    port_open "$port" || { cat "$TMP/dbgui.log" >&2; die "db-gui did not start"; }
    local url="http://127.0.0.1:$port/api/export"
    printf '{"sql": "%s"}' "$sql" >"$TMP/body.json"
    # One small export first: the pool's connection and the allocator's first arenas are not
    # what is measured.
    curl -sS -o /dev/null -H "Authorization: Bearer $token" -H 'Content-Type: application/json' \
        --data-binary '{"sql": "SELECT * FROM t LIMIT 1000"}' "$url?format=csv" || die "warm-up export failed"
    local idle_kib
    idle_kib="$(awk '/^VmRSS:/ { print $2 }' "/proc/$gui_pid/status")"

    local r who out code size secs rate runs="" best_ours="" best_psql="" json_line=""
    for r in $(seq 1 "$BENCH_ROUNDS"); do
        for who in ours psql; do
            log "round $r: $who"
            if [ "$who" = ours ]; then
                out="$(curl -sS -o "$TMP/ours.csv" -w '%{http_code} %{size_download} %{time_total}' --max-time 1800 \
                    -H "Authorization: Bearer $token" -H 'Content-Type: application/json' \
                    --data-binary @"$TMP/body.json" "$url?format=csv")" || die "the export failed (curl: $out)"
                read -r code size secs <<<"$out"
                [ "$code" = 200 ] || die "POST /api/export answered $code"
            else
                local t0 t1
                t0="$(date +%s%N)"
                PGTZ=UTC PGDATESTYLE='ISO, MDY' psql -X -q --csv -d "$BENCH_DB" -c "$sql" >"$TMP/psql.csv" \
                    || die "psql --csv failed"
                t1="$(date +%s%N)"
                code=-
                size="$(stat -c %s "$TMP/psql.csv")"
                secs="$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", (b - a) / 1e9 }')"
            fi
            rate="$(mbps "$size" "$secs")"
            log "  $size bytes, $secs s, $rate MB/s"
            runs+="| $r | $([ "$who" = ours ] && echo 'db-gui `POST /api/export?format=csv`' || echo 'psql --csv') | $size | $secs | $rate |"$'\n'
            if [ "$who" = ours ]; then
                if is_better "$rate $secs" "$best_ours"; then best_ours="$rate $secs"; fi
            elif is_better "$rate $secs" "$best_psql"; then best_psql="$rate $secs"; fi
        done
    done
    local same=no
    cmp -s "$TMP/ours.csv" "$TMP/psql.csv" && same=yes
    log "JSON export"
    out="$(curl -sS -o /dev/null -w '%{http_code} %{size_download} %{time_total}' --max-time 1800 \
        -H "Authorization: Bearer $token" -H 'Content-Type: application/json' \
        --data-binary @"$TMP/body.json" "$url?format=json")" || die "the JSON export failed"
    read -r code size secs <<<"$out"
    json_line="| JSON export (\`format=json\`) | $code | $size | $secs | $(mbps "$size" "$secs") |"
    local peak_kib grew_mib ratio_v
    peak_kib="$(awk '/^VmHWM:/ { print $2 }' "/proc/$gui_pid/status")"
    grew_mib="$(awk -v p="$peak_kib" -v i="$idle_kib" 'BEGIN { printf "%.1f", (p - i) / 1024 }')"
    ratio_v="$(ratio "${best_ours%% *}" "${best_psql%% *}")"

    local sec="$TMP/section.md"
    {
        section_head dbgui "A whole-result CSV export of $rows rows (5 columns: int, text, timestamptz, numeric, text with commas, quotes and NULLs) from \`adcluster db-gui\` (release build) against \`psql --csv\` of the same statement on the same database, alternating; then the JSON export; the GUI's memory." \
            "BENCH_DBGUI_ROWS=$rows"
        echo
        echo "| measure | ours | reference | ratio | goal | result |"
        echo "|---|---|---|---|---|---|"
        echo "| CSV export MB/s (best run) | ${best_ours%% *} | ${best_psql%% *} (psql --csv) | $ratio_v | ≥ $GOAL_DBGUI_RATIO | $(pass_fail "$(at_least "$ratio_v" "$GOAL_DBGUI_RATIO")") |"
        echo "| peak RSS above idle during the exports (VmHWM − VmRSS, MiB) | $grew_mib | — | — | ≤ $GOAL_DBGUI_RSS_MIB | $(pass_fail "$(below "$grew_mib" "$GOAL_DBGUI_RSS_MIB.0001")") |"
        echo "| CSV identical to psql's, byte for byte | $same | — | — | yes | $([ "$same" = yes ] && echo PASS || echo FAIL) |"
        echo
        echo "| round | what | bytes | seconds | MB/s |"
        echo "|---|---|---|---|---|"
        printf '%s' "$runs"
        echo
        echo "| after the rounds | status | bytes | seconds | MB/s |"
        echo "|---|---|---|---|---|"
        echo "$json_line"
        echo
        echo "Idle RSS $((idle_kib / 1024)) MiB, peak $((peak_kib / 1024)) MiB over every export above."
        echo
    } >"$sec"
    echo
    cat "$sec"
    write_section dbgui "$sec"
}
