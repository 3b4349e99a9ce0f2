"""`make bench-scale` small: bench/bench_scale.py replays 2 generated days of 2,000 events through the
nightly workflow in the test run's Spark session; its JSON line carries every field and a file count
for every table, and a rerun without --fresh resumes: it runs no night again and writes no table."""
from __future__ import annotations

import pytest

from conftest import TINY, last_json, load_script

pytestmark = [pytest.mark.slow, pytest.mark.spark]

KEYS = ["bench", "days", "events", "first_day_s", "last_day_s", "growth", "files", "first_day_cpu_s",
        "last_day_cpu_s", "cpu_growth", "stage_growth", "load_avg"]


def test_bench_scale_small_and_resumable(tmp_path, spark, capsys):
    from ebbtide import tables
    from ebbtide.config import load_config

    bench = load_script("bench/bench_scale.py", "bench_scale")
    root = tmp_path / "scale"
    database = f"scale_{abs(hash(tmp_path)) % 10**8}"
    settings = (*TINY, "train.max_steps_per_epoch=5", f"storage.database={database}")
    argv = ["--root", str(root), "--days", "2", "--events-per-day", "2000", "--warmup-days", "3", "--history-days",
            "1", "--epochs", "1", "--no-check", *[a for kv in settings for a in ("--set", kv)]]
    assert bench.main(argv) == 0
    text = capsys.readouterr().out
    out = last_json(text)
    assert list(out) == KEYS and out["bench"] == "scale"
    assert out["days"] == 2
    assert out["events"] == 2 * 2000  # every day is cut to --events-per-day
    assert out["first_day_s"] > 0 and out["last_day_s"] > 0
    assert out["growth"] == pytest.approx(out["last_day_s"] / out["first_day_s"], abs=1e-3)
    assert set(out["stage_growth"]) == set(bench.NIGHT)
    assert set(out["files"]) == set(bench.TABLES) and all(n > 0 for n in out["files"].values()), out["files"]
    assert len(out["load_avg"]) == 6
    lines = [ln for ln in text.splitlines() if ln.startswith("day ")]
    assert len(lines) == 2 and not any("(recorded)" in ln for ln in lines)

    cfg = load_config(env="local", overrides=[f"storage.root={root}", f"storage.database={database}"])
    # The files come from Delta's current snapshots, as tables.num_files reads them.
    assert out["files"]["bronze_events"] == tables.num_files(spark, cfg, "bronze_events")
    versions = {t: tables.version(spark, cfg, t) for t in bench.TABLES}
    state = (root / bench.STATE_FILE).read_text()

    # Again without --fresh: every night is recorded, nothing runs, no table gets a commit.
    assert bench.main(argv) == 0
    text = capsys.readouterr().out
    again = last_json(text)
    lines = [ln for ln in text.splitlines() if ln.startswith("day ")]
    assert len(lines) == 2 and all(ln.endswith("(recorded)") for ln in lines)
    assert {k: again[k] for k in KEYS if k != "load_avg"} == {k: out[k] for k in KEYS if k != "load_avg"}
    assert {t: tables.version(spark, cfg, t) for t in bench.TABLES} == versions
    assert (root / bench.STATE_FILE).read_text() == state
