"""silver_events -> gold_item_vocab, gold_event_type_vocab, gold_user_sequences, gold_training_examples.

Three pieces, each a pure function that the model, evaluation and scoring stages reuse:

- vocabularies (:func:`vocab_stats`, :func:`extend_vocab`): stable integer indices that only
  append. 0 is padding, 1 is out-of-vocabulary; an item gets an index once it has been seen
  ``sequences.min_item_count`` times, and then keeps it for ever;
- :func:`index_events`: silver events with their item and event-type indices;
- windows (:func:`training_examples`, :func:`user_windows`): fixed-length, left-padded windows
  of the last ``L`` events. Both run the same numpy kernel (:func:`gather_windows`) inside one
  ``mapInArrow`` pass over events sorted by (user, ts, event_id), so the features scoring
  computes for a user equal the features the model was trained on.

Split and censoring (docs/architecture.md, gold_training_examples, says it in full): an
observed example is the window of events strictly before a target event; its split is the
target's ts against the cut-offs T1 (valid start) and T2 (test start). Each split also has one
censored example per user at risk at its cut-off (train: T1, valid: T2, test: the last event
time in the data): the window of the user's events before the cut-off, with
``time_to_next_s = cut-off - last_ts``.
"""
from __future__ import annotations

import argparse
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Iterator, Optional

import numpy as np

from ebbtide import catalog
from ebbtide.config import parse_utc
from ebbtide.log import get_logger, step

if TYPE_CHECKING:
    import pyarrow as pa
    from pyspark.sql import DataFrame

log = get_logger("sequences")

PAD = 0
OOV = 1
FIRST_INDEX = 2
SPLITS = ("train", "valid", "test")
FEATURES = ("item_idx", "event_type_idx", "gap_s", "hour_of_week", "session_start")

# The tables: columns, comments, keys and partitioning are in ebbtide.catalog.
ITEM_VOCAB = catalog.GOLD_ITEM_VOCAB.name
EVENT_TYPE_VOCAB = catalog.GOLD_EVENT_TYPE_VOCAB.name
EXAMPLES = catalog.GOLD_TRAINING_EXAMPLES.name
USER_SEQUENCES = catalog.GOLD_USER_SEQUENCES.name
SOURCE = catalog.SILVER_EVENTS.name

# Table properties of gold_training_examples recording the cut-offs a build used.
PROP_VALID_START = "ebbtide.split.valid_start"
PROP_TEST_START = "ebbtide.split.test_start"
PROP_END = "ebbtide.split.end"
# Table property of gold_user_sequences: the newest silver_events.processed_at its rows reflect.
# sessionize stamps every row of a user it rewrites, so the users with a newer stamp are exactly
# those whose sequence may have changed.
PROP_SOURCE_PROCESSED_AT = "ebbtide.source.processed_at"

_US_PER_S = 1_000_000
_US_PER_HOUR = 3_600 * _US_PER_S
_US_PER_DAY = 24 * _US_PER_HOUR
# Rows per output Arrow batch are capped so that one batch holds about this many array cells.
_CELLS_PER_BATCH = 2_000_000


# --------------------------------------------------------------------------------------
# numpy kernel (no Spark): the one place a window's features are computed
# --------------------------------------------------------------------------------------


def hour_of_week(ts_us: np.ndarray) -> np.ndarray:
    """Hour of the week in UTC, Monday 00:00-00:59 = 0 ... Sunday 23:00-23:59 = 167."""
    ts_us = np.asarray(ts_us, dtype=np.int64)
    day = np.floor_divide(ts_us, _US_PER_DAY)
    hour = np.floor_divide(ts_us, _US_PER_HOUR) - day * 24
    # 1970-01-01 was a Thursday, weekday 3 when Monday is 0.
    return (((day + 3) % 7) * 24 + hour).astype(np.int32)


def group_starts(user_codes: np.ndarray) -> np.ndarray:
    """For events sorted by user, the index of the first event of each event's user."""
    n = len(user_codes)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    new = np.empty(n, dtype=bool)
    new[0] = True
    np.not_equal(user_codes[1:], user_codes[:-1], out=new[1:])
    first = np.flatnonzero(new)
    return first[np.cumsum(new) - 1]


def event_features(
    ts_us: np.ndarray,
    item: np.ndarray,
    event_type: np.ndarray,
    session_start: np.ndarray,
) -> dict[str, np.ndarray]:
    """Per-event features of a user-sorted event array, computed once per partition.

    Each array has a pad slot at index 0 (event i is at i + 1), so a window is one ``take``
    per feature. ``gap_s`` is the time since the previous event of the array; it may cross a
    user boundary, but a user's first event is always its window's first real event, whose
    gap :func:`gather_windows` sets to 0.
    """
    n = len(ts_us)
    ts_us = np.asarray(ts_us, dtype=np.int64)
    gap = np.zeros(n, dtype=np.float64)
    if n > 1:
        gap[1:] = (ts_us[1:] - ts_us[:-1]) / _US_PER_S

    def padded(a, dtype):
        out = np.zeros(n + 1, dtype=dtype)
        out[1:] = a
        return out

    return {
        "item_idx": padded(item, np.int32),
        "event_type_idx": padded(event_type, np.int32),
        "gap_s": padded(gap, np.float32),
        "hour_of_week": padded(hour_of_week(ts_us), np.int32),
        "session_start": padded(session_start, np.int32),
        "ts_us": padded(ts_us, np.int64),
    }


def gather_windows(ev: dict[str, np.ndarray], ends: np.ndarray, starts: np.ndarray, max_len: int) -> dict[str, np.ndarray]:
    """Windows from :func:`event_features` arrays, one row per (start, end) pair.

    Row r holds events ``[max(starts[r], ends[r] - max_len), ends[r])`` (``ends`` exclusive,
    ``starts`` the first event of the row's user), oldest first, left-padded with 0 to
    ``max_len``. ``gap_s`` is the time since the previous event in the same window (0 for the
    window's first event and for padding). Returns the five (rows, max_len) feature matrices,
    ``length`` and ``last_ts_us``; rows with an empty window have length 0 and last_ts_us -1.
    """
    ends = np.asarray(ends, dtype=np.int64)
    starts = np.asarray(starts, dtype=np.int64)
    L = int(max_len)
    idx = ends[:, None] + np.arange(-L + 1, 1, dtype=np.int64)[None, :]  # event index + 1
    # Slots before the user's first event read the pad slot 0.
    idx[idx <= starts[:, None]] = 0
    length = np.minimum(ends - starts, L).astype(np.int32)
    out = {f: ev[f].take(idx) for f in FEATURES}
    rows = np.flatnonzero(length > 0)
    out["gap_s"][rows, L - length[rows]] = 0.0
    out["length"] = length
    out["last_ts_us"] = np.where(length > 0, ev["ts_us"][ends], -1).astype(np.int64)
    return out


def seconds_before_last(gap_s: np.ndarray) -> np.ndarray:
    """Per slot of left-padded windows (rows, L): seconds from that slot's event to the window's
    last event, the sum of the gaps after it. Windows carry no per-event times, only `gap_s` and
    `last_ts`; an event's time is last_ts minus this (to the float32 precision of the gaps: a
    fraction of a second over a window of weeks). Pad slots read the window's whole span."""
    g = np.asarray(gap_s, dtype=np.float64)
    return np.cumsum(g[:, ::-1], axis=1)[:, ::-1] - g


def window_arrays(
    ends: np.ndarray,
    starts: np.ndarray,
    max_len: int,
    ts_us: np.ndarray,
    item: np.ndarray,
    event_type: np.ndarray,
    session_start: np.ndarray,
) -> dict[str, np.ndarray]:
    """:func:`gather_windows` straight from raw event arrays (one-off use and tests)."""
    return gather_windows(event_features(ts_us, item, event_type, session_start), ends, starts, max_len)


def example_rows(
    user_codes: np.ndarray,
    ts_us: np.ndarray,
    valid_start_us: int,
    test_start_us: int,
    end_us: int,
    max_examples_per_user: int = 0,
) -> dict[str, np.ndarray]:
    """Which examples a user-sorted event array yields: one (start, end) window per row.

    Observed rows: every event with at least one earlier event of its user is a target; its
    window ends just before it. Censored rows: per split, each user with events before the
    split's cut-off (train: T1, valid: T2, test: ``end_us``, the last event time, inclusive)
    gets the window of those events. ``max_examples_per_user`` > 0 keeps only that many most
    recent observed targets per user and split (censored rows are always kept).
    Returns arrays ``start``, ``end``, ``target`` (event index or -1), ``split`` (0/1/2),
    ``censored`` (0/1) and ``cutoff_us`` (the censoring time, -1 when observed).
    """
    n = len(ts_us)
    starts = group_starts(user_codes)
    pos = np.arange(n, dtype=np.int64)
    split = np.where(ts_us < valid_start_us, 0, np.where(ts_us < test_start_us, 1, 2)).astype(np.int8)

    # Observed: targets with at least one input.
    t = np.flatnonzero(pos > starts)
    if max_examples_per_user > 0 and len(t):
        # Targets are sorted by (user, ts) so (user, split) groups are contiguous; rank from the end.
        key_change = np.empty(len(t), dtype=bool)
        key_change[-1] = True
        key_change[:-1] = (starts[t[1:]] != starts[t[:-1]]) | (split[t[1:]] != split[t[:-1]])
        group_last = np.flatnonzero(key_change)
        last_of = group_last[np.searchsorted(group_last, np.arange(len(t)))]
        t = t[(last_of - np.arange(len(t))) < max_examples_per_user]

    rows_start = [starts[t]]
    rows_end = [t]
    rows_target = [t]
    rows_split = [split[t]]
    rows_cens = [np.zeros(len(t), dtype=np.int8)]
    rows_cut = [np.full(len(t), -1, dtype=np.int64)]

    # Censored: per user, the events before each cut-off form a prefix of the user's events.
    user_first = np.flatnonzero(pos == starts)
    for s, (cut, inclusive) in enumerate(((valid_start_us, False), (test_start_us, False), (end_us, True))):
        before = (ts_us <= cut) if inclusive else (ts_us < cut)
        counts = np.add.reduceat(before.astype(np.int64), user_first) if n else np.zeros(0, np.int64)
        keep = counts > 0
        rows_start.append(user_first[keep])
        rows_end.append(user_first[keep] + counts[keep])
        rows_target.append(np.full(int(keep.sum()), -1, dtype=np.int64))
        rows_split.append(np.full(int(keep.sum()), s, dtype=np.int8))
        rows_cens.append(np.ones(int(keep.sum()), dtype=np.int8))
        rows_cut.append(np.full(int(keep.sum()), cut, dtype=np.int64))

    return {
        "start": np.concatenate(rows_start).astype(np.int64),
        "end": np.concatenate(rows_end).astype(np.int64),
        "target": np.concatenate(rows_target).astype(np.int64),
        "split": np.concatenate(rows_split).astype(np.int8),
        "censored": np.concatenate(rows_cens).astype(np.int8),
        "cutoff_us": np.concatenate(rows_cut).astype(np.int64),
    }


# --------------------------------------------------------------------------------------
# Arrow adapters for mapInArrow (run on the executors)
# --------------------------------------------------------------------------------------

# Columns the window pass reads, in (user_id, ts, event_id) order, users never split across partitions.
_KERNEL_INPUT = ("user_id", "ts_us", "item_idx", "event_type_idx", "session_start")


def _partition_arrays(batches: Iterator["pa.RecordBatch"]):
    import pyarrow as pa

    batches = [b for b in batches if b.num_rows]
    if not batches:
        return None
    tbl = pa.Table.from_batches(batches).combine_chunks()
    users = tbl.column("user_id").combine_chunks()
    codes = users.dictionary_encode().indices.to_numpy(zero_copy_only=False)
    col = lambda name, dt: tbl.column(name).to_numpy().astype(dt, copy=False)  # noqa: E731
    return (
        users,
        codes,
        col("ts_us", np.int64),
        col("item_idx", np.int32),
        col("event_type_idx", np.int32),
        col("session_start", np.int32),
    )


def _list_array(mat: np.ndarray) -> "pa.Array":
    import pyarrow as pa

    rows, width = mat.shape
    offsets = np.arange(0, rows * width + 1, width, dtype=np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(mat.reshape(-1)))


def _feature_columns(w: dict[str, np.ndarray]) -> dict[str, "pa.Array"]:
    import pyarrow as pa

    cols = {f: _list_array(w[f]) for f in FEATURES}
    cols["length"] = pa.array(w["length"], pa.int32())
    return cols


def _examples_kernel(max_len: int, valid_start_us: int, test_start_us: int, end_us: int, max_per_user: int):
    """mapInArrow function: user-sorted events -> training example rows (see example_rows)."""

    def fn(batches: Iterator["pa.RecordBatch"]) -> Iterator["pa.RecordBatch"]:
        import pyarrow as pa

        arrs = _partition_arrays(batches)
        if arrs is None:
            return
        users, codes, ts, item, etype, sstart = arrs
        ex = example_rows(codes, ts, valid_start_us, test_start_us, end_us, max_per_user)
        ev = event_features(ts, item, etype, sstart)
        step_rows = max(1, _CELLS_PER_BATCH // max_len)
        for a in range(0, len(ex["end"]), step_rows):
            sl = slice(a, a + step_rows)
            start, end, target = ex["start"][sl], ex["end"][sl], ex["target"][sl]
            cens, cut = ex["censored"][sl], ex["cutoff_us"][sl]
            w = gather_windows(ev, end, start, max_len)
            observed = cens == 0
            tgt = np.where(observed, target, 0)
            target_ts = np.where(observed, ts[tgt], -1)
            next_ts = np.where(observed, target_ts, cut)
            cols = {
                "user_id": users.take(pa.array(start)),
                "split_code": pa.array(ex["split"][sl], pa.int8()),
                # Position of the target in the user's whole history: the example id's suffix.
                "target_seq": pa.array(np.where(observed, target - start, -1), pa.int64()),
                **_feature_columns(w),
                "last_ts_us": pa.array(w["last_ts_us"], pa.int64()),
                "target_item": pa.array(np.where(observed, item[tgt], PAD), pa.int32()),
                "target_event_type": pa.array(np.where(observed, etype[tgt], PAD), pa.int32()),
                "target_ts_us": pa.array(target_ts, pa.int64(), mask=~observed),
                "time_to_next_s": pa.array(((next_ts - w["last_ts_us"]) / _US_PER_S).astype(np.float32)),
                "censored": pa.array(cens.astype(np.int32), pa.int32()),
            }
            yield pa.RecordBatch.from_pydict(cols)

    return fn


def _latest_kernel(max_len: int):
    """mapInArrow function: user-sorted events -> one row per user, their last max_len events."""

    def fn(batches: Iterator["pa.RecordBatch"]) -> Iterator["pa.RecordBatch"]:
        import pyarrow as pa

        arrs = _partition_arrays(batches)
        if arrs is None:
            return
        users, codes, ts, item, etype, sstart = arrs
        starts = group_starts(codes)
        first = np.flatnonzero(np.arange(len(codes)) == starts)
        ends = np.append(first[1:], len(codes)).astype(np.int64)
        ev = event_features(ts, item, etype, sstart)
        sessions = np.add.reduceat(sstart.astype(np.int64), first)
        step_rows = max(1, _CELLS_PER_BATCH // max_len)
        for a in range(0, len(first), step_rows):
            s, e = first[a : a + step_rows], ends[a : a + step_rows]
            w = gather_windows(ev, e, s, max_len)
            sess = sessions[a : a + step_rows]
            cols = {
                "user_id": users.take(pa.array(s)),
                **_feature_columns(w),
                "last_ts_us": pa.array(w["last_ts_us"], pa.int64()),
                "n_events": pa.array((e - s).astype(np.int64), pa.int64()),
                "n_sessions": pa.array(sess.astype(np.int64), pa.int64()),
                "first_ts_us": pa.array(ts[s], pa.int64()),
            }
            yield pa.RecordBatch.from_pydict(cols)

    return fn


# --------------------------------------------------------------------------------------
# Spark transforms (pure: DataFrame in, DataFrame out)
# --------------------------------------------------------------------------------------


def _feature_schema():
    """The window pass's feature fields, typed as gold_training_examples declares them."""
    return list(catalog.GOLD_TRAINING_EXAMPLES.spark_schema([*FEATURES, "length"], comments=False).fields)


def vocab_stats(events_df: "DataFrame", key: str) -> "DataFrame":
    """Per distinct ``key`` (item_id or event_type): n (events), first_seen, and for items the
    category of the earliest event that has one."""
    from pyspark.sql import functions as F

    aggs = [F.count(F.lit(1)).alias("n"), F.min("ts").alias("first_seen")]
    if key == "item_id" and "category" in events_df.columns:
        first_cat = F.min(F.when(F.col("category").isNotNull(), F.struct("ts", "event_id", "category")))
        aggs.append(first_cat.getField("category").alias("category"))
    return events_df.where(F.col(key).isNotNull()).groupBy(key).agg(*aggs)


def extend_vocab(
    stats_df: "DataFrame",
    vocab_df: Optional["DataFrame"],
    key: str,
    index_col: str,
    min_count: int = 1,
    extra_cols: tuple[str, ...] = (),
) -> "DataFrame":
    """The rows to append to a vocabulary: keys not yet in it with at least ``min_count`` events,
    numbered after the current largest index in (first_seen, key) order. Existing rows never change.

    ``stats_df`` comes from :func:`vocab_stats`; ``vocab_df`` is the current vocabulary (None on
    the first run). Returns ``key``, ``index_col`` and ``extra_cols`` (taken from stats_df).
    """
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    cand = stats_df.where(F.col("n") >= F.lit(int(min_count)))
    base = FIRST_INDEX - 1
    if vocab_df is not None:
        cand = cand.join(vocab_df.select(key), on=key, how="left_anti")
        top = vocab_df.agg(F.max(index_col)).first()[0]
        base = max(base, int(top)) if top is not None else base
    # One ordered numbering without a window over the whole table (which Spark runs in a single
    # partition): a global sort is range-partitioned, and zipWithIndex numbers its rows in order,
    # consecutively across partitions.
    cols = [key, *extra_cols]
    ordered = cand.orderBy(F.col("first_seen").asc_nulls_last(), F.col(key).asc()).select(*cols)
    schema = T.StructType([*(ordered.schema[c] for c in cols), T.StructField(index_col, T.IntegerType(), False)])
    start = base + 1
    numbered = ordered.rdd.zipWithIndex().map(lambda r: (*r[0], start + r[1]))
    return ordered.sparkSession.createDataFrame(numbered, schema).select(key, index_col, *extra_cols)


def index_events(
    events_df: "DataFrame", item_vocab_df: "DataFrame", event_type_vocab_df: "DataFrame"
) -> "DataFrame":
    """silver_events -> user_id, event_id, ts, item_idx, event_type_idx, session_start (0/1);
    items and event types missing from their vocabulary (or below the min count) map to OOV = 1."""
    from pyspark.sql import functions as F

    items = item_vocab_df.select("item_id", F.col("item_index").alias("_ii"))
    types = event_type_vocab_df.select("event_type", F.col("event_type_index").alias("_ti"))
    return (
        events_df.select("user_id", "event_id", "ts", "item_id", "event_type", "is_session_start")
        .join(items, on="item_id", how="left")
        .join(F.broadcast(types), on="event_type", how="left")
        .select(
            "user_id",
            "event_id",
            "ts",
            F.coalesce(F.col("_ii"), F.lit(OOV)).cast("int").alias("item_idx"),
            F.coalesce(F.col("_ti"), F.lit(OOV)).cast("int").alias("event_type_idx"),
            F.coalesce(F.col("is_session_start").cast("int"), F.lit(0)).alias("session_start"),
        )
    )


def _sorted_for_kernel(indexed_df: "DataFrame", num_partitions: Optional[int] = None) -> "DataFrame":
    from pyspark.sql import functions as F

    df = indexed_df.withColumn("ts_us", F.unix_micros("ts"))
    # Partitioned on a hash of user_id, not on user_id itself: after a join that already hash-partitions
    # on user_id, Spark drops a repartition on user_id as redundant, and adaptive execution may then turn
    # that join into a broadcast one that reads its shuffle locally (per map task), which splits users
    # across partitions and gives the kernel two windows for one user. This exchange is never dropped.
    key = F.xxhash64("user_id")
    df = df.repartition(num_partitions, key) if num_partitions else df.repartition(key)
    # The kernel relies on this order: users contiguous, events by (ts, event_id).
    return df.sortWithinPartitions("user_id", "ts_us", "event_id").select(*_KERNEL_INPUT)


def indexed_user_windows(indexed_df: "DataFrame", max_len: int, num_partitions: Optional[int] = None) -> "DataFrame":
    """:func:`user_windows` on events already passed through :func:`index_events`."""
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    schema = T.StructType(
        [T.StructField("user_id", T.StringType()), *_feature_schema(),
         T.StructField("last_ts_us", T.LongType()), T.StructField("n_events", T.LongType()),
         T.StructField("n_sessions", T.LongType()), T.StructField("first_ts_us", T.LongType())]
    )
    out = _sorted_for_kernel(indexed_df, num_partitions).mapInArrow(_latest_kernel(int(max_len)), schema)
    return out.select(
        "user_id", *FEATURES, "length",
        F.timestamp_micros("last_ts_us").alias("last_ts"),
        "n_events", "n_sessions",
        F.timestamp_micros("first_ts_us").alias("first_ts"),
    )


def user_windows(
    events_df: "DataFrame",
    item_vocab_df: "DataFrame",
    event_type_vocab_df: "DataFrame",
    max_len: int,
    as_of=None,
) -> "DataFrame":
    """Each user's last ``max_len`` events strictly before ``as_of`` (all events when None).

    ``events_df`` has the silver_events columns; ``as_of`` is a datetime or ISO-8601 string
    (UTC). Returns user_id, item_idx, event_type_idx, gap_s, hour_of_week, session_start
    (arrays of max_len, left-padded), length, last_ts, n_events, n_sessions, first_ts: the
    gold_user_sequences columns less processed_at. Users without events before as_of are absent.
    The windows equal those of :func:`training_examples` for the same events.
    """
    from pyspark.sql import functions as F

    if as_of is not None:
        events_df = events_df.where(F.col("ts") < F.lit(_to_datetime(as_of)))
    return indexed_user_windows(index_events(events_df, item_vocab_df, event_type_vocab_df), max_len)


def indexed_training_examples(
    indexed_df: "DataFrame",
    max_len: int,
    valid_start,
    test_start,
    end,
    max_examples_per_user: int = 0,
    num_partitions: Optional[int] = None,
) -> "DataFrame":
    """:func:`training_examples` on events already passed through :func:`index_events`."""
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    t1, t2, te = (_to_micros(v) for v in (valid_start, test_start, end))
    schema = T.StructType(
        [T.StructField("user_id", T.StringType()), T.StructField("split_code", T.ByteType()),
         T.StructField("target_seq", T.LongType()), *_feature_schema(),
         T.StructField("last_ts_us", T.LongType()), T.StructField("target_item", T.IntegerType()),
         T.StructField("target_event_type", T.IntegerType()), T.StructField("target_ts_us", T.LongType()),
         T.StructField("time_to_next_s", T.FloatType()), T.StructField("censored", T.IntegerType())]
    )
    kernel = _examples_kernel(int(max_len), t1, t2, te, int(max_examples_per_user))
    out = _sorted_for_kernel(indexed_df, num_partitions).mapInArrow(kernel, schema)
    split = F.element_at(F.array(*[F.lit(s) for s in SPLITS]), F.col("split_code").cast("int") + 1)
    suffix = F.when(F.col("censored") == 1, F.concat(F.lit("censored-"), split)).otherwise(
        F.col("target_seq").cast("string")
    )
    return out.select(
        F.concat_ws("#", "user_id", suffix).alias("example_id"),
        "user_id",
        split.alias("split"),
        *FEATURES,
        "length",
        F.timestamp_micros("last_ts_us").alias("last_ts"),
        "target_item",
        "target_event_type",
        F.timestamp_micros("target_ts_us").alias("target_ts"),
        "time_to_next_s",
        "censored",
    )


def in_feed_order(examples: "DataFrame", num_partitions: int) -> "DataFrame":
    """The examples spread over ``num_partitions`` files by a hash of their id, each file in the
    order of another hash: every file, and every stretch of a file, is then a random sample of
    all users and times, and the same build always writes the same files.

    Why: the training feed reads a share of the files per epoch (``train.epoch_share``) through a
    shuffling buffer of ``train.shuffle_rows``. With files cut by user and sorted by time, as the
    window pass leaves them, an epoch saw a quarter of the users and each batch a few hundred of
    them in time order; on MovieLens-100k that cost 8 % validation NDCG@10 against uniform
    batches (docs/training.md, "Feed order")."""
    from pyspark.sql import functions as F

    return (examples.repartition(int(num_partitions), F.xxhash64("example_id"))
            .sortWithinPartitions(F.xxhash64(F.lit("feed-order"), "example_id")))


def training_examples(
    events_df: "DataFrame",
    item_vocab_df: "DataFrame",
    event_type_vocab_df: "DataFrame",
    max_len: int,
    valid_start,
    test_start,
    end=None,
    max_examples_per_user: int = 0,
) -> "DataFrame":
    """The gold_training_examples rows (docs/architecture.md) for silver_events-shaped events.

    ``valid_start`` / ``test_start`` are T1 / T2 and ``end`` the test split's censoring time
    (datetimes or ISO-8601 strings; ``end`` defaults to the last event time).
    """
    from pyspark.sql import functions as F

    if end is None:
        end = events_df.agg(F.max("ts")).first()[0]
    indexed = index_events(events_df, item_vocab_df, event_type_vocab_df)
    return indexed_training_examples(indexed, max_len, valid_start, test_start, end, max_examples_per_user)


def split_cutoffs(events_df: "DataFrame", valid_fraction: float, test_fraction: float) -> dict:
    """T1, T2 from event-time quantiles (the last test_fraction of events at or after T2, the
    valid_fraction before it at or after T1), plus ``end`` (last event) and ``start`` (first).
    Cut-offs are whole seconds, so they read back unchanged from an ISO string."""
    from pyspark.sql import functions as F

    if not (0 < valid_fraction and 0 < test_fraction and valid_fraction + test_fraction < 1):
        raise ValueError(
            "sequences.split.valid_fraction and test_fraction must be > 0 with a sum below 1, "
            f"got {valid_fraction} and {test_fraction}"
        )
    q1, q2 = 1.0 - valid_fraction - test_fraction, 1.0 - test_fraction
    row = events_df.agg(
        F.percentile_approx(F.unix_seconds("ts"), F.array(F.lit(q1), F.lit(q2)), F.lit(100_000)).alias("q"),
        F.min("ts").alias("start"),
        F.max("ts").alias("end"),
    ).first()
    if row["end"] is None:
        raise ValueError("silver_events is empty: run `ebbtide ingest` and `ebbtide sessionize` first")
    t1, t2 = (datetime.fromtimestamp(int(v), tz=timezone.utc) for v in row["q"])
    return {"valid_start": t1, "test_start": t2, "start": _utc(row["start"]), "end": _utc(row["end"])}


def _utc(v) -> datetime:
    return v.replace(tzinfo=timezone.utc) if v.tzinfo is None else v.astimezone(timezone.utc)


def _to_datetime(v) -> datetime:
    return parse_utc(v)


def _to_micros(v) -> int:
    d = _to_datetime(v)
    return int((d - datetime(1970, 1, 1, tzinfo=timezone.utc)).total_seconds() * _US_PER_S)


def _iso(d: datetime) -> str:
    return _utc(d).strftime("%Y-%m-%dT%H:%M:%S") + (f".{d.microsecond:06d}" if d.microsecond else "") + "Z"


# --------------------------------------------------------------------------------------
# Stage entry point: the only I/O
# --------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = (
        "Reads silver_events; appends new items / event types to gold_item_vocab and "
        "gold_event_type_vocab (indices never move), rebuilds gold_training_examples (partitioned "
        "by split) and gold_user_sequences (--nightly: only the changed users' sequences). Keys: sequences.max_len, min_item_count, "
        "max_examples_per_user, split.valid_start / test_start (empty: from valid_fraction / test_fraction)."
    )
    parser.add_argument(
        "--partitions", type=int, default=0,
        help="partitions for the window pass (default: spark.shuffle_partitions, more for big inputs)",
    )
    parser.add_argument(
        "--nightly", action="store_true",
        help="the nightly update: extend the vocabularies and rewrite gold_user_sequences rows only for "
        "users whose silver_events rows changed since the last build; gold_training_examples is left as "
        "it is (the weekly workflow rebuilds it before training, with a run without --nightly)",
    )


def read_cutoffs(spark, cfg) -> dict:
    """The T1 / T2 / end the last build of gold_training_examples used (for evaluation)."""
    from ebbtide import tables

    props = {
        r["key"]: r["value"]
        for r in spark.sql(f"SHOW TBLPROPERTIES delta.`{tables.table_path(cfg, EXAMPLES)}`").collect()
    }
    return {k: _to_datetime(props[p]) for k, p in
            (("valid_start", PROP_VALID_START), ("test_start", PROP_TEST_START), ("end", PROP_END))}


def _table_property(spark, cfg, name: str, key: str) -> Optional[str]:
    from ebbtide import tables

    rows = spark.sql(f"SHOW TBLPROPERTIES delta.`{tables.table_path(cfg, name)}`").collect()
    return next((r["value"] for r in rows if r["key"] == key), None)


def _extend_vocabularies(ctx, events: "DataFrame") -> dict[str, int]:
    """Append the new items and event types of ``events`` to their vocabularies; entries added."""
    from pyspark.sql import functions as F

    from ebbtide import tables

    cfg, spark, sc = ctx.cfg, ctx.spark, ctx.cfg.sequences
    added = {}
    for spec, index_col, min_count, extra in (
        (catalog.GOLD_ITEM_VOCAB, "item_index", sc.min_item_count, ("category", "first_seen")),
        (catalog.GOLD_EVENT_TYPE_VOCAB, "event_type_index", 1, ()),
    ):
        name, (key,) = spec.name, spec.keys
        with step(log, f"extend {name}"):
            current = tables.read(spark, cfg, name) if tables.exists(spark, cfg, name) else None
            new = extend_vocab(vocab_stats(events, key), current, key, index_col, min_count, extra)
            if name == ITEM_VOCAB:
                new = new.withColumn("added_run_id", F.lit(ctx.run_id))
            new = new.persist()
            added[name] = new.count()
            if current is None:
                tables.write(spec.with_comments(new), cfg, name, "overwrite", comment=spec.comment)
            elif added[name]:
                # MERGE on the key, not append: a concurrent or repeated run can never duplicate a key.
                tables.write(spec.with_comments(new), cfg, name, "merge", keys=spec.keys, comment=spec.comment)
            new.unpersist()
            log.info("%s: %d new entries", name, added[name])
    return added


def update_user_sequences(ctx, args) -> dict:
    """The nightly update (``--nightly``): vocabularies extended, gold_user_sequences rewritten for
    the users whose silver_events rows are newer than the table's watermark, nothing else.

    What it reads grows with the night's changes, not with the history: the changed users are found
    by ``processed_at > watermark`` (Delta skips every file written before the watermark on its
    min/max statistics), and only their events are indexed and windowed. The vocabulary counts
    still read two columns of every event (an item's count spans all users). Sequences of users
    not rewritten keep OOV for an item that reached ``min_item_count`` tonight until their next
    event or the weekly rebuild. A crash between the MERGE and the watermark's commit only makes
    the next night redo the same users (the MERGE is keyed on the user).
    """
    from pyspark.sql import functions as F

    from ebbtide import tables

    cfg, spark, sc = ctx.cfg, ctx.spark, ctx.cfg.sequences
    mark = (_table_property(spark, cfg, USER_SEQUENCES, PROP_SOURCE_PROCESSED_AT)
            if tables.exists(spark, cfg, USER_SEQUENCES) else None)
    if mark is None:
        log.info("%s has no watermark (first build, or built before watermarks): rebuilding everything",
                 USER_SEQUENCES)
        return rebuild(ctx, args)
    silver = tables.read(spark, cfg, SOURCE)
    changed = silver.where(F.col("processed_at") > F.lit(_to_datetime(mark)))
    with step(log, f"finding users with silver_events rows newer than {mark}"):
        row = changed.agg(F.max("processed_at").alias("newest"), F.count(F.lit(1)).alias("n")).first()
    summary = {"mode": "nightly", "watermark": mark, "users_updated": 0, "max_len": sc.max_len,
               "item_vocab_added": 0, "event_type_vocab_added": 0}
    if not row["n"]:
        log.info("no silver_events rows newer than %s: gold_user_sequences is current", mark)
        return summary
    users = changed.select("user_id").distinct().localCheckpoint(eager=True)
    events = silver.select(
        "user_id", "event_id", "ts", "item_id", "event_type", "category", "is_session_start"
    )
    added = _extend_vocabularies(ctx, events)
    mine = events.join(users, "user_id", "left_semi")
    indexed = index_events(mine, tables.read(spark, cfg, ITEM_VOCAB), tables.read(spark, cfg, EVENT_TYPE_VOCAB))
    parts = getattr(args, "partitions", 0) or int(spark.conf.get("spark.sql.shuffle.partitions"))
    n_users = users.count()
    with step(log, f"rewriting {USER_SEQUENCES} rows of {n_users} users"):
        seqs = indexed_user_windows(indexed, sc.max_len, num_partitions=parts).withColumn(
            "processed_at", F.current_timestamp())
        spec = catalog.GOLD_USER_SEQUENCES
        tables.write(spec.with_comments(seqs), cfg, USER_SEQUENCES, "merge", keys=spec.keys, update_matched=True,
                     comment=spec.comment)
        newest = _iso(_utc(row["newest"]))
        spark.sql(f"ALTER TABLE delta.`{tables.table_path(cfg, USER_SEQUENCES)}` SET TBLPROPERTIES "
                  f"('{PROP_SOURCE_PROCESSED_AT}' = '{newest}')")
    users.unpersist()
    summary.update(users_updated=n_users, watermark=newest, item_vocab_added=added[ITEM_VOCAB],
                   event_type_vocab_added=added[EVENT_TYPE_VOCAB])
    log.info("nightly: %d users' sequences rewritten; watermark %s", n_users, newest)
    return summary


def run(ctx, args) -> dict:
    if getattr(args, "nightly", False):
        return update_user_sequences(ctx, args)
    return rebuild(ctx, args)


def rebuild(ctx, args) -> dict:
    """Vocabularies extended, gold_training_examples and gold_user_sequences rebuilt from every event."""
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    from ebbtide import tables

    cfg, spark = ctx.cfg, ctx.spark
    sc = cfg.sequences
    if sc.max_len < 1:
        raise ValueError(f"sequences.max_len must be >= 1, got {sc.max_len}")
    if sc.min_item_count < 1:
        raise ValueError(f"sequences.min_item_count must be >= 1, got {sc.min_item_count}")
    # Four passes read the events (cut-offs, two vocabularies, indexing): read them once.
    source = tables.read(spark, cfg, SOURCE)
    # Read before the events: rows sessionize writes while this runs are then newer than the mark,
    # and the next nightly update picks their users up.
    newest = source.agg(F.max("processed_at")).first()[0]
    events = source.select(
        "user_id", "event_id", "ts", "item_id", "event_type", "category", "is_session_start"
    ).persist(StorageLevel.MEMORY_AND_DISK)

    with step(log, "split cut-offs"):
        if sc.split.valid_start or sc.split.test_start:
            if not (sc.split.valid_start and sc.split.test_start):
                raise ValueError("set both sequences.split.valid_start and test_start, or neither")
            row = events.agg(F.min("ts").alias("start"), F.max("ts").alias("end")).first()
            if row["end"] is None:
                raise ValueError("silver_events is empty: run `ebbtide ingest` and `ebbtide sessionize` first")
            cut = {"valid_start": parse_utc(sc.split.valid_start, "sequences.split.valid_start"),
                   "test_start": parse_utc(sc.split.test_start, "sequences.split.test_start"),
                   "start": _utc(row["start"]), "end": _utc(row["end"])}
            source = "config"
        else:
            cut = split_cutoffs(events, sc.split.valid_fraction, sc.split.test_fraction)
            source = "quantiles"
        t1, t2, end = cut["valid_start"], cut["test_start"], cut["end"]
        if not (cut["start"] < t1 < t2 <= end):
            raise ValueError(
                f"split cut-offs must satisfy first event {_iso(cut['start'])} < valid_start {_iso(t1)} "
                f"< test_start {_iso(t2)} <= last event {_iso(end)}; fix sequences.split.valid_start / "
                "test_start or leave them empty to derive them from the event-time quantiles"
            )
        log.info("split (%s): train < %s <= valid < %s <= test <= %s (end of data)", source, _iso(t1), _iso(t2), _iso(end))

    vocab_added = _extend_vocabularies(ctx, events)

    item_vocab = tables.read(spark, cfg, ITEM_VOCAB)
    type_vocab = tables.read(spark, cfg, EVENT_TYPE_VOCAB)
    indexed = index_events(events, item_vocab, type_vocab).persist(StorageLevel.MEMORY_AND_DISK)
    n_events = indexed.count()
    # About a million events per window task keeps each task's numpy arrays small.
    parts = getattr(args, "partitions", 0) or max(
        int(spark.conf.get("spark.sql.shuffle.partitions")), n_events // 1_000_000 + 1
    )
    log.info("%d events indexed; window pass over %d partitions, max_len %d", n_events, parts, sc.max_len)

    with step(log, f"rebuild {EXAMPLES}"):
        examples = indexed_training_examples(
            indexed, sc.max_len, t1, t2, end, sc.max_examples_per_user, num_partitions=parts
        ).withColumn("run_id", F.lit(ctx.run_id)).withColumn("processed_at", F.current_timestamp())
        examples = in_feed_order(examples, parts)
        # The cut-offs are committed with the rows they split (one REPLACE commit): a separate
        # ALTER TABLE after the write left, when a crash fell between the two, the new rows
        # described by the previous build's cut-offs (evaluation would read them silently).
        spec = catalog.GOLD_TRAINING_EXAMPLES
        tables.write(spec.with_comments(examples), cfg, EXAMPLES, "overwrite", partition_by=spec.partition_by,
                     comment=spec.comment,
                     properties={PROP_VALID_START: _iso(t1), PROP_TEST_START: _iso(t2), PROP_END: _iso(end)})

    with step(log, f"rebuild {USER_SEQUENCES}"):
        seqs = indexed_user_windows(indexed, sc.max_len, num_partitions=parts).withColumn(
            "processed_at", F.current_timestamp()
        )
        mark = {PROP_SOURCE_PROCESSED_AT: _iso(_utc(newest))} if newest is not None else None
        spec = catalog.GOLD_USER_SEQUENCES
        tables.write(spec.with_comments(seqs), cfg, USER_SEQUENCES, "overwrite", comment=spec.comment, properties=mark)
    indexed.unpersist()
    events.unpersist()

    counts = {
        (r["split"], int(r["censored"])): int(r["n"])
        for r in tables.read(spark, cfg, EXAMPLES).groupBy("split", "censored").agg(F.count(F.lit(1)).alias("n")).collect()
    }
    rows = {s: counts.get((s, 0), 0) + counts.get((s, 1), 0) for s in SPLITS}
    censored = {s: counts.get((s, 1), 0) for s in SPLITS}
    n_users = tables.read(spark, cfg, USER_SEQUENCES).count()
    summary = {
        "mode": "rebuild",
        "events": n_events,
        "users": n_users,
        "examples": rows,
        "censored": censored,
        "item_vocab_size": item_vocab.count(),
        "item_vocab_added": vocab_added[ITEM_VOCAB],
        "event_type_vocab_size": type_vocab.count(),
        "event_type_vocab_added": vocab_added[EVENT_TYPE_VOCAB],
        "valid_start": _iso(t1),
        "test_start": _iso(t2),
        "end": _iso(end),
        "split_source": source,
        "max_len": sc.max_len,
    }
    log.info("examples per split %s (censored %s); %d users", rows, censored, n_users)
    return summary

