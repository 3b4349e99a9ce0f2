"""`ebbtide monitor` on small real Delta tables: every section's values by hand, a rerun that
replaces the day's rows instead of adding more, the report files, and --fail-on-alert."""
from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
import os

import pytest

pytestmark = pytest.mark.spark

D = dt.date(2025, 3, 10)

# (user, item, event_type, ts). The training snapshot's train split ends 2025-03-01 (valid_start);
# with reference_days 28 the drift reference is February.
EVENTS = [
    # February (the reference): gaps 1800 s, 2 d (u1), 600 s (u2); types 4 view, 1 click
    ("u1", "m0", "view", "2025-02-10T10:00:00"),
    ("u1", "m1", "view", "2025-02-10T10:30:00"),
    ("u1", "m2", "click", "2025-02-12T10:30:00"),
    ("u2", "m5", "view", "2025-02-20T08:00:00"),
    ("u2", "m6", "view", "2025-02-20T08:10:00"),
    # March before D
    ("u2", "m7", "view", "2025-03-05T20:00:00"),
    ("u1", "m1", "view", "2025-03-09T12:00:00"),
    # D: gaps 21 h and 1200 s (u1), ~5 d (u2), none (u6 is new); items m4, m9, m10 are new
    ("u1", "m2", "view", "2025-03-10T09:00:00"),
    ("u1", "m4", "click", "2025-03-10T09:20:00"),
    ("u2", "m9", "view", "2025-03-10T18:00:00"),
    ("u6", "m10", "view", "2025-03-10T05:00:00"),
    # after D: never part of D's metrics
    ("u3", "m3", "view", "2025-03-11T00:00:00"),
]

# (user, rank, item, score); the same rows are published for D-1 (so the score PSI is 0).
RECS = [
    ("u1", 1, "m4", 3.0), ("u1", 2, "m3", 2.0), ("u1", 3, "m2", 1.0),   # D's items of u1: m2, m4
    ("u2", 1, "m3", 2.5), ("u2", 2, "m8", 0.5), ("u2", 3, "m0", -1.0),  # u2's day: m9, no hit
    ("u5", 1, "m3", 1.5), ("u5", 2, "m4", 1.0), ("u5", 3, "m8", 0.0),   # u5 has no event on D
]

# (score_date, user, p_return_7d, p_return_30d, churn_risk)
CHURN = [
    (D, "u1", 0.9, 0.95, "low"), (D, "u2", 0.4, 0.5, "medium"), (D, "u5", 0.1, 0.2, "high"),
    (D - dt.timedelta(days=1), "u1", 0.9, 0.95, "low"), (D - dt.timedelta(days=1), "u2", 0.6, 0.7, "low"),
    (D - dt.timedelta(days=1), "u5", 0.1, 0.2, "high"),
    # score date D-6 = 2025-03-04: its 7-day horizon [03-04, 03-11) ends with D; u1 and u2 came back
    (dt.date(2025, 3, 4), "u1", 0.9, 0.95, "low"), (dt.date(2025, 3, 4), "u2", 0.4, 0.6, "medium"),
    (dt.date(2025, 3, 4), "u3", 0.2, 0.3, "high"), (dt.date(2025, 3, 4), "u5", 0.15, 0.25, "high"),
]


def _ts(s: str) -> dt.datetime:
    return dt.datetime.fromisoformat(s).replace(tzinfo=dt.timezone.utc)


def write_tables(spark, cfg) -> None:
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    from ebbtide import tables

    ev = spark.createDataFrame([(f"e{i}", u, it, t, _ts(ts)) for i, (u, it, t, ts) in enumerate(EVENTS)],
                               "event_id string, user_id string, item_id string, event_type string, ts timestamp")
    w = Window.partitionBy("user_id").orderBy("ts", "event_id")
    ev = (ev.withColumn("event_date", F.to_date("ts"))
          .withColumn("gap_s", F.unix_micros("ts") / 1e6 - F.unix_micros(F.lag("ts").over(w)) / 1e6)
          .withColumn("event_seq", F.row_number().over(w) - 1))
    tables.write(ev, cfg, "silver_events", "overwrite", partition_by=["event_date"])

    tables.write(spark.createDataFrame([("u1#0", "train")], "example_id string, split string"), cfg,
                 "gold_training_examples", "overwrite",
                 properties={"ebbtide.split.valid_start": "2025-03-01T00:00:00Z",
                             "ebbtide.split.test_start": "2025-03-05T00:00:00Z",
                             "ebbtide.split.end": "2025-03-10T18:00:00Z"})
    vocab = [(f"m{j}", j + 2, "c", _ts("2025-01-01T00:00:00")) for j in range(10)]
    vocab.append(("m10", 12, "c", _ts("2025-03-10T05:00:00")))  # first seen on D: not in D's catalogue
    tables.write(spark.createDataFrame(vocab, "item_id string, item_index int, category string, first_seen timestamp"),
                 cfg, "gold_item_vocab", "overwrite")

    at = _ts("2025-03-10T00:05:00")
    recs = [(day, u, r, it, s, "tiny", 7, "r", at) for day in (D, D - dt.timedelta(days=1)) for u, r, it, s in RECS]
    tables.write(spark.createDataFrame(recs, "score_date date, user_id string, rank int, item_id string, score double, "
                                             "model_name string, model_version int, run_id string, scored_at timestamp"),
                 cfg, "gold_recommendations", "overwrite", partition_by=["score_date"])
    tables.write(spark.createDataFrame(CHURN, "score_date date, user_id string, p_return_7d double, "
                                              "p_return_30d double, churn_risk string"),
                 cfg, "gold_churn_decay", "overwrite", partition_by=["score_date"])


def with_monitor(cfg, **changes):
    mc = dataclasses.replace(cfg.section("monitor"), **changes)
    return dataclasses.replace(cfg, extra={**cfg.extra, "monitor": mc})


def rows_of(spark, cfg, day=D) -> dict:
    from ebbtide import tables

    df = tables.read(spark, cfg, "ops_monitoring").where(f"monitor_date = '{day}'")
    return {r["metric"]: r.asDict() for r in df.collect()}


def test_monitor_values_rerun_report_and_fail_on_alert(spark, cfg, capfd):
    from ebbtide import catalog, tables
    from ebbtide.cli import Context, main, run_stage
    from ebbtide.monitor import metrics as M
    from spec_check import assert_matches_spec

    write_tables(spark, cfg)
    mcfg = with_monitor(cfg, gap_edges_s=[3600.0])  # two gap bins: < 1 h, >= 1 h
    out = run_stage("monitor", ["--date", D.isoformat()], Context(mcfg, run_id="first", _spark=spark))
    rows = rows_of(spark, cfg)
    n = len(rows)
    assert n == out["rows"] == 36
    assert_matches_spec(spark, cfg, "ops_monitoring")
    v = {k: r["value"] for k, r in rows.items()}
    status = {k: r["status"] for k, r in rows.items()}

    # inputs: 4 events of 3 users (u6 new), 4 items (m4, m9, m10 new)
    assert (v["inputs.events"], v["inputs.active_users"]) == (4.0, 3.0)
    assert v["inputs.new_user_share"] == pytest.approx(1 / 3) and v["inputs.new_item_share"] == pytest.approx(0.75)
    # drift: gaps < 1 h / >= 1 h are 2/3, 1/3 in February and 1/3, 2/3 on D -> PSI = 2/3 ln 2
    assert v["drift.gap_psi"] == pytest.approx(2 / 3 * math.log(2)) and status["drift.gap_psi"] == "alert"
    detail = json.loads(rows["drift.gap_psi"]["detail"])
    assert detail["labels"] == ["< 1h", ">= 1h"] and detail["reference_n"] == 3 and detail["n"] == 3
    assert "2025-02-01T00:00:00Z .. 2025-03-01T00:00:00Z" in detail["reference_window"]
    # event types: view / click 0.8 / 0.2 -> 0.75 / 0.25
    expected = (0.75 - 0.8) * math.log(0.75 / 0.8) + (0.25 - 0.2) * math.log(0.25 / 0.2)
    assert v["drift.event_type_psi"] == pytest.approx(expected) and status["drift.event_type_psi"] == "ok"
    # outputs: 9 scores of 3 users, identical to D-1's; tiers 1/3 each, D-1 had medium 0, low 2/3
    assert (v["outputs.recommended_users"], v["outputs.recommendation_rows"]) == (3.0, 9.0)
    assert v["outputs.score_mean"] == pytest.approx(10.5 / 9) and v["outputs.score_p50"] == 1.0
    assert v["outputs.score_psi"] == pytest.approx(0.0) and status["outputs.score_psi"] == "ok"
    for t in ("high", "medium", "low"):
        assert v[f"outputs.churn_share.{t}"] == pytest.approx(1 / 3)
    assert v["outputs.churn_share_change.high"] == pytest.approx(0.0)
    assert v["outputs.churn_share_change.medium"] == pytest.approx(1 / 3)
    assert v["outputs.churn_share_change.low"] == pytest.approx(-1 / 3)
    assert status["outputs.churn_share_change.low"] == "alert" and rows["outputs.churn_share_change.low"]["bound"] == "abs"
    # outcomes: u1 and u2 were served and came back; u1 hits ranks 1 and 3 of its 2 items, u2 none
    ndcg_u1 = (1 + 1 / math.log2(4)) / (1 + 1 / math.log2(3))
    assert ndcg_u1 == pytest.approx(M.served_ranking([1, 3], 2, 10)[1])
    assert v["outcomes.users"] == 2.0 and v["outcomes.hit_rate@10"] == pytest.approx(0.5)
    assert v["outcomes.ndcg@10"] == pytest.approx(ndcg_u1 / 2)
    assert v["outcomes.coverage@10"] == pytest.approx(5 / 10)  # m0 m2 m3 m4 m8 of m0..m9 (m10 is newer)
    # the most-popular table served to the same users: popularity before D is m1 (2 events), then
    # m0 m2 m5 m6 m7 (1), then m3 m4 m8 m9 (0), ties by item id; each user's consumed items are left out.
    # u1 (consumed m0 m1 m2) gets m5 m6 m7 m3 m4 ...: m4 at rank 5; u2 (m5 m6 m7) m1 m0 m2 m3 m4 m8 m9: m9 at 7.
    assert v["outcomes.popular_hit_rate@10"] == pytest.approx(1.0)
    pop_u1 = (1 / math.log2(6)) / (1 + 1 / math.log2(3))
    assert v["outcomes.popular_ndcg@10"] == pytest.approx((pop_u1 + 1 / math.log2(8)) / 2)
    assert rows["outcomes.popular_hit_rate@10"]["bound"] is None
    # calibration of score date 2025-03-04 (p_return_7d 0.9, 0.4, 0.2, 0.15; u1, u2 came back)
    p = "calibration.p_return_7d"
    assert v[f"{p}.users"] == 4.0 and v[f"{p}.base_rate"] == pytest.approx(0.5)
    assert v[f"{p}.brier"] == pytest.approx((0.01 + 0.36 + 0.04 + 0.0225) / 4) and status[f"{p}.brier"] == "ok"
    assert v[f"{p}.ece"] == pytest.approx((0.1 + 0.6 + 0.2 + 0.15) / 4) and status[f"{p}.ece"] == "alert"
    assert {k: v[k] for k in v if k.startswith(f"{p}.bin_")} == {
        f"{p}.bin_01": 0.0, f"{p}.bin_02": 0.0, f"{p}.bin_04": 1.0, f"{p}.bin_09": 1.0}
    assert "2025-03-04" in rows[f"{p}.brier"]["subject"]
    assert not any(k.startswith("calibration.p_return_30d") for k in v)  # score date 2025-02-09 not scored
    assert any("p_return_30d" in note for note in out["not_measured"])
    assert out["alert"] == 4 and out["warn"] == 0 and out["ok"] == 32
    assert {r["run_id"] for r in rows.values()} == {"first"}

    # the report
    folder = os.path.join(cfg.path(mcfg.section("monitor").report_dir), D.isoformat())
    assert out["report"] == os.path.join(folder, "report.md")
    for f in ("report.md", "drift.png", "hit_rate.png", "calibration.png"):
        assert os.path.getsize(os.path.join(folder, f)) > 0, f
    text = open(out["report"]).read()
    assert "drift.gap_psi = 0.4621 > monitor.thresholds.gap_psi.alert 0.25" in text and "![Drift](drift.png)" in text
    assert "### Reliability: p_return_7d (score date 2025-03-04)" in text and "| 0.90-1.00 | 1 | 0.9000 | 1.0000 |" in text

    # A rerun replaces the day's rows: no duplicate, a row the run no longer produces goes,
    # another day's rows stay.
    at = dt.datetime(2025, 3, 9, tzinfo=dt.timezone.utc)
    stale = spark.createDataFrame(
        [(D, "old.metric", 1.0, "ok", None, None, None, "", "{}", "old", at),
         (D - dt.timedelta(days=1), "inputs.events", 7.0, "ok", "lower", None, 1.0, "", "{}", "old", at)],
        catalog.OPS_MONITORING.schema_ddl())
    tables.write(stale, cfg, "ops_monitoring", "merge", keys=["monitor_date", "metric"])
    assert len(rows_of(spark, cfg)) == n + 1
    run_stage("monitor", ["--date", D.isoformat()], Context(mcfg, run_id="second", _spark=spark))
    again = rows_of(spark, cfg)
    assert set(again) == set(rows) and {r["run_id"] for r in again.values()} == {"second"}
    assert {k: r["value"] for k, r in again.items()} == pytest.approx(v)
    assert tables.read(spark, cfg, "ops_monitoring").count() == n + 1
    assert rows_of(spark, cfg, D - dt.timedelta(days=1))["inputs.events"]["value"] == 7.0

    # --fail-on-alert through the console entry point: rows and report written, then exit 1 with one
    # line naming the first alert and its threshold.
    capfd.readouterr()
    status_code = main(["monitor", "--date", D.isoformat(), "--fail-on-alert",
                        "--set", f"storage.root={cfg.storage.root}", "--set", f"storage.database={cfg.storage.database}",
                        "--set", "monitor.gap_edges_s=[3600]"])
    std_out, err = capfd.readouterr()
    assert status_code == 1 and std_out == "" and "Traceback" not in err
    line = err.rstrip("\n").split("\n")[-1]
    assert line.startswith("ebbtide monitor: error: monitor alert for 2025-03-10: "
                           "drift.gap_psi = 0.4621 > monitor.thresholds.gap_psi.alert 0.25 (and 3 more: "), line
    assert tables.read(spark, cfg, "ops_monitoring").count() == n + 1
