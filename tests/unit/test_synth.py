"""The synthetic generator: deterministic, the requested size, and the planted truth really in the data."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pandas as pd
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from scipy.stats import spearmanr

from ebbtide.config import ConfigError, SynthConf
from ebbtide.synth import (
    BAD_KINDS, draw_return_days, generate, p_return_within, return_survival, write,
)

DAY_MS = 86_400_000


def small(**kw) -> SynthConf:
    base = dict(users=3000, items=400, categories=16, events_per_user=40.0, days=120, seed=11, files=2)
    base.update(kw)
    return SynthConf(**base)


@pytest.fixture(scope="module")
def world():
    conf = small()
    res = generate(conf)
    ev = res.events.to_pandas().sort_values(["user_id", "ts", "event_id"], ignore_index=True)
    ev["gap_s"] = ev.groupby("user_id")["ts"].diff() / 1000.0
    return conf, res, ev


def test_same_seed_same_data_other_seed_other_data():
    a, b = generate(small(users=400)), generate(small(users=400))
    assert a.events.equals(b.events)
    pd.testing.assert_frame_equal(a.users, b.users)
    pd.testing.assert_frame_equal(a.items, b.items)
    c = generate(small(users=400, seed=12))
    assert not c.events.equals(a.events)


@pytest.mark.parametrize("fmt", ["csv", "json"])
def test_written_files_are_byte_identical_across_runs(tmp_path, fmt):
    conf = small(users=300, format=fmt, bad_rows=0.03)
    res = generate(conf)
    write(res, tmp_path / "a", conf)
    write(generate(conf), tmp_path / "b", conf)
    ext = {"csv": "csv", "json": "jsonl"}[fmt]
    for part in range(conf.files):
        name = f"raw/part-{part:05d}.{ext}"
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    # A rerun into the same folder replaces the files instead of adding to them.
    write(res, tmp_path / "a", dataclasses.replace(conf, files=1))
    assert sorted(p.name for p in (tmp_path / "a" / "raw").iterdir()) == [f"part-00000.{ext}"]


def test_counts_and_truth_agree_with_the_events(world):
    conf, res, ev = world
    n = len(ev)
    assert abs(n / (conf.users * conf.events_per_user) - 1) < 0.15, n
    assert ev["event_id"].is_unique
    assert set(ev.columns) >= {"user_id", "item_id", "ts", "event_type", "event_id", "value", "category"}
    per_user = ev.groupby("user_id").agg(n=("ts", "size"), first=("ts", "min"), last=("ts", "max"))
    truth = res.users.set_index("user_id")
    assert len(truth) == conf.users and per_user.index.equals(truth.index)  # every user has events
    assert (per_user["n"] == truth["n_events"]).all()
    assert (per_user["last"] == truth["last_ts"].astype("int64") // 10**6).all()
    assert (per_user["first"] == truth["first_ts"].astype("int64") // 10**6).all()
    assert (truth["n_sessions"] >= 1).all() and (truth["n_sessions"] <= truth["n_events"]).all()
    start, end = res.meta["end_ms"] - conf.days * DAY_MS, res.meta["end_ms"]
    assert ev["ts"].min() >= start and ev["ts"].max() < end
    # Items carry their own category; the event's category matches it.
    cat_of = res.items.set_index("item_id")["category"]
    assert (cat_of.reindex(ev["item_id"]).to_numpy() == ev["category"].to_numpy()).all()
    # The funnel narrows: views > clicks > carts > purchases.
    share = ev["event_type"].value_counts()
    assert share["view"] > share["click"] > share["cart"] > share["purchase"] > 0


def test_half_life_shows_in_return_gaps(world):
    _, res, ev = world
    returns = ev[ev["gap_s"] > 30 * 60]
    med = returns.groupby("user_id")["gap_s"].median().rename("median_gap_s")
    j = res.users.set_index("user_id").join(med, how="inner")
    j = j[j["n_sessions"] >= 3]
    rho = spearmanr(j["interest_half_life_days"], j["median_gap_s"]).statistic
    assert len(j) > 500 and rho > 0.5, rho


def test_churn_truth(world):
    conf, res, ev = world
    u = res.users
    last_event_age_days = (res.meta["end_ms"] - u["last_ts"].astype("int64") // 10**6) / DAY_MS
    assert ((last_event_age_days > conf.churn_days) == u["churned"]).all()
    churned = set(u.loc[u["churned"], "user_id"])
    recent = ev[ev["ts"] >= res.meta["end_ms"] - conf.churn_days * DAY_MS]
    assert churned and not (set(recent["user_id"]) & churned)
    assert 0.05 < u["churned"].mean() < 0.95
    assert (u["p_return_30d"] >= u["p_return_7d"]).all()
    assert u.loc[u["churned"], "p_return_30d"].mean() < u.loc[~u["churned"], "p_return_30d"].mean()


def test_p_return_matches_the_simulated_future(world):
    """The truth's P(return within 7 / 30 days) is calibrated against what the simulation did next."""
    _, res, _ = world
    u = res.users
    wait_days = (u["next_event_ts"].astype("int64") // 10**6 - res.meta["end_ms"]) / DAY_MS
    for days, col in ((7, "p_return_7d"), (30, "p_return_30d")):
        actual = (u["next_event_ts"].notna() & (wait_days <= days)).mean()
        assert abs(u[col].mean() - actual) < 0.03, (col, u[col].mean(), actual)


def test_return_time_sampler_matches_its_survival():
    rng = np.random.default_rng(0)
    m, h = 2.0, 5.0
    e = draw_return_days(rng.random(200_000), m, h)
    assert abs(np.isinf(e).mean() - np.exp(-m)) < 0.005
    for x in (0.5, 2.0, 10.0, 40.0):
        assert abs((e > x).mean() - return_survival(x, m, h)) < 0.005
    # The hazard halves every h days: P(return in the next week) falls with time already waited.
    p = p_return_within(7.0, np.array([0.0, 5.0, 10.0]), m, h)
    assert p[0] > p[1] > p[2] > 0


def test_interest_fades_with_the_half_life(world):
    """A return soon after (in half-lives) keeps the last category more often than a late return."""
    _, res, ev = world
    ev = ev.copy()
    ev["prev_cat"] = ev.groupby("user_id")["category"].shift()
    starts = ev[ev["gap_s"] > 30 * 60].join(res.users.set_index("user_id")["interest_half_life_days"], on="user_id")
    ratio = starts["gap_s"] / 86400.0 / starts["interest_half_life_days"]
    same = starts["category"] == starts["prev_cat"]
    soon, late = same[ratio < 0.25].mean(), same[ratio > 2.0].mean()
    assert soon > late + 0.08, (soon, late)


def _successor_rate(res) -> float:
    ev = res.events.to_pandas().sort_values(["user_id", "ts", "event_id"])
    nxt = ev.groupby("user_id")["item_id"].shift(-1)
    moved = nxt.notna() & (nxt != ev["item_id"])
    succ = res.items.set_index("item_id")["successor_item_id"].reindex(ev["item_id"]).to_numpy()
    return float((succ[moved.to_numpy()] == nxt[moved].to_numpy()).mean())


def test_sequential_pattern_beats_chance(world):
    conf, res, _ = world
    rate = _successor_rate(res)
    control = _successor_rate(generate(small(users=1000, successor_prob=0.0)))
    chance = conf.categories / conf.items  # one item out of a category's ~25
    assert control < 2 * chance, control
    assert rate > 0.12 and rate > 4 * control, (rate, control)


@pytest.mark.parametrize("fmt", ["parquet", "csv", "json"])
def test_bad_rows_fraction_and_kinds(tmp_path, fmt):
    frac = 0.05
    conf = small(users=600, format=fmt, bad_rows=frac)
    res = generate(conf)
    summary = write(res, tmp_path, conf)
    truth_bad = pd.read_parquet(tmp_path / "truth" / "bad_rows.parquet")
    assert set(truth_bad["kind"]) == set(BAD_KINDS[fmt])
    assert summary["rows_written"] == len(res.events) + len(truth_bad)
    ext = {"parquet": "parquet", "csv": "csv", "json": "jsonl"}[fmt]
    files = sorted((tmp_path / "raw").glob(f"part-*.{ext}"))
    assert len(files) == conf.files
    if fmt == "parquet":
        df = pd.concat([pq.read_table(f).to_pandas() for f in files], ignore_index=True)
        malformed = 0
    elif fmt == "csv":
        df = pd.concat([pacsv.read_csv(f, convert_options=pacsv.ConvertOptions(
            column_types={c: "string" for c in res.events.column_names}, strings_can_be_null=True,
        )).to_pandas() for f in files])
        malformed = 0
    else:
        rows, malformed = [], 0
        for f in files:
            for line in f.read_text().splitlines():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    malformed += 1
        df = pd.DataFrame(rows)
    assert len(df) + malformed == summary["rows_written"]
    is_bad = df["event_id"].str.contains("-bad")
    assert abs((is_bad.sum() + malformed) / summary["rows_written"] - frac) < 0.003
    # The good rows are exactly the generated events, untouched.
    good = df[~is_bad]
    assert len(good) == len(res.events)
    assert good["user_id"].notna().all() and good["item_id"].notna().all()
    ts = pd.to_datetime(good["ts"], format="ISO8601", utc=True).astype("int64") // 10**6 if fmt == "json" \
        else good["ts"].astype("int64")
    assert (ts.to_numpy() == res.events["ts"].to_numpy()).all()
    # Each bad row breaks the contract the way its kind says.
    bad = df[is_bad].merge(truth_bad, on="event_id")
    assert len(bad) == len(truth_bad) - (truth_bad["kind"] == "malformed json").sum()
    assert bad.loc[bad["kind"] == "missing user_id", "user_id"].isna().all()
    assert bad.loc[bad["kind"] == "missing item_id", "item_id"].isna().all()
    if fmt != "parquet":
        assert (bad.loc[bad["kind"] == "unparsable ts", "ts"] == "not-a-timestamp").all()
        assert (bad.loc[bad["kind"] == "bad value type", "value"] == "abc").all()


def test_json_ts_is_iso_with_offset_and_parquet_is_epoch_ms(tmp_path):
    conf = small(users=200, format="json", files=1)
    res = generate(conf)
    write(res, tmp_path, conf)
    first = json.loads((tmp_path / "raw" / "part-00000.jsonl").open().readline())
    assert first["ts"][10] == "T" and first["ts"][-6] in "+-" and first["ts"][-3] == ":"
    offsets = pd.read_parquet(tmp_path / "truth" / "users.parquet")["tz_offset_minutes"]
    assert offsets.nunique() > 3  # several home zones, so parsers meet several offsets
    assert str(res.events.schema.field("ts").type) == "int64"
    assert res.events["ts"].to_numpy().min() > 10**12  # milliseconds, not seconds


def test_cli_writes_raw_and_truth(tmp_path, capsys):
    from ebbtide.cli import main

    out = tmp_path / "synth"
    rc = main(["synth", "--out", str(out), "--users", "150", "--events-per-user", "20", "--format", "csv",
               "--files", "3", "--seed", "5", "--set", "synth.days=60"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["users"] == 150 and summary["events"] > 0 and summary["format"] == "csv"
    assert len(list((out / "raw").glob("part-*.csv"))) == 3
    for name in ("users", "items", "user_categories", "bad_rows"):
        assert (out / "truth" / f"{name}.parquet").exists()
    meta = json.loads((out / "truth" / "meta.json").read_text())
    assert meta["conf"]["days"] == 60 and meta["conf"]["seed"] == 5


def test_bad_settings_fail_with_the_key_named():
    with pytest.raises(ConfigError, match="synth.bad_rows"):
        generate(small(bad_rows=1.5))
    with pytest.raises(ConfigError, match="synth.items"):
        generate(small(items=3, categories=16))
