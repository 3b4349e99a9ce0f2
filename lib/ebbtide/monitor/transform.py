"""Pure DataFrame -> DataFrame steps of the monitor (no table I/O): each reduces events, the
scoring tables or the vocabulary to a few rows that ``ebbtide.monitor.metrics`` turns into numbers.

Days are UTC days: day D is ``[D 00:00, D+1 00:00)``. A score date S means "as of S 00:00" (see
scoring), so the recommendations of score date D are the ones served during day D.
"""
from __future__ import annotations

import datetime as dt
from functools import reduce
from typing import TYPE_CHECKING, Optional, Sequence

from ebbtide.monitor.metrics import ideal_dcg

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame


def midnight(day: dt.date) -> dt.datetime:
    """00:00 UTC of a day (timezone-aware: PySpark reads naive datetimes in the driver's zone)."""
    return dt.datetime(day.year, day.month, day.day, tzinfo=dt.timezone.utc)


def events_between(events: "DataFrame", start: Optional[dt.datetime], end: dt.datetime) -> "DataFrame":
    """Events with ``start <= ts < end`` (no lower bound when start is None). The partition column
    event_date, when there, is bounded a day wider so that Delta skips the other partitions."""
    from pyspark.sql import functions as F

    cond = F.col("ts") < F.lit(end)
    if start is not None:
        cond = cond & (F.col("ts") >= F.lit(start))
    if "event_date" in events.columns:
        cond = cond & (F.col("event_date") <= F.lit(end.date()))
        if start is not None:
            cond = cond & (F.col("event_date") >= F.lit(start.date() - dt.timedelta(days=1)))
    return events.where(cond)


def bucket(col: "Column", edges: Sequence[float]) -> "Column":
    """Bin index of a value against increasing edges: 0 below edges[0], i for edges[i-1] <= x <
    edges[i], len(edges) from the last edge up. Null stays null (with at least one edge)."""
    from pyspark.sql import functions as F

    return reduce(lambda acc, e: acc + (col >= F.lit(float(e))).cast("int"), edges, F.lit(0))


# ------------------------------------------------------------------------------------------
# Inputs and drift
# ------------------------------------------------------------------------------------------


def input_counts(day_events: "DataFrame", earlier_events: "DataFrame") -> "DataFrame":
    """One row: events, active_users, items of the day, and new_users / new_items (no event before
    the day at all)."""
    from pyspark.sql import functions as F

    day = day_events.agg(
        F.count(F.lit(1)).alias("events"),
        F.countDistinct("user_id").alias("active_users"),
        F.countDistinct("item_id").alias("items"),
    )
    new_users = (day_events.select("user_id").distinct()
                 .join(earlier_events.select("user_id"), "user_id", "left_anti")
                 .agg(F.count(F.lit(1)).alias("new_users")))
    new_items = (day_events.select("item_id").distinct()
                 .join(earlier_events.select("item_id"), "item_id", "left_anti")
                 .agg(F.count(F.lit(1)).alias("new_items")))
    return day.crossJoin(new_users).crossJoin(new_items)


def gap_histogram(events: "DataFrame", edges: Sequence[float]) -> "DataFrame":
    """``bin, n``: events per bin of gap_s, the seconds since the same user's previous event
    (silver_events; a user's first event has none and is left out)."""
    from pyspark.sql import functions as F

    return (events.where(F.col("gap_s").isNotNull())
            .select(bucket(F.col("gap_s"), edges).alias("bin"))
            .groupBy("bin").agg(F.count(F.lit(1)).alias("n")))


def value_counts(df: "DataFrame", column: str) -> "DataFrame":
    """``value, n`` per distinct value of a column (null as the text 'null')."""
    from pyspark.sql import functions as F

    return (df.select(F.coalesce(F.col(column).cast("string"), F.lit("null")).alias("value"))
            .groupBy("value").agg(F.count(F.lit(1)).alias("n")))


# ------------------------------------------------------------------------------------------
# Outputs
# ------------------------------------------------------------------------------------------


# percentile_approx's accuracy: relative rank error 1 / 10000, memory bounded however many rows
# (exact percentiles hold every distinct score in one aggregation buffer). Values are observed scores.
QUANTILE_ACCURACY = 10000


def score_summary(recs: "DataFrame") -> "DataFrame":
    """One row of a score date's recommendations: rows, users, mean, std and the 10 / 50 / 90 %
    quantiles of the score."""
    from pyspark.sql import functions as F

    return recs.agg(
        F.count(F.lit(1)).alias("rows"),
        F.countDistinct("user_id").alias("users"),
        F.mean("score").alias("mean"),
        F.stddev_pop("score").alias("std"),
        F.percentile_approx("score", [0.1, 0.5, 0.9], QUANTILE_ACCURACY).alias("quantiles"),
    )


def score_deciles(recs: "DataFrame", n_bins: int) -> "DataFrame":
    """One row, ``edges``: the interior quantiles (1/n .. (n-1)/n) of the score, the bin edges of
    the day-over-day score PSI."""
    from pyspark.sql import functions as F

    qs = [i / n_bins for i in range(1, n_bins)]
    return recs.agg(F.percentile_approx("score", qs, QUANTILE_ACCURACY).alias("edges"))


def score_histogram(recs: "DataFrame", edges: Sequence[float]) -> "DataFrame":
    from pyspark.sql import functions as F

    return (recs.where(F.col("score").isNotNull())
            .select(bucket(F.col("score"), edges).alias("bin"))
            .groupBy("bin").agg(F.count(F.lit(1)).alias("n")))


def tier_counts(churn: "DataFrame") -> "DataFrame":
    """``churn_risk, n``: users per churn tier of one score date."""
    return value_counts(churn, "churn_risk").withColumnRenamed("value", "churn_risk")


# ------------------------------------------------------------------------------------------
# Realized outcomes
# ------------------------------------------------------------------------------------------


def served_outcomes(recs: "DataFrame", day_events: "DataFrame", k: int) -> "DataFrame":
    """Per user who was served recommendations and had events on the day: ``user_id,
    n_relevant`` (distinct items of the day), ``first_hit`` (best rank among them, null if none),
    ``dcg``, ``hit`` (0/1) and ``ndcg`` at k, the ranks as published (see metrics.served_ranking)."""
    from pyspark.sql import functions as F

    served = recs.where(F.col("rank") <= k).select("user_id", "rank", "item_id")
    day_items = day_events.select("user_id", "item_id").distinct()
    relevant = day_items.groupBy("user_id").agg(F.count(F.lit(1)).alias("n_relevant"))
    users = served.select("user_id").distinct().join(relevant, "user_id")
    hits = (served.join(day_items, ["user_id", "item_id"])
            .groupBy("user_id")
            .agg(F.min("rank").alias("first_hit"),
                 F.sum(F.lit(1.0) / F.log2(F.col("rank") + F.lit(1.0))).alias("dcg")))
    idcg = F.element_at(F.array(*[F.lit(ideal_dcg(n, k)) for n in range(1, k + 1)]),
                        F.least(F.col("n_relevant"), F.lit(k)).cast("int"))
    return (users.join(hits, "user_id", "left")
            .withColumn("dcg", F.coalesce("dcg", F.lit(0.0)))
            .withColumn("hit", F.col("first_hit").isNotNull().cast("double"))
            .withColumn("ndcg", F.col("dcg") / idcg))


def outcome_summary(per_user: "DataFrame") -> "DataFrame":
    """One row: users, hit_rate (mean hit), ndcg (mean NDCG) over the users of served_outcomes."""
    from pyspark.sql import functions as F

    return per_user.agg(F.count(F.lit(1)).alias("users"), F.mean("hit").alias("hit_rate"),
                        F.mean("ndcg").alias("ndcg"))


def popular_top(catalogue: "DataFrame", past_events: "DataFrame", n: int) -> list[str]:
    """The n most popular catalogue item ids by their events in ``past_events``, most first (ties,
    and items without events, in item_id order). A top-n (Spark's takeOrdered), not a sort of the
    catalogue."""
    from pyspark.sql import functions as F

    counts = past_events.groupBy("item_id").agg(F.count(F.lit(1)).alias("n_events"))
    top = (catalogue.select("item_id").distinct().join(counts, "item_id", "left")
           .withColumn("n_events", F.coalesce("n_events", F.lit(0)))
           .orderBy(F.col("n_events").desc(), F.col("item_id")).limit(max(int(n), 0)).collect())
    return [r["item_id"] for r in top]


def popular_served(users: "DataFrame", past_events: "DataFrame", catalogue: "DataFrame", k: int,
                   exclude_consumed: bool = True) -> "DataFrame":
    """The most-popular table a baseline would have served the same users on the same score date:
    ``user_id, rank, item_id``, each user's k most popular catalogue items (popularity = events
    before the score date, ``past_events``), without the items the user consumed before it when
    ``exclude_consumed`` (as the scorer excludes them). Exact without ranking the catalogue per user:
    a user's first k unconsumed items lie within the first k + c popular ones, c = the user's
    consumed catalogue items, so each user gets the candidate ranks 1 .. k + c only."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    users = users.select("user_id").distinct()
    items = catalogue.select("item_id").distinct()
    if exclude_consumed:
        consumed = (past_events.select("user_id", "item_id").distinct()
                    .join(users, "user_id", "left_semi").join(items, "item_id", "left_semi"))
        per_user = consumed.groupBy("user_id").agg(F.count(F.lit(1)).alias("c"))
        c_max = int(per_user.agg(F.max("c")).first()[0] or 0)
    else:
        consumed = None
        per_user = users.limit(0).withColumn("c", F.lit(0))
        c_max = 0
    ids = popular_top(items, past_events, k + c_max)
    top = users.sparkSession.createDataFrame(list(enumerate(ids, 1)), "pop_rank int, item_id string")
    n_top = len(ids)
    cand = (users.join(per_user, "user_id", "left")
            .withColumn("c", F.coalesce("c", F.lit(0)))
            .select("user_id", F.explode(F.sequence(F.lit(1), F.least(F.col("c") + F.lit(k), F.lit(max(n_top, 1)))))
                    .alias("pop_rank"))
            .join(F.broadcast(top), "pop_rank"))
    if consumed is not None:
        cand = cand.join(consumed, ["user_id", "item_id"], "left_anti")
    w = Window.partitionBy("user_id").orderBy("pop_rank")
    return (cand.withColumn("rank", F.row_number().over(w)).where(F.col("rank") <= k)
            .select("user_id", "rank", "item_id"))


def catalogue_coverage(recs: "DataFrame", catalogue: "DataFrame", k: int) -> "DataFrame":
    """One row: covered (catalogue items in at least one user's top k) and catalogue (items)."""
    from pyspark.sql import functions as F

    items = catalogue.select("item_id").distinct()
    covered = (recs.where(F.col("rank") <= k).select("item_id").distinct()
               .join(items, "item_id", "left_semi").agg(F.count(F.lit(1)).alias("covered")))
    return covered.crossJoin(items.agg(F.count(F.lit(1)).alias("catalogue")))


# ------------------------------------------------------------------------------------------
# Calibration
# ------------------------------------------------------------------------------------------


def returned(churn: "DataFrame", window_events: "DataFrame", p_col: str) -> "DataFrame":
    """``user_id, p, y``: each user of one churn score date with their predicted probability and
    whether they had any event in the horizon's window (1.0) or not (0.0)."""
    from pyspark.sql import functions as F

    back = window_events.select("user_id").distinct().withColumn("y", F.lit(1.0))
    return (churn.where(F.col(p_col).isNotNull())
            .select("user_id", F.col(p_col).cast("double").alias("p"))
            .join(back, "user_id", "left")
            .withColumn("y", F.coalesce("y", F.lit(0.0))))


def calibration_bins(labelled: "DataFrame", n_bins: int) -> "DataFrame":
    """``bin, n, sum_p, sum_y, sum_sq`` per equal-width bin [i/n, (i+1)/n) of p (1.0 in the last),
    the input of metrics.calibration."""
    from pyspark.sql import functions as F

    b = F.least(F.greatest(F.floor(F.col("p") * F.lit(n_bins)), F.lit(0)), F.lit(n_bins - 1)).cast("int")
    return (labelled.withColumn("bin", b).groupBy("bin").agg(
        F.count(F.lit(1)).alias("n"),
        F.sum("p").alias("sum_p"),
        F.sum("y").alias("sum_y"),
        F.sum((F.col("p") - F.col("y")) * (F.col("p") - F.col("y"))).alias("sum_sq"),
    ))
