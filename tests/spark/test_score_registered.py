"""`ebbtide score` end to end with a real model: silver_events -> the sequences stage -> a tiny
model trained and registered by `ebbtide train` (SQLite MLflow) -> promoted to champion ->
scored through the stage's own run(), then queried with the analyst SQL."""
from __future__ import annotations

import argparse
import datetime as dt
import random

import pytest

from train_tables import FAST

pytestmark = [pytest.mark.spark, pytest.mark.slow]

UTC = dt.timezone.utc
SILVER_DDL = (
    "event_id string, user_id string, item_id string, event_type string, ts timestamp, "
    "event_date date, value double, category string, source_session_id string, "
    "ingest_run_id string, ingested_at timestamp, session_id string, session_index int, "
    "event_seq int, gap_s double, is_session_start boolean, processed_at timestamp"
)
SCORE_DATE = dt.date(2025, 3, 1)


def silver_events(n_users=40, n_items=48, seed=3):
    """Users who mostly stay within one of four categories, active in Jan-Feb 2025."""
    rng = random.Random(seed)
    t0 = dt.datetime(2025, 1, 1, tzinfo=UTC)
    rows = []
    for u in range(n_users):
        fav = u % 4
        ts = t0 + dt.timedelta(hours=rng.uniform(0, 24 * 20))
        prev, session, n = None, -1, rng.randint(8, 16)
        for seq in range(n):
            cat = fav if rng.random() < 0.8 else rng.randrange(4)
            item = cat * (n_items // 4) + rng.randrange(n_items // 4)
            gap = None if prev is None else (ts - prev).total_seconds()
            start = gap is None or gap > 1800
            session += int(start)
            rows.append((
                f"e{u}_{seq}", f"u{u}", f"i{item}", "view", ts, ts.date(), None, f"c{cat}", None, "test", t0,
                f"u{u}#{session}", session, seq, gap, start, t0,
            ))
            prev = ts
            ts = ts + dt.timedelta(hours=rng.choice([0.1, 0.3, 5, 30, 80]))
            if ts.date() >= dt.date(2025, 2, 28):
                break
    return rows


@pytest.fixture
def cfg(tmp_path, spark):
    from conftest import make_config

    c = make_config(
        tmp_path, f"storage.database=t_{abs(hash(tmp_path)) % 10**8}", *FAST, "sequences.max_len=10",
        "train.epochs=3", "train.epoch_share=1.0", "train.lr=0.02", "score.k=5", "score.top_fading=2",
        "score.lookback_days=60",
    )
    spark.sql(f"CREATE DATABASE IF NOT EXISTS {c.storage.database}")
    return c


def test_score_with_a_trained_and_registered_champion(spark, cfg, tmp_path):
    from ebbtide import mlflow_uris, sequences, tables
    from ebbtide.cli import Context, run_stage
    from ebbtide.model import train

    ctx = Context(cfg, _spark=spark)
    events = spark.createDataFrame(silver_events(), SILVER_DDL)
    tables.write(events, cfg, "silver_events", "overwrite", partition_by=["event_date"])
    sequences.run(ctx, argparse.Namespace(partitions=2))
    p = argparse.ArgumentParser()
    train.add_arguments(p)
    trained = train.run(ctx, p.parse_args([]))
    version = trained["model_version"]
    # What the evaluation gate does on promotion.
    name = cfg.section("mlflow").model_name
    mlflow_uris.client(mlflow_uris.from_config(cfg)).set_registered_model_alias(name, "champion", version)

    out = run_stage("score", ["--score-date", SCORE_DATE.isoformat()], ctx)
    active = (
        events.where(f"ts < '{SCORE_DATE}'").groupBy("user_id").count().count()
    )
    assert out["model"] == f"models:/{name}/{version}" and out["active_users"] == active == 40

    recs = tables.read(spark, cfg, "gold_recommendations").toPandas()
    assert len(recs) == 40 * 5 and set(recs["rank"]) == {1, 2, 3, 4, 5}
    assert (recs.model_name == name).all() and (recs.model_version == version).all()
    consumed = events.groupBy("user_id").agg({"item_id": "collect_set"}).toPandas()
    consumed = {r.user_id: set(r[1]) for r in consumed.itertuples(index=False)}
    assert not any(r.item_id in consumed[r.user_id] for r in recs.itertuples())
    assert recs.item_id.str.match(r"^i\d+$").all()

    # Each recommendation names up to 3 of the user's own past events that weighed most for it,
    # most weight first, at the events' own times. A list is empty only when no past event
    # resembles the item in the model's item space: the 12 items per category (and a model trained
    # a few epochs, whose embeddings group the categories) leave the users unconsumed items of their
    # own category; with 6, most users had consumed all of it and got other categories' items,
    # which nothing in their history explains (2.5% of the rows).
    from pyspark.sql import functions as F

    reasons = (
        tables.read(spark, cfg, "gold_recommendations")
        .select("user_id", "rank", F.posexplode("because").alias("pos", "e"))
        .select("user_id", "rank", "pos", "e.item_id", F.unix_micros("e.ts").alias("ts_us"), "e.weight")
        .toPandas()
    )
    assert (reasons.groupby(["user_id", "rank"]).size() <= 3).all()
    assert reasons.groupby(["user_id", "rank"]).size().size >= 0.99 * len(recs)
    assert reasons.weight.between(0, 1, inclusive="right").all()
    assert reasons.sort_values("pos").groupby(["user_id", "rank"]).weight.apply(lambda w: w.is_monotonic_decreasing).all()
    history = (events.where(f"ts < '{SCORE_DATE}'")
               .select("user_id", "item_id", F.unix_micros("ts").alias("event_us")).toPandas())
    matched = reasons.merge(history, on=["user_id", "item_id"])
    matched = matched[(matched.ts_us - matched.event_us).abs() < 1_000_000]  # times rebuilt from float32 gaps
    assert len(matched.drop_duplicates(["user_id", "rank", "pos"])) == len(reasons)

    churn = tables.read(spark, cfg, "gold_churn_decay").toPandas()
    assert len(churn) == 40
    assert (churn.events_last_7d >= 0).all() and (churn.activity_ratio >= 0).all()
    for c in ("p_return_7d", "p_return_30d"):
        assert churn[c].between(0, 1).all()
    assert (churn.p_return_7d <= churn.p_return_30d + 1e-9).all()
    assert (churn.interest_half_life_days > 0).all() and (churn.expected_days_to_return >= 0).all()
    assert set(churn.churn_risk) <= {"high", "medium", "low"}
    names = {f["item_or_category"] for row in churn.top_fading for f in row}
    assert names and names <= {"c0", "c1", "c2", "c3"}

    # A pinned version scores the next day too; the analyst views and queries see both.
    run_stage("score", ["--score-date", (SCORE_DATE + dt.timedelta(days=1)).isoformat(),
                        "--model-version", str(version)], ctx)
    spark.catalog.setCurrentDatabase(cfg.storage.database)
    try:
        versions = spark.sql(
            "SELECT DISTINCT score_date, model_version FROM gold_recommendations ORDER BY score_date"
        ).collect()
        assert [(r[0], r[1]) for r in versions] == [(SCORE_DATE, version), (SCORE_DATE + dt.timedelta(days=1), version)]
        latest = spark.sql("SELECT DISTINCT score_date FROM latest_churn_decay").collect()
        assert [r[0] for r in latest] == [SCORE_DATE + dt.timedelta(days=1)]
    finally:
        spark.catalog.setCurrentDatabase("default")
