#!/usr/bin/env bash
# The weekly chain through spark-submit: sequences (rebuilds gold_training_examples from every event; the
# nightly chain only updates sequences) -> train (a warm start from the champion) -> evaluate (the gate,
# which moves `champion` only when the new version earns it), stopping at the first failure.
# Usage: deploy/spark-submit/weekly.sh [train options...]   e.g. --launcher horovod --num-proc 2
# The first run of a deployment has no champion yet: `--warm-start-if-missing scratch` then trains from
# scratch (train.epochs); later runs continue the champion's weights for train.warm_start_epochs.
# Same settings as submit.sh (EBBTIDE_SUBMIT_MODE, EBBTIDE_ENV_ARCHIVE, ...); EBBTIDE_MODEL_NAME names the
# registered model (default ebbtide, mlflow.model_name); EBBTIDE_STAGE_OPTS adds options to every stage
# (e.g. "--set storage.root=/data/ebbtide").
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
read -r -a OPTS <<< "${EBBTIDE_STAGE_OPTS:-}"
"$HERE/submit.sh" sequences "${OPTS[@]}"
"$HERE/submit.sh" train --warm-start "models:/${EBBTIDE_MODEL_NAME:-ebbtide}@champion" --warm-start-if-missing scratch \
  "$@" "${OPTS[@]}"
"$HERE/submit.sh" evaluate "${OPTS[@]}"
