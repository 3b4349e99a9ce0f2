"""Shared fixtures: one local SparkSession with Delta for the whole run, a fresh warehouse per test."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
ML_SMALL = SHARED / "data" / "ml-latest-small"

os.environ.setdefault("PYSPARK_PYTHON", sys.executable)

# Overrides that make training, evaluation and scoring on tiny tables take seconds.
TINY = (
    "sequences.max_len=20",
    "model.item_dim=16",
    "model.hidden_dim=32",
    "model.time_dim=8",
    "model.event_type_dim=4",
    "train.batch_size=32",
    "train.eval_batch_size=256",
    "train.shuffle_rows=200",
    "train.threads_per_proc=1",
    "train.reader_workers=1",
    "score.batch_users=64",
)


def tiny_predictor(folder, n_items: int, max_len: int = 5, item_ids=None, seed: int = 0) -> str:
    """A predictor folder of an untrained, tiny EbbtideNet (items ``item_ids``, default i2..i{n-1},
    at indices 2..n-1; one event type, "view"), for tests of what the ranking adds to the network."""
    import dataclasses

    import pandas as pd
    import torch

    from ebbtide.model import predictor
    from ebbtide.model.config import ModelConf
    from ebbtide.model.network import EbbtideNet

    torch.manual_seed(seed)
    mc = dataclasses.replace(ModelConf(), item_dim=8, hidden_dim=16, time_dim=4, event_type_dim=2, decay_heads=2)
    ids = [f"i{i}" for i in range(2, n_items)] if item_ids is None else [str(x) for x in item_ids]
    items = pd.DataFrame({"item_id": ids, "item_index": range(2, n_items)})
    events = pd.DataFrame({"event_type": ["view"], "event_type_index": [2]})
    return predictor.save(str(folder), EbbtideNet(mc, n_items, 3).state_dict(), dataclasses.asdict(mc), n_items, 3,
                          max_len, items, events, session_gap_s=1800.0)


def load_script(rel_path: str, name: str):
    """A script of the repository (bench/, scripts/) imported as a module, to call its main()."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, ROOT / rel_path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def last_json(text: str) -> dict:
    """The last line of a bench or demo's stdout that is a JSON object."""
    import json

    return json.loads([ln for ln in text.splitlines() if ln.startswith("{")][-1])


def pytest_collection_modifyitems(config, items):
    """Tests marked `cluster` start a local cluster and servers (minutes): they run only when the
    marker expression names them (`pytest -m cluster`; `make test` deselects them)."""
    if "cluster" in (config.getoption("markexpr") or ""):
        return
    skip = pytest.mark.skip(reason="starts a local cluster (minutes): run `pytest -m cluster` or `make cluster-test`")
    for item in items:
        if "cluster" in item.keywords:
            item.add_marker(skip)


def make_config(tmp_path: Path, *overrides: str):
    from ebbtide.config import load_config

    return load_config(
        env="local",
        overrides=[
            f"storage.root={tmp_path}",
            "spark.master=local[2]",
            "spark.shuffle_partitions=2",
            *overrides,
        ],
    )


@pytest.fixture(scope="session")
def spark(tmp_path_factory):
    """The one SparkSession of the test run (starting Spark costs ~5 s)."""
    from ebbtide.spark import get_spark

    cfg = make_config(tmp_path_factory.mktemp("spark-session"))
    s = get_spark(cfg)
    yield s
    s.stop()


@pytest.fixture
def cfg(tmp_path, spark):
    """A config whose warehouse is a fresh folder and whose database is its own, so tables of
    other tests are invisible here. (Tables are addressed by path; the session's static
    warehouse setting only decides where empty databases live.)"""
    c = make_config(tmp_path, f"storage.database=t_{abs(hash(tmp_path)) % 10**8}")
    spark.sql(f"CREATE DATABASE IF NOT EXISTS {c.storage.database}")
    return c


@pytest.fixture
def ctx(cfg, spark):
    from ebbtide.cli import Context

    return Context(cfg, _spark=spark)


@pytest.fixture
def ml_small() -> Path:
    if not (ML_SMALL / "ratings.csv").exists():
        pytest.skip(f"MovieLens latest-small not found at {ML_SMALL}")
    return ML_SMALL


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors: one intra-op thread is faster, and far faster on a loaded machine."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
