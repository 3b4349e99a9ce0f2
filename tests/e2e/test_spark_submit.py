"""The deploy/spark-submit scripts, run for real: `spark-submit --master local[2] jobs/<stage>.py`
(pyspark's own bin/spark-submit from the environment) on a tiny generated log, each stage in its
own JVM, chained only through the Delta tables and the MLflow store under one storage root.

ingest and score go through spark-submit (each in its own JVM); sessionize, sequences and train
run in between in this process's Spark session, chained only through the Delta tables and the
MLflow store under one storage root (one JVM start fewer per stage keeps the test short; the other
wrappers are the same script with another stage name, checked in test_dry_run_commands).
"""
from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SUBMIT_DIR = ROOT / "deploy" / "spark-submit"

from conftest import TINY  # noqa: E402

pytestmark = pytest.mark.slow

# Small everything: the stages must finish in seconds each on 2 shared cores.
SETS = [
    *TINY,
    "spark.shuffle_partitions=2",
]


def _submit(stage: str, root: Path, database: str, *args: str, timeout: int = 1500) -> dict:
    """Run deploy/spark-submit/<stage>.sh; return the stage's JSON summary (its last stdout line)."""
    sets = [a for kv in [f"storage.root={root}", f"storage.database={database}", *SETS] for a in ("--set", kv)]
    env = dict(os.environ, EBBTIDE_SUBMIT_OPTS="--driver-memory 1g", PYTHONUNBUFFERED="1")
    proc = subprocess.run(
        [str(SUBMIT_DIR / f"{stage}.sh"), *args, *sets],
        cwd=root, env=env, capture_output=True, text=True, timeout=timeout,
    )
    if proc.returncode != 0:
        pytest.fail(f"{stage}.sh exited {proc.returncode}\n--- stderr (tail)\n{proc.stderr[-4000:]}\n"
                    f"--- stdout (tail)\n{proc.stdout[-2000:]}")
    assert "[submit]" in proc.stderr and "spark-submit" in proc.stderr, "the stage did not go through spark-submit"
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    assert lines, f"{stage}: no JSON summary on stdout:\n{proc.stdout[-2000:]}"
    return json.loads(lines[-1])


def _stage_built(module: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def test_ingest_and_score_through_spark_submit(tmp_path, spark):
    py = ROOT / ".venv" / "bin" / "python"
    assert (ROOT / ".venv" / "bin" / "spark-submit").exists(), "run `make setup`: .venv/bin/spark-submit is missing"
    raw = tmp_path / "synth"
    subprocess.run(
        [str(py), "-m", "ebbtide.cli", "synth", "--out", str(raw), "--users", "60", "--events-per-user", "15",
         "--days", "60", "--files", "2", "--seed", "3"],
        check=True, capture_output=True, text=True, timeout=120,
    )
    meta = json.loads((raw / "truth" / "meta.json").read_text())
    root = tmp_path / "store"
    root.mkdir()

    database = f"submit_{os.getpid()}"

    ing = _submit("ingest", root, database, "--source", str(raw / "raw"), "--format", "parquet")
    assert ing["stage"] == "ingest"
    assert ing["rows_read"] > 200
    assert ing["bronze_new"] == ing["rows_read"] and ing["quarantined"] == 0

    from conftest import make_config

    from ebbtide import tables
    from ebbtide.cli import Context, run_stage

    cfg = make_config(root, f"storage.database={database}", *SETS)
    tables.ensure_database(spark, cfg)
    # What spark-submit wrote is what this session reads: same root, same tables.
    assert tables.read(spark, cfg, "bronze_events").count() == ing["bronze_new"]
    ctx = Context(cfg, _spark=spark)
    run_stage("sessionize", [], ctx)
    run_stage("sequences", [], ctx)
    if not (_stage_built("ebbtide.model.train") and _stage_built("ebbtide.scoring.run")):
        pytest.skip("train or score is not built yet: only ingest ran through spark-submit")
    tr = run_stage("train", ["--launcher", "local", "--epochs", "1", "--max-steps-per-epoch", "5", "--no-resume"], ctx)
    assert tr["model_version"] is not None, tr

    # The day after the log's last event: every user active in the last 30 days gets scored.
    end = dt.datetime.fromisoformat(meta["end"])
    score_date = (end + dt.timedelta(days=1)).date().isoformat()
    sc = _submit("score", root, database, "--score-date", score_date, "--model-version", str(tr["model_version"]))
    assert sc["score_date"] == score_date
    assert str(sc["model_version"]) == str(tr["model_version"])
    assert sc["active_users"] > 0
    recs = tables.read(spark, cfg, "gold_recommendations").where(f"score_date = '{score_date}'")
    assert recs.count() == sc["recommendation_rows"] > 0
    assert recs.select("user_id").distinct().count() == sc["active_users"]
    churn = tables.read(spark, cfg, "gold_churn_decay").where(f"score_date = '{score_date}'")
    assert churn.count() == sc["active_users"]
    bad = churn.where("p_return_7d < 0 OR p_return_7d > p_return_30d OR p_return_30d > 1").count()
    assert bad == 0


def test_dry_run_commands(tmp_path):
    """Both modes build the command a person would type; cluster mode ships the archive."""
    env = dict(os.environ, EBBTIDE_DRY_RUN="1")
    local = subprocess.run([str(SUBMIT_DIR / "ingest.sh"), "--source", "x"], env=env,
                           capture_output=True, text=True, check=True).stdout
    assert "--master local\\[2\\]" in local or "--master 'local[2]'" in local
    assert "delta-spark" in local and "--env local" in local
    archive = tmp_path / "env.tar.gz"
    archive.write_bytes(b"")
    env.update(EBBTIDE_SUBMIT_MODE="cluster", EBBTIDE_ENV_ARCHIVE=str(archive))
    cluster = subprocess.run([str(SUBMIT_DIR / "score.sh"), "--score-date", "2025-03-01"], env=env,
                             capture_output=True, text=True, check=True).stdout
    assert "--deploy-mode cluster" in cluster and f"{archive}#environment" in cluster
    assert "spark.pyspark.python=./environment/bin/python" in cluster and "--env emr" in cluster
    assert "--jars" not in cluster
    missing = subprocess.run([str(SUBMIT_DIR / "score.sh")], env=dict(env, EBBTIDE_ENV_ARCHIVE=str(tmp_path / "no.tgz")),
                             capture_output=True, text=True)
    assert missing.returncode == 2 and "make package" in missing.stderr
