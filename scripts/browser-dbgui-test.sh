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
# The steps are shared with the other browser suites: scripts/lib/browser.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/browser.sh

ensure_browser_tools
command -v psql >/dev/null 2>&1 || die "psql is not installed (Debian: postgresql-client); the GUI test creates its database with it"
build_test_binary
run_node_suite browser-dbgui "the database GUI"
