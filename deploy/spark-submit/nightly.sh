#!/usr/bin/env bash
# The nightly chain through spark-submit: ingest -> sessionize -> sequences --nightly (vocabularies and the
# changed users' sequences; training examples are the weekly chain's) -> score -> monitor, stopping
# at the first failure. Usage: deploy/spark-submit/nightly.sh SOURCE_PATH [SCORE_DATE] (default: today, UTC)
# monitor checks the day before SCORE_DATE (the last complete day) and fails the chain on an alert.
# Same settings as submit.sh (EBBTIDE_SUBMIT_MODE, EBBTIDE_ENV_ARCHIVE, ...); EBBTIDE_SOURCE_FORMAT
# sets the raw format (default parquet); EBBTIDE_STAGE_OPTS adds options to every stage (e.g.
# "--set storage.root=/data/ebbtide").
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
SOURCE=${1:?usage: nightly.sh SOURCE_PATH [SCORE_DATE]}
SCORE_DATE=${2:-$(date -u +%F)}
read -r -a OPTS <<< "${EBBTIDE_STAGE_OPTS:-}"
"$HERE/submit.sh" ingest --source "$SOURCE" --format "${EBBTIDE_SOURCE_FORMAT:-parquet}" "${OPTS[@]}"
"$HERE/submit.sh" sessionize "${OPTS[@]}"
"$HERE/submit.sh" sequences --nightly "${OPTS[@]}"
"$HERE/submit.sh" score --score-date "$SCORE_DATE" "${OPTS[@]}"
"$HERE/submit.sh" monitor --day-before "$SCORE_DATE" --fail-on-alert "${OPTS[@]}"
