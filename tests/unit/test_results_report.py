"""The results report (scripts/results.py) is rebuilt from each dataset's results.json: the lanes of a
`make results` run write one each, and the report must say where ebbtide stands against every model."""
from __future__ import annotations

import argparse
import json
import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _results_module():
    spec = importlib.util.spec_from_file_location("results_script", ROOT / "scripts" / "results.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_report_from_saved_lanes(tmp_path):
    R = _results_module()
    runs = {  # what a lane saves: one entry per (model, seed)
        "ebbtide#42": {"ndcg@10": 0.030, "recall@10": 0.05, "mrr@10": 0.02, "churn_auc": 0.98, "train_s": 300.0, "best_s": 200.0},
        "ebbtide#43": {"ndcg@10": 0.032, "recall@10": 0.06, "mrr@10": 0.02, "churn_auc": 0.99, "train_s": 320.0, "best_s": 240.0},
        "markov#42": {"ndcg@10": 0.0320, "recall@10": 0.04, "mrr@10": 0.03},
        "markov#43": {"ndcg@10": 0.0320, "recall@10": 0.04, "mrr@10": 0.03},
        "rfm_logistic#42": {"churn_auc": 0.99, "churn_auc_recent": float("nan")},  # no user active last week
        "rfm_logistic#43": {"churn_auc": 0.99, "churn_auc_recent": float("nan")},
        "SASRec#42": {"ndcg@10": 0.0250, "recall@10": 0.05, "mrr@10": 0.01, "train_s": 900.0, "best_s": 900.0,
                      "epochs_run": 30, "best_epoch": 30, "stopped_early": 0.0},
    }
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "results.json").write_text(
        json.dumps({"signature": {}, "runs": runs, "info": {"events": 1000, "users": 10, "examples_evaluated": 77}}))
    saved = R._load_saved(tmp_path, ["ds", "not-run-yet"])
    assert list(saved[0]) == ["ds"]  # a lane that has not saved yet is left out, not an error
    res, info = saved[0]["ds"], saved[1]["ds"]
    assert res["ebbtide"]["ndcg@10"] == [0.030, 0.032] and info["examples_evaluated"] == 77

    args = argparse.Namespace(keep_history=False, seeds=2, epochs=5, recbole_seeds=1, recbole_epochs=30,
                              recbole_patience=3, jobs=2)
    out = tmp_path / "not-made-yet" / "results.md"  # a fresh clone has no .ebbtide for the quick report
    R.write_markdown(out, {"ds": res}, {"ds": info}, args, 61.0)
    text = out.read_text()
    rows = [ln for ln in text.splitlines() if ln.startswith("| ") and not ln.startswith("| model")]
    # Ranked by mean NDCG@10: markov 0.032 > ebbtide 0.031 > SASRec 0.025; churn-only models last.
    assert [r.split(" | ")[0][2:] for r in rows] == ["markov", "ebbtide", "SASRec", "rfm_logistic"]
    assert "| ebbtide | 2 | 0.0310 ± 0.0014 |" in text
    assert "- markov: -3.1 % (behind)" in text
    assert "- SASRec: +24.0 % (ahead)" in text
    assert "- churn ROC-AUC against rfm_logistic: -0.0050" in text
    assert "SASRec: 30 epoch(s) run, best 30; ended by the epoch cap" in text
    assert "77 test examples" in text
    assert "| rfm_logistic | 2 |" in text and "undefined" in text and "nan" not in text
    figures = json.loads(out.with_suffix(".json").read_text())
    assert figures["datasets"]["ds"]["models"]["SASRec"]["best_epoch"] == [30]
    res["rfm_logistic"]["churn_auc_recent"] = [float("nan")]
    line = R.summary_line({"ds": res})
    assert line["churn_auc_recent"]["ds"]["rfm_logistic"] is None
    json.dumps(line, allow_nan=False)
    assert line["protocol"] == "nightly" and line["ndcg@10"]["ds"]["ebbtide"] == 0.031
    assert line["best_s"]["ds"]["ebbtide"] == 220.0


def test_quick_report_takes_the_peers_from_the_committed_full_run(tmp_path):
    R = _results_module()
    committed = tmp_path / "results.json"
    committed.write_text(json.dumps({"datasets": {"ds": {"models": {"GRU4Rec": {"ndcg@10": [0.08]}}}}}))
    res = R._with_committed_peers({"ds": {"ebbtide": {"ndcg@10": [0.09]}}}, committed)
    assert res["ds"]["GRU4Rec (docs/results.json)"] == {"ndcg@10": [0.08]}


def test_a_conf_overlay_is_named_in_the_report_and_part_of_the_signature(tmp_path):
    """--quick trains on conf/profiles/quick.yaml: the report says so, and saved runs made with
    other contents of the file are not resumed as if they were this run's."""
    R = _results_module()
    prof = tmp_path / "p.yaml"
    prof.write_text("train:\n  lr: 0.004\n")
    args = argparse.Namespace(keep_history=False, seeds=1, epochs=9, recbole_seeds=1, recbole_epochs=30,
                              recbole_patience=3, jobs=2, sets=[], confs=[str(R.QUICK_PROFILE)])
    out = tmp_path / "r.md"
    R.write_markdown(out, {}, {}, args, 1.0)
    assert "ebbtide's settings overlaid with conf/profiles/quick.yaml;" in out.read_text()
    args.confs = [str(prof)]
    before = R._signature("ds", args)
    prof.write_text("train:\n  lr: 0.002\n")
    assert R._signature("ds", args) != before


def test_each_runs_ranking_terms_are_recorded_per_view():
    """What a run saves of its training's choices: the popularity prior (one flat pair from before
    the per-view choice serves both views) and the item-neighbour term, per view; none chosen or
    none made reads as None, never as a missing key."""
    R = _results_module()
    tr = {"popularity_prior": {"nightly": {"half_life_days": 14.0, "weight": 1.0},
                               "request_time": {"half_life_days": None, "weight": 0.0}},
          "item_neighbours": {"nightly": {"half_life_days": 30.0, "weight": 4.0},
                              "request_time": {"half_life_days": 365.0, "weight": 0.5}}}
    assert R._prior_choice(tr) == {
        "prior_half_life_days": 14.0, "prior_weight": 1.0, "rt_prior_half_life_days": None, "rt_prior_weight": 0.0,
        "nb_half_life_days": 30.0, "nb_weight": 4.0, "rt_nb_half_life_days": 365.0, "rt_nb_weight": 0.5}
    old = R._prior_choice({"popularity_prior": {"half_life_days": 3.0, "weight": 2.0}, "item_neighbours": None})
    assert old["prior_weight"] == old["rt_prior_weight"] == 2.0
    assert old["nb_weight"] is None and old["rt_nb_half_life_days"] is None


def test_peer_figures_are_committed_and_reused_only_for_the_same_inputs(tmp_path):
    """A RecBole peer costs an hour per dataset here: its figures go to a committed store, keyed by
    the digest of its inputs, and a fresh clone reuses them only when its own export matches."""
    R = _results_module()
    rec = {"ndcg@10": 0.089, "train_s": 871.2}
    (tmp_path / "ml-100k" / "recbole").mkdir(parents=True)
    (tmp_path / "ml-100k" / "recbole" / "peers.json").write_text(
        json.dumps({"GRU4Rec#42": {"inputs": "abc", "result": rec}}))
    store = tmp_path / "docs" / "results-peers.json"
    store.parent.mkdir()
    store.write_text(json.dumps({"generated": {"GRU4Rec#42": {"inputs": "zzz", "result": {}}},
                                 "ml-100k": {"SASRec#42": {"inputs": "abc", "result": {"ndcg@10": 0.087}}}}))
    out = R.store_peers(tmp_path, ["ml-100k", "ml-latest-small"], store)
    assert json.loads(store.read_text()) == out
    assert set(out) == {"generated", "ml-100k"}  # other datasets and models are kept, none invented
    assert set(out["ml-100k"]) == {"GRU4Rec#42", "SASRec#42"}

    local = {"GRU4Rec#42": {"inputs": "old", "result": {"ndcg@10": 0.5}}}
    path, hit = R.saved_peer("GRU4Rec#42", "abc", (tmp_path / "local.json", local), (store, out["ml-100k"]))
    assert path == store and hit["result"] == rec  # the local entry is from other inputs
    assert R.saved_peer("GRU4Rec#42", "changed", (store, out["ml-100k"])) == (None, {})
    assert R.saved_peer("GRU4Rec#43", "abc", (store, out["ml-100k"])) == (None, {})
