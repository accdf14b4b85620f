# Shared steps of the headless-Chromium suites (scripts/browser-ws-test.sh,
# scripts/browser-dbgui-test.sh): sourced, not run. Each function stops the script with one
# `error:` line saying what is missing and how to get it.
# Must never: install anything but Debian's chromium (and only as root), run npm install scripts.

say() { printf '==> %s\n' "$*"; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# Chromium at $CHROMIUM (default /usr/bin/chromium), installed with apt-get when missing and we
# are root; node and npm present.
ensure_browser_tools() {
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
  export CHROMIUM
}

# The debug binary the browser tests start, in $BIN.
build_test_binary() {
  say "cargo build (the binary the browser tests start)"
  cargo build --quiet --bin adcluster
  local target="${CARGO_TARGET_DIR:-target}"
  case "$target" in /*) ;; *) target="$(pwd)/$target" ;; esac
  BIN="$target/debug/adcluster"
  [ -x "$BIN" ] || die "the binary is not at $BIN"
}

# `npm ci` in tests/$1 (playwright-core only, pinned by its package-lock.json), then `node --test`
# there with ADCLUSTER_BIN and CHROMIUM set; $2 names the suite in the log.
run_node_suite() {
  say "npm ci (tests/$1)"
  (cd "tests/$1" && npm ci --no-audit --no-fund --loglevel=error >/dev/null) || die "npm ci failed in tests/$1"
  say "browser tests of $2 (headless Chromium)"
  (cd "tests/$1" && ADCLUSTER_BIN="$BIN" node --test --test-concurrency=1)
}
