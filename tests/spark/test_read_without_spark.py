"""The published tables read without Spark: analysts open gold_recommendations and gold_churn_decay
(Delta, partitioned by score_date) from their storage location with the `deltalake` package
(delta-rs, DataFusion SQL) and get exactly the rows Spark SQL returns.

The read goes through `deltalake.QueryBuilder` and arro3's `to_pylist()`, as docs/operations.md
shows: with pyarrow 14 (Petastorm's cap), `DeltaTable.to_pyarrow_table()` fails on partitioned tables
and results holding string views cannot be converted to pyarrow (docs/stack.md)."""
from __future__ import annotations

import datetime as dt
from urllib.parse import unquote, urlparse

import pytest

# The module's fixture: the score tables of deploy/sql/01_score_tables.sql filled with two score
# dates (nested arrays, nulls, a partition column), built once for this module too.
from test_sql_queries import db  # noqa: F401

pytestmark = pytest.mark.spark
deltalake = pytest.importorskip("deltalake")

UTC = dt.timezone.utc
EPOCH = dt.datetime(1970, 1, 1, tzinfo=UTC)


def read_without_spark(location: str, sql: str) -> list[tuple]:
    """The rows of `sql` over the Delta table at `location` (registered as `t`), as Python values."""
    from deltalake import DeltaTable, QueryBuilder

    table = QueryBuilder().register("t", DeltaTable(location)).execute(sql).read_all()
    columns = [table.column(i).to_pylist() for i in range(table.num_columns)]
    return list(zip(*columns))


def _location(spark, table: str) -> str:
    """The table's storage location, as a path or URL delta-rs opens (Spark says `file:/...`)."""
    loc = spark.sql(f"DESCRIBE DETAIL {table}").first()["location"]
    url = urlparse(loc)
    return unquote(url.path) if url.scheme == "file" else loc


def _micros(ts: dt.datetime) -> int:
    """Microseconds since the epoch: Spark hands timestamps out as naive local times, delta-rs as
    aware UTC ones; both name the same instant."""
    return (ts.astimezone(UTC) - EPOCH) // dt.timedelta(microseconds=1)


def _plain(value):
    """One rendering for both engines: dates as ISO strings, timestamps as epoch microseconds,
    structs as sorted (field, value) tuples, arrays as tuples; doubles stay exact (both engines
    read the same Parquet values)."""
    if isinstance(value, dt.datetime):
        return _micros(value)
    if isinstance(value, dt.date):
        return value.isoformat()
    if hasattr(value, "asDict"):  # a Spark Row (a struct)
        value = value.asDict()
    if isinstance(value, dict):
        return tuple(sorted((k, _plain(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(_plain(v) for v in value)
    return value


REC_COLUMNS = "score_date, user_id, rank, item_id, score, model_name, model_version, run_id, scored_at, because"
CHURN_COLUMNS = (
    "score_date, user_id, days_since_last_event, p_return_7d, p_return_30d, expected_days_to_return, "
    "interest_half_life_days, churn_risk, top_fading, model_version, scored_at, events_last_7d, activity_ratio"
)


@pytest.mark.parametrize(
    "table, columns",
    [("gold_recommendations", REC_COLUMNS), ("gold_churn_decay", CHURN_COLUMNS)],
)
def test_deltalake_reads_the_rows_spark_sql_returns(spark, db, table, columns):  # noqa: F811
    spark_rows = sorted(_plain(tuple(r)) for r in spark.sql(f"SELECT {columns} FROM {table}").collect())
    other_rows = sorted(_plain(r) for r in read_without_spark(_location(spark, table), f"SELECT {columns} FROM t"))
    assert len(spark_rows) >= 4
    assert other_rows == spark_rows


def test_partition_filter_and_aggregate_agree(spark, db):  # noqa: F811
    """An analyst's query: one score date (the partition column), a filter and a count per user."""
    where = "score_date = DATE '2025-03-10' AND rank <= 2"
    spark_rows = spark.sql(
        f"SELECT user_id, COUNT(*) AS n, MIN(item_id) AS first_item FROM gold_recommendations WHERE {where} "
        "GROUP BY user_id ORDER BY user_id"
    ).collect()
    other = read_without_spark(
        _location(spark, "gold_recommendations"),
        f"SELECT user_id, COUNT(*) AS n, MIN(item_id) AS first_item FROM t WHERE {where} GROUP BY user_id ORDER BY user_id",
    )
    assert [tuple(r) for r in spark_rows] == other == [("u1", 2, "a"), ("u3", 1, "a")]
