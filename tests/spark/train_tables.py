"""Small Delta tables with the exact schemas of gold_training_examples / gold_item_vocab / gold_event_type_vocab.

The rows come from bench/example_tables.py (next item = successor of the last), written through
ebbtide.tables like the sequences stage writes them (partitioned by split).
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("example_tables", ROOT / "bench" / "example_tables.py")
example_tables = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(example_tables)

from conftest import TINY as FAST  # noqa: E402  (re-exported for the training tests)


def write_training_tables(spark, cfg, tmp_path, n_rows: int = 600, max_len: int = 20, n_items: int = 40, n_event_types: int = 4, seed: int = 0):
    from ebbtide import tables

    cols = example_tables.examples(n_rows, max_len=max_len, n_items=n_items, n_event_types=n_event_types, seed=seed)
    stage = Path(tmp_path) / "stage"
    os.makedirs(stage, exist_ok=True)
    pq.write_table(example_tables.to_arrow(cols), stage / "examples.parquet")
    df = spark.read.parquet(str(stage / "examples.parquet")).repartition(2)
    tables.write(df, cfg, "gold_training_examples", mode="overwrite", partition_by=["split"])

    import pandas as pd

    iv = pd.DataFrame(example_tables.item_vocab(n_items))
    iv["first_seen"] = pd.Timestamp("2025-01-01", tz="UTC")
    iv["added_run_id"] = "test"
    tables.write(spark.createDataFrame(iv), cfg, "gold_item_vocab", mode="overwrite")
    ev = pd.DataFrame(example_tables.event_type_vocab(n_event_types))
    tables.write(spark.createDataFrame(ev), cfg, "gold_event_type_vocab", mode="overwrite")
    return cols
