"""Pure DataFrame -> DataFrame steps of nightly scoring (no table I/O, no MLflow).

The score date D means "as of D 00:00 UTC": only events with ts < D are seen, a user is
active when their last such event falls within ``lookback_days`` before D, and the elapsed
time a model is asked about is D - last_ts.
"""
from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any, Callable, Iterable, Optional

from ebbtide import catalog

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame


def score_timestamp(score_date: dt.date) -> dt.datetime:
    """00:00 UTC of the score date (timezone-aware: PySpark reads naive datetimes in the
    driver's local zone)."""
    return dt.datetime(score_date.year, score_date.month, score_date.day, tzinfo=dt.timezone.utc)


def events_before(events: "DataFrame", score_ts: dt.datetime) -> "DataFrame":
    from pyspark.sql import functions as F

    return events.where(F.col("ts") < F.lit(score_ts))


def active_users(events: "DataFrame", score_ts: dt.datetime, lookback_days: int) -> "DataFrame":
    """user_id, last_ts of users whose last event before the score date is within the look-back."""
    from pyspark.sql import functions as F

    since = score_ts - dt.timedelta(days=lookback_days)
    return (
        events_before(events, score_ts)
        .groupBy("user_id")
        .agg(F.max("ts").alias("last_ts"))
        .where(F.col("last_ts") >= F.lit(since))
    )


def consumed_items(events: "DataFrame", item_vocab: "DataFrame") -> "DataFrame":
    """user_id, consumed: sorted item indices of everything the user interacted with.
    Items missing from the vocabulary cannot be scored, so they need no exclusion."""
    from pyspark.sql import functions as F

    return (
        events.select("user_id", "item_id")
        .join(item_vocab.select("item_id", "item_index"), "item_id")
        .groupBy("user_id")
        .agg(F.array_sort(F.collect_set(F.col("item_index").cast("int"))).alias("consumed"))
    )


def item_events(events: "DataFrame", item_vocab: "DataFrame") -> "DataFrame":
    """target_item (the item index), target_ts_s (epoch seconds) of each event of a known item: the
    columns the popularity prior's weights are summed over (ebbtide.model.prior.item_weights)."""
    from pyspark.sql import functions as F

    return events.select("item_id", "ts").join(item_vocab.select("item_id", "item_index"), "item_id").select(
        F.col("item_index").cast("long").alias("target_item"),
        (F.unix_micros("ts") / F.lit(1e6)).alias("target_ts_s"),
    )


def _user_windows_fn() -> Callable[..., "DataFrame"]:
    try:
        from ebbtide.sequences import user_windows
    except ImportError as e:
        raise ImportError(
            "ebbtide.sequences.user_windows is missing: scoring builds each user's window with the "
            "sequences stage's function so that scoring features equal training features"
        ) from e
    return user_windows


def scoring_inputs(
    events: "DataFrame",
    item_vocab: "DataFrame",
    event_type_vocab: "DataFrame",
    *,
    max_len: int,
    score_ts: dt.datetime,
    lookback_days: int,
    user_windows: Optional[Callable[..., "DataFrame"]] = None,
) -> "DataFrame":
    """One row per active user: the window features as of the score date (built by the
    sequences stage's own function), last_ts, elapsed_s and the consumed item indices."""
    from pyspark.sql import functions as F

    user_windows = user_windows or _user_windows_fn()
    past = events_before(events, score_ts)
    active = active_users(past, score_ts, lookback_days)
    active_events = past.join(active.select("user_id"), "user_id", "left_semi")
    windows = user_windows(active_events, item_vocab, event_type_vocab, max_len, score_ts)
    features = ["item_idx", "event_type_idx", "gap_s", "hour_of_week", "session_start", "length"]
    score_us = int(score_ts.timestamp()) * 1_000_000
    return (
        windows.select("user_id", *features)
        .join(active, "user_id")
        .join(consumed_items(active_events, item_vocab), "user_id", "left")
        .withColumn("consumed", F.coalesce("consumed", F.array().cast("array<int>")))
        .withColumn("elapsed_s", (F.lit(score_us) - F.unix_micros("last_ts")) / F.lit(1e6))
    )


def deterministic_layout(df: "DataFrame", partitions: int) -> "DataFrame":
    """Fixed partitioning and order, so that every run feeds the model identical batches
    (floating-point results of a batched matrix product depend on the batch)."""
    return df.repartition(partitions, "user_id").sortWithinPartitions("user_id")


def churn_risk(p_return_30d: "Column", high_below: float, medium_below: float) -> "Column":
    from pyspark.sql import functions as F

    return (
        F.when(p_return_30d.isNull(), F.lit(None).cast("string"))
        .when(p_return_30d < F.lit(high_below), "high")
        .when(p_return_30d < F.lit(medium_below), "medium")
        .otherwise("low")
    )


def with_lineage(
    df: "DataFrame",
    *,
    score_date: dt.date,
    model_name: str,
    model_version: Optional[int],
    run_id: str,
    scored_at: dt.datetime,
) -> "DataFrame":
    from pyspark.sql import functions as F

    return (
        df.withColumn("score_date", F.lit(score_date).cast("date"))
        .withColumn("model_name", F.lit(model_name).cast("string"))
        .withColumn("model_version", F.lit(model_version).cast("int"))
        .withColumn("run_id", F.lit(run_id).cast("string"))
        .withColumn("scored_at", F.lit(scored_at).cast("timestamp"))
    )


# Columns added after a table's first release go last: a table that existing rows evolve (Delta
# appends new columns at the end) then has the same layout as one created fresh, so positional
# inserts and SELECT * read the same everywhere.
# The order is the tables' own, as ebbtide.catalog declares it.
RECS_COLUMNS = list(catalog.GOLD_RECOMMENDATIONS.names)
CHURN_COLUMNS = list(catalog.GOLD_CHURN_DECAY.names)


# What the scoring function reads of the scoring inputs.
SCORING_COLUMNS = ["user_id", "item_idx", "event_type_idx", "gap_s", "hour_of_week", "session_start", "length",
                   "elapsed_s", "consumed", "last_ts"]


def scored(inputs: "DataFrame", fn: Callable) -> "DataFrame":
    """Both tables' rows (inference.SCORED_SCHEMA) from one pass of ``fn`` (inference.score_fn(...))
    over the scoring inputs: recommendation rows have a rank, churn / decay rows none."""
    from ebbtide.scoring.inference import SCORED_DDL

    return inputs.select(*SCORING_COLUMNS).mapInArrow(fn, SCORED_DDL)


def recommendations(scored: "DataFrame", lineage: dict[str, Any]) -> "DataFrame":
    """gold_recommendations rows: the scored rows that have a rank."""
    from pyspark.sql import functions as F

    return with_lineage(scored.where(F.col("rank").isNotNull()), **lineage).select(*RECS_COLUMNS)


def churn_decay(scored: "DataFrame", lineage: dict[str, Any], *, high_below: float, medium_below: float) -> "DataFrame":
    """gold_churn_decay rows: the scored rows without a rank, one per user."""
    from pyspark.sql import functions as F

    churn = scored.where(F.col("rank").isNull())
    out = churn.withColumn(
        "churn_risk", churn_risk(F.col("p_return_30d"), high_below, medium_below)
    )
    return with_lineage(out, **lineage).select(*CHURN_COLUMNS)


def item_list(spark, values: Iterable[str], source: str, table_reader: Callable[[str], "DataFrame"]) -> list[str]:
    """Allow / deny list: config values plus a table or file of item ids. The list is small
    (a policy list, not a catalogue), so it travels to the workers inside the scoring function."""
    from pyspark.sql import functions as F

    ids = [str(v) for v in values]
    if source:
        low = source.lower()
        if low.endswith(".txt"):
            df = spark.read.text(source).select(F.trim("value").alias("item_id"))
        elif low.endswith(".csv"):
            df = spark.read.option("header", True).csv(source).select(F.col("item_id").cast("string"))
        elif low.endswith(".parquet"):
            df = spark.read.parquet(source).select(F.col("item_id").cast("string"))
        else:
            df = table_reader(source).select(F.col("item_id").cast("string"))
        ids += [r[0] for r in df.where("item_id IS NOT NULL AND item_id != ''").distinct().collect()]
    return sorted(set(ids))
