"""Nightly scoring on real local Spark and Delta: publish, rerun, backfill, no future leakage,
exclusions, and the quality gate that keeps bad output from being published.

The model here is a small deterministic torch module with the Predictor interface, so that
these tests exercise the Spark plumbing alone; tests/spark/test_score_registered.py scores
with a model trained and registered through the real training code.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import math
import sys

import numpy as np
import pytest

pytestmark = pytest.mark.spark

D = dt.date(2025, 3, 10)
N_ITEMS = 12  # pad, OOV, m0..m9
ITEM_IDS = np.array(["<pad>", "<oov>"] + [f"m{j}" for j in range(10)], dtype=object)
CATS = np.array([None, None] + ["c0"] * 5 + ["c1"] * 5, dtype=object)


def _register_by_value():
    # The scoring functions run in Python workers that cannot import this test module.
    from pyspark import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])


_register_by_value()


class TinyPredictor:
    """Predictor interface over a seeded embedding table; scores depend on the window and on
    the time elapsed since the last event (older users drift towards popularity)."""

    def __init__(self, broken: bool = False):
        import torch

        g = torch.Generator().manual_seed(0)
        self.emb = torch.randn(N_ITEMS, 8, generator=g)
        self.bias = torch.randn(N_ITEMS, generator=g)
        self.broken = broken
        self.item_category = CATS

    def score_all(self, batch, elapsed_s):
        import torch

        idx = torch.as_tensor(batch["item_idx"]).long()
        mask = (idx > 0).float()
        state = (self.emb[idx] * mask[..., None]).sum(1) / mask.sum(1).clamp(min=1)[:, None]
        decay = torch.exp(-torch.as_tensor(elapsed_s, dtype=torch.float32) / (7 * 86400.0))[:, None]
        s = decay * (state @ self.emb.T) + (1 - decay) * self.bias[None, :]
        s[:, :2] = -math.inf
        return s.numpy()

    def churn(self, batch, elapsed_s):
        length = np.asarray(batch["length"], dtype=np.float64)
        h = 5.0 + length  # mean days to return
        p7 = 1 - np.exp(-7 / h)
        p30 = 1 - np.exp(-30 / h)
        if self.broken:
            p30 = p30 + 1.0  # not a probability: the gate must stop this
        return {"p_return_7d": p7, "p_return_30d": p30, "expected_days_to_return": h,
                "half_life_days": h * math.log(2)}

    def item_ids(self, idx):
        return ITEM_IDS[np.asarray(idx)]


def tiny_loader(uri, uris=None):
    from ebbtide.scoring.inference import PredictorScorer

    return PredictorScorer(TinyPredictor(broken="broken" in uri))


def _ts(s: str) -> dt.datetime:
    return dt.datetime.fromisoformat(s).replace(tzinfo=dt.timezone.utc)


# u1, u2 active before D; u3 idle for longer than the look-back; u4's only event is at D 00:00.
BASE_EVENTS = [
    ("u1", "m0", "2025-03-08T10:00:00"),
    ("u1", "m1", "2025-03-09T12:00:00"),
    ("u2", "m5", "2025-03-01T09:00:00"),
    ("u2", "m6", "2025-03-01T09:10:00"),
    ("u2", "m7", "2025-03-05T20:00:00"),
    ("u3", "m2", "2025-01-01T08:00:00"),
    ("u4", "m3", "2025-03-10T00:00:00"),
    ("u5", "m9", "2025-02-20T08:00:00"),
]


def _events_df(spark, rows):
    from pyspark.sql import functions as F

    data = [(f"e{i}", u, it, "view", _ts(ts)) for i, (u, it, ts) in enumerate(rows)]
    df = spark.createDataFrame(data, "event_id string, user_id string, item_id string, event_type string, ts timestamp")
    return df.withColumn("event_date", F.to_date("ts")).withColumn("is_session_start", F.lit(True))


def write_inputs(spark, cfg, rows=BASE_EVENTS):
    from ebbtide import tables

    tables.write(_events_df(spark, rows), cfg, "silver_events", mode="overwrite")
    vocab = spark.createDataFrame(
        [(str(ITEM_IDS[i]), i, str(CATS[i])) for i in range(2, N_ITEMS)], "item_id string, item_index int, category string"
    )
    tables.write(vocab, cfg, "gold_item_vocab", mode="overwrite")
    tables.write(spark.createDataFrame([("view", 2)], "event_type string, event_type_index int"),
                 cfg, "gold_event_type_vocab", mode="overwrite")


def with_score(cfg, **changes):
    sc = cfg.section("score")
    q = changes.pop("quality", {})
    sc = dataclasses.replace(sc, quality=dataclasses.replace(sc.quality, **q), **changes)
    return dataclasses.replace(cfg, extra={**cfg.extra, "score": sc})


def score(ctx, cfg, date=D, uri="tiny://ok"):
    from ebbtide.cli import Context
    from ebbtide.scoring.run import ModelRef, score_and_publish

    c = Context(cfg, run_id=ctx.run_id + date.isoformat(), _spark=ctx.spark)
    return score_and_publish(c, date, ModelRef(uri, "tiny", 7, None), loader=tiny_loader)


def partition(spark, cfg, name, date=D, drop=("run_id", "scored_at")):
    from ebbtide import tables

    df = tables.read(spark, cfg, name).where(f"score_date = '{date}'").drop(*drop)
    return sorted(tuple(r) for r in df.collect())


@pytest.mark.slow
def test_publish_rerun_backfill_and_no_future_leakage(spark, cfg, ctx):
    """One table history: publish D, backfill D-1, rerun D, add events on/after D and rerun."""
    from ebbtide import tables

    write_inputs(spark, cfg)
    cfg = with_score(cfg, k=3)
    out = score(ctx, cfg)
    assert out["active_users"] == 3 and out["churn_rows"] == 3  # u1, u2, u5

    recs = tables.read(spark, cfg, "gold_recommendations").toPandas()
    assert set(recs.user_id) == {"u1", "u2", "u5"}
    assert out["recommendation_rows"] == len(recs) == 9
    for u, g in recs.groupby("user_id"):
        g = g.sort_values("rank")
        assert list(g["rank"]) == [1, 2, 3]
        assert list(g.score) == sorted(g.score, reverse=True)
    consumed = {"u1": {"m0", "m1"}, "u2": {"m5", "m6", "m7"}, "u5": {"m9"}}
    assert not any(r.item_id in consumed[r.user_id] for r in recs.itertuples())
    assert (recs.model_name == "tiny").all() and (recs.model_version == 7).all()
    assert str(recs.score_date.iloc[0]) == "2025-03-10"

    churn = tables.read(spark, cfg, "gold_churn_decay").toPandas().set_index("user_id")
    assert churn.loc["u1", "days_since_last_event"] == pytest.approx(12 / 24)
    assert churn.loc["u2", "days_since_last_event"] == pytest.approx(4 + 4 / 24)
    # window length 2 -> mean 7 days to return in the tiny model
    assert churn.loc["u1", "p_return_30d"] == pytest.approx(1 - math.exp(-30 / 7))
    assert churn.loc["u1", "interest_half_life_days"] == pytest.approx(7 * math.log(2))
    assert set(churn.churn_risk) == {"low"}
    fading = churn.loc["u1", "top_fading"]
    assert len(fading) >= 1 and fading[0]["item_or_category"] in {"c0", "c1"}
    assert all(0 <= f["decayed_interest"] < f["interest_at_last_event"] <= 1 for f in fading)

    db = cfg.storage.database
    assert spark.sql(f"SELECT count(*) FROM {db}.latest_recommendations").first()[0] == 9
    assert spark.sql(f"SELECT count(*) FROM {db}.latest_churn_decay").first()[0] == 3
    desc = spark.sql(f"DESCRIBE TABLE EXTENDED {db}.gold_churn_decay").collect()
    assert "7 days" in {r.col_name: r.comment for r in desc}["p_return_7d"]
    assert any("churn" in (r.data_type or "") for r in desc if r.col_name == "Comment")
    from spec_check import assert_matches_spec

    for name in ("gold_recommendations", "gold_churn_decay"):
        assert_matches_spec(spark, cfg, name)

    first = {n: partition(spark, cfg, n) for n in ("gold_recommendations", "gold_churn_decay")}
    # Backfill the day before: its own partition appears, D's stays as it was.
    prev = D - dt.timedelta(days=1)
    score(ctx, cfg, date=prev)
    prev_rows = partition(spark, cfg, "gold_churn_decay", prev)
    assert prev_rows and partition(spark, cfg, "gold_recommendations", prev)
    assert partition(spark, cfg, "gold_recommendations") == first["gold_recommendations"]
    # The views follow the newest date, not the newest write.
    assert spark.sql(f"SELECT DISTINCT score_date FROM {db}.latest_churn_decay").collect()[0][0] == D

    # Events on or after the score date (one exactly at 00:00, one of a user who only exists
    # in the future) change nothing; the rerun replaces D's partition with identical rows.
    future = BASE_EVENTS + [
        ("u1", "m2", "2025-03-10T00:00:00"),
        ("u1", "m3", "2025-03-11T08:00:00"),
        ("u2", "m0", "2025-03-12T08:00:00"),
        ("u6", "m4", "2025-03-10T05:00:00"),
    ]
    write_inputs(spark, cfg, future)
    score(ctx, cfg)
    for n in first:
        assert partition(spark, cfg, n) == first[n]
    assert partition(spark, cfg, "gold_churn_decay", prev) == prev_rows
    all_recs = tables.read(spark, cfg, "gold_recommendations")
    assert all_recs.select("score_date").distinct().count() == 2
    assert all_recs.where(f"score_date = '{D}'").select("run_id").distinct().count() == 1


@pytest.mark.slow
def test_exclusions_and_churn_tiers(spark, cfg, ctx, tmp_path):
    from ebbtide import tables

    write_inputs(spark, cfg)
    deny_file = tmp_path / "deny.txt"
    deny_file.write_text("m3\n\nm4\n")
    # p30 of u1 (window length 2) ~ 0.986, u2 (3) ~ 0.977, u5 (1) ~ 0.993.
    score(ctx, with_score(cfg, k=10, deny_items=["m2"], deny_source=str(deny_file),
                          churn_high_below=0.98, churn_medium_below=0.99))
    recs = tables.read(spark, cfg, "gold_recommendations").toPandas()
    assert not set(recs.item_id) & {"m2", "m3", "m4", "<pad>", "<oov>"}
    # Every other unconsumed item is there (k is larger than the catalogue).
    assert set(recs[recs.user_id == "u1"].item_id) == {f"m{j}" for j in range(10)} - {"m0", "m1", "m2", "m3", "m4"}
    risk = dict(tables.read(spark, cfg, "gold_churn_decay").select("user_id", "churn_risk").collect())
    assert risk == {"u2": "high", "u1": "medium", "u5": "low"}

    # An allow list restricts the candidates; consumed items come back when not excluded.
    score(ctx, with_score(cfg, k=10, allow_items=["m0", "m5", "m8"], exclude_consumed=False))
    recs = tables.read(spark, cfg, "gold_recommendations").toPandas()
    assert set(recs.item_id) == {"m0", "m5", "m8"}
    assert set(recs[recs.user_id == "u1"].item_id) == {"m0", "m5", "m8"}


OLD_RECS_DDL = ("score_date date, user_id string, rank int, item_id string, score double, model_name string, "
                "model_version int, run_id string, scored_at timestamp")
OLD_CHURN_DDL = (
    "score_date date, user_id string, days_since_last_event double, p_return_7d double, p_return_30d double, "
    "expected_days_to_return double, interest_half_life_days double, churn_risk string, "
    "top_fading array<struct<item_or_category: string, decayed_interest: double, interest_at_last_event: double>>, "
    "model_name string, model_version int, run_id string, scored_at timestamp"
)


@pytest.mark.slow
def test_tables_written_before_the_new_columns_gain_them_on_the_next_publish(spark, cfg, ctx):
    """Score tables of the previous release (no `because`, `events_last_7d`, `activity_ratio`) keep
    working: every command starts by creating the views on them, and the next publish adds the
    columns at the end, with their comments; the earlier date's rows read null there."""
    from ebbtide import catalog, tables
    from ebbtide.scoring import transform, views

    write_inputs(spark, cfg)
    prev, at = D - dt.timedelta(days=1), dt.datetime(2025, 3, 9, 1, tzinfo=dt.timezone.utc)
    tables.write(spark.createDataFrame([(prev, "u1", 1, "m5", 1.0, "tiny", 6, "r0", at)], OLD_RECS_DDL),
                 cfg, "gold_recommendations", "overwrite", partition_by=["score_date"])
    tables.write(spark.createDataFrame([(prev, "u1", 0.5, 0.4, 0.9, 3.0, 2.0, "low", [], "tiny", 6, "r0", at)],
                                       OLD_CHURN_DDL), cfg, "gold_churn_decay", "overwrite", partition_by=["score_date"])
    db = cfg.storage.database
    assert views.create_views(spark, db) == [f"{db}.latest_recommendations", f"{db}.latest_churn_decay"]

    out = score(ctx, cfg)
    assert f"{db}.explained_recommendations" in out["views"]
    recs = tables.read(spark, cfg, "gold_recommendations")
    churn = tables.read(spark, cfg, "gold_churn_decay")
    assert recs.columns == transform.RECS_COLUMNS and churn.columns == transform.CHURN_COLUMNS
    by_date = {(r.score_date, r.user_id): r for r in recs.where("rank = 1").collect()}
    assert by_date[(prev, "u1")].because is None and by_date[(prev, "u1")].item_id == "m5"
    assert by_date[(D, "u1")].because == []  # the tiny model cannot explain itself
    days = {(r.score_date, r.user_id): (r.events_last_7d, r.activity_ratio) for r in churn.collect()}
    assert days[(prev, "u1")] == (None, None)
    # u1: two events within the week, the whole window inside it; u2: one of three, 3 events over
    # the 8 days 15 hours since its first; u5: none.
    assert days[(D, "u1")] == (2, pytest.approx(1.0))
    assert days[(D, "u2")] == (1, pytest.approx(1 / (3 / ((8 + 15 / 24) / 7))))
    assert days[(D, "u5")] == (0, 0.0)
    for name in ("gold_recommendations", "gold_churn_decay"):
        desc = {r.col_name: r.comment for r in spark.sql(f"DESCRIBE TABLE {db}.{name}").collect()}
        for col in ("because",) if name == "gold_recommendations" else ("events_last_7d", "activity_ratio"):
            assert desc[col] == catalog.spec(name).column(col).comment
    assert spark.sql(f"SELECT count(*) FROM {db}.explained_recommendations WHERE score_date = '{prev}'").first()[0] == 1


def test_failing_quality_gate_publishes_nothing(spark, cfg, ctx):
    from ebbtide import tables
    from ebbtide.scoring.quality import QualityGateError

    write_inputs(spark, cfg)
    # No active user at all (stale input) stops the very first run: no table is created.
    with pytest.raises(QualityGateError, match="active_users"):
        score(ctx, cfg, date=dt.date(2026, 1, 1))
    assert not tables.exists(spark, cfg, "gold_recommendations")

    score(ctx, cfg)
    versions = {n: tables.version(spark, cfg, n) for n in ("gold_recommendations", "gold_churn_decay")}
    before = {n: partition(spark, cfg, n) for n in versions}
    # A model emitting "probabilities" above 1 rescoring D ...
    with pytest.raises(QualityGateError, match=r"probability_range\(p_return_30d\)"):
        score(ctx, cfg, uri="tiny://broken")
    # ... and a threshold that cannot be met, scoring the next day, stop the job the same way.
    nxt = D + dt.timedelta(days=1)
    with pytest.raises(QualityGateError, match="user_coverage"):
        score(ctx, with_score(cfg, quality={"min_user_coverage": 1.01}), date=nxt)
    for n in versions:
        assert tables.version(spark, cfg, n) == versions[n]
        assert partition(spark, cfg, n) == before[n]
        assert partition(spark, cfg, n, nxt) == []


def test_gate_catches_bad_rows(spark):
    """The checks themselves, on hand-made frames: NaN scores, duplicate ranks, nulls."""
    from ebbtide.config import load_config
    from ebbtide.scoring import quality

    q = load_config(env="local").section("score").quality
    recs = spark.createDataFrame(
        [(D, "a", 1, "x", float("nan"), "m", 1, "r", dt.datetime(2025, 3, 10)),
         (D, "a", 1, "y", 0.5, "m", 1, "r", dt.datetime(2025, 3, 10)),
         (D, "b", 1, None, 0.5, "m", 1, "r", dt.datetime(2025, 3, 10))],
        "score_date date, user_id string, rank int, item_id string, score double, model_name string, "
        "model_version int, run_id string, scored_at timestamp",
    )
    failed = {c.name for c in quality.check_recommendations(recs, 2, 3, q) if not c.ok}
    assert failed == {"score_finite", "unique_user_rank", "null_rate(item_id)"}
    good = recs.where("user_id = 'a' AND item_id = 'y'")
    assert all(c.ok for c in quality.check_recommendations(good, 1, 3, q))
