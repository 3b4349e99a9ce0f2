#!/usr/bin/env bash
# EMR on EC2 bootstrap action: runs on every node before YARN starts.
#   1. unpacks ebbtide's venv archive (scripts/package.sh --python-prefix /usr) into /opt/ebbtide/env,
#      the Python of the steps that do not ship it with --archives (train, evaluate);
#   2. on nodes with an NVIDIA GPU, mounts the cgroup devices controller YARN's GPU scheduling needs
#      (see cluster.json), then builds Horovod 0.28.1 against that environment's torch with
#      NCCL (the archive's Horovod was built for CPU + Gloo), or installs a wheel built before.
#
# Usage (BootstrapActions of cluster.json, or aws emr create-cluster --bootstrap-actions):
#   Path=s3://YOUR-BUCKET/ebbtide/deploy/emr/bootstrap.sh,Args=[s3://YOUR-BUCKET/ebbtide/dist/ebbtide-env.tar.gz]
#   optional second argument: s3://.../horovod-0.28.1-cp311-cp311-linux_x86_64.whl (a GPU build, skips the build)
set -euo pipefail

ARCHIVE_URI=${1:?usage: bootstrap.sh s3://.../ebbtide-env.tar.gz [s3://.../horovod-gpu.whl]}
HOROVOD_WHEEL_URI=${2:-}
ENV_DIR=/opt/ebbtide/env
HOROVOD_VERSION=0.28.1

log() { echo "[ebbtide-bootstrap $(date +%H:%M:%S)] $*"; }

log "installing the environment from $ARCHIVE_URI"
sudo mkdir -p "$ENV_DIR"
aws s3 cp --only-show-errors "$ARCHIVE_URI" /tmp/ebbtide-env.tar.gz
sudo tar -xzf /tmp/ebbtide-env.tar.gz -C "$ENV_DIR"
rm -f /tmp/ebbtide-env.tar.gz
sudo chmod -R a+rX "$ENV_DIR"
PY="$ENV_DIR/bin/python"
"$PY" -c 'import ebbtide.config as c; c.load_config(env="emr")' \
  || { log "the environment does not import ebbtide; was the archive built with --python-prefix /usr for Python 3.11?"; exit 1; }

if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
  log "no GPU on this node: done"
  exit 0
fi

# YARN schedules and isolates the GPUs (deploy/emr/cluster.json: the GPU group's yarn-site and
# container-executor); its GPU module needs the cgroup v1 devices controller, which Amazon Linux 2023
# (cgroup v2) does not mount: mount it under the cgroups mount-path cluster.json names.
CGROUP_ROOT=/yarn-cgroup
if ! mountpoint -q "$CGROUP_ROOT/devices"; then
  log "mounting the cgroup v1 devices controller at $CGROUP_ROOT/devices for YARN's GPU isolation"
  sudo mkdir -p "$CGROUP_ROOT/devices"
  sudo mount -t cgroup -o devices cgroupv1-devices "$CGROUP_ROOT/devices"
fi
sudo chmod a+rwx -R "$CGROUP_ROOT"

log "GPU node: installing Horovod $HOROVOD_VERSION with NCCL"
if [ -n "$HOROVOD_WHEEL_URI" ]; then
  aws s3 cp --only-show-errors "$HOROVOD_WHEEL_URI" /tmp/
  sudo "$PY" -m pip install --no-deps --force-reinstall "/tmp/$(basename "$HOROVOD_WHEEL_URI")"
else
  sudo yum install -y -q gcc gcc-c++ make cmake3 git >/dev/null || sudo dnf install -y -q gcc gcc-c++ make cmake git
  BUILD=$(mktemp -d)
  "$PY" -m pip download -q --no-deps --no-binary :all: -d "$BUILD" "horovod==$HOROVOD_VERSION"
  tar -xzf "$BUILD"/horovod-*.tar.gz -C "$BUILD"
  SRC="$BUILD/horovod-$HOROVOD_VERSION"
  # torch >= 2.1 needs C++17; the 0.28.1 release asks for C++14 (fixed upstream after the release).
  sed -i 's/set(CMAKE_CXX_STANDARD 14)/set(CMAKE_CXX_STANDARD 17)/' "$SRC/CMakeLists.txt" "$SRC/horovod/torch/CMakeLists.txt"
  (cd "$SRC" && sudo env CMAKE_POLICY_VERSION_MINIMUM=3.5 MAKEFLAGS="-j$(nproc)" \
      HOROVOD_GPU_OPERATIONS=NCCL HOROVOD_WITH_PYTORCH=1 HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_MPI=1 \
      HOROVOD_WITHOUT_TENSORFLOW=1 HOROVOD_WITHOUT_MXNET=1 \
      "$PY" -m pip install -q --no-deps --no-build-isolation --force-reinstall .)
  rm -rf "$BUILD"
fi
"$PY" -c 'import horovod.torch as hvd; assert hvd.nccl_built(), "Horovod built without NCCL"'
log "Horovod with NCCL ready in $ENV_DIR"
