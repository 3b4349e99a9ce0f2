#!/usr/bin/env bash
# spark-submit one ebbtide stage: submit.sh <stage> [stage options...]
#
#   EBBTIDE_SUBMIT_MODE=local (default)  --master local[2] on this machine, Python and Delta jars
#                                        from the environment `make setup` built
#   EBBTIDE_SUBMIT_MODE=cluster          --deploy-mode cluster on YARN (EMR on EC2 or any Hadoop
#                                        cluster): the venv archive travels with --archives, the
#                                        platform brings Spark and Delta, conf/<EBBTIDE_ENV>.yaml
#                                        (default emr) takes the platform's session
#
# Other settings (environment variables):
#   EBBTIDE_MASTER        local master (default local[2]) or cluster master (default yarn)
#   EBBTIDE_ENV           config overlay passed as --env (local mode: local, cluster mode: emr)
#   EBBTIDE_ENV_ARCHIVE   cluster mode: the venv-pack archive, a local path or s3://...
#                         (default dist/ebbtide-env.tar.gz, built by `make package`)
#   EBBTIDE_PYTHON        local mode: the Python of driver and workers (default .venv/bin/python)
#   SPARK_SUBMIT          the spark-submit to use (local default: .venv/bin/spark-submit)
#   EBBTIDE_SUBMIT_OPTS   extra spark-submit options, e.g. "--driver-memory 8g --num-executors 4"
#   EBBTIDE_DRY_RUN=1     print the command instead of running it
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
STAGES="ingest sessionize sequences train evaluate score monitor sql synth"

usage() { sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; echo "stages: $STAGES"; }
[ $# -ge 1 ] || { usage >&2; exit 2; }
case "$1" in -h|--help) usage; exit 0 ;; esac
STAGE=$1; shift
case " $STAGES " in *" $STAGE "*) ;; *) echo "submit.sh: unknown stage '$STAGE'; choose from: $STAGES" >&2; exit 2 ;; esac
JOB="$ROOT/jobs/$STAGE.py"
[ -f "$JOB" ] || { echo "submit.sh: $JOB not found" >&2; exit 2; }

MODE=${EBBTIDE_SUBMIT_MODE:-local}
read -r -a EXTRA <<< "${EBBTIDE_SUBMIT_OPTS:-}"
DELTA_CONF=(--conf spark.sql.extensions=io.delta.sql.DeltaSparkSessionExtension
            --conf spark.sql.catalog.spark_catalog=org.apache.spark.sql.delta.catalog.DeltaCatalog)
UTC_CONF=(--conf spark.sql.session.timeZone=UTC
          --conf spark.driver.extraJavaOptions=-Duser.timezone=UTC
          --conf spark.executor.extraJavaOptions=-Duser.timezone=UTC)

case "$MODE" in
  local)
    PY=${EBBTIDE_PYTHON:-$ROOT/.venv/bin/python}
    SUBMIT=${SPARK_SUBMIT:-$(dirname "$PY")/spark-submit}
    [ -x "$PY" ] || { echo "submit.sh: $PY not found; run \`make setup\` or set EBBTIDE_PYTHON" >&2; exit 2; }
    MASTER=${EBBTIDE_MASTER:-local[2]}
    # pip's spark-submit finds Spark through the first python3 on PATH unless SPARK_HOME is set,
    # so from a shell without the venv activated it would fail with "/bin/spark-class: No such file".
    SPARK_HOME=${SPARK_HOME:-$("$PY" -c 'import os, pyspark; print(os.path.dirname(pyspark.__file__))')}
    export SPARK_HOME PYSPARK_PYTHON="$PY"
    # Spark is already running when the job's Python starts, so jars set by the session builder
    # would miss the driver's class path: Delta must come in through --jars here.
    JARS=$("$PY" -c 'from ebbtide.spark import delta_jars; print(",".join(delta_jars()))')
    CMD=("$SUBMIT" --master "$MASTER" --name "ebbtide-$STAGE"
         --jars "$JARS" "${DELTA_CONF[@]}" "${UTC_CONF[@]}"
         --conf "spark.pyspark.python=$PY" --conf "spark.pyspark.driver.python=$PY"
         "${EXTRA[@]}" "$JOB" --env "${EBBTIDE_ENV:-local}" --set "spark.master=$MASTER" "$@")
    ;;
  cluster)
    ARCHIVE=${EBBTIDE_ENV_ARCHIVE:-$ROOT/dist/ebbtide-env.tar.gz}
    case "$ARCHIVE" in
      *://*) ;;
      *) [ -e "$ARCHIVE" ] || { echo "submit.sh: $ARCHIVE not found; run \`make package\` or set EBBTIDE_ENV_ARCHIVE" >&2; exit 2; } ;;
    esac
    SUBMIT=${SPARK_SUBMIT:-spark-submit}
    # Driver (in YARN's application master) and executors run the archive's Python, unpacked
    # under ./environment; the platform provides Spark and Delta, so no --jars.
    CMD=("$SUBMIT" --master "${EBBTIDE_MASTER:-yarn}" --deploy-mode cluster --name "ebbtide-$STAGE"
         --archives "$ARCHIVE#environment"
         --conf spark.pyspark.python=./environment/bin/python
         --conf spark.yarn.appMasterEnv.PYSPARK_PYTHON=./environment/bin/python
         --conf spark.executorEnv.PYSPARK_PYTHON=./environment/bin/python
         "${DELTA_CONF[@]}" "${UTC_CONF[@]}"
         "${EXTRA[@]}" "$JOB" --env "${EBBTIDE_ENV:-emr}" "$@")
    ;;
  *) echo "submit.sh: EBBTIDE_SUBMIT_MODE must be local or cluster, got '$MODE'" >&2; exit 2 ;;
esac

if [ "${EBBTIDE_DRY_RUN:-0}" = 1 ]; then
  printf '%q ' "${CMD[@]}"; echo
  exit 0
fi
echo "[submit] ${CMD[*]}" >&2
exec "${CMD[@]}"
