#!/usr/bin/env bash
# The browser test of the API docs (tests/browser/docs.test.mjs) with everything it needs, in
# order: Chromium (apt-get install when missing and we are root), a check of the vendored Swagger
# UI and ReDoc assets (scripts/vendor-docs.sh, no network), a `cargo build` that embeds them,
# `npm ci` in tests/browser, then `node --test`. scripts/test.sh runs this after the cargo tests; it also
# runs alone. Exits non-zero when anything fails.
#
# Environment: TEST_PG_URL (default postgres://postgres@127.0.0.1:5432/postgres; PostgreSQL must
# be up: scripts/test.sh starts it), CHROMIUM_PATH (default /usr/bin/chromium), SCREENSHOT_DIR
# (default target/screenshots; SCREENSHOT_DIR=docs/screenshots refreshes the committed ones), CARGO_TARGET_DIR.
#
# Must never: install anything but Debian's chromium (and only as root), run npm install
# scripts, or hide a failure of any step.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$(pwd)"

say() { printf '==> %s\n' "$*"; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

export TEST_PG_URL="${TEST_PG_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
export CHROMIUM_PATH="${CHROMIUM_PATH:-/usr/bin/chromium}"

ensure_chromium() {
  [ -x "$CHROMIUM_PATH" ] && return 0
  [ "$CHROMIUM_PATH" = /usr/bin/chromium ] || die "CHROMIUM_PATH=$CHROMIUM_PATH is not an executable"
  [ "$(id -u)" = 0 ] || die "Chromium is not installed and we are not root to install it. Run 'sudo apt-get install chromium' (Debian), or set CHROMIUM_PATH to a Chromium or Chrome binary."
  command -v apt-get >/dev/null 2>&1 || die "Chromium is not installed and apt-get is not available; install Chromium and set CHROMIUM_PATH to it."
  say "installing Chromium with apt-get"
  apt-get update -qq || die "apt-get update failed; cannot install Chromium"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null || die "apt-get install chromium failed"
  [ -x "$CHROMIUM_PATH" ] || die "apt-get installed chromium but $CHROMIUM_PATH is still missing"
}

ensure_node() {
  command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1 \
    || die "node and npm are needed for the browser test (node 20 or newer: nodejs.org or NodeSource packages)"
  local major
  major="$(node -p 'process.versions.node.split(".")[0]')"
  [ "$major" -ge 20 ] || die "node $(node --version) is too old for the browser test; install node 20 or newer"
  command -v psql >/dev/null 2>&1 || die "psql is needed for the browser test's database; install Debian's 'postgresql-client'"
}

say "checking Chromium"
ensure_chromium
"$CHROMIUM_PATH" --version 2>/dev/null | grep -i chrom || die "$CHROMIUM_PATH does not run"
ensure_node

say "checking the vendored docs assets"
scripts/vendor-docs.sh

say "cargo build (embeds public/vendor/)"
cargo build --quiet || die "cargo build failed"
TARGET_DIR="${CARGO_TARGET_DIR:-target}"
case "$TARGET_DIR" in /*) ;; *) TARGET_DIR="$ROOT/$TARGET_DIR" ;; esac
export ADCLUSTER_BIN="$TARGET_DIR/debug/adcluster"
[ -x "$ADCLUSTER_BIN" ] || die "cargo build did not produce $ADCLUSTER_BIN"

say "npm ci (tests/browser)"
(cd tests/browser && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error) \
  || die "npm ci failed in tests/browser (offline? check 'npm config get registry')"

say "browser test (node --test)"
cd tests/browser
node --test ./*.test.mjs || die "the browser test failed (see above)"
say "browser test passed; screenshots in ${SCREENSHOT_DIR:-target/screenshots}/"
