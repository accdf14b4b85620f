#!/usr/bin/env bash
# Headless Chromium tests of the WebSocket test pages (public/socket_test.html,
# public/group_messaging_test.html) against the real binary. Called by scripts/test.sh after the
# cargo tests; runs on its own too. UPDATE_SCREENSHOTS=1 refreshes docs/screenshots/ (otherwise
# the screenshots go to target/browser-ws-screenshots/).
#   1. Chromium: /usr/bin/chromium, or CHROMIUM=<path>; installed with apt-get when missing and
#      we are root;
#   2. cargo build (the debug binary the tests start);
#   3. npm ci in tests/browser-ws (playwright-core only, pinned by package-lock.json);
#   4. node --test.
# The steps are shared with the other browser suites: scripts/lib/browser.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/browser.sh

ensure_browser_tools
build_test_binary
run_node_suite browser-ws "the WebSocket pages"
