#!/usr/bin/env bash
# Build what a cluster needs to run ebbtide, without touching the work tree:
#   dist/ebbtide-<version>-py3-none-any.whl   the package, with conf/*.yaml inside (ebbtide/conf)
#   dist/ebbtide-env.tar.gz                   a venv-pack archive of the environment with that wheel
#                                             installed (not the editable checkout), for
#                                             `spark-submit --archives dist/ebbtide-env.tar.gz#environment`
# The archive is cached under $EBBTIDE_CACHE/dist keyed by the lock file and the wheel's hash;
# dist/ebbtide-env.tar.gz is a link to the cached file, so an unchanged tree packs in seconds.
# From a clean checkout (no .venv) it runs scripts/setup.sh first: the build tools are the environment's.
#
# Usage: scripts/package.sh [--wheel-only] [--venv PATH] [--python-prefix PREFIX] [--out DIR]
#   --wheel-only          build the wheel, skip the environment archive
#   --venv PATH           environment to pack (default: .venv, the cached environment of setup.sh)
#   --python-prefix P     prefix of the Python 3.11 on the cluster nodes, e.g. /usr on EMR
#                         (venv-pack links bin/python there; default: this machine's prefix)
#   --out DIR             where the wheel and the archive link go (default: dist)
set -euo pipefail
# The Makefile puts the checkout's lib/ on PYTHONPATH; packaging must see only what it installs
# (pip would take lib/ebbtide.egg-info there for an installed ebbtide and skip the wheel).
unset PYTHONPATH

ROOT=$(cd "$(dirname "$0")/.." && pwd)
CACHE=${EBBTIDE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ebbtide}
VENV="$ROOT/.venv"
OUT="$ROOT/dist"
WHEEL_ONLY=0
PY_PREFIX=""

log() { printf '[package %s] %s\n' "$(date +%H:%M:%S)" "$*"; }
die() { printf '[package] ERROR: %s\n' "$*" >&2; exit 1; }

while [ $# -gt 0 ]; do
  case "$1" in
    --wheel-only) WHEEL_ONLY=1 ;;
    --venv) VENV=$2; shift ;;
    --python-prefix) PY_PREFIX=$2; shift ;;
    --out) OUT=$2; shift ;;
    -h|--help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
  shift
done

# The build tools (pip, setuptools, wheel, venv-pack) are those of the environment setup.sh builds;
# from a clean checkout, build it first (as every make target does; cached, so seconds when it exists).
BUILD_PY="$ROOT/.venv/bin/python"
if [ ! -x "$BUILD_PY" ]; then
  log "no environment at $ROOT/.venv: running scripts/setup.sh first (what \`make setup\` runs)"
  bash "$ROOT/scripts/setup.sh" || die "scripts/setup.sh failed; see its error above"
  [ -x "$BUILD_PY" ] || die "$BUILD_PY still not found after scripts/setup.sh"
fi
"$BUILD_PY" -m pip --version >/dev/null 2>&1 || die "$ROOT/.venv has no pip; run \`make setup\` (requirements.lock pins pip)"
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

# --- the wheel ------------------------------------------------------------------------------
# Built from a scratch copy so conf/ can be placed inside the package (the config loader finds
# ebbtide/conf/base.yaml next to the installed modules) without leaving copies in lib/.
STAGE=$(mktemp -d)
trap 'rm -rf "$STAGE"' EXIT
cp "$ROOT/pyproject.toml" "$STAGE/"
[ -f "$ROOT/README.md" ] && cp "$ROOT/README.md" "$STAGE/" || echo "# ebbtide" > "$STAGE/README.md"
mkdir -p "$STAGE/lib"
tar -C "$ROOT/lib" --exclude='*.egg-info' --exclude='__pycache__' --exclude='*.pyc' -cf - ebbtide | tar -C "$STAGE/lib" -xf -
mkdir -p "$STAGE/lib/ebbtide/conf/profiles" "$STAGE/lib/ebbtide/sql"
cp "$ROOT"/conf/*.yaml "$STAGE/lib/ebbtide/conf/"
cp "$ROOT"/conf/profiles/*.yaml "$STAGE/lib/ebbtide/conf/profiles/"
if ls "$ROOT"/deploy/sql/*.sql >/dev/null 2>&1; then cp "$ROOT"/deploy/sql/*.sql "$STAGE/lib/ebbtide/sql/"; fi
# Every place the wheel goes brings its own Spark (the venv archive has pyspark already; Databricks
# and EMR runtimes ship theirs, and a pip-installed pyspark would shadow the runtime's): the built
# wheel asks for pyspark and delta-spark only through the `spark` extra (`pip install ebbtide[spark]`).
"$BUILD_PY" - "$STAGE/pyproject.toml" <<'PYEOF' || die "could not move pyspark/delta-spark to the spark extra"
import re, sys
path = sys.argv[1]
text = open(path).read()
spark = re.findall(r'^\s*"((?:pyspark|delta-spark)[^"]*)",?\s*$', text, flags=re.M)
assert len(spark) == 2, f"expected pyspark and delta-spark in [project].dependencies, found {spark}"
text = re.sub(r'^\s*"(?:pyspark|delta-spark)[^"]*",?\s*\n', "", text, flags=re.M)
extra = "spark = [" + ", ".join(f'"{d}"' for d in spark) + "]\n"
text = text.replace("[project.optional-dependencies]\n", "[project.optional-dependencies]\n" + extra, 1)
assert extra in text, "no [project.optional-dependencies] table"
open(path, "w").write(text)
PYEOF
# Fixed zip timestamps: identical sources give identical wheel members (the archive's key).
export SOURCE_DATE_EPOCH=315532800
log "building the wheel"
(cd "$STAGE" && "$BUILD_PY" -m pip wheel -q --no-deps --no-build-isolation --disable-pip-version-check -w "$STAGE/wheelhouse" .) \
  || die "wheel build failed (needs setuptools and wheel in .venv: run \`make setup\`)"
WHEEL_SRC=$(ls "$STAGE"/wheelhouse/ebbtide-*.whl)
WHEEL="$OUT/$(basename "$WHEEL_SRC")"
rm -f "$OUT"/ebbtide-*.whl
cp "$WHEEL_SRC" "$WHEEL"
"$BUILD_PY" - "$WHEEL" <<'EOF' || die "the wheel lacks ebbtide/conf/base.yaml"
import sys, zipfile
names = zipfile.ZipFile(sys.argv[1]).namelist()
sys.exit(0 if "ebbtide/conf/base.yaml" in names else 1)
EOF
log "wheel: $WHEEL"
[ "$WHEEL_ONLY" = 1 ] && exit 0

# --- the environment archive ------------------------------------------------------------------
[ -f "$VENV/pyvenv.cfg" ] || die "$VENV is not a virtual environment (no pyvenv.cfg)"
SRC_VENV=$(cd "$VENV" && pwd -P)   # .venv is a link to the cached environment: pack its target
LOCK_HASH=$(cat "$ROOT/requirements.lock" "$ROOT/overrides.txt" 2>/dev/null | sha256sum | cut -c1-12)
# Keyed by the wheel's contents, not its bytes: zip member order follows the build folder's.
WHEEL_HASH=$("$BUILD_PY" - "$WHEEL" <<'PYEOF'
import hashlib, sys, zipfile
z = zipfile.ZipFile(sys.argv[1])
h = hashlib.sha256()
for name in sorted(z.namelist()):
    h.update(name.encode() + b"\0" + hashlib.sha256(z.read(name)).digest())
print(h.hexdigest()[:12])
PYEOF
)
VENV_HASH=$(printf '%s' "$SRC_VENV" | sha256sum | cut -c1-6)
KEY="$LOCK_HASH-$WHEEL_HASH-$VENV_HASH${PY_PREFIX:+-$(printf '%s' "$PY_PREFIX" | sha256sum | cut -c1-6)}"
mkdir -p "$CACHE/dist"
ARCHIVE="$CACHE/dist/ebbtide-env-$KEY.tar.gz"
if [ -s "$ARCHIVE" ]; then
  log "environment archive up to date: $ARCHIVE"
else
  # A hard-linked copy of the environment costs no disk and no time; replacing the editable
  # install there with the wheel leaves the original untouched (installs unlink, never rewrite).
  WORK="$CACHE/dist/stage-$KEY"
  rm -rf "$WORK"
  log "staging a hard-linked copy of $SRC_VENV"
  cp -al "$SRC_VENV" "$WORK" 2>/dev/null || cp -a "$SRC_VENV" "$WORK"
  SITE=$(ls -d "$WORK"/lib/python3*/site-packages)
  rm -rf "$SITE"/__editable__.ebbtide* "$SITE"/__editable___ebbtide* "$SITE"/ebbtide-*.dist-info \
         "$SITE"/ebbtide.egg-link "$SITE"/ebbtide "$WORK/bin/ebbtide"
  sed -i '\#/lib$#d' "$SITE"/easy-install.pth 2>/dev/null || true
  rm -f "$WORK/delta-jars.path" "$WORK/s3a-jars.path"   # clusters ship their own Delta and s3a
  # pip of the build environment, aimed at the staged one (which may have no pip of its own).
  "$BUILD_PY" -m pip --python "$WORK/bin/python" install -q --no-deps --no-index --disable-pip-version-check "$WHEEL" \
    || die "could not install $WHEEL into the staged environment"
  "$WORK/bin/python" -I -c 'import ebbtide.config as c; c.load_config(); assert "/lib/python" in c.__file__, c.__file__' \
    || die "the staged environment does not load ebbtide's config from the wheel"
  log "packing with venv-pack (several GB with torch's CUDA libraries: minutes, once per lock + wheel)"
  "$BUILD_PY" -m venv_pack --prefix "$WORK" --output "$ARCHIVE.part" --format tar.gz --force --quiet \
    ${PY_PREFIX:+--python-prefix "$PY_PREFIX"} \
    --exclude '*/__pycache__/*' --exclude '*.pyc'
  mv "$ARCHIVE.part" "$ARCHIVE"
  rm -rf "$WORK"
fi
ln -sfn "$ARCHIVE" "$OUT/ebbtide-env.tar.gz"
log "environment: $OUT/ebbtide-env.tar.gz -> $ARCHIVE ($(du -h "$ARCHIVE" | cut -f1))"
