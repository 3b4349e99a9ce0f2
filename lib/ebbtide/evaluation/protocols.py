"""Evaluation protocols on ``gold_training_examples``: which rows train, which rows evaluate.

temporal (default)
    The sequences stage labels each example by its *target's* time against the global
    cut-offs T1 (validation start) and T2 (test start). Baselines fit on ``split = 'train'``
    (every target before T1, so every input too); the model is evaluated on the uncensored
    examples of the chosen split. No event at or after T1 enters a training input or target.
leave-last-out
    For comparison with papers: each user's last uncensored target is the test example, the
    one before it the validation example, and everything earlier trains. It leaks the future
    across users (one user's test event can precede another's training events): never use it
    to choose a model for production.

Two views of the ranking, both on the evaluated split's uncensored examples:

nightly (the headline; ``nightly_examples``)
    What the product ships: a table published each night from the events before midnight UTC.
    One row per (user, UTC day d of a target) holding the user's window before d 00:00, the
    elapsed time from the last input event to d 00:00, and as targets the *set* of items the
    user touched on d.
request_time (``evaluation_rows`` as is)
    One row per target event, ranked as of that event's time (elapsed = ``time_to_next_s``).

Every scorer of a view gets the same rows, the same elapsed times and the same candidates
(``candidate_items``: the items seen in the train split, so no scorer ranks an item nobody
could have learned while another is spared it).

Churn is evaluated *as of a cut date* (T2 for test, T1 for valid) the way the nightly job
scores: each user's state is the window that straddles the cut (last input before it, next
event after it, or censored), the elapsed time is ``cut - last_ts``, and the labels are
"returned within D days after the cut" (unknown, NaN, when the data end before cut + D).
Baselines' churn models fit on the same kind of snapshot taken inside the train period
(``cut = T1 - max horizon``, observed only up to T1).

The Spark functions are pure DataFrame -> DataFrame; ``to_batch`` turns collected rows into
the numpy batch every scorer takes. The baselines fit on aggregates of ``training_rows``
(``train_*``: per (last item, item), per item, per distinct return gap) and the (user, item)
presence, never on its rows (``baselines.TrainAggregates.from_spark`` collects them).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Optional

import numpy as np

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

ARRAY_FEATURES = ("item_idx", "event_type_idx", "gap_s", "hour_of_week", "session_start")
DAY_S = 86400.0


def _event_seq():
    from pyspark.sql import functions as F

    return F.expr("try_cast(substring_index(example_id, '#', -1) AS BIGINT)")


def with_leave_last_out_split(df: "DataFrame") -> "DataFrame":
    """Replace ``split``: per user, the last uncensored target is test, the one before valid,
    the rest train (censored rows keep no split: 'censored')."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    w = Window.partitionBy("user_id").orderBy(F.col("target_ts").desc(), _event_seq().desc())
    unc = df.filter(F.col("censored") == 0).withColumn("_r", F.row_number().over(w))
    unc = unc.withColumn(
        "split", F.when(F.col("_r") == 1, "test").when(F.col("_r") == 2, "valid").otherwise("train")
    ).drop("_r")
    cen = df.filter(F.col("censored") != 0).withColumn("split", F.lit("censored"))
    return unc.unionByName(cen)


def apply_protocol(df: "DataFrame", protocol: str) -> "DataFrame":
    if protocol == "temporal":
        return df
    if protocol == "leave-last-out":
        return with_leave_last_out_split(df)
    raise ValueError(f"unknown protocol {protocol!r}; use temporal or leave-last-out")


def evaluation_rows(df: "DataFrame", split: str) -> "DataFrame":
    """The examples the ranking is measured on: the split's uncensored rows."""
    from pyspark.sql import functions as F

    return df.filter((F.col("split") == split) & (F.col("censored") == 0))


def nightly_examples(df: "DataFrame") -> "DataFrame":
    """The nightly view: one row per (user, UTC day ``day`` of a target) of ``df``'s uncensored rows.

    The input is the window of the user's first example that day (by target time, then event
    sequence number), which is exactly the user's window before ``day`` 00:00; ``elapsed_s`` is
    that midnight minus ``last_ts``; ``target_items`` the sorted distinct target items of all the
    user's examples that day. Keeps ``example_id`` (of that first example), ``user_id``,
    ``split``, the window columns, ``length`` and ``last_ts``; drops the single-target columns.

    A (user, day) whose first example's window does not end before midnight has no nightly input
    to score and is dropped: the user's very first event was that day, or the earlier examples of
    the day were left out (``sequences.max_examples_per_user``, or they fall before the split).
    Days are UTC whatever the session time zone: they are counted from epoch seconds.
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    ts = F.col("target_ts").cast("double")
    midnight = F.col("_day") * F.lit(DAY_S)
    by_day = Window.partitionBy("user_id", "_day")
    first = by_day.orderBy(ts, _event_seq())
    return (
        df.filter(F.col("censored") == 0)
        .withColumn("_day", F.floor(ts / DAY_S))
        .withColumn("target_items", F.array_sort(F.collect_set("target_item").over(by_day)))
        .withColumn("_r", F.row_number().over(first))
        .filter((F.col("_r") == 1) & (F.col("last_ts").cast("double") < midnight))
        .withColumn("day", F.date_from_unix_date(F.col("_day").cast("int")))
        .withColumn("elapsed_s", midnight - F.col("last_ts").cast("double"))
        .drop("_r", "_day", "target_item", "target_event_type", "target_ts", "time_to_next_s", "censored")
    )


def candidate_items(df: "DataFrame") -> "DataFrame":
    """The candidate catalogue every scorer ranks: one row (``item``) per real item seen as an
    input or a target in the train split (temporal: every such event is before T1), censored
    rows' windows included. Other items are nobody's to learn, so they are masked for all."""
    from pyspark.sql import functions as F

    from ebbtide.sequences import FIRST_INDEX

    tr = df.filter(F.col("split") == "train")
    inputs = tr.select(F.explode("item_idx").alias("item"))
    targets = tr.filter(F.col("censored") == 0).select(F.col("target_item").alias("item"))
    return inputs.unionByName(targets).filter(F.col("item") >= FIRST_INDEX).select(F.col("item").cast("long")).distinct()


def training_rows(df: "DataFrame") -> "DataFrame":
    """What baselines fit on: the train split's uncensored rows, only the columns they use."""
    from pyspark.sql import functions as F

    return (
        df.filter((F.col("split") == "train") & (F.col("censored") == 0))
        .select(
            "user_id",
            F.col("target_item").cast("long").alias("target_item"),
            F.col("target_ts").cast("double").alias("target_ts_s"),
            F.element_at("item_idx", -1).cast("long").alias("last_item"),
            F.col("time_to_next_s").cast("double").alias("time_to_next_s"),
        )
    )


def _real_targets(tr: "DataFrame", n_items: int) -> "DataFrame":
    from pyspark.sql import functions as F

    from ebbtide.sequences import FIRST_INDEX

    return tr.filter((F.col("target_item") >= FIRST_INDEX) & (F.col("target_item") < n_items))


def train_transitions(tr: "DataFrame", n_items: int) -> "DataFrame":
    """Of ``training_rows``: one row per (``last_item`` clipped to [0, n_items), ``item``) with
    ``n`` targets of that real item after that last input item, and their latest ``max_ts_s``.
    Summed over ``last_item`` it is the items' popularity; its max ts is the decay's reference."""
    from pyspark.sql import functions as F

    last = F.least(F.greatest(F.col("last_item"), F.lit(0)), F.lit(n_items - 1)).cast("long")
    return (
        _real_targets(tr, n_items)
        .groupBy(last.alias("last_item"), F.col("target_item").cast("long").alias("item"))
        .agg(F.count(F.lit(1)).alias("n"), F.max("target_ts_s").alias("max_ts_s"))
    )


def train_decayed_counts(tr: "DataFrame", n_items: int, t_ref_s: float, half_lives_s) -> "DataFrame":
    """Of ``training_rows``: one row per real ``item``, and per half-life h (column ``w{j}``,
    j its position) the sum over its targets of 2^(-(t_ref - ts) / h), written as
    ``baselines.decay_weight`` writes it (exp(-ln 2 x age / h))."""
    from pyspark.sql import functions as F

    ln2 = float(np.log(2.0))
    age = F.lit(float(t_ref_s)) - F.col("target_ts_s")
    sums = [F.sum(F.exp(F.lit(-ln2) * age / F.lit(float(h)))).alias(f"w{j}") for j, h in enumerate(half_lives_s)]
    return _real_targets(tr, n_items).groupBy(F.col("target_item").cast("long").alias("item")).agg(*sums)


def train_item_presence(tr: "DataFrame", n_items: int) -> "DataFrame":
    """Of ``training_rows``: (user_id, item), each real item among a user's train targets once;
    the users per item and per item pair (``baselines.cooccurrence_counts``) come from it."""
    from pyspark.sql import functions as F

    return _real_targets(tr, n_items).select("user_id", F.col("target_item").cast("long").alias("item")).distinct()


def train_return_gaps(tr: "DataFrame") -> "DataFrame":
    """Of ``training_rows``: one row per distinct ``time_to_next_s`` (every train target, real or
    not), ``n`` the targets with it: the churn baselines' observed return times, grouped."""
    return value_counts(tr, "time_to_next_s")


def value_counts(df: "DataFrame", column: str) -> "DataFrame":
    """One row per distinct value of ``column`` and ``n`` the rows with it."""
    return df.groupBy(column).count().withColumnRenamed("count", "n")


def split_start(df: "DataFrame", split: str, configured: str = "") -> float:
    """The cut date of a split in epoch seconds: the configured T1/T2 when set, else the first
    target time in the split (no event lies between the true cut and it, so the two agree)."""
    from pyspark.sql import functions as F

    if configured:
        import pandas as pd

        ts = pd.Timestamp(configured)
        return (ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")).timestamp()
    v = df.filter(F.col("split") == split).agg(F.min(F.col("target_ts").cast("double"))).collect()[0][0]
    if v is None:
        raise ValueError(f"gold_training_examples has no '{split}' rows; rerun `ebbtide sequences` with split cut-offs inside the data")
    return float(v)


def churn_snapshot(df: "DataFrame", cut_s: float, observe_until_s: Optional[float] = None) -> "DataFrame":
    """One row per user: the example whose input ends before ``cut_s`` and whose next event
    (or censoring horizon) is at or after it. Adds ``elapsed_s`` (cut - last_ts),
    ``returned`` (1 when the next event is seen by ``observe_until_s``), ``return_after_s``
    (next event - cut when returned, else the observed horizon - cut).

    ``observe_until_s`` hides everything after it (the train snapshot must not see T1 onward).
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    last = F.col("last_ts").cast("double")
    nxt = F.col("target_ts").cast("double")
    horizon = last + F.col("time_to_next_s").cast("double")
    until = F.lit(float(observe_until_s)) if observe_until_s is not None else None
    unc = df.filter((F.col("censored") == 0) & (last < cut_s) & (nxt >= cut_s))
    cen = df.filter((F.col("censored") != 0) & (last < cut_s) & (horizon >= cut_s))
    unc = unc.withColumn("_next", nxt).withColumn("_end", nxt).withColumn("_obs", F.lit(1))
    cen = cen.withColumn("_next", F.lit(None).cast("double")).withColumn("_end", horizon).withColumn("_obs", F.lit(0))
    both = unc.unionByName(cen)
    if until is not None:
        seen = F.col("_next") <= until
        both = both.withColumn("_obs", F.when(seen, 1).otherwise(0)).withColumn(
            "_end", F.when(seen, F.col("_next")).otherwise(F.least(F.col("_end"), until))
        )
    w = Window.partitionBy("user_id").orderBy(F.col("_obs").desc(), last.desc(), F.col("_end").desc())
    return (
        both.withColumn("_r", F.row_number().over(w))
        .filter("_r = 1")
        .withColumn("elapsed_s", F.lit(float(cut_s)) - last)
        .withColumn("returned", F.col("_obs").cast("int"))
        .withColumn("return_after_s", F.col("_end") - F.lit(float(cut_s)))
        .drop("_r", "_next", "_end", "_obs")
    )


# ---------------------------------------------------------------------------------------
# numpy side
# ---------------------------------------------------------------------------------------


def churn_labels(returned: np.ndarray, return_after_s: np.ndarray, days: float) -> np.ndarray:
    """1 = returned within ``days`` of the cut, 0 = known not to, NaN = not observable
    (censored before cut + days)."""
    returned = np.asarray(returned).astype(bool)
    after = np.asarray(return_after_s, dtype=np.float64)
    h = days * DAY_S
    y = np.full(len(after), np.nan)
    y[returned & (after <= h)] = 1.0
    y[returned & (after > h)] = 0.0
    y[~returned & (after >= h)] = 0.0
    return y


def to_batch(pdf) -> dict[str, np.ndarray]:
    """Collected rows (pandas) -> the numpy batch every scorer takes: the five (n, L) arrays,
    ``length``, and ``last_ts_s`` (epoch seconds) for the baselines that need absolute time."""
    out: dict[str, np.ndarray] = {}
    for c in ARRAY_FEATURES:
        col = pdf[c].to_numpy()
        dtype = np.float32 if c == "gap_s" else np.int64
        out[c] = np.stack([np.asarray(v, dtype=dtype) for v in col]) if len(col) else np.zeros((0, 0), dtype)
    out["length"] = pdf["length"].to_numpy().astype(np.int64)
    out["last_ts_s"] = epoch_s(pdf["last_ts"])
    return out


def epoch_s(series) -> np.ndarray:
    """Timestamps (naive ones are UTC, as the session writes them) -> epoch seconds."""
    import pandas as pd

    s = pd.to_datetime(series, utc=True)
    return (s.astype("int64") / 1e9).to_numpy(dtype=np.float64)
