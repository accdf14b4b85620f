#!/usr/bin/env bash
# scripts/bench.sh backup: `adcluster backup` and `adcluster restore` against pg_dump and psql run
# by hand on the same database, 100,000 users and 10,000 file records (goal: within 1.1x).
#
#   reference backup:  pg_dump --clean --if-exists -f FILE, then sync FILE (ours fsyncs too)
#   reference restore: psql -X --single-transaction -v ON_ERROR_STOP=1 -q -f FILE
#
# Rounds alternate ours and the reference (BENCH_ROUNDS, default 3); the median of each is
# reported, with the ratio ours / reference. Writes the "## backup" section of BENCHMARKS.md
# (BENCH_MD), replacing only that section; leaves no database or file behind.
#
# Environment: BENCH_ROUNDS=3, BENCH_USERS=100000, BENCH_FILES=10000, BENCH_MD=<repo>/BENCHMARKS.md,
# BENCH_SERVER_BIN=<prebuilt adcluster>, BENCH_KEEP_TMP=1 (keep the dumps for a look),
# DB_HOST/DB_PORT/DB_USER/DB_PASSWORD (default 127.0.0.1, 5432, postgres, none).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
ROUNDS="${BENCH_ROUNDS:-3}"
USERS="${BENCH_USERS:-100000}"
FILES="${BENCH_FILES:-10000}"
BENCH_MD="${BENCH_MD:-${BENCHMARKS_FILE:-$ROOT/BENCHMARKS.md}}"
export PGHOST="${DB_HOST:-127.0.0.1}" PGPORT="${DB_PORT:-5432}" PGUSER="${DB_USER:-postgres}"
[ -n "${DB_PASSWORD:-}" ] && export PGPASSWORD="$DB_PASSWORD"
DB="adc_bench_backup_$$"
GOAL=1.10

die() { echo "bench backup: error: $*" >&2; exit 1; }
log() { echo "bench backup: $*" >&2; }
for t in pg_dump psql awk; do command -v "$t" >/dev/null || die "$t is needed (apt-get install postgresql-client)"; done

TMP="$(mktemp -d "${TMPDIR:-/var/tmp}/adc-bench-backup.XXXXXX")"
cleanup() {
    psql -X -q -d postgres -c "DROP DATABASE IF EXISTS \"$DB\" WITH (FORCE)" >/dev/null 2>&1 || true
    psql -X -q -d postgres -c "DROP DATABASE IF EXISTS \"${DB}_tiny\" WITH (FORCE)" >/dev/null 2>&1 || true
    if [ "${BENCH_KEEP_TMP:-0}" = 1 ]; then log "kept $TMP"; else rm -rf "$TMP"; fi
}
trap cleanup EXIT

if [ -n "${BENCH_SERVER_BIN:-}" ]; then
    BIN="$BENCH_SERVER_BIN"
else
    log "building the release binary"
    (cd "$ROOT" && cargo build --release --quiet) || die "cargo build --release failed"
    BIN="$(cd "$ROOT" && cargo metadata --format-version 1 --no-deps 2>/dev/null | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')/release/adcluster"
fi
[ -x "$BIN" ] || die "no binary at $BIN"

# The server's settings for the commands: this database, backups into $TMP.
run_adc() { (cd "$TMP" && env DB_HOST="$PGHOST" DB_PORT="$PGPORT" DB_USER="$PGUSER" DB_NAME="$DB" \
    BACKUP_DIR="$TMP/backups" "$BIN" "$@"); }

log "creating $DB with $USERS users and $FILES file records"
run_adc migrate >/dev/null
# A real Argon2id hash's length, so the rows weigh what real ones do.
HASH='$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$8cDr8VZ0pGuFPh2cJ2dMzBVjxGN+OQ3r0nQ7dF9lxbc'
psql -X -q -v ON_ERROR_STOP=1 -d "$DB" <<SQL
INSERT INTO users (email, hashed_password, full_name, is_superuser)
SELECT 'user' || g || '@example.com', '$HASH', 'User Number ' || g, g % 1000 = 0
FROM generate_series(1, $USERS) g;
INSERT INTO teams (name, description) SELECT 'team-' || g, 'team ' || g FROM generate_series(1, 100) g;
INSERT INTO team_members (team_id, user_id) SELECT 1 + g % 100, g FROM generate_series(1, least($USERS, 10000)) g;
INSERT INTO uploads (filename, original_filename, category, size, content_type, sha256, uploader_id)
SELECT md5(g::text) || '.pdf', 'report ' || g || '.pdf', 'documents', 1000 + g, 'application/pdf',
       encode(sha256(g::text::bytea), 'hex'), 1 + g % $USERS
FROM generate_series(1, $FILES) g;
ANALYZE;
SQL
DB_SIZE="$(psql -X -A -t -d "$DB" -c "SELECT pg_size_pretty(pg_database_size(current_database()))")"

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.3f", b - a }'; }
median() { sort -g | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else printf "%.3f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", (b > 0 ? a / b : 0) }'; }

LOAD_BEFORE="$(cut -d' ' -f1-3 /proc/loadavg)"
: >"$TMP/ours_backup"; : >"$TMP/ref_backup"; : >"$TMP/ours_restore"; : >"$TMP/ref_restore"
for r in $(seq 1 "$ROUNDS"); do
    log "round $r/$ROUNDS"
    t="$(now)"; out="$(run_adc backup --output "$TMP/ours_$r.sql" 2>/dev/null)"; elapsed "$t" >>"$TMP/ours_backup"; echo >>"$TMP/ours_backup"
    [ "$out" = "$TMP/ours_$r.sql" ] || die "adcluster backup printed '$out'"
    t="$(now)"; pg_dump --clean --if-exists --no-password -d "$DB" -f "$TMP/ref_$r.sql" && sync "$TMP/ref_$r.sql"
    elapsed "$t" >>"$TMP/ref_backup"; echo >>"$TMP/ref_backup"
    t="$(now)"; run_adc restore --yes "$TMP/ours_$r.sql" >/dev/null 2>&1 || die "adcluster restore failed"
    elapsed "$t" >>"$TMP/ours_restore"; echo >>"$TMP/ours_restore"
    t="$(now)"; psql -X --single-transaction -v ON_ERROR_STOP=1 -q -d "$DB" -f "$TMP/ref_$r.sql" >/dev/null || die "psql restore failed"
    elapsed "$t" >>"$TMP/ref_restore"; echo >>"$TMP/ref_restore"
done
LOAD_AFTER="$(cut -d' ' -f1-3 /proc/loadavg)"
# The fixed cost: the same two backups of an empty schema.
TINY="${DB}_tiny"
psql -X -q -d postgres -c "CREATE DATABASE \"$TINY\"" >/dev/null
tiny() { # ours|ref: mean seconds of 10 backups
    local t; t="$(now)"
    for i in $(seq 1 10); do
        if [ "$1" = ours ]; then (cd "$TMP" && env DB_HOST="$PGHOST" DB_PORT="$PGPORT" DB_USER="$PGUSER" DB_NAME="$TINY" \
            "$BIN" backup --output "$TMP/tiny_o$i.sql" >/dev/null 2>&1) || die "tiny backup failed"
        else pg_dump --clean --if-exists --no-password -d "$TINY" -f "$TMP/tiny_r$i.sql" && sync "$TMP/tiny_r$i.sql"; fi
    done
    awk -v a="$t" -v b="$(now)" 'BEGIN { printf "%.3f", (b - a) / 10 }'
}
(cd "$TMP" && env DB_HOST="$PGHOST" DB_PORT="$PGPORT" DB_USER="$PGUSER" DB_NAME="$TINY" "$BIN" migrate >/dev/null 2>&1)
tiny_ours="$(tiny ours)"; tiny_ref="$(tiny ref)"
psql -X -q -d postgres -c "DROP DATABASE IF EXISTS \"$TINY\"" >/dev/null
users_after="$(psql -X -A -t -d "$DB" -c "SELECT count(*) FROM users")"
[ "$users_after" = "$USERS" ] || die "after the restores the database has $users_after users, not $USERS"

ob="$(grep . "$TMP/ours_backup" | median)"; rb="$(grep . "$TMP/ref_backup" | median)"
or="$(grep . "$TMP/ours_restore" | median)"; rr="$(grep . "$TMP/ref_restore" | median)"
size="$(stat -c %s "$TMP/ours_1.sql")"; ref_size="$(stat -c %s "$TMP/ref_1.sql")"
rbk="$(ratio "$ob" "$rb")"; rrs="$(ratio "$or" "$rr")"
verdict() { awk -v x="$1" -v g="$GOAL" 'BEGIN { print (x <= g ? "PASS" : "FAIL") }'; }
all_runs() { grep . "$1" | paste -sd ' ' | sed 's/ /, /g'; }

os=""; [ -r /etc/os-release ] && os="$(. /etc/os-release && echo "${PRETTY_NAME:-}")"
sec="$TMP/section.md"
{
    echo "## backup"
    echo
    echo "\`scripts/bench.sh backup\` ($(date -u +%Y-%m-%d), commit $(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo '?'))."
    echo "Machine: $(nproc) cores (nproc), $(free -g | awk '/^Mem:/ { print $2 }') GiB RAM, kernel $(uname -r), $os;"
    echo "PostgreSQL $(psql -X -A -t -d postgres -c 'SHOW server_version' | awk '{print $1}') on the same machine, $(pg_dump --version | awk '{print $3}') client."
    echo "Data: $USERS users, 100 teams, $(( USERS < 10000 ? USERS : 10000 )) memberships, $FILES file records ($DB_SIZE database);"
    echo "dump: $size bytes (ours, with its checksum line) / $ref_size bytes (pg_dump's)."
    echo "Median of $ROUNDS rounds, ours and the reference alternating; seconds, wall clock."
    echo "Machine load average (1/5/15 min; the machine is shared with other engineers' builds): $LOAD_BEFORE before, $LOAD_AFTER after."
    echo
    echo "| | ours | reference, by hand | ours / reference | goal ≤ $GOAL |"
    echo "|---|---|---|---|---|"
    echo "| backup | \`adcluster backup --output F\`: $ob s | \`pg_dump --clean --if-exists -f F && sync F\`: $rb s | $rbk | $(verdict "$rbk") |"
    echo "| restore | \`adcluster restore --yes F\`: $or s | \`psql -X --single-transaction -v ON_ERROR_STOP=1 -q -f F\`: $rr s | $rrs | $(verdict "$rrs") |"
    echo
    echo "All runs (s): ours backup $(all_runs "$TMP/ours_backup"); pg_dump $(all_runs "$TMP/ref_backup");"
    echo "ours restore $(all_runs "$TMP/ours_restore"); psql $(all_runs "$TMP/ref_restore")."
    echo "Ours does more than the reference: before pg_dump it connects once for the server's version;"
    echo "it hashes the dump (SHA-256) as pg_dump writes it to a temporary file, appends the checksum"
    echo "line, fsyncs and links it (backup). Before psql it reads the whole file once to check that"
    echo "checksum, while asking the server's version and psql's (\`psql --version\`) at the same time (restore)."
    echo "The fixed cost, on the empty schema (10 backups each, mean): ours $tiny_ours s, pg_dump $tiny_ref s"
    echo "(ours starts one more process, connects once more, and fsyncs the folder after the link)."
    echo "The machine is shared and loaded: single rounds swing by 2x either way, so compare the medians"
    echo "and the rounds side by side, not one pair."
    echo
} >"$sec"

# Replace the "## backup" section (up to the next "## " heading), or append it at the end.
[ -f "$BENCH_MD" ] || printf '# Benchmarks\n\n' >"$BENCH_MD"
awk -v secfile="$sec" '
    BEGIN { while ((getline l < secfile) > 0) body = body l "\n" }
    /^## / { if (skipping) skipping = 0; if ($0 == "## backup") { skipping = 1; printf "%s", body; done = 1; next } }
    !skipping { print }
    END { if (!done) { printf "\n%s", body } }
' "$BENCH_MD" >"$TMP/md" && cp "$TMP/md" "$BENCH_MD"
cat "$sec"
log "wrote the backup section of $BENCH_MD"
