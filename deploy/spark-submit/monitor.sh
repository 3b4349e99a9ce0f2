#!/usr/bin/env bash
# spark-submit the monitor stage; options after the script name go to `ebbtide monitor`.
# Local: deploy/spark-submit/monitor.sh --date 2025-06-29 --fail-on-alert
# YARN / EMR: EBBTIDE_SUBMIT_MODE=cluster EBBTIDE_ENV_ARCHIVE=s3://bucket/ebbtide/ebbtide-env.tar.gz deploy/spark-submit/monitor.sh ...
# See submit.sh for every setting, and `deploy/spark-submit/monitor.sh --help` for the stage's options.
exec "$(dirname "$0")/submit.sh" monitor "$@"
