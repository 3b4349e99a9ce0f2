#!/usr/bin/env bash
# RecBole (the peer models of `make results`) in its own virtual environment, beside ebbtide's.
# Cached under $EBBTIDE_CACHE/recbole-<key>; idempotent. Prints the environment's python last.
# Pins and traps (docs/results.md): recbole 1.2.1 pulls ray, which imports pkg_resources
# (setuptools < 70); pandas must stay 2.x (pandas 3's copy-on-write silently breaks its dataset
# code); torch >= 2.6 needs TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 at run time (scripts/results.py
# sets it for RecBole runs only). torch, numpy and pandas are the versions of ebbtide's lock,
# so uv takes them from its cache instead of downloading them again.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
CACHE=${EBBTIDE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ebbtide}
PY=${PYTHON:-python3}
UV="$CACHE/uv-0.13.8/bin/uv"
RECBOLE_VERSION=1.2.1

pin() { sed -n "s/^$1==//p" "$ROOT/requirements.lock" | head -1; }
TORCH=$(pin torch); NUMPY=$(pin numpy); PANDAS=$(pin pandas); SCIPY=$(pin scipy); SKLEARN=$(pin scikit-learn)
[ -n "$TORCH" ] || { echo "[setup_recbole] torch not pinned in requirements.lock" >&2; exit 1; }
[ -x "$UV" ] || { echo "[setup_recbole] uv not found at $UV: run scripts/setup.sh (make setup) first" >&2; exit 1; }

KEY=$(printf 'recbole=%s torch=%s numpy=%s pandas=%s py=%s' "$RECBOLE_VERSION" "$TORCH" "$NUMPY" "$PANDAS" \
      "$("$PY" --version 2>&1)" | sha256sum | cut -c1-12)
VENV="$CACHE/recbole-$KEY"
export UV_CACHE_DIR="$CACHE/uv-cache" UV_LINK_MODE=copy
if [ ! -f "$VENV/.complete" ]; then
  echo "[setup_recbole] creating $VENV (recbole $RECBOLE_VERSION, torch $TORCH)" >&2
  rm -rf "$VENV"
  "$UV" venv -q --python "$PY" "$VENV"
  # torch declares setuptools >= 77 but runs with 69; ray needs < 70: override the declaration.
  OVR=$(mktemp); trap 'rm -f "$OVR"' EXIT
  echo "setuptools<70" > "$OVR"
  "$UV" pip install -q --python "$VENV/bin/python" --override "$OVR" \
    "recbole==$RECBOLE_VERSION" "torch==$TORCH" "numpy==$NUMPY" "pandas==$PANDAS" \
    ${SCIPY:+"scipy==$SCIPY"} ${SKLEARN:+"scikit-learn==$SKLEARN"} "setuptools<70" pyyaml
  "$VENV/bin/python" -c "import recbole, torch, pandas; assert pandas.__version__.startswith('2.')" >&2
  touch "$VENV/.complete"
fi
# MovieLens-100k ships inside the recbole wheel; it is read from there, never copied into the repo.
echo "$VENV/bin/python"
