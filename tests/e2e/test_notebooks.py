"""The notebooks execute top to bottom (nbclient, a kernel on this environment's Python) against
tables the real stages built from a tiny generated log, so they never rot.

The tables: synth -> ingest -> sessionize -> sequences -> train (local, a few steps) -> evaluate ->
score, backfilled 40 days before the log's end so that the churn calibration has 30 days of
realised labels.
"""
from __future__ import annotations

import datetime as dt
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = ROOT / "notebooks"
KERNEL = "ebbtide-test"

from conftest import TINY  # noqa: E402

pytestmark = pytest.mark.slow

FAST = [
    *TINY,
    "evaluate.ks=[10]",
    "evaluate.sampled_negatives=20",
]


def _built(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


@pytest.fixture(scope="module")
def kernel_dir(tmp_path_factory) -> Path:
    """A kernel spec for this environment's Python, in a temp prefix (nothing global installed)."""
    prefix = tmp_path_factory.mktemp("kernel")
    subprocess.run([sys.executable, "-m", "ipykernel", "install", "--prefix", str(prefix), "--name", KERNEL,
                    "--display-name", "ebbtide (test)"], check=True, capture_output=True)
    return prefix / "share" / "jupyter"


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory, spark) -> dict:
    """Every table the notebooks read, built by the real stages in this process's Spark session."""
    from conftest import make_config

    from ebbtide.cli import Context, run_stage

    tmp = tmp_path_factory.mktemp("notebooks")
    synth = tmp / "synth"
    root = tmp / "store"
    database = f"nb_{os.getpid()}"
    overrides = [f"storage.database={database}", *FAST]
    cfg = make_config(root, *overrides)
    from ebbtide import tables

    tables.ensure_database(spark, cfg)  # get_spark does this; the shared session skips it
    ctx = Context(cfg, _spark=spark)
    out = {"root": root, "database": database, "truth": synth / "truth", "overrides": overrides, "stages": []}

    run_stage("synth", ["--out", str(synth), "--users", "60", "--events-per-user", "15", "--days", "60",
                        "--files", "2", "--seed", "5"], ctx)
    run_stage("ingest", ["--source", str(synth / "raw"), "--format", "parquet"], ctx)
    run_stage("sessionize", [], ctx)
    out["stages"] += ["ingest", "sessionize"]
    run_stage("sequences", [], ctx)
    out["stages"].append("sequences")
    if not (_built("ebbtide.model.train") and _built("ebbtide.scoring.run")):
        return out
    tr = run_stage("train", ["--launcher", "local", "--epochs", "2", "--max-steps-per-epoch", "5", "--no-resume"], ctx)
    out["stages"].append("train")
    if _built("ebbtide.evaluation.run"):
        run_stage("evaluate", [], ctx)
        out["stages"].append("evaluate")
    end = dt.datetime.fromisoformat(json.loads((synth / "truth" / "meta.json").read_text())["end"])
    # Early enough that 30 days of later events exist even when the last users churned before the end.
    backfill = (end - dt.timedelta(days=40)).date().isoformat()
    run_stage("score", ["--score-date", backfill, "--model-version", str(tr["model_version"])], ctx)
    out["stages"].append("score")
    return out


def _execute(name: str, pipeline: dict, kernel_dir: Path, monkeypatch) -> "object":
    import nbformat
    from nbclient import NotebookClient

    monkeypatch.setenv("JUPYTER_PATH", str(kernel_dir))
    monkeypatch.setenv("EBBTIDE_NOTEBOOK_ROOT", str(pipeline["root"]))
    monkeypatch.setenv("EBBTIDE_NOTEBOOK_DATABASE", pipeline["database"])
    monkeypatch.setenv("EBBTIDE_NOTEBOOK_TRUTH", str(pipeline["truth"]))
    monkeypatch.setenv("EBBTIDE_NOTEBOOK_SET", ";".join(
        ["spark.master=local[1]", "spark.shuffle_partitions=2", "spark.driver_memory=1g",
         *[o for o in pipeline["overrides"] if not o.startswith("storage.database")]]))
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    path = NOTEBOOKS / f"{name}.ipynb"
    nb = nbformat.read(path, as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), f"{path.name}: outputs are not stripped"
    assert "parameters" in nb.cells[1].metadata.get("tags", []), "the parameters cell must come first"
    NotebookClient(nb, kernel_name=KERNEL, timeout=600, resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    return nb


def _text(nb) -> str:
    parts = []
    for c in nb.cells:
        for o in c.get("outputs", []):
            parts.append(o.get("text", "") + json.dumps(o.get("data", {}).get("text/plain", "")))
    return "\n".join(parts)


def _images(nb) -> int:
    return sum("image/png" in o.get("data", {}) for c in nb.cells for o in c.get("outputs", []))


def test_01_data_profile(pipeline, kernel_dir, monkeypatch):
    nb = _execute("01_data_profile", pipeline, kernel_dir, monkeypatch)
    text = _text(nb)
    assert "bronze_events" in text and "open a new session" in text
    assert _images(nb) >= 3  # events per day, sessions, gaps


def test_02_interest_decay(pipeline, kernel_dir, monkeypatch):
    if "score" not in pipeline["stages"]:
        pytest.skip("gold_churn_decay needs the train and score stages, not built yet")
    nb = _execute("02_interest_decay", pipeline, kernel_dir, monkeypatch)
    text = _text(nb)
    assert "Spearman rank correlation" in text, "the planted-truth comparison did not run"
    assert "brier" in text, "the churn calibration did not run on the backfilled score date"
    assert "weighed most" in text, "no top recommendation's reasons were shown"
    assert _images(nb) >= 4


def test_03_model_report(pipeline, kernel_dir, monkeypatch):
    if "train" not in pipeline["stages"]:
        pytest.skip("the model report needs the train stage, not built yet")
    nb = _execute("03_model_report", pipeline, kernel_dir, monkeypatch)
    text = _text(nb)
    assert "train_loss" in text or "metrics.train_loss" in text
    if "evaluate" in pipeline["stages"]:
        assert "baseline" in text.lower()
    assert _images(nb) >= 1
