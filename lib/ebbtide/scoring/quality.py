"""The data-quality gate: checks on the computed scoring DataFrames before anything is published.

Each table is checked with one aggregation pass over the (persisted) DataFrame. Any failed
check raises :class:`QualityGateError` listing every failure, and the job stops before its
first write, so the published tables keep their previous state.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ebbtide.scoring.config import QualityConf

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

# Lineage columns that may legitimately be null (a model scored from a bare URI has no version).
NULLABLE = {"model_version"}


class QualityGateError(ValueError):
    """The scoring output failed the gate; nothing was published."""


@dataclass(frozen=True)
class Check:
    table: str
    name: str
    ok: bool
    detail: str

    def __str__(self) -> str:
        return f"[{'ok' if self.ok else 'FAIL'}] {self.table}.{self.name}: {self.detail}"


def _null_checks(table: str, row: dict, columns: list[str], n: int, max_rate: float) -> list[Check]:
    out = []
    for c in columns:
        if c in NULLABLE:
            continue
        nulls = row[f"nulls_{c}"] or 0
        rate = nulls / n if n else 0.0
        out.append(Check(table, f"null_rate({c})", rate <= max_rate, f"{nulls} nulls of {n} rows ({rate:.4f}, max {max_rate})"))
    return out


def _null_aggs(df: "DataFrame") -> list:
    from pyspark.sql import functions as F

    return [F.sum(F.col(c).isNull().cast("long")).alias(f"nulls_{c}") for c in df.columns]


def check_recommendations(recs: "DataFrame", n_active: int, k: int, q: QualityConf) -> list[Check]:
    from pyspark.sql import functions as F

    t = "gold_recommendations"
    row = recs.agg(
        F.count(F.lit(1)).alias("rows"),
        F.countDistinct("user_id").alias("users"),
        F.countDistinct("user_id", "item_id").alias("pairs"),
        F.count(F.when(F.col("user_id").isNotNull() & F.col("item_id").isNotNull(), 1)).alias("keyed"),
        F.countDistinct("user_id", "rank").alias("user_ranks"),
        F.min("rank").alias("min_rank"),
        F.max("rank").alias("max_rank"),
        F.min("score").alias("min_score"),
        F.max("score").alias("max_score"),
        F.sum((F.isnan("score") | F.col("score").isin(float("inf"), float("-inf"))).cast("long")).alias("bad_scores"),
        F.countDistinct("score_date").alias("dates"),
        *_null_aggs(recs),
    ).first().asDict()
    n, users = row["rows"], row["users"]
    coverage = users / n_active if n_active else 0.0
    checks = [
        Check(t, "active_users", n_active >= q.min_active_users, f"{n_active} active users (min {q.min_active_users})"),
        Check(t, "user_coverage", coverage >= q.min_user_coverage,
              f"{users} of {n_active} active users have recommendations ({coverage:.4f}, min {q.min_user_coverage})"),
        Check(t, "rows_per_user", n <= users * k, f"{n} rows for {users} users at k={k}"),
        Check(t, "unique_user_item", row["pairs"] == row["keyed"], f"{row['keyed'] - row['pairs']} duplicated (user, item) rows"),
        Check(t, "unique_user_rank", row["user_ranks"] == n, f"{n - row['user_ranks']} duplicated (user, rank) rows"),
        Check(t, "rank_range", n == 0 or (row["min_rank"] >= 1 and row["max_rank"] <= k),
              f"ranks {row['min_rank']}..{row['max_rank']} (expected 1..{k})"),
        Check(t, "score_finite", (row["bad_scores"] or 0) == 0, f"{row['bad_scores'] or 0} NaN or infinite scores"),
        Check(t, "score_range",
              n == 0 or (row["bad_scores"] or 0) > 0
              or (abs(row["min_score"]) <= q.max_abs_score and abs(row["max_score"]) <= q.max_abs_score),
              f"scores {row['min_score']}..{row['max_score']} (max |score| {q.max_abs_score})"),
        Check(t, "one_score_date", row["dates"] <= 1, f"{row['dates']} score dates"),
    ]
    return [Check(t, "rows", True, str(n)), *checks, *_null_checks(t, row, recs.columns, n, q.max_null_rate)]


def check_churn(churn: "DataFrame", n_active: int, q: QualityConf) -> list[Check]:
    from pyspark.sql import functions as F

    t = "gold_churn_decay"
    probs = ["p_return_7d", "p_return_30d"]
    row = churn.agg(
        F.count(F.lit(1)).alias("rows"),
        F.countDistinct("user_id").alias("users"),
        *[F.sum((F.isnan(p) | (F.col(p) < 0) | (F.col(p) > 1)).cast("long")).alias(f"bad_{p}") for p in probs],
        F.sum((F.col("p_return_7d") > F.col("p_return_30d") + F.lit(1e-6)).cast("long")).alias("not_monotone"),
        F.sum((F.isnan("expected_days_to_return") | (F.col("expected_days_to_return") < 0)
               | F.col("expected_days_to_return").isin(float("inf"))).cast("long")).alias("bad_expected"),
        F.sum((F.isnan("interest_half_life_days") | (F.col("interest_half_life_days") <= 0)
               | F.col("interest_half_life_days").isin(float("inf"))).cast("long")).alias("bad_half_life"),
        F.sum((F.col("days_since_last_event") < 0).cast("long")).alias("bad_days"),
        *_null_aggs(churn),
    ).first().asDict()
    n = row["rows"]
    checks = [
        Check(t, "active_users", n_active >= q.min_active_users, f"{n_active} active users (min {q.min_active_users})"),
        Check(t, "one_row_per_active_user", n == n_active and row["users"] == n,
              f"{n} rows, {row['users']} users, {n_active} active users"),
        *[Check(t, f"probability_range({p})", (row[f"bad_{p}"] or 0) == 0, f"{row[f'bad_{p}'] or 0} values outside [0, 1] or NaN")
          for p in probs],
        Check(t, "p_7d_le_p_30d", (row["not_monotone"] or 0) == 0, f"{row['not_monotone'] or 0} users with p_return_7d > p_return_30d"),
        Check(t, "expected_days_finite", (row["bad_expected"] or 0) == 0,
              f"{row['bad_expected'] or 0} negative, NaN or infinite expected_days_to_return"),
        Check(t, "half_life_positive", (row["bad_half_life"] or 0) == 0,
              f"{row['bad_half_life'] or 0} non-positive, NaN or infinite half-lives"),
        Check(t, "days_since_last_event", (row["bad_days"] or 0) == 0,
              f"{row['bad_days'] or 0} users whose last event is after the score date"),
    ]
    return [Check(t, "rows", True, str(n)), *checks, *_null_checks(t, row, churn.columns, n, q.max_null_rate)]


def rows(checks: list[Check], table: str) -> int:
    """The row count the gate saw for a table."""
    return next(int(c.detail) for c in checks if c.table == table and c.name == "rows")


def enforce(checks: list[Check]) -> None:
    failed = [c for c in checks if not c.ok]
    if failed:
        lines = "\n  ".join(str(c) for c in failed)
        raise QualityGateError(
            f"quality gate failed ({len(failed)} of {len(checks)} checks); nothing was published:\n  {lines}\n"
            "Inspect the inputs (silver_events freshness, the model version) or adjust score.quality.* if the "
            "threshold is wrong."
        )
