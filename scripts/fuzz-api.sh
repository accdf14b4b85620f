#!/usr/bin/env bash
# scripts/fuzz-api.sh — fuzz the HTTP API against its own OpenAPI document with schemathesis.
#
# What it does, in order:
#   1. a Python venv in target/fuzz-venv (git-ignored) with a pinned schemathesis;
#   2. `cargo build` (debug: see "Why debug" below);
#   3. a fresh database on the local PostgreSQL and a temp dir holding DATA_DIR, UPLOAD_DIR,
#      BACKUP_DIR and the server log;
#   4. a throwaway user (`adcluster user create`), the server on a free port, a token from
#      `POST /auth/login`;
#   5. `schemathesis run` on /openapi.json with every check (enabled in scripts/fuzz-api.toml), the token as a bearer header, a
#      bounded number of examples per operation and a fixed seed; the few per-operation
#      exceptions, each with its reason, are in scripts/fuzz-api.toml;
#   6. fails when schemathesis reports a failure or the server log shows a panic.
# Everything it created (server, database, temp dir) is removed on exit, whatever happens.
#
# Must never: run against a database it did not create (it drops it at the end), print the
# user's password or token, or leave a server running. It is slow: it is NOT part of
# scripts/test.sh.
#
# Settings (environment):
#   FUZZ_EXAMPLES  schemathesis --max-examples: test cases per operation (default 100)
#   FUZZ_SEED      schemathesis seed (default 20261126), so a run can be repeated
#   FUZZ_WORKERS   schemathesis workers (default 1: the same seed then gives the same run, and
#                  CPython 3.11's `ast` is not thread-safe — hypothesis parses lambdas with it,
#                  and with 2 workers a run died with "AST constructor recursion depth mismatch")
#   FUZZ_REPORT    directory for schemathesis' JUnit and NDJSON reports (default target/fuzz-report)
#   DB_HOST, DB_PORT, DB_USER, DB_PASSWORD   PostgreSQL (default 127.0.0.1, 5432, postgres, empty);
#                  the role must be allowed to CREATE DATABASE
# Extra arguments are passed to `schemathesis run` (e.g. --include-path /users/).
#
# Why debug: the fuzzer spends its time in Python, not in the server, and a debug build keeps
# Rust's integer-overflow checks on, so arithmetic on fuzzed numbers panics (and fails the
# run) instead of wrapping silently. It also reuses what `cargo nextest run` already compiled.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$(pwd)"

SCHEMATHESIS_VERSION=4.32.5
FUZZ_EXAMPLES="${FUZZ_EXAMPLES:-100}"
FUZZ_SEED="${FUZZ_SEED:-20261126}"
FUZZ_WORKERS="${FUZZ_WORKERS:-1}"
FUZZ_REPORT="${FUZZ_REPORT:-target/fuzz-report}"
export DB_HOST="${DB_HOST:-127.0.0.1}" DB_PORT="${DB_PORT:-5432}" DB_USER="${DB_USER:-postgres}"
export DB_PASSWORD="${DB_PASSWORD:-}"
VENV=target/fuzz-venv
BIN=target/debug/adcluster

say() { printf '==> %s\n' "$*"; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# --- cleanup, registered before anything is created ------------------------------------------
WORK=""
DB_NAME=""
SERVER_PID=""
cleanup() {
  local rc=$?
  if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
  fi
  if [ -n "$DB_NAME" ]; then
    PGPASSWORD="$DB_PASSWORD" dropdb -h "$DB_HOST" -p "$DB_PORT" -U "$DB_USER" --if-exists --force "$DB_NAME" \
      >/dev/null 2>&1 || printf 'warning: could not drop database %s\n' "$DB_NAME" >&2
  fi
  [ -n "$WORK" ] && rm -rf "$WORK"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

command -v createdb >/dev/null 2>&1 || die "createdb not found: install PostgreSQL's client tools (Debian: postgresql-client)"
for tool in curl jq openssl python3; do
  command -v "$tool" >/dev/null 2>&1 || die "$tool not found: install it (Debian: apt-get install $tool)"
done

# --- 1. schemathesis -------------------------------------------------------------------------
if ! "$VENV/bin/schemathesis" --version 2>/dev/null | grep -qF "$SCHEMATHESIS_VERSION"; then
  say "installing schemathesis $SCHEMATHESIS_VERSION into $VENV"
  python3 -m venv "$VENV" || die "cannot create a venv: install python3-venv"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION" \
    || die "pip install schemathesis==$SCHEMATHESIS_VERSION failed"
fi
ST="$VENV/bin/schemathesis"

# --- 2. the server ---------------------------------------------------------------------------
say "cargo build"
cargo build --quiet --bin adcluster || die "cargo build failed"

# --- 3. database and working dir -------------------------------------------------------------
WORK="$(mktemp -d "${TMPDIR:-/tmp}/adc-fuzz.XXXXXX")"
mkdir -p "$WORK/data" "$WORK/uploads" "$WORK/backups"
export DATA_DIR="$WORK/data" UPLOAD_DIR="$WORK/uploads" BACKUP_DIR="$WORK/backups"
export LOG_LEVEL=info
unset DATABASE_URL SECRET_KEY ADCLUSTER_TEST_ROUTES
CANDIDATE="adc_fuzz_$$_$(date +%s)"
say "creating database $CANDIDATE on $DB_HOST:$DB_PORT"
PGPASSWORD="$DB_PASSWORD" createdb -h "$DB_HOST" -p "$DB_PORT" -U "$DB_USER" "$CANDIDATE" \
  || die "createdb failed: is PostgreSQL running on $DB_HOST:$DB_PORT, and may $DB_USER create databases?"
DB_NAME="$CANDIDATE"
export DB_NAME

# --- 4. a user, the server, a token ----------------------------------------------------------
EMAIL="fuzzer@example.com"
PASSWORD="$(openssl rand -hex 16)"
"$BIN" user create --email "$EMAIL" --password "$PASSWORD" >/dev/null || die "adcluster user create failed"

LOG="$WORK/server.log"
"$BIN" serve --host 127.0.0.1 --port 0 2>"$LOG" >/dev/null </dev/null &
SERVER_PID=$!
BASE=""
for _ in $(seq 1 300); do
  BASE="$(sed -n 's/.*listening on \(http:\/\/[0-9.:]*\).*/\1/p' "$LOG" | head -n1)"
  [ -n "$BASE" ] && break
  kill -0 "$SERVER_PID" 2>/dev/null || { cat "$LOG" >&2; die "the server exited during start"; }
  sleep 0.1
done
[ -n "$BASE" ] || { cat "$LOG" >&2; die "the server did not report its address within 30 s"; }
say "server at $BASE (pid $SERVER_PID)"

LOGIN_BODY="$(jq -n --arg e "$EMAIL" --arg p "$PASSWORD" '{email: $e, password: $p}')"
TOKEN="$(curl -sS --fail-with-body -H 'Content-Type: application/json' --data "$LOGIN_BODY" "$BASE/auth/login" \
  | jq -r '.access_token // empty')" || die "login failed"
[ -n "$TOKEN" ] || die "login returned no access_token"
unset PASSWORD LOGIN_BODY

# --- 5. schemathesis -------------------------------------------------------------------------
mkdir -p "$FUZZ_REPORT"
FUZZ_REPORT="$(cd "$FUZZ_REPORT" && pwd)"
say "schemathesis $SCHEMATHESIS_VERSION: $FUZZ_EXAMPLES examples per operation, seed $FUZZ_SEED"
# From inside the temp dir: schemathesis keeps a crash cache in ./.schemathesis, which would
# land in the repo and be replayed by the next run (a fixed seed must give the same run).
set +e
(cd "$WORK" && "$ROOT/$ST" --config-file "$ROOT/scripts/fuzz-api.toml" run "$BASE/openapi.json" \
  --max-examples "$FUZZ_EXAMPLES" \
  --seed "$FUZZ_SEED" \
  --workers "$FUZZ_WORKERS" \
  --header "Authorization: Bearer $TOKEN" \
  --request-timeout 30 \
  --generation-database none \
  --no-color \
  --report junit,ndjson --report-dir "$FUZZ_REPORT" \
  "$@")
ST_RC=$?
set -e

# --- 6. verdict ------------------------------------------------------------------------------
FAILED=0
if [ "$ST_RC" -ne 0 ]; then
  printf 'FAIL: schemathesis exited with %s (reports in %s)\n' "$ST_RC" "$FUZZ_REPORT" >&2
  FAILED=1
fi
if grep -q 'panicked' "$LOG"; then
  printf 'FAIL: the server panicked:\n' >&2
  grep -B2 -A8 'panicked' "$LOG" | head -n 60 >&2
  FAILED=1
fi
STATUS_5XX="$(grep -cE ' 5[0-9][0-9] [0-9-]+ [0-9]+us ' "$LOG" || true)"
say "server log: $(wc -l <"$LOG") lines, $STATUS_5XX response(s) with a 5xx status"
if [ "$FAILED" -ne 0 ]; then
  cp "$LOG" "$FUZZ_REPORT/server.log"
  printf 'server log kept in %s/server.log\n' "$FUZZ_REPORT" >&2
  exit 1
fi
say "no failures"
