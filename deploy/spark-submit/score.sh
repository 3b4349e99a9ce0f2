#!/usr/bin/env bash
# spark-submit the score stage; options after the script name go to `ebbtide score`.
# Local: deploy/spark-submit/score.sh --score-date 2025-06-30
# YARN / EMR: EBBTIDE_SUBMIT_MODE=cluster EBBTIDE_ENV_ARCHIVE=s3://bucket/ebbtide/ebbtide-env.tar.gz deploy/spark-submit/score.sh ...
# See submit.sh for every setting, and `deploy/spark-submit/score.sh --help` for the stage's options.
exec "$(dirname "$0")/submit.sh" score "$@"
