#!/usr/bin/env bash
# The browser test of the API docs (tests/browser/docs.test.mjs) with everything it needs, in
# order: Chromium (apt-get install when missing and we are root), a check of the vendored Swagger
# UI and ReDoc assets (scripts/vendor-docs.sh, no network), a release binary built from the
# committed tree (`git archive HEAD` into target/committed-tree/, so nothing untracked or
# uncommitted can make the docs pass: what is tested is what a fresh clone builds), `npm ci` in
# tests/browser, then `node --test`. The test blocks every request off the server and checks
# that the release binary has no /__test/* route. scripts/test.sh runs this after the cargo
# tests; it also runs alone. Exits non-zero when anything fails.
#
# Outside a git checkout (a source tarball) the working tree is built instead, and says so.
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

TARGET_DIR="${CARGO_TARGET_DIR:-target}"
case "$TARGET_DIR" in /*) ;; *) TARGET_DIR="$ROOT/$TARGET_DIR" ;; esac
if git -C "$ROOT" rev-parse --verify -q HEAD >/dev/null 2>&1; then
  TREE="$TARGET_DIR/committed-tree"
  say "building a release binary from the committed tree ($(git -C "$ROOT" rev-parse --short HEAD))"
  [ -z "$(git -C "$ROOT" status --porcelain)" ] \
    || say "note: uncommitted changes in the working tree are not in this binary (commit them to test them)"
  rm -rf "$TREE"
  mkdir -p "$TREE"
  # -m: fresh mtimes, so cargo never takes an older commit's files for an up-to-date build.
  git -C "$ROOT" archive HEAD | tar -x -m -C "$TREE" || die "cannot export the committed tree into $TREE"
else
  TREE="$ROOT"
  say "not a git checkout: building a release binary from the working tree"
fi
say "checking the vendored docs assets of that tree"
"$TREE/scripts/vendor-docs.sh"

# The shared target dir keeps the dependencies' release builds; only the server is rebuilt.
CARGO_TARGET_DIR="$TARGET_DIR" cargo build --release --locked --quiet --bin adcluster --manifest-path "$TREE/Cargo.toml" \
  || die "cargo build --release failed"
export ADCLUSTER_BIN="$TARGET_DIR/browser-test-adcluster"
cp -f "$TARGET_DIR/release/adcluster" "$ADCLUSTER_BIN" || die "cargo build did not produce $TARGET_DIR/release/adcluster"
if [ "$TREE" != "$ROOT" ]; then
  # Cargo names a package's build state without its path, so the working tree's next
  # `cargo build --release` would find this build's state, see that none of the exported files
  # changed, and keep this binary, whatever was edited since. Forget it here.
  CARGO_TARGET_DIR="$TARGET_DIR" cargo clean --release --quiet -p adcluster --manifest-path "$TREE/Cargo.toml" \
    || die "cargo clean -p adcluster failed"
fi

say "npm ci (tests/browser)"
(cd tests/browser && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error) \
  || die "npm ci failed in tests/browser (offline? check 'npm config get registry')"

say "browser test (node --test)"
cd tests/browser
node --test ./*.test.mjs || die "the browser test failed (see above)"
say "browser test passed; screenshots in ${SCREENSHOT_DIR:-target/screenshots}/"
