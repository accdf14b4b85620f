#!/usr/bin/env bash
# Headless Chromium tests of the database GUI page (adcluster db-gui, public/dbgui/) against the
# real binary and the local PostgreSQL (TEST_PG_URL, as for the cargo tests). Called by
# scripts/test.sh after the cargo tests; runs on its own too. UPDATE_SCREENSHOTS=1 refreshes
# docs/screenshots/dbgui-*.png (otherwise they go to target/browser-dbgui-screenshots/).
#   1. Chromium: /usr/bin/chromium, or CHROMIUM=<path>; installed with apt-get when missing and
#      we are root;
#   2. psql (the test creates its database with it);
#   3. cargo build (the debug binary the tests start);
#   4. npm ci in tests/browser-dbgui (playwright-core only, pinned by package-lock.json);
#   5. node --test.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '==> %s\n' "$*"; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

CHROMIUM="${CHROMIUM:-/usr/bin/chromium}"
if [ ! -x "$CHROMIUM" ]; then
  [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 \
    || die "Chromium is not at $CHROMIUM and we cannot install it (need root and apt-get). Install Debian's 'chromium' package or set CHROMIUM=/path/to/chromium."
  say "installing Chromium with apt-get"
  apt-get update -qq || die "apt-get update failed; cannot install Chromium"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null || die "apt-get install chromium failed"
  [ -x "$CHROMIUM" ] || die "Chromium was installed but is not at $CHROMIUM; set CHROMIUM"
fi
command -v node >/dev/null 2>&1 || die "node is not installed (Node.js 20 or later is needed for the browser tests)"
command -v npm >/dev/null 2>&1 || die "npm is not installed"
command -v psql >/dev/null 2>&1 || die "psql is not installed (Debian: postgresql-client); the GUI test creates its database with it"

say "cargo build (the binary the browser tests start)"
cargo build --quiet --bin adcluster
BIN="$(pwd)/${CARGO_TARGET_DIR:-target}/debug/adcluster"
[ -x "$BIN" ] || die "the binary is not at $BIN"

say "npm ci (tests/browser-dbgui)"
cd tests/browser-dbgui
npm ci --no-audit --no-fund --loglevel=error >/dev/null || die "npm ci failed in tests/browser-dbgui"

say "browser tests of the database GUI (headless Chromium)"
ADCLUSTER_BIN="$BIN" CHROMIUM="$CHROMIUM" node --test --test-concurrency=1
