#!/usr/bin/env bash
# One-command, idempotent setup of everything ebbtide needs on a fresh machine
# (Python 3.11, Java 17, Maven): a virtual environment with the pinned stack, the Delta
# jars, Horovod built from source with the C++17 patch, and with --s3a (`make cluster-test`)
# the s3a connector's jars (hadoop-aws + the AWS SDK bundle, about 560 MB). Every download and build is cached outside
# the work tree under $EBBTIDE_CACHE, keyed by version, so a second run takes seconds.
# The repo gets one symlink, .venv, to the cached environment.
set -euo pipefail

WANT_S3A=0
for arg in "$@"; do
  case "$arg" in
    --s3a) WANT_S3A=1 ;;
    -h|--help) echo "usage: scripts/setup.sh [--s3a]   (--s3a: also fetch hadoop-aws + the AWS SDK bundle for make cluster-test)"; exit 0 ;;
    *) echo "setup.sh: unknown argument $arg (try --help)" >&2; exit 2 ;;
  esac
done

ROOT=$(cd "$(dirname "$0")/.." && pwd)
CACHE=${EBBTIDE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ebbtide}
PY=${PYTHON:-python3}
UV_VERSION=0.13.8
HOROVOD_VERSION=0.28.1
DELTA_VERSION=$(sed -n 's/^delta-spark==//p' "$ROOT/requirements.lock")
SCALA=2.13

log() { printf '[setup %s] %s\n' "$(date +%H:%M:%S)" "$*"; }
die() { printf '[setup] ERROR: %s\n' "$*" >&2; exit 1; }

command -v "$PY" >/dev/null || die "python3 not found; install Python 3.11"
"$PY" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' \
  || die "Python 3.11 is required (found $("$PY" --version)); set PYTHON=/path/to/python3.11"
command -v java >/dev/null || die "java not found; install OpenJDK 17 (Spark 4 needs Java 17+)"
mkdir -p "$CACHE"

# --- uv: fast resolver with a shared download cache -------------------------------------
UV_HOME="$CACHE/uv-$UV_VERSION"
UV="$UV_HOME/bin/uv"
if [ ! -x "$UV" ]; then
  log "installing uv $UV_VERSION into $UV_HOME"
  "$PY" -m pip install -q --disable-pip-version-check --target "$UV_HOME/lib" "uv==$UV_VERSION"
  mkdir -p "$UV_HOME/bin"
  ln -sf "$UV_HOME/lib/bin/uv" "$UV"
fi
export UV_CACHE_DIR="$CACHE/uv-cache"
export UV_LINK_MODE=copy

# --- the virtual environment, keyed by the lock file and the Python version -------------
KEY=$( (cat "$ROOT/requirements.lock" "$ROOT/overrides.txt"; "$PY" --version; echo "horovod=$HOROVOD_VERSION") \
       | sha256sum | cut -c1-12)
VENV="$CACHE/venv-$KEY"
if [ ! -f "$VENV/.deps-complete" ]; then
  log "creating virtual environment $VENV (first run downloads torch, pyspark...: several minutes)"
  rm -rf "$VENV"
  "$UV" venv -q --python "$PY" "$VENV"
  "$UV" pip install --python "$VENV/bin/python" -r "$ROOT/requirements.lock" --override "$ROOT/overrides.txt"
  touch "$VENV/.deps-complete"
else
  log "virtual environment up to date: $VENV"
fi
VPY="$VENV/bin/python"

# --- Horovod 0.28.1, patched for C++17 (torch >= 2.1 needs it), wheel cached -------------
if ! "$VPY" -c 'import horovod.torch' 2>/dev/null; then
  TORCH_V=$("$VPY" -c 'import torch; print(torch.__version__.split("+")[0])')
  WHEELS="$CACHE/wheels/horovod-$HOROVOD_VERSION-torch$TORCH_V-py311"
  if ! ls "$WHEELS"/horovod-*.whl >/dev/null 2>&1; then
    log "building Horovod $HOROVOD_VERSION against torch $TORCH_V (about 5 minutes on 2 cores, once)"
    BUILD=$(mktemp -d)
    trap 'rm -rf "$BUILD"' EXIT
    "$PY" -m pip download -q --no-deps --no-binary :all: -d "$BUILD" "horovod==$HOROVOD_VERSION"
    tar -xzf "$BUILD"/horovod-*.tar.gz -C "$BUILD"
    SRC="$BUILD/horovod-$HOROVOD_VERSION"
    sed -i 's/set(CMAKE_CXX_STANDARD 14)/set(CMAKE_CXX_STANDARD 17)/' \
      "$SRC/CMakeLists.txt" "$SRC/horovod/torch/CMakeLists.txt"
    grep -q 'CMAKE_CXX_STANDARD 17' "$SRC/horovod/torch/CMakeLists.txt" \
      || die "the Horovod C++17 patch did not apply; see docs/stack.md"
    mkdir -p "$WHEELS"
    "$UV" pip install -q --python "$VPY" pip
    (cd "$SRC" && PATH="/usr/bin:$PATH" CMAKE_POLICY_VERSION_MINIMUM=3.5 MAKEFLAGS="-j$(nproc)" \
      HOROVOD_WITH_PYTORCH=1 HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_MPI=1 \
      HOROVOD_WITHOUT_TENSORFLOW=1 HOROVOD_WITHOUT_MXNET=1 \
      "$VPY" -m pip wheel --no-build-isolation --no-deps -w "$WHEELS" . >"$BUILD/build.log" 2>&1) \
      || { tail -40 "$BUILD/build.log" >&2; die "Horovod build failed (log above); needs gcc/g++, make and cmake >= 3.13 (see docs/stack.md)"; }
  fi
  "$UV" pip install --python "$VPY" --no-deps "$WHEELS"/horovod-*.whl
  "$VPY" -c 'import horovod.torch' || die "Horovod installed but does not import"
  rm -f "$VENV/.bytecode-complete"
fi

# --- bytecode, once: uv installs sources only, so without this every Python process (each job,
# each Spark Python worker, each training rank) compiles torch, MLflow and pandas again: 4 s of
# CPU per process. A few files that are not Python 3 (test data inside packages) fail; that is fine.
if [ ! -f "$VENV/.bytecode-complete" ]; then
  log "compiling the environment's bytecode (once, about 30 s)"
  "$VPY" -m compileall -q -j 0 "$VENV/lib/python3.11/site-packages" >/dev/null 2>&1 || true
  touch "$VENV/.bytecode-complete"
fi

# --- Delta jars from Maven Central (Databricks and EMR ship their own) -------------------
JARS="$CACHE/jars/delta-$DELTA_VERSION"
if ! ls "$JARS"/delta-spark_$SCALA-*.jar >/dev/null 2>&1; then
  command -v mvn >/dev/null || die "mvn not found; it fetches the Delta jars from Maven Central"
  log "fetching Delta $DELTA_VERSION jars into $JARS"
  mkdir -p "$JARS"
  for art in "io.delta:delta-spark_$SCALA:$DELTA_VERSION" "io.delta:delta-storage:$DELTA_VERSION"; do
    mvn -q -B dependency:copy -Dartifact="$art" -DoutputDirectory="$JARS" >/dev/null \
      || die "could not fetch $art from Maven Central"
  done
fi

# --- s3a: hadoop-aws and the AWS SDK bundle it was built with, from Maven Central ---------
# pip's pyspark bundles Hadoop's client (hadoop-client-api-X.jar) but not the s3a connector;
# `make cluster-test` reads and writes the object store through it. The SDK version is the one
# Hadoop X's own build names (aws-java-sdk-v2.version in org.apache.hadoop:hadoop-project:X).
# A throwaway Maven repository: the bundle is about 560 MB and is kept only here.
HADOOP_VERSION=$(cd "$("$VPY" -c 'import os, pyspark; print(os.path.dirname(pyspark.__file__))')/jars" \
                 && ls hadoop-client-api-*.jar 2>/dev/null | sed -n 's/^hadoop-client-api-\(.*\)\.jar$/\1/p' | head -1)
[ -n "$HADOOP_VERSION" ] || die "no hadoop-client-api jar in pyspark's jars; cannot tell which hadoop-aws to fetch"
S3A_JARS="$CACHE/jars/hadoop-aws-$HADOOP_VERSION"
# Only `make cluster-test` (setup.sh --s3a) needs them: the demo, the tests and CI skip the download.
if [ "$WANT_S3A" = 1 ] && [ ! -f "$S3A_JARS/.complete" ]; then
  command -v mvn >/dev/null || die "mvn not found; it fetches the hadoop-aws jars from Maven Central"
  log "fetching hadoop-aws $HADOOP_VERSION and its AWS SDK bundle into $S3A_JARS (about 560 MB, once)"
  M2=$(mktemp -d)
  rm -rf "$S3A_JARS" && mkdir -p "$S3A_JARS"
  mvn -q -B dependency:copy -Dmaven.repo.local="$M2/repo" -Dartifact="org.apache.hadoop:hadoop-project:$HADOOP_VERSION:pom" \
    -DoutputDirectory="$M2" >/dev/null || { rm -rf "$M2"; die "could not fetch org.apache.hadoop:hadoop-project:$HADOOP_VERSION:pom from Maven Central"; }
  AWS_SDK_VERSION=$(sed -n 's:.*<aws-java-sdk-v2.version>\(.*\)</aws-java-sdk-v2.version>.*:\1:p' "$M2"/hadoop-project-*.pom | head -1)
  [ -n "$AWS_SDK_VERSION" ] || { rm -rf "$M2"; die "hadoop-project $HADOOP_VERSION's pom names no aws-java-sdk-v2.version"; }
  for art in "org.apache.hadoop:hadoop-aws:$HADOOP_VERSION" "software.amazon.awssdk:bundle:$AWS_SDK_VERSION"; do
    mvn -q -B dependency:copy -Dmaven.repo.local="$M2/repo" -Dartifact="$art" -DoutputDirectory="$S3A_JARS" >/dev/null \
      || { rm -rf "$M2"; die "could not fetch $art from Maven Central"; }
  done
  rm -rf "$M2"
  touch "$S3A_JARS/.complete"
fi

# --- the project itself, editable, pointing at this checkout -----------------------------
"$UV" pip install -q --python "$VPY" --no-deps -e "$ROOT"
ln -sfn "$VENV" "$ROOT/.venv"
printf '%s\n' "$JARS" > "$VENV/delta-jars.path"
if [ -f "$S3A_JARS/.complete" ]; then printf '%s\n' "$S3A_JARS" > "$VENV/s3a-jars.path"; fi
log "ready: $(cd "$ROOT" && .venv/bin/python -c 'import pyspark, torch, horovod, petastorm, mlflow, delta; print("pyspark", pyspark.__version__, "| torch", torch.__version__, "| horovod", horovod.__version__, "| petastorm", petastorm.__version__, "| mlflow", mlflow.__version__)')"
