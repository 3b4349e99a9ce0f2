"""`bench/tune.py trial`: settings compared the way `make results` trains and evaluates them, on the
valid split, both views and churn, resumable per (trial, seed)."""
from __future__ import annotations

import argparse
import json

import pytest

from conftest import load_script, make_config

pytestmark = pytest.mark.slow

SYNTH = ("--users", "120", "--items", "60", "--categories", "6", "--events-per-user", "30", "--seed", "5")
SMALL = ("sequences.max_len=10", "model.item_dim=8", "model.hidden_dim=8", "model.time_dim=4",
         "model.event_type_dim=2", "train.epochs=1", "train.batch_size=64", "train.reader_workers=1",
         "train.prior_weights=[1]", "train.neighbour_weights=[1]")


def test_trials_report_both_views_on_validation_and_resume(tmp_path, spark, capsys):
    from ebbtide.cli import Context, run_stage

    db = f"trial_{abs(hash(tmp_path)) % 10**6}"
    cfg = make_config(tmp_path, f"storage.database={db}", *SMALL)
    spark.sql(f"CREATE DATABASE IF NOT EXISTS {db}")
    ctx = Context(cfg, _spark=spark)
    run_stage("synth", ["--out", str(tmp_path / "synth"), *SYNTH], ctx)
    run_stage("ingest", ["--source", str(tmp_path / "synth" / "raw"), "--format", "parquet"], ctx)
    run_stage("sessionize", [], ctx)
    run_stage("sequences", [], ctx)

    tune = load_script("bench/tune.py", "tune_script")
    grid = tmp_path / "grid.json"
    grid.write_text(json.dumps({"base": {"train.lr": 0.01}, "vary": [{}, {"model.use_time": False}]}))
    out = tmp_path / "trials.jsonl"
    args = argparse.Namespace(root=str(tmp_path), grid=str(grid), seeds="42", out=str(out), keep_history=False,
                              sets=[f"storage.database={db}", "spark.master=local[2]", "spark.shuffle_partitions=2", *SMALL])
    tune.trial(args, spark=spark)
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    refs = {r["reference"]: r for r in lines if "reference" in r}
    trials = [r for r in lines if "trial_key" in r]
    # The baselines once, from the first evaluation; then one line per trial with both views and churn.
    assert {"markov", "most_popular", "rfm_logistic"} <= set(refs)
    assert [(t["trial"], t["seed"]) for t in trials] == [(0, 42), (1, 42)]
    assert trials[1]["model.use_time"] is False and trials[0]["train.lr"] == 0.01
    for t in trials:
        assert 0.0 <= t["ndcg@10"] <= 1.0 and 0.0 <= t["request_time_ndcg@10"] <= 1.0
        assert "churn_auc" in t and t["best_epoch"] == 1
        assert set(t["popularity_prior"]) == {"nightly", "request_time"}
    assert trials[0]["ndcg@10"] != trials[1]["ndcg@10"] or trials[0]["churn_auc"] != trials[1]["churn_auc"]

    # A rerun (after a crash, or with more trials in the grid) trains only the pairs not yet there.
    before = out.read_text()
    capsys.readouterr()
    tune.trial(args, spark=spark)
    printed = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith("{")]
    assert [(r["skipped"], r["seed"]) for r in printed] == [(0, 42), (1, 42)]
    assert out.read_text() == before
