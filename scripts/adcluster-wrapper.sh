# Shared by db_full_backup.sh and db_restore.sh (sourced, not run): find the adcluster binary
# and run one command in the install folder, so it reads the same .env as the server.
#
# The binary: $ADCLUSTER_BIN when set; else `adcluster` next to the scripts, in the install
# folder, in its bin/, target/release/ (a source checkout); else the one on PATH.
# The install folder: $ADCLUSTER_HOME when set, else the folder above the scripts.
# Paths given as arguments (restore's FILE, --output FILE, and every settings flag whose value
# is a path, `--flag PATH` or `--flag=PATH`) are made absolute first, so they mean what they
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

# The settings flags whose values are paths: the `path_setting` rows of src/config.rs's SETTINGS
# (the unit test `the_wrapper_knows_every_path_setting` in src/ops/mod.rs keeps the two equal).
path_flags=(--backup-dir --data-dir --database-url-file --db-gui-token-file --db-password-file --secret-key-file --upload-dir)

# Whether $1 is --output/-o or a settings flag whose value is a path.
is_path_flag() {
  local f
  for f in --output -o "${path_flags[@]}"; do
    [ "$1" = "$f" ] && return 0
  done
  return 1
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
    if is_path_flag "$a"; then args+=("$a"); expect=path; continue; fi
    case "$a" in
      --*=*)
        if is_path_flag "${a%%=*}"; then args+=("${a%%=*}=$(absolute "${a#*=}")"); else args+=("$a"); fi ;;
      --all|--dry-run|-n|--yes|-y|--help|-h) args+=("$a") ;;
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
