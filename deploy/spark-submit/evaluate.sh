#!/usr/bin/env bash
# spark-submit the evaluate stage; options after the script name go to `ebbtide evaluate`.
# Local: deploy/spark-submit/evaluate.sh 
# YARN / EMR: EBBTIDE_SUBMIT_MODE=cluster EBBTIDE_ENV_ARCHIVE=s3://bucket/ebbtide/ebbtide-env.tar.gz deploy/spark-submit/evaluate.sh ...
# See submit.sh for every setting, and `deploy/spark-submit/evaluate.sh --help` for the stage's options.
exec "$(dirname "$0")/submit.sh" evaluate "$@"
