#!/usr/bin/env bash
# spark-submit the train stage; options after the script name go to `ebbtide train`.
# Local: deploy/spark-submit/train.sh --launcher horovod --num-proc 2
# YARN / EMR: EBBTIDE_SUBMIT_MODE=cluster EBBTIDE_ENV_ARCHIVE=s3://bucket/ebbtide/ebbtide-env.tar.gz deploy/spark-submit/train.sh ...
# See submit.sh for every setting, and `deploy/spark-submit/train.sh --help` for the stage's options.
exec "$(dirname "$0")/submit.sh" train "$@"
