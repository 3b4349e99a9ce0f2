"""`make loop-demo` small: scripts/loop_demo.py replays 3 generated days through the nightly workflow
with a weekly retrain every 2 days, in the test run's Spark session; its JSON line carries every
field, and a day run again (or the whole loop run again) doubles no row of any table."""
from __future__ import annotations

import json
import pytest

from conftest import TINY, last_json, load_script

pytestmark = [pytest.mark.slow, pytest.mark.spark]

KEYS = ["bench", "days", "retrains", "promotions", "monitor_rows", "explained_share", "hit_at_10_by_day",
        "popular_hit_at_10_by_day", "seconds"]
TABLES = ["bronze_events", "silver_events", "silver_sessions", "gold_item_vocab", "gold_recommendations",
          "gold_churn_decay", "ops_monitoring"]


def test_loop_demo_small_and_rerunnable(tmp_path, spark, capsys):
    from ebbtide import tables
    from ebbtide.config import load_config

    loop = load_script("scripts/loop_demo.py", "loop_demo")
    root = tmp_path / "loop"
    database = f"loop_{abs(hash(tmp_path)) % 10**8}"
    argv = ["--root", str(root), "--days", "3", "--history-days", "14", "--users", "150", "--retrain-every", "2",
            "--epochs", "1", "--warm-epochs", "1", "--no-check",
            *[a for kv in (*TINY, f"storage.database={database}") for a in ("--set", kv)]]
    assert loop.main(argv) == 0
    out = last_json(capsys.readouterr().out)
    assert list(out) == KEYS and out["bench"] == "loop"
    assert (out["days"], out["retrains"]) == (3, 1)  # the weekly workflow after day 2
    assert out["promotions"] in (0, 1)
    assert len(out["hit_at_10_by_day"]) == len(out["popular_hit_at_10_by_day"]) == 3
    assert all(v is None or 0.0 <= v <= 1.0 for v in out["hit_at_10_by_day"] + out["popular_hit_at_10_by_day"])
    assert out["explained_share"] == 1.0  # every served row says why
    assert out["seconds"] > 0

    cfg = load_config(env="local", overrides=[f"storage.root={root}", f"storage.database={database}"])
    sizes = {t: tables.read(spark, cfg, t).count() for t in TABLES}
    assert out["monitor_rows"] == sizes["ops_monitoring"] > 0
    assert sizes["bronze_events"] == sizes["silver_events"] > 0
    # The monitored days hold both hit rates, the served table's and the most-popular table's.
    metrics = {r["metric"] for r in tables.read(spark, cfg, "ops_monitoring").select("metric").distinct().collect()}
    assert {"outcomes.hit_rate@10", "outcomes.popular_hit_rate@10"} <= metrics
    state = json.loads((root / loop.STATE_FILE).read_text())["steps"]
    assert "day02.weekly.train" in state and "day03.weekly.train" not in state

    # Day 3's nightly workflow again: every stage runs, no table grows.
    assert loop.main(argv + ["--rerun-day", "3"]) == 0
    again = last_json(capsys.readouterr().out)
    assert {t: tables.read(spark, cfg, t).count() for t in TABLES} == sizes
    assert {k: again[k] for k in KEYS if k != "seconds"} == {k: out[k] for k in KEYS if k != "seconds"}

    # The whole loop again without --fresh: everything is recorded as done, nothing runs twice.
    assert loop.main(argv) == 0
    assert last_json(capsys.readouterr().out)["retrains"] == 1
    assert {t: tables.read(spark, cfg, t).count() for t in TABLES} == sizes
