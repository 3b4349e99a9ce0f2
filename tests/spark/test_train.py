"""`ebbtide train` end to end on a small real Delta table: Petastorm feed, the three launchers, MLflow, resume.

Real Spark, Delta, Petastorm readers, Horovod / torchrun processes and a SQLite MLflow store.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from train_tables import FAST, ROOT, write_training_tables

pytestmark = pytest.mark.spark

PY = sys.executable


@pytest.fixture(scope="module")
def data_root(tmp_path_factory, spark):
    """One warehouse with the training tables for the whole module (writing them costs ~15 s)."""
    from conftest import make_config

    root = tmp_path_factory.mktemp("train-data")
    db = f"t_train_{os.getpid()}"
    cfg = make_config(root, f"storage.database={db}", *FAST)
    spark.sql(f"CREATE DATABASE IF NOT EXISTS {db}")
    write_training_tables(spark, cfg, root)
    return root, db


def _overrides(data_root, tmp_path, *extra):
    root, db = data_root
    return [
        f"storage.database={db}",
        f"mlflow.tracking_uri=sqlite:///{tmp_path}/mlflow.db",
        f"mlflow.artifact_root={tmp_path}/mlartifacts",
        f"train.checkpoint_dir={tmp_path}/checkpoints",
        *FAST,
        *extra,
    ]


def _train(spark, data_root, tmp_path, *extra, argv=()):
    from conftest import make_config

    from ebbtide.cli import Context
    from ebbtide.model import train

    cfg = make_config(data_root[0], *_overrides(data_root, tmp_path, *extra))
    p = argparse.ArgumentParser()
    train.add_arguments(p)
    return train.run(Context(cfg, _spark=spark), p.parse_args(list(argv))), cfg


def _client(cfg):
    from ebbtide import mlflow_uris

    return mlflow_uris.client(mlflow_uris.from_config(cfg))


def _steps(client, run_id, key):
    return [m.step for m in sorted(client.get_metric_history(run_id, key), key=lambda m: (m.step, m.timestamp))]


def test_local_run_tracks_registers_and_loads_in_a_fresh_process(spark, data_root, tmp_path):
    import numpy as np
    import torch

    out, cfg = _train(spark, data_root, tmp_path, "train.epochs=2")
    assert out["model_version"] == 1 and out["world_size"] == 1 and out["epochs_completed"] == 2
    assert 0.0 <= out["best_metric"] <= 1.0 and out["seq_per_s"] > 0

    c = _client(cfg)
    run = c.get_run(out["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["train.lr"] == "0.002" and run.data.params["model.hidden_dim"] == "32"
    assert run.data.params["sequences.max_len"] == "20"
    # A new table's first commit holds only its schema; its first rows are version 1.
    assert run.data.tags["ebbtide.delta.gold_training_examples"] == "1"
    assert run.data.tags["ebbtide.delta.gold_item_vocab"] == "1"
    for key in ("train_loss", "val_loss", "val_hr_at_10", "val_ndcg_at_10"):
        assert _steps(c, run.info.run_id, key) == [1, 2], key
    top = {a.path for a in c.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "curves.png", "vocab"} <= top
    assert {a.path for a in c.list_artifacts(run.info.run_id, "vocab")} == {
        "vocab/gold_item_vocab.parquet", "vocab/gold_event_type_vocab.parquet"}
    mv = c.get_model_version_by_alias("ebbtide", "challenger")
    assert str(mv.version) == "1" and mv.run_id == run.info.run_id

    # The best epoch's weights, scored here with the training code's own network...
    from ebbtide.model.network import EbbtideNet
    from ebbtide.model.train import BEST_WEIGHTS

    ckpt = next(Path(tmp_path, "checkpoints").glob(f"*/{BEST_WEIGHTS}"))
    net = EbbtideNet(cfg.section("model"), 40, 4)
    net.load_state_dict(torch.load(ckpt, weights_only=True))
    net.eval()
    rng = np.random.default_rng(3)
    L = 20
    batch = {
        "item_idx": np.concatenate([np.zeros((4, 10), np.int64), rng.integers(2, 40, (4, 10))], 1),
        "event_type_idx": np.concatenate([np.zeros((4, 10), np.int64), rng.integers(2, 4, (4, 10))], 1),
        "gap_s": np.concatenate([np.zeros((4, 11), np.float32), rng.uniform(10, 9000, (4, 9)).astype(np.float32)], 1),
        "hour_of_week": np.concatenate([np.zeros((4, 10), np.int64), rng.integers(0, 168, (4, 10))], 1),
        "session_start": np.zeros((4, L), np.int64),
        "length": np.full(4, 10, np.int64),
    }
    elapsed = np.array([60.0, 3600.0, 86400.0, 30 * 86400.0], np.float32)
    with torch.no_grad():
        expected = net.item_scores({k: torch.as_tensor(v) for k, v in batch.items()}, torch.as_tensor(elapsed)).numpy()
    np.savez(tmp_path / "batch.npz", elapsed=elapsed, **batch)

    # ... and in a fresh interpreter that has only the registry: Predictor and the generic pyfunc.
    script = textwrap.dedent(
        f"""
        import json, numpy as np, mlflow
        from ebbtide.model.predictor import Predictor
        d = dict(np.load({str(tmp_path / 'batch.npz')!r}))
        elapsed = d.pop("elapsed")
        p = Predictor.load("models:/ebbtide@challenger")
        idx, sc = p.recommend(d, elapsed, k=5, exclude=[np.array([2, 3])] * 4)
        churn = p.churn(d, elapsed)
        model = mlflow.pyfunc.load_model("models:/ebbtide@challenger")
        ex = p.input_example()
        out = model.predict(ex, params={{"k": 3}})
        print(json.dumps({{
            "scores": p.score_all(d, elapsed).tolist(), "idx": idx.tolist(),
            "ids": p.item_ids(idx[0]).tolist(), "p7": churn["p_return_7d"].tolist(),
            "hl": churn["half_life_days"].tolist(), "pyfunc_cols": list(out.columns),
            "pyfunc_items": out["item_ids"].tolist(), "n": len(out), "prior": p.meta.get("popularity_prior"),
            "nb": p.meta.get("item_neighbours"), "has_sim": p.neighbours is not None,
            "nbterm": (lambda t: None if t is None else t.tolist())(p.neighbour_term(d, elapsed)),
        }}))
        """
    )
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db"}
    proc = subprocess.run([PY, "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    # the network's scores, plus the item-neighbour term where training chose one for the nightly view
    nbterm = np.array(got["nbterm"]) if got["nbterm"] is not None else 0.0
    np.testing.assert_allclose(np.array(got["scores"]), expected + nbterm, rtol=1e-5, atol=1e-5)
    idx = np.array(got["idx"])
    assert idx.shape == (4, 5) and not np.isin(idx, [0, 1, 2, 3]).any()
    assert got["ids"] == [f"i{i}" for i in idx[0]]
    assert all(0.0 <= p <= 1.0 for p in got["p7"]) and all(h > 0 for h in got["hl"])
    assert got["n"] == 2 and len(got["pyfunc_items"][0]) == 3
    assert {"user_id", "item_ids", "scores", "p_return_7d", "p_return_30d", "expected_days_to_return", "half_life_days"} <= set(got["pyfunc_cols"])
    # The popularity priors were chosen on the validation split, one per view (the nightly one on
    # both views, the request-time one on its own): the network alone (the grid's "0") or a blend
    # that ranked better, and the registered model carries the choices.
    priors = got["prior"]
    assert priors is not None and set(priors) == {"nightly", "request_time"}
    assert priors["nightly"]["chosen_on"] == ["nightly", "request_time"]
    assert priors["request_time"]["chosen_on"] == ["request_time"]
    for prior in priors.values():
        assert len(prior["grid"]) == 1 + 3 * 4 and prior["rows"]["request_time"] > 0
        assert prior["valid_ndcg_at_10"] == max(prior["grid"].values())
        assert prior["valid_ndcg_at_10_without"] == prior["grid"]["0"]
        assert (prior["weight"] == 0.0) == (prior["half_life_days"] is None)
    assert out["popularity_prior"] == {v: {k: x for k, x in c.items() if k != "grid"} for v, c in priors.items()}
    # Then the item-neighbour term (its choice on real tables: tests/spark/test_evaluate.py). These
    # tables hold one user per example, so no two items share a user: no term, and none is served.
    assert got["nb"] is None and not got["has_sim"] and got["nbterm"] is None and out["item_neighbours"] is None


def test_same_seed_same_data_one_process_same_weights(spark, data_root, tmp_path):
    common = ("train.epochs=1", "train.max_steps_per_epoch=6", "train.reader_workers=1")
    a, _ = _train(spark, data_root, tmp_path / "a", *common, argv=["--no-register"])
    b, _ = _train(spark, data_root, tmp_path / "b", *common, argv=["--no-register"])
    c, _ = _train(spark, data_root, tmp_path / "c", *common, "train.seed=43", argv=["--no-register"])
    assert a["param_checksums"] == b["param_checksums"]
    assert a["param_checksums"] != c["param_checksums"]


def test_a_time_budget_ends_the_run_on_the_epochs_that_fit(spark, data_root, tmp_path):
    # A budget smaller than one epoch: the first epoch always runs, then the plan is one epoch.
    out, cfg = _train(spark, data_root, tmp_path, "train.epochs=5", "train.max_steps_per_epoch=4",
                      "train.early_stopping_patience=10", "train.max_seconds=0.001", argv=["--no-register"])
    assert out["epochs_completed"] == 1 and out["planned_epochs"] == 1 and out["best_epoch"] == 1
    unbudgeted, _ = _train(spark, data_root, tmp_path / "b", "train.epochs=2", "train.max_steps_per_epoch=4",
                           "train.early_stopping_patience=10", argv=["--no-register"])
    assert unbudgeted["epochs_completed"] == 2 and unbudgeted["planned_epochs"] == 2


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["horovod", "horovodrun", "torch-distributor"])
def test_two_processes_end_with_identical_weights(spark, data_root, tmp_path, launcher):
    out, cfg = _train(
        spark, data_root, tmp_path, "train.epochs=1", "train.max_steps_per_epoch=4",
        argv=["--launcher", launcher, "--num-proc", "2", "--no-register"],
    )
    assert out["world_size"] == 2 and len(out["param_checksums"]) == 2
    assert out["param_checksums"][0] == out["param_checksums"][1]
    # Rank 0 alone logs: one point per epoch.
    assert _steps(_client(cfg), out["mlflow_run_id"], "train_loss") == [1]


def test_run_killed_after_registering_does_not_register_again(spark, data_root, tmp_path):
    """A kill after the model version was registered but before the run was marked finished
    (state.json still "running") resumed the run and registered the same model a second time."""
    from ebbtide.model.train import STATE_FILE

    common = ("train.epochs=1", "train.max_steps_per_epoch=3")
    first, cfg = _train(spark, data_root, tmp_path, *common)
    assert first["model_version"] == 1
    (state_file,) = Path(tmp_path, "checkpoints").glob(f"*/{STATE_FILE}")
    state = json.loads(state_file.read_text())
    state_file.write_text(json.dumps(dict(state, status="running")))  # what the kill left
    c = _client(cfg)
    c.delete_registered_model_alias("ebbtide", "challenger")         # killed before the alias, even

    again, _ = _train(spark, data_root, tmp_path, *common)
    assert again["mlflow_run_id"] == first["mlflow_run_id"] and again["model_version"] == 1
    versions = c.search_model_versions("name = 'ebbtide'")
    assert [str(v.version) for v in versions] == ["1"]
    assert str(c.get_model_version_by_alias("ebbtide", "challenger").version) == "1"
    assert c.get_run(first["mlflow_run_id"]).info.status == "FINISHED"


def test_rerunning_a_finished_run_reattaches_instead_of_training_again(spark, data_root, tmp_path):
    """`ebbtide train` run again on the same config and data (a scheduler retrying a job whose
    kill came just after it finished) trained and registered the same model a second time."""
    common = ("train.epochs=1", "train.max_steps_per_epoch=3")
    first, cfg = _train(spark, data_root, tmp_path, *common)
    again, _ = _train(spark, data_root, tmp_path, *common)
    assert again["mlflow_run_id"] == first["mlflow_run_id"] and again["model_version"] == first["model_version"] == 1
    assert again["param_checksums"] == first["param_checksums"] and again["epochs_completed"] == 1
    c = _client(cfg)
    assert [str(v.version) for v in c.search_model_versions("name = 'ebbtide'")] == ["1"]
    assert len(c.search_runs([c.get_experiment_by_name("ebbtide").experiment_id])) == 1
    assert c.get_run(first["mlflow_run_id"]).info.status == "FINISHED"
    fresh, _ = _train(spark, data_root, tmp_path, *common, argv=["--no-resume"])  # asked for: a new run
    assert fresh["mlflow_run_id"] != first["mlflow_run_id"] and fresh["model_version"] == 2


@pytest.mark.slow
def test_run_killed_mid_epoch_resumes_in_the_same_mlflow_run(data_root, tmp_path):
    from conftest import make_config

    from ebbtide.model.train import FAULT_ENV, FAULT_EXIT_CODE

    sets = _overrides(data_root, tmp_path, "train.epochs=3", "train.max_steps_per_epoch=4", "spark.master=local[2]",
                      f"storage.root={data_root[0]}")
    cmd = [PY, "-m", "ebbtide.cli", "train", "--launcher", "local", "--no-register"]
    for s in sets:
        cmd += ["--set", s]
    env = {**os.environ, FAULT_ENV: "2:1"}  # rank 0 dies at step 1 of epoch 2, after epoch 1's checkpoint
    first = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert first.returncode == FAULT_EXIT_CODE, first.stderr[-3000:]

    cfg = make_config(data_root[0], *sets)
    c = _client(cfg)
    runs = c.search_runs([c.get_experiment_by_name("ebbtide").experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "RUNNING"
    run_id = runs[0].info.run_id
    assert _steps(c, run_id, "train_loss") == [1]

    env.pop(FAULT_ENV)
    second = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    out = json.loads(second.stdout.strip().splitlines()[-1])
    assert out["mlflow_run_id"] == run_id and out["resumed_after_epoch"] == 1 and out["epochs_completed"] == 3
    for key in ("train_loss", "val_ndcg_at_10"):
        assert _steps(c, run_id, key) == [1, 2, 3], key
    assert c.get_run(run_id).info.status == "FINISHED"
    assert len(c.search_runs([runs[0].info.experiment_id])) == 1

    # ... and ends on the weights of an uninterrupted run (the first step after a resume ran at the
    # rate of step 0, so it did not; found by the chaos bench).
    straight = [PY, "-m", "ebbtide.cli", "train", "--launcher", "local", "--no-register"]
    for s in _overrides(data_root, tmp_path / "straight", "train.epochs=3", "train.max_steps_per_epoch=4",
                        "spark.master=local[2]", f"storage.root={data_root[0]}"):
        straight += ["--set", s]
    third = subprocess.run(straight, capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert third.returncode == 0, third.stderr[-3000:]
    assert json.loads(third.stdout.strip().splitlines()[-1])["param_checksums"] == out["param_checksums"]


def test_warm_start_continues_the_parent_on_a_grown_catalogue(spark, tmp_path):
    """Train and register a model on 40 item indices, grow the vocabulary to 50 (appended: the
    first 40 keep their index), warm-start from the champion alias with lr 0: the old item rows
    and every other weight are the parent's, the new rows fresh; the lineage is recorded."""
    import numpy as np
    from conftest import make_config

    from ebbtide.config import ConfigError
    from ebbtide.model.predictor import Predictor

    root, db = tmp_path / "data", f"t_warm_{os.getpid()}"
    spark.sql(f"CREATE DATABASE IF NOT EXISTS {db}")
    data = (root, db)
    wcfg = make_config(root, f"storage.database={db}", *FAST)
    write_training_tables(spark, wcfg, root, n_items=40)
    common = ("train.max_steps_per_epoch=3", "train.churn_calibration=false")
    first, cfg = _train(spark, data, tmp_path, "train.epochs=1", *common)
    assert first["model_version"] == 1 and first["warm_start_from"] is None
    c = _client(cfg)
    c.set_registered_model_alias("ebbtide", "champion", "1")

    # The catalogue grows: items 40..49 appended after the parent's 2..39.
    write_training_tables(spark, wcfg, root, n_items=50, seed=1)
    # Another architecture is refused before any run is opened, naming the key.
    with pytest.raises(ConfigError, match=r"model.hidden_dim \(32 in the parent, 48 now\)"):
        _train(spark, data, tmp_path, "model.hidden_dim=48", *common, argv=["--warm-start", "models:/ebbtide@champion"])
    assert len(c.search_runs([c.get_experiment_by_name("ebbtide").experiment_id])) == 1

    warm, _ = _train(spark, data, tmp_path, "train.lr=0", "train.warm_start_epochs=2", *common,
                     argv=["--warm-start", "models:/ebbtide@champion"])
    assert warm["model_version"] == 2 and warm["epochs_completed"] == 2  # warm_start_epochs, not epochs
    assert warm["warm_start_from"] == "models:/ebbtide/1" and warm["parent_model_version"] == 1
    assert warm["warm_start"]["item_rows_copied"] == 40 and warm["warm_start"]["new_item_rows"] == 10
    run = c.get_run(warm["mlflow_run_id"])
    assert run.data.tags["warm_start_from"] == "models:/ebbtide/1"
    assert run.data.tags["ebbtide.parent_run_id"] == first["mlflow_run_id"]
    assert run.data.params["warm_start_from"] == "models:/ebbtide/1"
    assert run.data.params["train.warmup_share"] == "0.0" and run.data.params["train.epochs"] == "2"
    mv = c.get_model_version("ebbtide", "2")
    assert mv.tags["parent_version"] == "1" and mv.tags["warm_start_from"] == "models:/ebbtide/1"
    assert "parent_version" not in c.get_model_version("ebbtide", "1").tags
    assert warm["param_checksums"] != first["param_checksums"]

    from ebbtide import mlflow_uris

    uris = mlflow_uris.from_config(cfg)
    p1, p2 = Predictor.load("models:/ebbtide/1", uris), Predictor.load("models:/ebbtide/2", uris)
    assert p2.meta["lineage"]["warm_start_from"]["model_version"] == 1
    s1, s2 = p1.net.state_dict(), p2.net.state_dict()
    assert s1["item_emb.weight"].shape == (40, 16) and s2["item_emb.weight"].shape == (50, 16)
    # lr 0: what the warm run registered is what it started from.
    assert torch_equal(s2["item_emb.weight"][:40], s1["item_emb.weight"])
    assert torch_equal(s2["item_bias"][:40], s1["item_bias"]) and float(s1["item_bias"].abs().sum()) > 0
    assert float(s2["item_bias"][40:].abs().sum()) == 0.0  # fresh: the bias starts at zero
    assert float(s2["item_emb.weight"][40:].abs().sum()) > 0  # fresh: drawn like any new embedding
    from ebbtide.model import warm_start

    by_item = warm_start.ITEM_INDEXED + warm_start.RECOMPUTED
    others = [k for k in s1 if k not in by_item]
    assert len(others) > 20 and all(torch_equal(s1[k], s2[k]) for k in others)
    # The vocabulary contract: the same item id keeps its index between the two versions.
    ids = p1.item_ids(np.arange(2, 40))
    assert (p2.item_index(ids) == p1.item_index(ids)).all() and (p2.item_index(ids) == np.arange(2, 40)).all()
    assert list(p2.item_ids(np.arange(2, 40))) == list(ids)

    # A moved vocabulary is refused: the items renumbered (i2 is no longer at index 2).
    import pandas as pd

    from ebbtide import tables

    iv = tables.read(spark, wcfg, "gold_item_vocab").toPandas()
    iv["item_id"] = np.roll(iv["item_id"].to_numpy(), 1)
    tables.write(spark.createDataFrame(pd.DataFrame(iv)), wcfg, "gold_item_vocab", mode="overwrite")
    with pytest.raises(ConfigError, match="no longer at their index"):
        _train(spark, data, tmp_path, *common, argv=["--warm-start", "models:/ebbtide/1"])


def torch_equal(a, b) -> bool:
    import torch

    return bool(torch.equal(a, b))


def test_a_weight_average_is_validated_and_kept_without_changing_the_training_steps(spark, data_root, tmp_path):
    """train.ema_decay > 0: the raw weights follow exactly the steps of a run without the average
    (the average only watches), while validation ranks, and best.pt keeps, the average."""
    import torch

    from ebbtide.model.train import BEST_WEIGHTS, LAST_CKPT

    common = ("train.epochs=2", "train.max_steps_per_epoch=6", "train.reader_workers=1", "train.early_stopping_patience=5")
    raw, _ = _train(spark, data_root, tmp_path / "raw", *common, argv=["--no-register"])
    avg, _ = _train(spark, data_root, tmp_path / "avg", *common, "train.ema_decay=0.5", argv=["--no-register"])
    assert avg["param_checksums"] == raw["param_checksums"]

    def checkpoint(name):
        folder = next(Path(tmp_path, name, "checkpoints").glob(f"*/{LAST_CKPT}")).parent
        return (torch.load(folder / LAST_CKPT, map_location="cpu", weights_only=False),
                torch.load(folder / BEST_WEIGHTS, map_location="cpu", weights_only=True))

    last, best = checkpoint("avg")
    assert checkpoint("raw")[0]["ema"] is None
    assert [h["val_loss"] for h in last["history"]] != [h["val_loss"] for h in checkpoint("raw")[0]["history"]]
    ema = {k.removeprefix("module."): v for k, v in last["ema"].items() if k.startswith("module.")}
    assert int(last["ema"]["n_averaged"]) == 12  # every optimizer step of both epochs
    if avg["best_epoch"] == 2:
        assert all(torch.equal(best[k], ema[k]) for k in best)
    assert any(not torch.equal(last["model"][k], ema[k]) for k in ema)
