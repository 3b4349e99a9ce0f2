"""Sessionize on real local Spark + Delta: edges of the gap rule, ties, late events, reruns."""
from __future__ import annotations

import argparse
import datetime as dt

import pytest

from ebbtide import catalog, sessionize, tables
from spec_check import assert_matches_spec

BRONZE_SCHEMA = catalog.BRONZE_EVENTS.schema_ddl()


def _ts(s: str) -> dt.datetime:
    """ISO-8601 with offset -> naive UTC (the session runs in UTC)."""
    t = dt.datetime.fromisoformat(s.replace("Z", "+00:00"))
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.timezone.utc)
    return t.astimezone(dt.timezone.utc).replace(tzinfo=None)




def bronze_rows(events, run="r1"):
    """events: (event_id, user_id, iso ts[, event_type[, item_id]]) -> bronze-shaped tuples."""
    out = []
    for e in events:
        eid, uid, iso = e[:3]
        etype = e[3] if len(e) > 3 else "view"
        item = e[4] if len(e) > 4 else f"i-{eid}"
        ts = _ts(iso)
        out.append((eid, uid, item, etype, ts, ts.date(), None, None, None, {}, "f.jsonl", run, ts))
    return out


def bronze_df(spark, events, run="r1"):
    return spark.createDataFrame(bronze_rows(events, run), BRONZE_SCHEMA)


def append_bronze(spark, cfg, events, run="r1"):
    tables.write(bronze_df(spark, events, run), cfg, "bronze_events", "append", partition_by=["event_date"])


def args(**kw):
    return argparse.Namespace(**{"gap_minutes": None, "full": False, **kw})


def by_event(df):
    return {r["event_id"]: r for r in df.collect()}


# ---------------------------------------------------------------- pure transform edges


def test_gap_exactly_at_threshold_stays_in_session(spark):
    ev = bronze_df(spark, [
        ("a", "u1", "2025-03-01T10:00:00Z"),
        ("b", "u1", "2025-03-01T10:30:00Z"),          # exactly 30 min: same session
        ("c", "u1", "2025-03-01T11:00:00.000001Z"),   # 30 min + 1 us: new session
    ])
    r = by_event(sessionize.sessionize_events(ev, 30))
    assert [r[k]["session_index"] for k in "abc"] == [0, 0, 1]
    assert [r[k]["is_session_start"] for k in "abc"] == [True, False, True]
    assert r["a"]["gap_s"] is None and r["b"]["gap_s"] == 1800.0
    assert r["c"]["gap_s"] == pytest.approx(1800.000001)
    assert r["c"]["session_id"] == "u1#1"
    assert "extra" not in sessionize.sessionize_events(ev, 30).columns


def test_equal_timestamps_break_ties_by_event_id(spark):
    # Same instant, ids given out of order; the earlier session must not depend on input order.
    evs = [
        ("e3", "u1", "2025-03-01T10:00:00Z"),
        ("e1", "u1", "2025-03-01T10:00:00Z"),
        ("e2", "u1", "2025-03-01T10:00:00Z"),
        ("e0", "u1", "2025-03-01T09:00:00Z"),
    ]
    for order in (evs, list(reversed(evs))):
        r = by_event(sessionize.sessionize_events(bronze_df(spark, order).repartition(3), 30))
        assert [r[k]["event_seq"] for k in ("e0", "e1", "e2", "e3")] == [0, 1, 2, 3]
        assert r["e1"]["is_session_start"] and not r["e2"]["is_session_start"]
        assert r["e2"]["gap_s"] == 0.0 and r["e1"]["gap_s"] == 3600.0


def test_single_event_users_and_session_summary(spark):
    ev = bronze_df(spark, [
        ("a", "solo", "2025-03-01T10:00:00Z", "click", "x"),
        ("b", "u2", "2025-03-01T10:00:00Z", "view", "x"),
        ("c", "u2", "2025-03-01T10:10:00Z", "cart", "y"),
        ("d", "u2", "2025-03-01T10:20:00Z", "view", "x"),
    ])
    s = {r["session_id"]: r for r in sessionize.summarize_sessions(sessionize.sessionize_events(ev, 30)).collect()}
    assert set(s) == {"solo#0", "u2#0"}
    solo, u2 = s["solo#0"], s["u2#0"]
    assert (solo["n_events"], solo["n_items"], solo["duration_s"], solo["event_types"]) == (1, 1, 0.0, ["click"])
    assert solo["start_ts"] == solo["end_ts"]
    assert (u2["n_events"], u2["n_items"], u2["duration_s"], u2["event_types"]) == (3, 2, 1200.0, ["cart", "view"])


def test_offsets_midnight_and_dst_use_utc_instants(spark):
    # Europe/Berlin falls back on 2025-10-26 03:00 CEST -> 02:00 CET. 02:50+02:00 and 02:10+01:00
    # look 40 minutes apart on the wall clock but are 20 minutes apart in time.
    ev = bronze_df(spark, [
        ("a", "u1", "2025-10-26T02:50:00+02:00"),
        ("b", "u1", "2025-10-26T02:10:00+01:00"),
        # Spring forward in New York (2025-03-09 02:00 EST -> 03:00 EDT): 01:50-05:00 to 03:10-04:00
        # is 20 minutes, not 80.
        ("c", "u2", "2025-03-09T01:50:00-05:00"),
        ("d", "u2", "2025-03-09T03:10:00-04:00"),
        # Across midnight UTC, written with an offset that puts both on one local day.
        ("e", "u3", "2025-03-01T23:50:00Z"),
        ("f", "u3", "2025-03-02T09:05:00+09:00"),
    ])
    r = by_event(sessionize.sessionize_events(ev, 30))
    assert r["b"]["gap_s"] == 1200.0 and r["b"]["session_index"] == 0
    assert r["d"]["gap_s"] == 1200.0 and r["d"]["session_index"] == 0
    assert r["f"]["gap_s"] == 900.0 and r["f"]["session_id"] == "u3#0"
    assert r["e"]["event_date"] == dt.date(2025, 3, 1) and r["f"]["event_date"] == dt.date(2025, 3, 2)


def test_gap_must_be_positive(spark):
    with pytest.raises(ValueError, match="gap_minutes"):
        sessionize.sessionize_events(bronze_df(spark, [("a", "u", "2025-01-01T00:00:00Z")]), 0)


# ---------------------------------------------------------------- the stage on Delta


def _silver(spark, cfg):
    ev = tables.read(spark, cfg, "silver_events")
    ss = tables.read(spark, cfg, "silver_sessions")
    return ev, ss


def _contents(df, drop=("processed_at",)):
    cols = [c for c in df.columns if c not in drop]
    return sorted(tuple(r) for r in df.select(*cols).collect())


@pytest.mark.slow
def test_run_writes_tables_and_rerun_changes_nothing(spark, cfg, ctx):
    append_bronze(spark, cfg, [
        ("a", "u1", "2025-03-01T10:00:00Z"),
        ("b", "u1", "2025-03-01T10:20:00Z"),
        ("c", "u1", "2025-03-01T12:00:00Z"),
        ("d", "u2", "2025-03-02T00:10:00Z"),
    ])
    s1 = sessionize.run(ctx, args())
    assert s1["mode"] == "full" and s1["events_written"] == 4 and s1["sessions_written"] == 3
    ev, ss = _silver(spark, cfg)
    assert ev.columns == [
        "event_id", "user_id", "item_id", "event_type", "ts", "event_date", "value", "category",
        "source_session_id", "ingest_run_id", "ingested_at",
        "session_id", "session_index", "event_seq", "gap_s", "is_session_start", "processed_at",
    ]
    assert ss.columns == [*sessionize.SESSION_COLUMNS, "processed_at"]
    for name in ("silver_events", "silver_sessions", "ops_sessionize_log"):
        assert_matches_spec(spark, cfg, name)
    assert spark.sql(f"SELECT count(*) FROM {cfg.storage.database}.silver_sessions").first()[0] == 3
    parts = {r["event_date"] for r in spark.sql(f"SELECT DISTINCT event_date FROM {cfg.storage.database}.silver_events").collect()}
    assert parts == {dt.date(2025, 3, 1), dt.date(2025, 3, 2)}

    before = (tables.version(spark, cfg, "silver_events"), tables.version(spark, cfg, "silver_sessions"))
    rows_before = (_contents(ev, drop=()), _contents(ss, drop=()))
    s2 = sessionize.run(ctx, args())
    assert s2["mode"] == "noop"
    assert (tables.version(spark, cfg, "silver_events"), tables.version(spark, cfg, "silver_sessions")) == before
    ev, ss = _silver(spark, cfg)
    assert (_contents(ev, drop=()), _contents(ss, drop=())) == rows_before

    # --full recomputes and lands on identical contents (lineage aside).
    s3 = sessionize.run(ctx, args(full=True))
    assert s3["mode"] == "full"
    ev, ss = _silver(spark, cfg)
    assert (_contents(ev), _contents(ss)) == ([r[:-1] for r in rows_before[0]], [r[:-1] for r in rows_before[1]])


def test_late_events_resessionize_only_affected_users(spark, cfg, ctx):
    append_bronze(spark, cfg, [
        # u1: two sessions 50 minutes apart.
        ("a1", "u1", "2025-03-01T10:00:00Z"),
        ("a2", "u1", "2025-03-01T10:10:00Z"),
        ("a3", "u1", "2025-03-01T11:00:00Z"),
        ("a4", "u1", "2025-03-01T13:00:00Z"),
        # u2: one session; its late event below falls inside it.
        ("b1", "u2", "2025-03-01T08:00:00Z"),
        ("b2", "u2", "2025-03-01T08:20:00Z"),
        # u3: untouched by the late batch.
        ("c1", "u3", "2025-03-01T09:00:00Z"),
    ], run="r1")
    sessionize.run(ctx, args())
    ev0, ss0 = _silver(spark, cfg)
    u3_before = _contents(ev0.where("user_id = 'u3'"), drop=()) + _contents(ss0.where("user_id = 'u3'"), drop=())
    assert ss0.where("user_id = 'u1'").count() == 3

    # Arrive late and out of order, older than everything already sessionized.
    append_bronze(spark, cfg, [
        ("a5", "u1", "2025-03-01T10:35:00Z"),   # bridges u1's first two sessions into one
        ("b3", "u2", "2025-03-01T07:55:00Z"),   # before u2's first event: splits nothing
    ], run="r2")
    s = sessionize.run(ctx, args())
    assert s["mode"] == "incremental" and s["affected_users"] == 2
    ev, ss = _silver(spark, cfg)
    r = by_event(ev)
    assert [r[k]["session_index"] for k in ("a1", "a2", "a5", "a3", "a4")] == [0, 0, 0, 0, 1]
    assert [r[k]["event_seq"] for k in ("a1", "a2", "a5", "a3", "a4")] == [0, 1, 2, 3, 4]
    assert {x["session_id"] for x in ss.where("user_id = 'u1'").collect()} == {"u1#0", "u1#1"}  # u1#2 is gone
    assert [r[k]["session_index"] for k in ("b3", "b1", "b2")] == [0, 0, 0]
    assert r["b3"]["is_session_start"] and not r["b1"]["is_session_start"] and r["b1"]["gap_s"] == 300.0
    u2 = ss.where("user_id = 'u2'").collect()
    assert len(u2) == 1 and u2[0]["n_events"] == 3 and u2[0]["duration_s"] == 1500.0
    # u3's rows were not rewritten: same contents, same processed_at.
    assert _contents(ev.where("user_id = 'u3'"), drop=()) + _contents(ss.where("user_id = 'u3'"), drop=()) == u3_before
    assert ev.count() == 9
    for name in ("silver_events", "silver_sessions", "ops_sessionize_log"):
        assert_matches_spec(spark, cfg, name)

    # The incremental result equals a from-scratch recompute.
    inc = (_contents(ev), _contents(ss))
    sessionize.run(ctx, args(full=True))
    ev, ss = _silver(spark, cfg)
    assert (_contents(ev), _contents(ss)) == inc


def test_gap_change_and_crash_between_tables_recover_on_rerun(spark, cfg, ctx):
    append_bronze(spark, cfg, [
        ("a", "u1", "2025-03-01T10:00:00Z"),
        ("b", "u1", "2025-03-01T10:45:00Z"),
    ])
    sessionize.run(ctx, args())
    assert tables.read(spark, cfg, "silver_sessions").count() == 2
    # A different gap is a different sessionization: every user is recomputed.
    s = sessionize.run(ctx, args(gap_minutes=60))
    assert s["mode"] == "full" and tables.read(spark, cfg, "silver_sessions").count() == 1

    # Simulate a crash after silver_events was replaced but before silver_sessions and the
    # ops log: the next run sees the same bronze change and completes both tables.
    append_bronze(spark, cfg, [("c", "u1", "2025-03-01T13:00:00Z")], run="r2")
    real_write = tables.write

    def crash_on_sessions(df, cfg_, name, *a, **kw):
        if name == "silver_sessions":
            raise RuntimeError("simulated crash")
        return real_write(df, cfg_, name, *a, **kw)

    tables.write = crash_on_sessions
    try:
        with pytest.raises(RuntimeError):
            sessionize.run(ctx, args(gap_minutes=60))
    finally:
        tables.write = real_write
    assert tables.read(spark, cfg, "silver_sessions").count() == 1
    s = sessionize.run(ctx, args(gap_minutes=60))
    assert s["mode"] == "incremental" and s["affected_users"] == 1
    assert tables.read(spark, cfg, "silver_sessions").count() == 2
    assert tables.read(spark, cfg, "silver_events").count() == 3


# ---------------------------------------------------------------- the append path


def _expected(spark, cfg, gap=30):
    """What `sessionize --full` writes for the current bronze_events (less processed_at)."""
    ev = sessionize.sessionize_events(tables.read(spark, cfg, "bronze_events"), gap)
    return _contents(ev), _contents(sessionize.summarize_sessions(ev))


def _ops_processed_at(spark, cfg):
    return tables.read(spark, cfg, "ops_sessionize_log").orderBy("processed_at", ascending=False).first()["processed_at"]


def test_continue_sessions_equals_sessionizing_the_whole_history(spark):
    from pyspark.sql import functions as F

    old = [
        ("a1", "u1", "2025-03-01T10:00:00Z"), ("a2", "u1", "2025-03-01T11:00:00Z"),
        ("b1", "u2", "2025-03-01T10:00:00Z"),
        ("c1", "u3", "2025-03-01T09:00:00Z"),
    ]
    new = [
        ("a3", "u1", "2025-03-01T11:30:00Z"),            # exactly the gap after a2: same session
        ("a4", "u1", "2025-03-01T12:00:00.000001Z"),     # the gap + 1 us: a new session
        ("b2", "u2", "2025-03-01T12:00:00Z"),            # a new session after a long gap
        ("c3", "u3", "2025-03-01T09:00:00Z"),            # the seed's instant: after it on event_id
        ("c2", "u3", "2025-03-01T09:00:00Z"),
        ("n1", "new", "2025-03-01T09:00:00Z"), ("n2", "new", "2025-03-01T10:00:00Z"),  # no seed
    ]
    whole = sessionize.sessionize_events(bronze_df(spark, old + new), 30)
    seeds = (sessionize.sessionize_events(bronze_df(spark, old), 30)
             .groupBy("user_id").agg(F.max(F.struct(*sessionize.LAST_STATE)).alias("last")).select("user_id", "last.*"))
    got = sessionize.continue_sessions(bronze_df(spark, new).repartition(3), seeds, 30)
    assert got.columns == whole.columns
    assert _contents(got) == _contents(whole.where(F.col("event_id").isin([e[0] for e in new])))
    r = by_event(got)
    assert [r[k]["session_id"] for k in ("a3", "a4", "b2", "c2", "c3", "n1", "n2")] == [
        "u1#1", "u1#2", "u2#1", "u3#0", "u3#0", "new#0", "new#1"]
    assert [r[k]["event_seq"] for k in ("a3", "a4", "c2", "c3", "n1")] == [2, 3, 1, 2, 0]


def test_plan_users_appends_only_rows_strictly_after_the_users_last_silver_row(spark):
    silver = sessionize.sessionize_events(bronze_df(spark, [
        ("a1", "u1", "2025-03-01T10:00:00Z"),
        ("b1", "u2", "2025-03-01T10:00:00Z"),
        ("c1", "u3", "2025-03-01T10:00:00Z"),
        ("d1", "u4", "2025-03-01T10:00:00Z"),
        ("e1", "u5", "2025-03-01T10:00:00Z"), ("e2", "u5", "2025-03-01T11:00:00Z"),
        ("f1", "u6", "2025-03-01T10:00:00Z"),
    ]), 30)
    added = bronze_df(spark, [
        ("a2", "u1", "2025-03-01T10:00:00Z"),   # same instant, later event_id: appends
        ("b0", "u2", "2025-03-01T10:00:00Z"),   # same instant, earlier event_id: late
        ("c1", "u3", "2025-03-01T10:00:00Z"),   # a row silver_events already holds
        ("d2", "u4", "2025-03-01T12:00:00Z"),   # after, but u4 also lost a row: rewritten
        ("e3", "u5", "2025-03-01T12:00:00Z"),   # one new row after the last ...
        ("e0", "u5", "2025-03-01T10:30:00Z"),   # ... and one before it: late
        ("n1", "new", "2025-03-01T09:00:00Z"),  # no silver rows yet: appends from nothing
    ])
    removed = spark.createDataFrame([("u4",), ("u4",), ("gone",)], "user_id string")
    plan = {r["user_id"]: r for r in sessionize.plan_users(added, removed, silver).collect()}
    assert {u: r["appending"] for u, r in plan.items()} == {
        "u1": True, "u2": False, "u3": False, "u4": False, "u5": False, "new": True, "gone": False}
    assert tuple(plan["u1"]["last"]) == (_ts("2025-03-01T10:00:00Z"), "a1", 0, 0)
    assert plan["new"]["last"] is None and "u6" not in plan


def _night(spark, cfg, ctx, events, run):
    """Land events in bronze and sessionize; returns the summary, silver_events' versions and files."""
    append_bronze(spark, cfg, events, run=run)
    v0, files0 = tables.version(spark, cfg, "silver_events"), set(tables.parquet_files(spark, cfg, "silver_events"))
    s = sessionize.run(ctx, args())
    return s, v0, files0


def _assert_one_append_commit(spark, cfg, v0, files0):
    from delta.tables import DeltaTable

    assert tables.version(spark, cfg, "silver_events") == v0 + 1
    h = DeltaTable.forPath(spark, tables.table_path(cfg, "silver_events")).history(1).first()
    assert h["operation"] == "WRITE" and h["operationParameters"]["mode"] == "Append"
    assert int(h["operationMetrics"]["numFiles"]) >= 1
    assert files0 < set(tables.parquet_files(spark, cfg, "silver_events"))  # files added, none removed


@pytest.mark.slow
def test_append_path_equals_full_recompute_night_after_night(spark, cfg, ctx):
    append_bronze(spark, cfg, [
        ("a1", "u1", "2025-03-01T10:00:00Z"), ("a2", "u1", "2025-03-01T10:10:00Z"),
        ("b1", "u2", "2025-03-01T10:00:00Z"),
        ("c1", "u3", "2025-03-01T09:00:00Z"),
        ("d1", "u4", "2025-03-01T08:00:00Z"), ("d2", "u4", "2025-03-01T08:40:00Z"),
    ], run="r0")
    assert sessionize.run(ctx, args())["mode"] == "full"
    first_at = _ops_processed_at(spark, cfg)

    s, v0, files0 = _night(spark, cfg, ctx, [
        ("a3", "u1", "2025-03-01T10:30:00Z"),              # continues u1's last session
        ("b2", "u2", "2025-03-01T10:30:00Z"),              # exactly the gap: same session
        ("b3", "u2", "2025-03-01T11:00:00.000001Z"),       # the gap + 1 us: a new session
        ("c3", "u3", "2025-03-01T09:00:00Z"),              # c1's instant, after it on event_id
        ("c2", "u3", "2025-03-01T09:00:00Z"),
        ("d3", "u4", "2025-03-01T12:00:00Z"),              # a new session after a long gap
        ("e1", "u5", "2025-03-01T12:00:00Z"), ("e2", "u5", "2025-03-01T13:00:00Z"),  # a new user
    ], run="r1")
    assert s["mode"] == "incremental"
    assert (s["affected_users"], s["appended_users"], s["rewritten_users"]) == (5, 5, 0)
    # Sessions from each user's last one on are summarized again: u1#0 u2#0 u2#1 u3#0 u4#1 u4#2 u5#0 u5#1.
    assert (s["events_written"], s["sessions_written"]) == (8, 8)
    _assert_one_append_commit(spark, cfg, v0, files0)
    ev, ss = _silver(spark, cfg)
    assert (_contents(ev), _contents(ss)) == _expected(spark, cfg)
    # The appended rows and the sessions they touched carry this run's processed_at; the rest keep theirs.
    at = _ops_processed_at(spark, cfg)
    assert at > first_at
    stamps = {r["event_id"]: r["processed_at"] for r in ev.collect()}
    assert {stamps[k] for k in ("a3", "b2", "b3", "c2", "c3", "d3", "e1", "e2")} == {at}
    assert {stamps[k] for k in ("a1", "a2", "b1", "c1", "d1", "d2")} == {first_at}
    sessions_at = {r["session_id"]: r["processed_at"] for r in ss.collect()}
    assert sessions_at.pop("u4#0") == first_at
    assert set(sessions_at.values()) == {at}

    s, v0, files0 = _night(spark, cfg, ctx, [
        ("a4", "u1", "2025-03-01T12:00:00Z"),              # a new session after appended rows
        ("b4", "u2", "2025-03-01T11:00:00.000001Z"),       # b3's instant, after it on event_id
        ("e3", "u5", "2025-03-01T13:10:00Z"),              # continues the new user's last session
    ], run="r2")
    assert (s["affected_users"], s["appended_users"], s["rewritten_users"]) == (3, 3, 0)
    _assert_one_append_commit(spark, cfg, v0, files0)
    ev, ss = _silver(spark, cfg)
    inc = (_contents(ev), _contents(ss))
    assert inc == _expected(spark, cfg)
    assert ev.count() == ev.select("event_id").distinct().count() == 17
    for name in ("silver_events", "silver_sessions", "ops_sessionize_log"):
        assert_matches_spec(spark, cfg, name)

    assert sessionize.run(ctx, args(full=True))["mode"] == "full"
    ev, ss = _silver(spark, cfg)
    assert (_contents(ev), _contents(ss)) == inc


@pytest.mark.slow
def test_late_events_take_the_rewrite_path_while_other_users_append(spark, cfg, ctx):
    append_bronze(spark, cfg, [
        ("a1", "u1", "2025-03-01T10:00:00Z"), ("a2", "u1", "2025-03-01T11:00:00Z"),  # two sessions
        ("b1", "u2", "2025-03-01T10:00:00Z"),
        ("c1", "u3", "2025-03-01T09:00:00Z"),
    ], run="r0")
    sessionize.run(ctx, args())
    s, _, _ = _night(spark, cfg, ctx, [
        ("a0", "u1", "2025-03-01T10:30:00Z"),   # late: bridges u1's two sessions into one
        ("a3", "u1", "2025-03-01T11:10:00Z"),
        ("b2", "u2", "2025-03-01T10:20:00Z"),   # appends
        ("c0", "u3", "2025-03-01T09:00:00Z"),   # c1's instant but an earlier event_id: late
        ("n1", "u4", "2025-03-01T09:00:00Z"),   # a new user appends
    ], run="r1")
    assert (s["mode"], s["affected_users"], s["appended_users"], s["rewritten_users"]) == ("incremental", 4, 2, 2)
    ev, ss = _silver(spark, cfg)
    assert (_contents(ev), _contents(ss)) == _expected(spark, cfg)
    assert {r["session_id"] for r in ss.where("user_id = 'u1'").collect()} == {"u1#0"}  # u1#1 is gone
    r = by_event(ev)
    assert [r[k]["event_seq"] for k in ("c0", "c1")] == [0, 1] and r["c1"]["gap_s"] == 0.0
    assert ev.count() == ev.select("event_id").distinct().count() == 9


@pytest.mark.slow
def test_a_crash_after_the_append_is_redone_without_duplicates(spark, cfg, ctx, monkeypatch):
    append_bronze(spark, cfg, [
        ("a1", "u1", "2025-03-01T10:00:00Z"),
        ("b1", "u2", "2025-03-01T10:00:00Z"),
    ], run="r0")
    sessionize.run(ctx, args())
    real_write = tables.write
    appended = {}

    def crash_on_sessions(df, cfg_, name, *a, **kw):
        if name == "silver_events" and kw.get("txn"):
            appended["df"], appended["txn"] = df, kw["txn"]
        if name == "silver_sessions":
            raise RuntimeError("simulated crash")
        return real_write(df, cfg_, name, *a, **kw)

    monkeypatch.setattr(tables, "write", crash_on_sessions)
    append_bronze(spark, cfg, [
        ("a2", "u1", "2025-03-01T10:10:00Z"),
        ("b2", "u2", "2025-03-01T12:00:00Z"),
        ("n1", "u3", "2025-03-01T12:00:00Z"),
    ], run="r1")
    with pytest.raises(RuntimeError, match="simulated crash"):
        sessionize.run(ctx, args())
    monkeypatch.setattr(tables, "write", real_write)
    assert tables.read(spark, cfg, "silver_events").count() == 5       # appended ...
    assert tables.read(spark, cfg, "ops_sessionize_log").count() == 1  # ... but not recorded

    # The same append again (a rerun, or a second run racing the first) commits nothing.
    bronze_version = tables.version(spark, cfg, "bronze_events")
    assert appended["txn"] == sessionize.append_txn(spark, cfg, bronze_version)
    v = tables.version(spark, cfg, "silver_events")
    tables.write(appended["df"], cfg, "silver_events", "append", txn=appended["txn"])
    assert tables.version(spark, cfg, "silver_events") == v

    # The rerun finds the appended rows in silver_events and rewrites those users whole.
    s = sessionize.run(ctx, args())
    assert (s["mode"], s["affected_users"], s["appended_users"], s["rewritten_users"]) == ("incremental", 3, 0, 3)
    ev, ss = _silver(spark, cfg)
    assert ev.count() == ev.select("event_id").distinct().count() == 5
    assert (_contents(ev), _contents(ss)) == _expected(spark, cfg)
    assert sessionize.run(ctx, args())["mode"] == "noop"
