#!/usr/bin/env bash
# spark-submit the sessionize stage; options after the script name go to `ebbtide sessionize`.
# Local: deploy/spark-submit/sessionize.sh 
# YARN / EMR: EBBTIDE_SUBMIT_MODE=cluster EBBTIDE_ENV_ARCHIVE=s3://bucket/ebbtide/ebbtide-env.tar.gz deploy/spark-submit/sessionize.sh ...
# See submit.sh for every setting, and `deploy/spark-submit/sessionize.sh --help` for the stage's options.
exec "$(dirname "$0")/submit.sh" sessionize "$@"
