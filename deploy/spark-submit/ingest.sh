#!/usr/bin/env bash
# spark-submit the ingest stage; options after the script name go to `ebbtide ingest`.
# Local: deploy/spark-submit/ingest.sh --source data/raw --format parquet
# YARN / EMR: EBBTIDE_SUBMIT_MODE=cluster EBBTIDE_ENV_ARCHIVE=s3://bucket/ebbtide/ebbtide-env.tar.gz deploy/spark-submit/ingest.sh ...
# See submit.sh for every setting, and `deploy/spark-submit/ingest.sh --help` for the stage's options.
exec "$(dirname "$0")/submit.sh" ingest "$@"
