#!/usr/bin/env bash
# spark-submit the sequences stage; options after the script name go to `ebbtide sequences`.
# Local: deploy/spark-submit/sequences.sh 
# YARN / EMR: EBBTIDE_SUBMIT_MODE=cluster EBBTIDE_ENV_ARCHIVE=s3://bucket/ebbtide/ebbtide-env.tar.gz deploy/spark-submit/sequences.sh ...
# See submit.sh for every setting, and `deploy/spark-submit/sequences.sh --help` for the stage's options.
exec "$(dirname "$0")/submit.sh" sequences "$@"
