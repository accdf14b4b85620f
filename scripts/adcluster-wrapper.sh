# Shared by db_full_backup.sh and db_restore.sh (sourced, not run): find the adcluster binary
# and run one command in the install folder, so it reads the same .env as the server.
#
# The binary: $ADCLUSTER_BIN when set; else `adcluster` next to the scripts, in the install
# folder, in its bin/, target/release/ (a source checkout); else the one on PATH.
# The install folder: $ADCLUSTER_HOME when set, else the folder above the scripts.
# Paths given as arguments (FILE, --output FILE) are made absolute first, so they mean what they
# meant where the operator typed them.

die() { printf 'error: %s\n' "$*" >&2; exit 1; }

find_adcluster() {
  local c
  if [ -n "${ADCLUSTER_BIN:-}" ]; then
    [ -x "$ADCLUSTER_BIN" ] || die "ADCLUSTER_BIN=$ADCLUSTER_BIN is not an executable file"
    printf '%s\n' "$ADCLUSTER_BIN"; return
  fi
  for c in "$here/adcluster" "$home/adcluster" "$home/bin/adcluster" "$home/target/release/adcluster"; do
    [ -x "$c" ] && [ -f "$c" ] && { printf '%s\n' "$c"; return; }
  done
  c="$(command -v adcluster 2>/dev/null)" && { printf '%s\n' "$c"; return; }
  die "cannot find the adcluster binary: put it next to this script, in $home, or on PATH (or set ADCLUSTER_BIN); build it with 'cargo build --release'"
}

absolute() {
  case "$1" in
    /*|'') printf '%s\n' "$1" ;;
    *) printf '%s/%s\n' "$PWD" "$1" ;;
  esac
}

run_adcluster() {
  local cmd="$1"; shift
  # expect: what the next argument is (a path to make absolute, or a flag's value to pass on).
  local args=() a expect=""
  for a in "$@"; do
    case "$expect" in
      path) args+=("$(absolute "$a")"); expect=""; continue ;;
      value) args+=("$a"); expect=""; continue ;;
    esac
    case "$a" in
      --output|-o) args+=("$a"); expect=path ;;
      --output=*) args+=("--output=$(absolute "${a#--output=}")") ;;
      --all|--dry-run|-n|--yes|-y|--help|-h|--*=*) args+=("$a") ;;
      -*) args+=("$a"); expect=value ;;  # a settings flag (--db-name NAME) or --keep N
      *) if [ "$cmd" = restore ]; then args+=("$(absolute "$a")"); else args+=("$a"); fi ;;
    esac
  done
  local bin
  bin="$(find_adcluster)" || exit 1
  cd "$home" || die "cannot enter $home"
  exec "$bin" "$cmd" ${args[@]+"${args[@]}"}
}

home="${ADCLUSTER_HOME:-$(cd "$here/.." && pwd)}"
