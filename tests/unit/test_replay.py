"""ebbtide.replay without Spark: generated day files (warm-up left out, days cut to a size, time order
kept), landing a day, and the step state that a rerun resumes from."""
from __future__ import annotations

import dataclasses
import datetime as dt
import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from ebbtide import replay
from ebbtide.config import load_config


def _conf(**kw):
    return dataclasses.replace(load_config(env="local").synth, users=300, days=6, seed=3, bad_rows=0.0, **kw)


def test_generate_days_whole_window(tmp_path):
    gen = replay.generate_days(_conf(), tmp_path)
    files = sorted(tmp_path.glob("events-*.parquet"))
    assert gen["files"] == len(files) == len(gen["day_events"]) and gen["start"] == "2025-01-01"
    assert gen["events"] == sum(gen["day_events"]) == sum(pq.read_metadata(f).num_rows for f in files)
    for f in files:  # one UTC day per file
        ts = pq.read_table(f, columns=["ts"]).column(0).to_numpy()
        day = dt.date.fromisoformat(f.stem.removeprefix("events-"))
        assert (ts // replay.DAY_MS == (day - replay.EPOCH).days).all()


def test_generate_days_skips_the_warm_up_and_cuts_each_day(tmp_path):
    whole = replay.generate_days(_conf(), tmp_path / "whole")
    per_day = min(whole["day_events"][2:])
    gen = replay.generate_days(_conf(), tmp_path / "cut", skip_days=2, per_day=per_day)
    assert gen["start"] == "2025-01-03" and gen["files"] == 4
    assert gen["day_events"] == [per_day] * 4
    for f in sorted((tmp_path / "cut").glob("*.parquet")):
        t = pq.read_table(f)
        full = pq.read_table(tmp_path / "whole" / f.name)
        assert set(t.column("event_id").to_pylist()) <= set(full.column("event_id").to_pylist())
        assert (np.diff(t.column("ts").to_numpy()) >= 0).all()  # still in time order
    again = replay.generate_days(_conf(), tmp_path / "again", skip_days=2, per_day=per_day)
    assert again == gen  # seeded


def test_land_copies_once(tmp_path):
    day = dt.date(2025, 1, 2)
    days_dir, raw = tmp_path / "days", tmp_path / "raw"
    days_dir.mkdir()
    replay.day_file(days_dir, day).write_bytes(b"x")
    assert replay.land(days_dir, raw, day) == 1 and replay.land(days_dir, raw, day) == 1
    assert [p.name for p in raw.iterdir()] == ["events-2025-01-02.parquet"]
    assert replay.land(days_dir, raw, dt.date(2025, 1, 3)) == 0  # a day without events has no file


def test_state_resumes_and_refuses_another_identity(tmp_path):
    path = tmp_path / "state.json"
    state = replay.State(path, {"days": 3}, "prog.py")
    calls = []
    assert state.once("a", lambda: calls.append(1) or {"n": 1}) == {"n": 1}
    assert replay.State(path, {"days": 3}, "prog.py").once("a", lambda: calls.append(2) or {"n": 2}) == {"n": 1}
    assert calls == [1]
    assert json.loads(path.read_text())["steps"] == {"a": {"n": 1}}
    with pytest.raises(SystemExit, match="prog.py: .* --fresh"):
        replay.State(path, {"days": 4}, "prog.py")
