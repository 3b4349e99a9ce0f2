#!/usr/bin/env bash
# One-call GPU check: the training feed and step on a CUDA machine that has Python + torch and
# nothing else (no pyspark, no Horovod, no network). See bench/README.md for the wheels to carry.
#
#   bash bench/gpu_check.sh                 # on the GPU machine, from the repository root
#   PYTHON=.venv/bin/python SKIP_INSTALL=1 DEVICE=cpu ROWS=20000 bash bench/gpu_check.sh   # dry run on a CPU
#
# 1. extracts the wheels carried in .whl/ (petastorm, pyarrow 14, numpy 1.26, ...) into $SITE and
#    puts it first on PYTHONPATH (wheels are zip files: no pip resolver, no index needed);
# 2. bench/bench_train.py: Parquet of gold_training_examples' shape (written with pyarrow) ->
#    Petastorm -> BatchedDataLoader -> EbbtideNet step, against the same step on in-memory batches;
# 3. bench/bench_model.py: EbbtideNet's step against a plain cuDNN nn.LSTM of the same shape.
# Prints each bench's JSON and, last, one summary line; copies everything to $OUT when set.
set -uo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
SITE=${SITE:-/tmp/site}
DEVICE=${DEVICE:-cuda}
ROWS=${ROWS:-200000}
WORKERS=${WORKERS:-4}
LOGDIR=${OUT:-/tmp/ebbtide-gpu-check}
mkdir -p "$LOGDIR"

if [ "${SKIP_INSTALL:-0}" != "1" ]; then
  rm -rf "$SITE" && mkdir -p "$SITE"
  "$PY" - "$SITE" <<'EOF' || exit 3
import glob, sys, zipfile
site = sys.argv[1]
wheels = sorted(glob.glob(".whl/*.whl"))
if not wheels:
    sys.exit("no wheels in .whl/: fetch them as bench/README.md says, and carry .whl")
for w in wheels:
    zipfile.ZipFile(w).extractall(site)
print(f"extracted {len(wheels)} wheels into {site}", file=sys.stderr)
EOF
  export PYTHONPATH="$SITE:$PWD/lib${PYTHONPATH:+:$PYTHONPATH}"
else
  export PYTHONPATH="$PWD/lib${PYTHONPATH:+:$PYTHONPATH}"
fi

"$PY" - <<'EOF' > "$LOGDIR/env.json" || { cat "$LOGDIR/env.json"; exit 4; }
import importlib, json, sys
out = {"python": sys.version.split()[0]}
missing = []
for m in ("numpy", "pyarrow", "pandas", "petastorm", "torch"):
    try:
        out[m] = getattr(importlib.import_module(m), "__version__", "?")
    except Exception as e:  # report every missing piece at once
        missing.append(f"{m}: {e}")
if not missing:
    import torch
    out["cuda"] = torch.cuda.is_available()
    out["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    import petastorm.pytorch  # noqa: F401  (the loader module imports pyarrow, pandas, torch together)
out["missing"] = missing
print(json.dumps(out))
sys.exit(1 if missing else 0)
EOF
cat "$LOGDIR/env.json"

status=0
"$PY" bench/bench_train.py --device "$DEVICE" --rows "$ROWS" --workers "$WORKERS" \
  --data-dir /tmp/ebbtide-bench-train ${TRAIN_ARGS:-} 2> "$LOGDIR/bench_train.err" | tee "$LOGDIR/bench_train.out" || status=5
tail -n 5 "$LOGDIR/bench_train.err" >&2
timeout "${MODEL_TIMEOUT:-300}" "$PY" bench/bench_model.py --device "$DEVICE" ${MODEL_ARGS:-} \
  2> "$LOGDIR/bench_model.err" | tee "$LOGDIR/bench_model.out" || status=6
tail -n 5 "$LOGDIR/bench_model.err" >&2

"$PY" - "$LOGDIR" <<'EOF'
import json, sys
d = sys.argv[1]
def last_json(path):
    try:
        lines = [l for l in open(path).read().splitlines() if l.startswith("{")]
        return json.loads(lines[-1]) if lines else None
    except FileNotFoundError:
        return None
env = json.load(open(f"{d}/env.json"))
train = last_json(f"{d}/bench_train.out")
model = last_json(f"{d}/bench_model.out")
summary = {"bench": "gpu_check", "env": env, "train": train, "model": model}
if train:
    summary["pipeline_over_model_only"] = train.get("ratio")
if model:
    summary["model_over_plain_lstm"] = model.get("ratio_vs_plain_lstm")
json.dump(summary, open(f"{d}/gpu_check.json", "w"), indent=2)
print(json.dumps(summary))
EOF
exit $status
