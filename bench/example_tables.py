"""Generated rows with the exact schema of gold_training_examples (docs/architecture.md), numpy + pyarrow only.

The planted rule is simple and learnable: each user walks the catalogue in index order, so the next
item is the successor of the last one (wrapping past the end). Users differ in how fast they return:
each has a mean gap, and time_to_next_s is drawn around it. Used by the training tests, by
`make bench-train` and by bench/gpu_check.sh (which has no Spark), so it imports neither.
"""
from __future__ import annotations

import os
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

T0 = int(datetime(2025, 1, 1, tzinfo=timezone.utc).timestamp())

SCHEMA = pa.schema(
    [
        ("example_id", pa.string()),
        ("user_id", pa.string()),
        ("split", pa.string()),
        ("item_idx", pa.list_(pa.int32())),
        ("event_type_idx", pa.list_(pa.int32())),
        ("gap_s", pa.list_(pa.float32())),
        ("hour_of_week", pa.list_(pa.int32())),
        ("session_start", pa.list_(pa.int32())),
        ("length", pa.int32()),
        ("last_ts", pa.timestamp("us", tz="UTC")),
        ("target_item", pa.int32()),
        ("target_event_type", pa.int32()),
        ("target_ts", pa.timestamp("us", tz="UTC")),
        ("time_to_next_s", pa.float32()),
        ("censored", pa.int32()),
    ]
)


def successor(item: np.ndarray, n_items: int) -> np.ndarray:
    """The planted next item: index + 1 within the real items 2..n_items-1."""
    return (item - 2 + 1) % (n_items - 2) + 2


def examples(
    n_rows: int,
    max_len: int = 20,
    n_items: int = 50,
    n_event_types: int = 4,
    seed: int = 0,
    split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
    censored_fraction: float = 0.05,
) -> dict[str, np.ndarray]:
    """Column name -> numpy array (lists as 2-D arrays) for n_rows examples."""
    rng = np.random.default_rng(seed)
    L = max_len
    length = rng.integers(1, L + 1, n_rows).astype(np.int32)
    start = rng.integers(2, n_items, n_rows)
    pos = np.arange(L)[None, :] - (L - length[:, None])  # 0.. for real events, negative for padding
    real = pos >= 0
    items = np.where(real, (start[:, None] - 2 + np.maximum(pos, 0)) % (n_items - 2) + 2, 0).astype(np.int32)
    last = items[:, -1]
    # Users' pace: a mean gap between an hour and ten days, the planted decay truth.
    mean_gap = np.exp(rng.uniform(np.log(3600.0), np.log(10 * 86400.0), n_rows))
    gaps = rng.exponential(1.0, (n_rows, L)) * mean_gap[:, None]
    gaps = np.where(real & (pos > 0), gaps, 0.0).astype(np.float32)
    last_ts = T0 + rng.integers(0, 150 * 86400, n_rows)
    event_ts = last_ts[:, None] - np.cumsum(gaps[:, ::-1], axis=1)[:, ::-1] + gaps
    how = np.where(real, ((event_ts // 3600) + 72) % 168, 0).astype(np.int32)  # 1970-01-01 was a Thursday
    session_start = np.where(real & ((gaps > 1800) | (pos == 0)), 1, 0).astype(np.int32)
    etypes = np.where(real, rng.integers(2, max(3, n_event_types), (n_rows, L)), 0).astype(np.int32)
    ttn = (rng.exponential(1.0, n_rows) * mean_gap).astype(np.float32) + 1.0
    censored = (rng.random(n_rows) < censored_fraction).astype(np.int32)
    target = np.where(censored == 1, 0, successor(last, n_items)).astype(np.int32)
    u = rng.random(n_rows)
    f_train, f_valid, _ = split_fractions
    split = np.where(u < f_train, "train", np.where(u < f_train + f_valid, "valid", "test"))
    users = np.array([f"u{i:07d}" for i in range(n_rows)])
    return {
        "example_id": np.char.add(users, "#1"),
        "user_id": users,
        "split": split,
        "item_idx": items,
        "event_type_idx": etypes,
        "gap_s": gaps,
        "hour_of_week": how,
        "session_start": session_start,
        "length": length,
        "last_ts": (last_ts * 1_000_000).astype("datetime64[us]"),
        "target_item": target,
        "target_event_type": np.where(censored == 1, 0, 2).astype(np.int32),
        "target_ts": ((last_ts + ttn.astype(np.int64)) * 1_000_000).astype("datetime64[us]"),
        "time_to_next_s": ttn,
        "censored": censored,
        "_mean_gap_s": mean_gap,
    }


def to_arrow(cols: dict[str, np.ndarray]) -> pa.Table:
    arrays = []
    for f in SCHEMA:
        v = cols[f.name]
        if pa.types.is_list(f.type):
            n, L = v.shape
            flat = pa.array(v.reshape(-1), type=f.type.value_type)
            offsets = pa.array(np.arange(0, (n + 1) * L, L, dtype=np.int32))
            arrays.append(pa.ListArray.from_arrays(offsets, flat))
        elif pa.types.is_timestamp(f.type):
            arrays.append(pa.array(v, type=pa.timestamp("us")).cast(f.type))
        else:
            arrays.append(pa.array(v, type=f.type))
    return pa.Table.from_arrays(arrays, schema=SCHEMA)


def write_parquet_dataset(cols: dict[str, np.ndarray], folder: str, files_per_split: int = 4, row_group_rows: int = 8192) -> dict[str, list[str]]:
    """Write a split-partitioned Parquet folder like the Delta table's (split=.../part-*.parquet); returns file URLs per split."""
    table = to_arrow(cols)
    split = np.asarray(cols["split"])
    out: dict[str, list[str]] = {}
    for s in ("train", "valid", "test"):
        idx = np.flatnonzero(split == s)
        if len(idx) == 0:
            continue
        d = os.path.join(folder, f"split={s}")
        os.makedirs(d, exist_ok=True)
        for i, chunk in enumerate(np.array_split(idx, files_per_split)):
            if len(chunk) == 0:
                continue
            p = os.path.join(d, f"part-{i:05d}.parquet")
            pq.write_table(table.take(pa.array(chunk)).drop(["split"]), p, row_group_size=row_group_rows)
            out.setdefault(s, []).append("file://" + os.path.abspath(p))
    return out


def item_vocab(n_items: int, n_categories: int = 5) -> dict[str, np.ndarray]:
    idx = np.arange(2, n_items, dtype=np.int32)
    return {
        "item_id": np.array([f"i{i}" for i in idx]),
        "item_index": idx,
        "category": np.array([f"c{i % n_categories}" for i in idx]),
    }


def event_type_vocab(n_event_types: int) -> dict[str, np.ndarray]:
    names = ["view", "click", "cart", "purchase", "rating", "share"]
    idx = np.arange(2, n_event_types, dtype=np.int32)
    return {"event_type": np.array([names[(i - 2) % len(names)] + ("" if i - 2 < len(names) else str(i)) for i in idx]), "event_type_index": idx}
