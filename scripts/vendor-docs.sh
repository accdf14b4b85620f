#!/usr/bin/env bash
# The Swagger UI and ReDoc assets behind /docs and /redoc live in the repository, under
# public/vendor/ (build.rs embeds them; there is no CDN fallback). This script checks them, and
# refreshes them from npm when the pinned versions change.
#
#   scripts/vendor-docs.sh            check: every vendored file matches public/vendor/.sha256
#                                     and the stamp names the pins below (no network; run by
#                                     scripts/test.sh). Exit 1 and say what differs otherwise.
#   scripts/vendor-docs.sh --update   fetch the pinned versions with npm, check their sha512
#                                     integrity, write the files and a new public/vendor/.sha256.
#                                     To upgrade: change a *_VERSION and its *_INTEGRITY below
#                                     (`npm view swagger-ui-dist@X dist.integrity`), run this,
#                                     review the diff, commit the files and the stamp together.
#
#   public/vendor/swagger-ui/  swagger-ui-bundle.js, swagger-ui.css, favicon-32x32.png (the docs pages'
#                              tab icon) (+ LICENSE, NOTICE, third-party licenses)
#   public/vendor/redoc/       redoc.standalone.js (+ LICENSE, third-party licenses)
#   public/vendor/.sha256      first line: the pins and file list; then `sha256sum` of every file
#                              (a dotfile: build.rs does not embed it; a unit test in
#                              src/api/docs.rs checks the embedded bytes against it)
#
# The packages are fetched with npm's own client (`npm pack`, so npm's registry, proxy and cache
# settings apply), pinned to one version each and checked against the pinned sha512 integrity
# before anything is unpacked. Files are written with fresh mtimes (never tar's 1985 ones), so
# cargo notices them.
#
# Must never: name a registry host, run package scripts (npm pack runs none for a registry
# package), write outside public/vendor/ and its own temp dir, or leave a half-written vendor
# dir looking complete (the stamp is written last).
set -euo pipefail
cd "$(dirname "$0")/.."

# Pinned versions and the sha512 integrity of their tarballs (from `npm pack --json`).
SWAGGER_UI_VERSION=5.35.0
SWAGGER_UI_INTEGRITY=sha512-U06rpMtW9V3XPGOBeamTUSr0Z09jMX4IJuANpE/EZbAhw0G8CgwrzU4YmXkn/h0wCDNsXdGarTNNHC3sU8yVUQ==
REDOC_VERSION=2.5.4
REDOC_INTEGRITY=sha512-M6jWhG1qoBnH6TFmzJnstyCZ87HmOY/UzDm78mHiYihEdlV/YcS9ogOo1NlElnJMeLsyxHFe2yFc4sNjHTrABQ==

# What goes where: "package:path in the package:path under public/vendor". The page
# (src/api/docs.rs) loads only the bundle, the CSS and the icon; the bundle carries the presets it
# uses, so swagger-ui-standalone-preset.js is not needed. The licenses travel with the code.
FILES=(
  "swagger-ui-dist:swagger-ui-bundle.js:swagger-ui/swagger-ui-bundle.js"
  "swagger-ui-dist:swagger-ui.css:swagger-ui/swagger-ui.css"
  "swagger-ui-dist:favicon-32x32.png:swagger-ui/favicon-32x32.png"
  "swagger-ui-dist:LICENSE:swagger-ui/LICENSE"
  "swagger-ui-dist:NOTICE:swagger-ui/NOTICE"
  "swagger-ui-dist:swagger-ui-bundle.js.LICENSE.txt:swagger-ui/swagger-ui-bundle.js.LICENSE.txt"
  "redoc:bundles/redoc.standalone.js:redoc/redoc.standalone.js"
  "redoc:LICENSE:redoc/LICENSE"
  "redoc:bundles/redoc.standalone.js.LICENSE.txt:redoc/redoc.standalone.js.LICENSE.txt"
)

VENDOR=public/vendor
STAMP="$VENDOR/.sha256" # a dotfile: build.rs does not embed it
# The stamp's first line: the pins and the file list, so changing either re-vendors.
PINS="# swagger-ui-dist@$SWAGGER_UI_VERSION redoc@$REDOC_VERSION files: ${FILES[*]##*:}"

say() { printf '==> %s\n' "$*"; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

MODE=check
case "${1:-}" in
  "" | --check) ;;
  --update) MODE=update ;;
  *) die "unknown argument '$1'; usage: scripts/vendor-docs.sh [--check | --update]" ;;
esac

command -v sha256sum >/dev/null 2>&1 || die "'sha256sum' is not installed (Debian's coreutils)"

# Every vendored file intact, at these pins?
check() {
  [ -f "$STAMP" ] || { echo "$STAMP is missing"; return 1; }
  [ "$(head -n1 "$STAMP")" = "$PINS" ] || { echo "$STAMP records other pins than this script: $(head -n1 "$STAMP")"; return 1; }
  (cd "$VENDOR" && tail -n +2 .sha256 | sha256sum --check --quiet --strict -) || return 1
}

if [ "$MODE" = check ]; then
  if out="$(check 2>&1)"; then
    say "docs assets intact (swagger-ui-dist@$SWAGGER_UI_VERSION, redoc@$REDOC_VERSION, checked against $STAMP)"
    exit 0
  fi
  printf '%s\n' "$out" >&2
  die "the vendored docs assets in $VENDOR/ do not match $STAMP; restore them with 'git checkout -- $VENDOR' or refresh them with 'scripts/vendor-docs.sh --update'"
fi

for tool in npm node tar; do
  command -v "$tool" >/dev/null 2>&1 || die "'$tool' is not installed; refreshing the docs assets needs it (npm and node: Debian's 'nodejs' and 'npm' packages or nodejs.org)"
done

TMP="$(mktemp -d "${TMPDIR:-/tmp}/adc-vendor-docs.XXXXXX")"
trap 'rm -rf "$TMP"' EXIT

# fetch NAME VERSION INTEGRITY: npm pack into $TMP, check the integrity, unpack into $TMP/NAME.
fetch() {
  local name="$1" version="$2" want="$3" json got file
  say "fetching $name@$version with npm pack"
  json="$(cd "$TMP" && npm pack "$name@$version" --json --loglevel=error)" \
    || die "npm pack $name@$version failed (offline? check npm's registry settings with 'npm config get registry')"
  got="$(printf '%s' "$json" | node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>{const p=JSON.parse(s)[0];console.log(p.integrity+" "+p.filename)})')" \
    || die "cannot read npm pack's output for $name@$version"
  file="${got#* }"
  got="${got%% *}"
  [ "$got" = "$want" ] || die "$name@$version: tarball integrity $got, pinned $want; refusing to vendor it"
  mkdir -p "$TMP/$name"
  tar -xzf "$TMP/$file" -C "$TMP/$name" --no-same-owner || die "cannot unpack $file"
}

# put SRC DEST: copy when missing or different; `cp` without -p gives a fresh mtime.
put() {
  local src="$1" dest="$2"
  [ -s "$src" ] || die "expected file $src is missing or empty in the package"
  if ! cmp -s "$src" "$dest" 2>/dev/null; then
    mkdir -p "$(dirname "$dest")"
    cp "$src" "$dest.tmp" && mv -f "$dest.tmp" "$dest"
  fi
}

fetch swagger-ui-dist "$SWAGGER_UI_VERSION" "$SWAGGER_UI_INTEGRITY"
fetch redoc "$REDOC_VERSION" "$REDOC_INTEGRITY"

rm -f "$STAMP"
WANTED=" "
for entry in "${FILES[@]}"; do
  IFS=: read -r pkg src dest <<<"$entry"
  put "$TMP/$pkg/package/$src" "$VENDOR/$dest"
  WANTED+="$VENDOR/$dest "
done

# Drop anything else in our two dirs (left by another version), so it is not embedded.
while IFS= read -r f; do
  case "$WANTED" in *" $f "*) ;; *) say "removing stale $f"; rm -f "$f" ;; esac
done < <(find "$VENDOR/swagger-ui" "$VENDOR/redoc" -type f)

# The stamp last: the pins, then a checksum of every vendored file.
{
  printf '%s\n' "$PINS"
  (cd "$VENDOR" && find swagger-ui redoc -type f | LC_ALL=C sort | xargs sha256sum)
} >"$STAMP.tmp"
mv -f "$STAMP.tmp" "$STAMP"
say "vendored swagger-ui-dist@$SWAGGER_UI_VERSION and redoc@$REDOC_VERSION into $VENDOR/; commit the files with $STAMP (cargo build embeds them)"
