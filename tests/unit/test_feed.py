"""The Petastorm feed on a real split-partitioned Parquet folder (no Spark): shards, epochs, dtypes."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from ebbtide.model import feed

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("example_tables", ROOT / "bench" / "example_tables.py")
E = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(E)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    cols = E.examples(900, max_len=12, n_items=30, seed=5)
    files = E.write_parquet_dataset(cols, str(tmp_path_factory.mktemp("examples")), files_per_split=3, row_group_rows=50)
    return cols, files


def _read_all(files, **kw):
    rows = []
    with feed.open_loader(files, batch_size=64, columns=("length", "target_item", "time_to_next_s", "item_idx"), **kw) as it:
        for b in it:
            # time_to_next_s is unique per row in the generator: use it as the row's identity.
            rows.extend(b["time_to_next_s"].tolist())
    return rows


def test_files_grouped_by_split_partition(dataset):
    cols, files = dataset
    grouped = feed.files_by_split(sorted(files["train"] + files["valid"]))
    assert set(grouped) == {"train", "valid"}
    assert feed.count_rows(grouped["train"]) == int((cols["split"] == "train").sum())
    with pytest.raises(ValueError, match="partitioned by split"):
        feed.files_by_split(["file:///x/part-0.parquet"])


def test_two_shards_are_disjoint_and_cover_the_split(dataset):
    cols, files = dataset
    want = sorted(cols["time_to_next_s"][cols["split"] == "train"].tolist())
    a = _read_all(files["train"], rank=0, world_size=2, shuffle=False, workers=1)
    b = _read_all(files["train"], rank=1, world_size=2, shuffle=False, workers=1)
    assert a and b and not set(a) & set(b)
    assert sorted(a + b) == want


def test_epoch_order_is_reproducible_and_differs_between_epochs(dataset):
    _, files = dataset
    kw = dict(workers=1, shuffle_rows=200, seed=11)
    e1 = _read_all(files["train"], epoch=1, **kw)
    e1_again = _read_all(files["train"], epoch=1, **kw)
    e2 = _read_all(files["train"], epoch=2, **kw)
    assert e1 == e1_again
    assert e1 != e2 and sorted(e1) == sorted(e2)


def test_looping_reader_never_runs_dry_and_batches_have_model_dtypes(dataset):
    import torch

    _, files = dataset
    n_valid = feed.count_rows(files["valid"])
    steps = 3 * (n_valid // 16 + 1)  # three passes over a shard's worth
    with feed.open_loader(files["valid"], batch_size=16, rank=1, world_size=2, loop=True, workers=1, shuffle_rows=50) as it:
        for _ in range(steps):
            b = feed.to_model_batch(next(it))
    assert b["item_idx"].dtype == torch.long and b["item_idx"].shape == (16, 12)
    assert b["gap_s"].dtype == torch.float32 and b["time_to_next_s"].dtype == torch.float32
    assert b["length"].shape == (16,) and b["censored"].dtype == torch.long


def test_steps_per_epoch_and_shardability():
    assert feed.steps_per_epoch(1000, 100, 2) == 5
    assert feed.steps_per_epoch(10, 100, 2) == 1
    assert feed.steps_per_epoch(1000, 100, 1, max_steps=3) == 3
    assert feed.steps_per_epoch(1000, 100, 1, share=0.25) == 2
    assert feed.steps_per_epoch(1000, 100, 1, share=0.001) == 1
    assert feed.epoch_seed(1, 2) == feed.epoch_seed(1, 2) != feed.epoch_seed(1, 3)


def test_too_few_row_groups_for_the_processes_names_the_fix(tmp_path):
    cols = E.examples(60, max_len=5, n_items=10, seed=1, split_fractions=(1.0, 0.0, 0.0))
    files = E.write_parquet_dataset(cols, str(tmp_path), files_per_split=1, row_group_rows=1000)
    with pytest.raises(ValueError, match="--num-proc 1"):
        feed.check_shardable(files["train"], 2)


def test_in_memory_batches_match_the_feed_shapes(dataset):
    _, files = dataset
    batches = feed.in_memory_batches(files["train"], batch_size=32, n_batches=3)
    assert len(batches) == 3
    assert batches[0]["item_idx"].shape == (32, 12) and batches[0]["target_item"].shape == (32,)
    assert np.array_equal(batches[0]["length"].numpy() > 0, np.ones(32, bool))


def test_learning_rate_warms_up_then_decays_to_its_floor():
    from ebbtide.model.config import TrainConf
    from ebbtide.model.train import lr_factor

    f = lr_factor(TrainConf(epochs=4, warmup_share=0.1, min_lr_share=0.05), steps_per_epoch=25)
    curve = [f(s) for s in range(100)]
    assert curve[0] == 0.1 and curve[9] == 1.0  # 10 warm-up steps
    assert all(a >= b for a, b in zip(curve[9:], curve[10:]))
    assert abs(curve[-1] - 0.05) < 0.01
    flat = lr_factor(TrainConf(lr_schedule="constant"), steps_per_epoch=25)
    assert flat(0) == flat(1000) == 1.0


def test_a_shortened_plan_moves_the_end_of_the_schedule():
    from ebbtide.model.config import TrainConf
    from ebbtide.model.train import lr_factor

    tc = TrainConf(epochs=10, warmup_share=0.05, min_lr_share=0.05)
    plan = {"epochs": 10}
    f = lr_factor(tc, steps_per_epoch=20, plan=plan)
    mid_long = f(39)
    plan["epochs"] = 2  # a time budget found that only two epochs fit
    assert abs(f(39) - 0.05) < 0.01 < mid_long - 0.05  # now the last step of the run: the floor
    assert f(39) < f(30) < f(21)


def test_the_time_budget_plans_the_epochs_that_fit_and_never_grows_the_plan():
    from ebbtide.model.train import plan_epochs

    assert plan_epochs(0, 50.0, 1, 15) == 15  # no budget
    assert plan_epochs(100, 21.0, 1, 15) == 4  # 79 s left, 21 s an epoch: 3 more
    assert plan_epochs(100, 40.0, 2, 4) == 4  # on plan
    assert plan_epochs(100, 90.0, 3, 4) == 3  # slower than planned: stop here
    assert plan_epochs(100, 130.0, 1, 15) == 1  # the first epoch alone overran: never fewer than done
    assert plan_epochs(1000, 10.0, 1, 15) == 15  # never more than train.epochs
