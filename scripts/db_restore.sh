#!/usr/bin/env bash
# db_restore.sh [FILE] [--dry-run] [--yes]: the seed's restore script, now a thin wrapper over
# `adcluster restore` (same arguments, same exit codes: 0 ok, 1 failed and nothing changed,
# 2 bad usage, refused, or no backup found). Without FILE: the newest backup in BACKUP_DIR.
# It runs the binary in the install folder (the one above this script, or ADCLUSTER_HOME), so
# its .env and its relative BACKUP_DIR are the server's own. `adcluster restore --help` says more.
set -uo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=scripts/adcluster-wrapper.sh
. "$here/adcluster-wrapper.sh"
run_adcluster restore "$@"
