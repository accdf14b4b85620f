#!/usr/bin/env bash
# The whole test suite, as CI runs it (.ci/run calls this):
#   1. make sure PostgreSQL is reachable (start the local cluster if it is stopped; install
#      Debian's postgresql when absent and we are root; otherwise stop with a clear message);
#   2. cargo fmt --check, cargo clippy --workspace --all-targets -D warnings (the server and tools/);
#   3. every test (cargo nextest when installed, cargo test otherwise);
#   4. the API docs in headless Chromium (scripts/browser-test.sh: checks the vendored docs
#      assets, builds a release binary from the committed tree, checks it has no test routes,
#      installs Chromium with apt-get when missing and root);
#   5. the WebSocket pages in headless Chromium (scripts/browser-ws-test.sh);
#   6. the database GUI page in headless Chromium (scripts/browser-dbgui-test.sh).
# Tests create and drop their own databases; they need a role that may CREATE DATABASE.
# Override the connection with TEST_PG_URL (default postgres://postgres@127.0.0.1:5432/postgres).
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '==> %s\n' "$*"; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

export TEST_PG_URL="${TEST_PG_URL:-postgres://postgres@127.0.0.1:5432/postgres}"

pg_reachable() {
  if command -v psql >/dev/null 2>&1; then
    psql "$TEST_PG_URL" -Atqc 'select 1' >/dev/null 2>&1
  else
    (exec 3<>/dev/tcp/127.0.0.1/5432) 2>/dev/null
  fi
}

start_clusters() {
  command -v pg_lsclusters >/dev/null 2>&1 || return 1
  local started=1
  while read -r ver name _; do
    [ -n "$ver" ] || continue
    say "starting PostgreSQL cluster $ver/$name"
    pg_ctlcluster --skip-systemctl-redirect "$ver" "$name" start 2>/dev/null && started=0 || true
  done < <(pg_lsclusters --no-header 2>/dev/null | awk '$4 != "online" {print $1, $2}')
  return $started
}

wait_for_pg() {
  for _ in $(seq 1 60); do
    pg_reachable && return 0
    sleep 0.5
  done
  return 1
}

ensure_postgres() {
  pg_reachable && return 0
  start_clusters || true
  wait_for_pg && return 0
  if ! command -v pg_ctlcluster >/dev/null 2>&1; then
    [ "$(id -u)" = 0 ] || die "PostgreSQL is not installed and we are not root to install it. Install Debian's 'postgresql' package, or point TEST_PG_URL at a server whose role may CREATE DATABASE."
    command -v apt-get >/dev/null 2>&1 || die "PostgreSQL is not installed and apt-get is not available; install PostgreSQL or set TEST_PG_URL."
    say "installing PostgreSQL with apt-get"
    apt-get update -qq || die "apt-get update failed; cannot install PostgreSQL"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null || die "apt-get install postgresql failed"
    start_clusters || true
    if wait_for_pg; then return 0; fi
    # A fresh Debian cluster asks TCP clients for a password: give the postgres role one for the
    # tests (this cluster was installed by this script, so nobody else relies on it).
    say "setting a password for the postgres role of the cluster installed for the tests"
    su postgres -c "psql -qc \"ALTER ROLE postgres PASSWORD 'postgres'\"" || die "cannot set the postgres role's password"
    export TEST_PG_URL="postgres://postgres:postgres@127.0.0.1:5432/postgres"
    wait_for_pg && return 0
  fi
  die "PostgreSQL is not reachable at $TEST_PG_URL. Start it (pg_ctlcluster --skip-systemctl-redirect <version> main start) or set TEST_PG_URL."
}

say "checking PostgreSQL"
ensure_postgres
say "PostgreSQL is reachable"

# python3 -m venv: tests/metrics.rs makes a venv with the prometheus-client parser in target/.
if ! python3 -m venv --help >/dev/null 2>&1 || ! python3 -c 'import ensurepip' >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    say "installing python3-venv (for the Prometheus parser of tests/metrics.rs)"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null; } \
      || die "cannot install python3-venv; tests/metrics.rs needs it to parse /metrics"
  else
    die "python3 with venv is needed by tests/metrics.rs (apt-get install python3-venv)"
  fi
fi
# systemd-analyze: tests/deploy.rs verifies the units in deploy/ with it (and says it skipped where
# it cannot be had). The Prometheus text parser of tests/metrics.rs is installed by that test.
if ! command -v systemd-analyze >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    say "installing systemd (systemd-analyze, for the deploy/ units)"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends systemd >/dev/null; } \
      || say "could not install systemd: tests/deploy.rs will report that it skipped"
  else
    say "systemd-analyze is missing and cannot be installed here: tests/deploy.rs will report that it skipped"
  fi
fi

say "cargo fmt --check"
cargo fmt --all -- --check || die "code is not formatted: run 'cargo fmt'"

say "cargo clippy"
cargo clippy --workspace --all-targets --quiet -- -D warnings || die "clippy found problems (see above)"

# Each suite's output is kept so the last line can total them: "tests: N passed, N failed".
logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT

say "tests"
status=0
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace "$@" 2>&1 | tee "$logs/cargo.log" || status=1
else
  cargo test --workspace "$@" 2>&1 | tee "$logs/cargo.log" || status=1
fi

say "browser tests"
scripts/browser-test.sh 2>&1 | tee "$logs/browser.log" || status=1

say "browser tests (WebSocket pages)"
scripts/browser-ws-test.sh 2>&1 | tee "$logs/browser-ws.log" || status=1

say "browser tests (database GUI)"
scripts/browser-dbgui-test.sh 2>&1 | tee "$logs/browser-dbgui.log" || status=1

# Totals: nextest's "N tests run: P passed, F failed", cargo test's "test result: ok. P passed;
# F failed", node's "# pass P" / "# fail F".
passed=0
failed=0
add() { passed=$((passed + ${1:-0})); failed=$((failed + ${2:-0})); }
while read -r p f; do add "$p" "$f"; done < <(
  sed -n -E 's/.*tests run: ([0-9]+) passed(, ([0-9]+) failed)?.*/\1 \3/p; s/^test result: [a-zA-Z]+\. ([0-9]+) passed; ([0-9]+) failed.*/\1 \2/p' "$logs/cargo.log")
add "$(awk '/^# pass [0-9]+$/ {s += $3} END {print s + 0}' "$logs"/browser*.log)" \
    "$(awk '/^# fail [0-9]+$/ {s += $3} END {print s + 0}' "$logs"/browser*.log)"
[ "$status" = 0 ] || [ "$failed" != 0 ] || failed=1
echo "tests: $passed passed, $failed failed"
exit "$status"
