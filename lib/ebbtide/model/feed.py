"""Petastorm feed: the Parquet files of one Delta snapshot of ``gold_training_examples`` -> batches of tensors.

Each process reads its own shard of row groups (``cur_shard=rank, shard_count=world_size``) and
reshuffles every epoch from ``(seed, epoch)``: row-group order through the reader's seed, rows
through a shuffling buffer whose permutation comes from torch's generator, seeded the same way.
With ``workers=1`` the order is reproducible (more reader threads finish row groups in any order).

A one-pass read (evaluation) uses Petastorm's in-thread "dummy" pool: its thread pool can end a
finite read early, dropping the row groups still in flight (petastorm 0.13.1: ``get_results``
checks "all workers idle" and "ventilator done" separately, and the ventilator can hand out the
last items between the two checks; 535-685 of 735 rows came back here on repeated reads).
A looping reader never completes, so training reads through the thread pool are not affected.

Every rank must run the same number of steps per epoch (each step is a collective all-reduce), but
row groups rarely split evenly. So the training reader loops over its shard without end and the
epoch takes exactly ``steps_per_epoch(total_rows, batch, world)`` batches from it.

Files are paths or URLs as Spark lists them (``file:``, ``dbfs:/``, ``s3://``, ``abfss://``...):
ebbtide.storage opens them, for pyarrow and for Petastorm alike.

Only pyarrow, petastorm and torch are needed (ebbtide.storage imports pyarrow only): the GPU
benchmark runs this module on a machine without Spark. The functions that need Spark take the
session as an argument.
"""
from __future__ import annotations

import contextlib
import hashlib
import re
import urllib.parse
import warnings
from typing import TYPE_CHECKING, Iterator, Mapping, Optional, Sequence

import numpy as np

from ebbtide import catalog, storage

if TYPE_CHECKING:
    import torch
    from pyspark.sql import SparkSession

    from ebbtide.config import Config

_EXAMPLES = catalog.GOLD_TRAINING_EXAMPLES
EXAMPLES_TABLE = _EXAMPLES.name
# Model inputs, then the training targets (docs/tables.md, gold_training_examples).
INPUT_COLUMNS = ("item_idx", "event_type_idx", "gap_s", "hour_of_week", "session_start", "length")
TARGET_COLUMNS = ("target_item", "time_to_next_s", "censored")
FEED_COLUMNS = INPUT_COLUMNS + TARGET_COLUMNS
# The table's float columns become float32 tensors, everything else (indices, flags) long; a feed
# column the table does not have fails here, at import.
FLOAT_COLUMNS = frozenset(c for c in FEED_COLUMNS if catalog.element_type(_EXAMPLES.column(c).type) == "float")
SPLITS = ("train", "valid", "test")

# Petastorm 0.13 drives pyarrow's legacy dataset API, which warns on every reader; nothing to act on.
warnings.filterwarnings("ignore", category=FutureWarning, module=r"petastorm(\..*)?$")
warnings.filterwarnings("ignore", message="The given NumPy array is not writable")

_SPLIT_DIR = re.compile(r"/split=([^/]+)/")


# --------------------------------------------------------------------------------------------
# Files of a snapshot, per split
# --------------------------------------------------------------------------------------------


def files_by_split(files: Sequence[str]) -> dict[str, list[str]]:
    """Group a Delta snapshot's Parquet files by the ``split=...`` partition folder in their path."""
    out: dict[str, list[str]] = {}
    for f in files:
        m = _SPLIT_DIR.search(urllib.parse.unquote(f))
        if not m:
            raise ValueError(
                f"{f} is not under a split=... folder: {EXAMPLES_TABLE} must be partitioned by split "
                "(re-run `ebbtide sequences`), and Delta column mapping must be off for Petastorm to read it"
            )
        out.setdefault(m.group(1), []).append(f)
    return {k: sorted(v) for k, v in out.items()}


def snapshot_files(spark: "SparkSession", cfg: "Config", version: Optional[int] = None) -> tuple[int, dict[str, list[str]]]:
    """(Delta version, {split: Parquet file URLs}) of one snapshot of the examples table."""
    from ebbtide import tables

    v = tables.version(spark, cfg, EXAMPLES_TABLE) if version is None else int(version)
    return v, files_by_split(tables.parquet_files(spark, cfg, EXAMPLES_TABLE, v))


def row_group_rows(files: Sequence[str], storage_options: Optional[Mapping[str, str]] = None) -> list[int]:
    """Rows of every row group, in file order (read from the Parquet footers only).

    ``files`` are paths or URLs as Spark lists them; ``storage_options`` are Hadoop S3 settings
    (ebbtide.storage.options_from_spark), as for every reader below."""
    import pyarrow.parquet as pq

    rows: list[int] = []
    for f in files:
        filesystem, path = storage.filesystem_and_path(f, storage_options)
        with filesystem.open_input_file(path) as fh:
            md = pq.ParquetFile(fh).metadata
        rows.extend(md.row_group(i).num_rows for i in range(md.num_row_groups))
    return rows


def count_rows(files: Sequence[str], storage_options: Optional[Mapping[str, str]] = None) -> int:
    return int(sum(row_group_rows(files, storage_options)))


def steps_per_epoch(total_rows: int, batch_size: int, world_size: int, max_steps: int = 0, share: float = 1.0) -> int:
    """Steps that make one pass over `share` of the split with world_size processes of batch_size each (at least 1)."""
    steps = max(1, int(total_rows * min(1.0, max(share, 0.0))) // max(1, batch_size * world_size))
    return min(steps, max_steps) if max_steps > 0 else steps


def check_shardable(files: Sequence[str], world_size: int, what: str = "train",
                    storage_options: Optional[Mapping[str, str]] = None) -> None:
    n = len(row_group_rows(files, storage_options))
    if n < world_size:
        raise ValueError(
            f"the {what} split has {n} Parquet row group(s) but {world_size} processes need one each: "
            f"use --num-proc {max(1, n)} or fewer, or rewrite {EXAMPLES_TABLE} with more files "
            "(e.g. a larger spark.shuffle_partitions before `ebbtide sequences`)"
        )


def epoch_seed(seed: int, epoch: int) -> int:
    """A 31-bit seed derived from (seed, epoch): every epoch gets its own, reproducible order."""
    h = hashlib.sha256(f"{seed}:{epoch}".encode()).digest()
    return int.from_bytes(h[:4], "little") & 0x7FFFFFFF


# --------------------------------------------------------------------------------------------
# Batches
# --------------------------------------------------------------------------------------------


def to_model_batch(batch: dict, device: "Optional[torch.device]" = None) -> dict:
    """Petastorm's tensors (int32 lists, float32) -> the model's dtypes (long indices, float32 times)."""
    import torch

    out = {}
    for k in FEED_COLUMNS:
        if k not in batch:
            continue
        t = batch[k]
        if not isinstance(t, torch.Tensor):
            t = torch.as_tensor(np.asarray(t))
        t = t.float() if k in FLOAT_COLUMNS else t.long()
        out[k] = t.to(device, non_blocking=True) if device is not None else t
    return out


def _schema_fields(columns: Sequence[str]) -> list[str]:
    # Petastorm matches these as regular expressions over the whole name.
    return [f"^{re.escape(c)}$" for c in columns]


@contextlib.contextmanager
def open_loader(
    files: Sequence[str],
    *,
    batch_size: int,
    rank: int = 0,
    world_size: int = 1,
    seed: int = 0,
    epoch: int = 0,
    workers: int = 2,
    shuffle: bool = True,
    shuffle_rows: int = 0,
    loop: bool = False,
    columns: Sequence[str] = FEED_COLUMNS,
    storage_options: Optional[Mapping[str, str]] = None,
) -> Iterator[Iterator[dict]]:
    """A Petastorm ``BatchedDataLoader`` over this rank's shard, as an iterator of dicts of tensors.

    ``loop=True`` cycles the shard without end (training: the caller takes steps_per_epoch batches);
    ``loop=False`` reads the files once (evaluation). ``world_size=1`` reads every row group.
    """
    import torch
    from petastorm import make_batch_reader
    from petastorm.pytorch import BatchedDataLoader

    if not files:
        raise ValueError("no Parquet files to read: is the split empty?")
    es = epoch_seed(seed, epoch)
    # The shuffling buffer draws its permutations from torch's global generator.
    torch.manual_seed(es)
    urls, filesystem = storage.petastorm_source(files, storage_options)
    reader = make_batch_reader(
        urls,
        filesystem=filesystem,
        schema_fields=_schema_fields(columns),
        reader_pool_type="thread" if loop else "dummy",
        workers_count=max(1, workers),
        results_queue_size=max(4, 2 * workers),
        seed=es,
        shuffle_row_groups=shuffle,
        num_epochs=None if loop else 1,
        cur_shard=rank if world_size > 1 else None,
        shard_count=world_size if world_size > 1 else None,
    )
    loader = BatchedDataLoader(
        reader, batch_size=batch_size, shuffling_queue_capacity=max(0, shuffle_rows) if shuffle else 0
    )
    try:
        yield iter(loader)
    finally:
        reader.stop()
        reader.join()


def in_memory_batches(files: Sequence[str], batch_size: int, n_batches: int, columns: Sequence[str] = FEED_COLUMNS,
                      storage_options: Optional[Mapping[str, str]] = None) -> list[dict]:
    """The first n_batches batches of the files as model tensors, held in memory (the benchmark's bare-model baseline)."""
    import pyarrow.parquet as pq
    import torch

    need = batch_size * n_batches
    parts = []
    got = 0
    for f in files:
        filesystem, path = storage.filesystem_and_path(f, storage_options)
        t = pq.read_table(path, columns=list(columns), filesystem=filesystem)
        parts.append(t)
        got += t.num_rows
        if got >= need:
            break
    import pyarrow as pa

    table = pa.concat_tables(parts)
    arrays = {}
    for c in columns:
        col = table.column(c).combine_chunks()
        if hasattr(col, "flatten") and str(col.type).startswith(("list", "large_list", "fixed_size_list")):
            flat = col.flatten().to_numpy(zero_copy_only=False)
            arrays[c] = flat.reshape(len(col), -1)
        else:
            arrays[c] = col.to_numpy(zero_copy_only=False)
    n = min(table.num_rows, need)
    if n < batch_size:
        raise ValueError(f"only {n} rows in {len(files)} files; need at least one batch of {batch_size}")
    out = []
    for i in range(0, n - batch_size + 1, batch_size):
        out.append(to_model_batch({k: torch.from_numpy(np.ascontiguousarray(v[i : i + batch_size])) for k, v in arrays.items()}))
    return out
