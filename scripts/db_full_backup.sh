#!/usr/bin/env bash
# db_full_backup.sh [--all] [--output FILE] [--keep N]: the seed's backup script, now a thin
# wrapper over `adcluster backup` (same arguments, same exit codes: 0 ok, 1 failed, 2 bad usage).
# It runs the binary in the install folder (the one above this script, or ADCLUSTER_HOME), so
# its .env and its relative BACKUP_DIR are the server's own. `adcluster backup --help` says more.
set -uo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=scripts/adcluster-wrapper.sh
. "$here/adcluster-wrapper.sh"
run_adcluster backup "$@"
