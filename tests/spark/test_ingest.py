"""`ebbtide ingest` end to end on real local Spark + Delta: adapters, quarantine, reruns, appends,
crash replay and the accounting invariant."""
from __future__ import annotations

import argparse
import dataclasses
import json
from datetime import datetime, timezone
from pathlib import Path

import pytest

from ebbtide import ingest, tables
from ebbtide.cli import Context
from spec_check import assert_matches_spec

DATA = Path(__file__).resolve().parents[1] / "data" / "ingest"




def run_ingest(ctx, *argv: str) -> dict:
    p = argparse.ArgumentParser()
    ingest.add_arguments(p)
    return ingest.run(ctx, p.parse_args(list(argv)))


def with_ingest(ctx, **kw):
    """The same tables and checkpoints, another ingest setting (e.g. one file per batch)."""
    cfg = dataclasses.replace(ctx.cfg, ingest=dataclasses.replace(ctx.cfg.ingest, **kw))
    return Context(cfg, _spark=ctx.spark)


def bronze(ctx) -> list[dict]:
    rows = tables.read(ctx.spark, ctx.cfg, ingest.BRONZE).orderBy("event_id").collect()
    return [r.asDict(recursive=True) for r in rows]


def quarantine(ctx) -> list[dict]:
    rows = tables.read(ctx.spark, ctx.cfg, ingest.QUARANTINE).orderBy("quarantine_id").collect()
    return [r.asDict(recursive=True) for r in rows]


def ops_log(ctx) -> list[dict]:
    rows = tables.read(ctx.spark, ctx.cfg, ingest.OPS_LOG).orderBy("stream_id", "batch_id").collect()
    return [r.asDict(recursive=True) for r in rows]


def utc(*a) -> datetime:
    """The naive UTC wall clock Spark hands back (the session runs in UTC)."""
    return datetime(*a)


def write_lines(path: Path, lines: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines))
    return path


def assert_invariant(log_rows: list[dict]) -> None:
    for r in log_rows:
        assert r["rows_read"] == r["rows_bronze_new"] + r["rows_quarantined"] + r["rows_duplicate"], r


# ---------------------------------------------------------------------------------------------
# adapters: every fixture ingested into one set of tables (one stream each), checked per source
# ---------------------------------------------------------------------------------------------

ADAPTER_CASES = {
    "movielens": (
        ["--source", str(DATA / "movielens" / "ratings.csv"), "--adapter", "movielens"],
        "movielens/ratings.csv", 4, ("1", "1", "rating", 4.0, utc(2000, 7, 30, 18, 45, 3)), {},
    ),
    "movielens_100k": (
        ["--source", str(DATA / "ml100k" / "u.data"), "--adapter", "movielens_100k"],
        "ml100k/u.data", 3, ("196", "242", "rating", 3.0, utc(1997, 12, 4, 15, 55, 49)), {},
    ),
    "recbole_inter": (
        ["--source", str(DATA / "recbole"), "--adapter", "recbole_inter", "--glob", "*.inter"],
        "recbole/ml-100k.inter", 2, ("244", "51", "rating", 2.0, utc(1997, 11, 27, 5, 2, 3)), {},
    ),
    "taobao": (
        ["--source", str(DATA / "taobao" / "UserBehavior.csv"), "--adapter", "taobao"],
        "taobao/UserBehavior.csv", 5, ("1", "2576651", "purchase", None, utc(2017, 11, 25, 1, 21, 25)), {},
    ),
    "generic_retailrocket_ms": (
        ["--source", str(DATA / "retailrocket"), "--column", "user_id=visitorid", "--column", "item_id=itemid",
         "--column", "ts=timestamp", "--column", "event_type=event"],
        "retailrocket/events.csv", 4,
        ("483717", "253185", "transaction", None, utc(2015, 6, 2, 5, 12, 35, 914000)), {"transactionid": "17"},
    ),
    "generic_jsonl_iso_offsets": (
        ["--source", str(DATA / "jsonl"), "--format", "json", "--column", "user_id=user",
         "--column", "item_id=item", "--column", "value=price"],
        "jsonl/events.jsonl", 4, ("u1", "i1", "view", 12.5, utc(2024, 3, 10, 6, 30)), {"props": '{"color":"red"}'},
    ),
}


def _write_parquet_source(folder: Path) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True)
    pq.write_table(pa.table({
        "user_id": pa.array([1, 2, None], pa.int64()),
        "item_id": ["a", "b", "c"],
        "ts": pa.array([datetime(2024, 3, 10, 6, 30, tzinfo=timezone.utc)] * 3, pa.timestamp("us", tz="UTC")),
        "rating": [1.0, 2.0, 3.0],
        "sid": ["s1", "s2", "s3"],
        "device": ["ios", "web", "ios"],
    }), folder / "part-0.parquet")
    return folder


@pytest.fixture(scope="module")
def adapters(spark, tmp_path_factory):
    """Ingest every adapter fixture (and a Parquet source) into one warehouse."""
    from conftest import make_config

    root = tmp_path_factory.mktemp("ingest-adapters")
    ctx = Context(make_config(root, "storage.database=ingest_adapters"), _spark=spark)
    summaries = {case: run_ingest(ctx, *argv) for case, (argv, *_rest) in ADAPTER_CASES.items()}
    pq_src = _write_parquet_source(root / "pq")
    summaries["parquet"] = run_ingest(ctx, "--source", str(pq_src), "--format", "parquet",
                                      "--column", "value=rating", "--column", "session_id=sid")
    return ctx, summaries


def rows_of(ctx, file_suffix: str) -> dict:
    return {(r["user_id"], r["item_id"]): r for r in bronze(ctx) if r["source_file"].endswith(file_suffix)}


@pytest.mark.parametrize("case", list(ADAPTER_CASES))
def test_adapter_on_a_tiny_fixture(adapters, case):
    ctx, summaries = adapters
    _argv, suffix, n, (user, item, event_type, value, ts), extra = ADAPTER_CASES[case]
    s = summaries[case]
    assert (s["files"], s["rows_read"], s["bronze_new"], s["quarantined"], s["duplicates"]) == (1, n, n, 0, 0)
    rows = rows_of(ctx, suffix)
    assert len(rows) == n
    r = rows[(user, item)]
    assert (r["event_type"], r["value"], r["ts"]) == (event_type, value, ts)
    assert r["event_date"] == r["ts"].date()
    assert r["extra"] == extra
    assert r["ingest_run_id"] == ctx.run_id
    if case == "movielens":
        assert rows[("3", "31")]["value"] == 0.5
        assert all(len(x["event_id"]) == 64 for x in rows.values())
    if case == "taobao":
        assert r["category"] == "149192"
        assert sorted(x["event_type"] for x in rows.values()) == ["cart", "favorite", "purchase", "view", "view"]
    if case == "generic_jsonl_iso_offsets":
        # Source ids are kept; s, ms and ISO timestamps all land on the same UTC instant.
        assert {x["event_id"] for x in rows.values()} == {"e1", "e2", "e3", "e4"}
        assert {x["ts"] for x in rows.values()} == {utc(2024, 3, 10, 6, 30), utc(2024, 3, 10, 6, 30, 0, 123000)}
        assert rows[("u2", "i1")]["value"] == 9.99


def test_generic_parquet(adapters):
    ctx, summaries = adapters
    s = summaries["parquet"]
    assert (s["rows_read"], s["bronze_new"], s["quarantined"]) == (3, 2, 1)
    rows = {r["user_id"]: r for r in bronze(ctx) if r["source_file"].endswith("part-0.parquet")}
    assert rows["1"]["ts"] == utc(2024, 3, 10, 6, 30)
    assert (rows["2"]["value"], rows["2"]["source_session_id"], rows["2"]["extra"]) == (2.0, "s2", {"device": "web"})
    (q,) = quarantine(ctx)
    assert q["reason"] == ingest.R_MISSING_USER and json.loads(q["raw"])["item_id"] == "c"


def test_tables_are_registered_partitioned_and_logged(adapters):
    ctx, summaries = adapters
    fq = tables.full_name(ctx.cfg, ingest.BRONZE)
    assert list(ctx.spark.sql(f"DESCRIBE DETAIL {fq}").first()["partitionColumns"]) == ["event_date"]
    assert ctx.spark.sql(f"SELECT count(*) FROM {fq}").first()[0] == sum(s["bronze_new"] for s in summaries.values())
    log_rows = ops_log(ctx)
    assert len(log_rows) == len(summaries)  # one stream, one batch per source
    assert_invariant(log_rows)
    assert sorted(r["rows_read"] for r in log_rows) == sorted(s["rows_read"] for s in summaries.values())
    for name in (ingest.BRONZE, ingest.QUARANTINE, ingest.OPS_LOG):
        assert_matches_spec(ctx.spark, ctx.cfg, name)


# ---------------------------------------------------------------------------------------------
# the contract, end to end
# ---------------------------------------------------------------------------------------------

GOOD = ["u1,i1,1700000000,1", "u1,i2,1700000060,2", "u2,i1,1700000120,"]
BAD = {
    ",i1,1700000000,1": ingest.R_MISSING_USER,
    "u1,,1700000000,1": ingest.R_MISSING_ITEM,
    "u1,i1,,1": ingest.R_MISSING_TS,
    "u1,i1,soon,1": ingest.R_UNPARSABLE_TS,
    "u1,i1,315532800,1": ingest.R_TS_RANGE,   # 1980, before ingest.min_ts
    "u1,i1,4102444800,1": ingest.R_TS_RANGE,  # 2100
    "u1,i1,1700000000,lots": ingest.R_BAD_VALUE,
    "u1,i1": ingest.R_FIELD_COUNT,
    "u1,i1,1700000000,1,x": ingest.R_FIELD_COUNT,
}


def test_every_bad_row_lands_in_quarantine_with_raw_text_and_reason(ctx, tmp_path):
    src = tmp_path / "raw"
    write_lines(src / "a.csv", ["user_id,item_id,ts,value", *GOOD, *BAD, "u1,i1"])  # the short line twice
    write_lines(src / "b.jsonl", ['{"user_id": "u9", "item_id": "i9", "ts": "2024-01-01T00:00:00+01:00"}',
                                  '{"user_id": "u9", "item_id": '])
    s = run_ingest(ctx, "--source", str(src), "--glob", "*.csv")
    assert (s["rows_read"], s["bronze_new"], s["quarantined"], s["duplicates"]) == (13, 3, 10, 0)
    got = sorted((q["raw"], q["reason"]) for q in quarantine(ctx))
    assert got == sorted([*BAD.items(), ("u1,i1", ingest.R_FIELD_COUNT)])
    assert all(q["source_file"].endswith("raw/a.csv") for q in quarantine(ctx))

    s = run_ingest(ctx, "--source", str(src), "--glob", "*.jsonl", "--format", "json")
    assert (s["rows_read"], s["bronze_new"], s["quarantined"]) == (2, 1, 1)
    assert {q["reason"] for q in quarantine(ctx)} >= {ingest.R_MALFORMED_JSON}
    assert len(bronze(ctx)) == 4
    assert_invariant(ops_log(ctx))


# ---------------------------------------------------------------------------------------------
# real logs as they come: other delimiters, no header, null spellings, split timestamps
# ---------------------------------------------------------------------------------------------

# MovieLens-1M ratings.dat: user::item::rating::ts, no header.
ML1M = [
    "1::1193::5::978300760", "1::661::3::978302109", "1::914::3::978301968", "2::1357::5::978298709",
    "2::3068::4::978299000", "3::1196::4::978297039", "3::1210::4::978297039", "4::3468::5::978294008",
    "5::2987::4::978243170", "6::1136::5::978237008",
]


def test_movielens_1m_layout_through_delimiter_and_no_header(ctx, tmp_path):
    src = write_lines(tmp_path / "ml-1m" / "ratings.dat", ML1M)
    argv = ["--delimiter", "::", "--no-header", "--column", "user_id=_c0", "--column", "item_id=_c1",
            "--column", "value=_c2", "--column", "ts=_c3"]
    s = run_ingest(ctx, "--source", str(src), *argv)
    assert (s["rows_read"], s["bronze_new"], s["quarantined"], s["duplicates"]) == (10, 10, 0, 0)
    rows = rows_of(ctx, "ratings.dat")
    r = rows[("1", "1193")]
    assert (r["value"], r["ts"], r["event_type"], r["extra"]) == (5.0, utc(2000, 12, 31, 22, 12, 40), "interaction", {})
    assert rows[("6", "1136")]["value"] == 5.0

    # The same rows in another file (a re-export) are the same events.
    copy = write_lines(tmp_path / "ml-1m-again" / "ratings.dat", ML1M)
    s = run_ingest(ctx, "--source", str(copy), *argv)
    assert (s["rows_read"], s["bronze_new"], s["duplicates"]) == (10, 0, 10)
    assert len(bronze(ctx)) == 10


def test_semicolon_log_with_na_users_and_a_split_timestamp(ctx, tmp_path):
    src = write_lines(tmp_path / "shop" / "events.csv", [
        "day;time;user;item;price",
        "2024-03-10;06:30:00;u1;i1;NA",          # no price: fine, value is null
        "2024-03-10;07:00:00;NA;i2;1.5",         # no user
        "2024-03-10;07:05:00;   ;i2;1.5",        # a blank user is no user
        "2024-03-11;08:15:30;u2;\\N;2",           # no item
        "2024-03-11;09:00:00;u2;i3;N/A",
        "2024-03-11;09:00:00;u2;i3;2.5",         # differs from the row above only in price
        "2024-03-12;;u3;i3;1",                   # no time: the day's midnight
    ])
    s = run_ingest(ctx, "--source", str(src), "--delimiter", ";", "--column", "user_id=user",
                   "--column", "item_id=item", "--column", "value=price",
                   "--column", "ts=expr:concat_ws(' ', day, time)")
    assert (s["rows_read"], s["bronze_new"], s["quarantined"], s["duplicates"]) == (7, 4, 3, 0)
    reasons = sorted((q["raw"].split(";")[2].strip(), q["reason"]) for q in quarantine(ctx))
    assert reasons == [("", ingest.R_MISSING_USER), ("NA", ingest.R_MISSING_USER), ("u2", ingest.R_MISSING_ITEM)]
    got = sorted(((r["user_id"], r["item_id"], r["ts"], r["value"]) for r in bronze(ctx)),
                 key=lambda t: (t[:3], t[3] is not None, t[3] or 0))
    assert got == [
        ("u1", "i1", utc(2024, 3, 10, 6, 30), None),
        ("u2", "i3", utc(2024, 3, 11, 9, 0), None),
        ("u2", "i3", utc(2024, 3, 11, 9, 0), 2.5),
        ("u3", "i3", utc(2024, 3, 12), 1.0),
    ]
    assert {r["extra"]["day"] for r in bronze(ctx)} == {"2024-03-10", "2024-03-11", "2024-03-12"}


def test_a_bad_expression_mapping_fails_before_the_stream(ctx, tmp_path):
    src = write_lines(tmp_path / "x" / "e.csv", ["user_id,item_id,day", "u1,i1,2024-03-10"])
    with pytest.raises(ingest.ConfigError, match="expr:nosuch"):
        run_ingest(ctx, "--source", str(src), "--column", "ts=expr:nosuch")
    assert not tables.exists(ctx.spark, ctx.cfg, ingest.BRONZE)


# ---------------------------------------------------------------------------------------------
# incremental, idempotent, crash-safe: one source taken through its life, each step checked below
# ---------------------------------------------------------------------------------------------


def snapshot(ctx) -> dict:
    return {
        "bronze": bronze(ctx), "quarantine": quarantine(ctx), "log": ops_log(ctx),
        "versions": [tables.version(ctx.spark, ctx.cfg, t) for t in (ingest.BRONZE, ingest.QUARANTINE, ingest.OPS_LOG)],
    }


@pytest.fixture(scope="module")
def lifecycle(spark, tmp_path_factory):
    """First run, rerun, a crash before the checkpoint commit and its replay, then a new file."""
    from conftest import make_config

    root = tmp_path_factory.mktemp("ingest-lifecycle")
    cfg = make_config(root, "storage.database=ingest_lifecycle")
    src = root / "raw"
    write_lines(src / "a.csv", ["user_id,item_id,ts,value", *GOOD, ",i1,1700000000,1"])
    out = {}
    ctx = Context(cfg, _spark=spark)
    out["first"] = (run_ingest(ctx, "--source", str(src)), snapshot(ctx))
    ctx = Context(cfg, _spark=spark)
    out["rerun"] = (run_ingest(ctx, "--source", str(src)), snapshot(ctx))

    # A crash after the batch's writes but before its checkpoint commit: the commit is missing.
    source = ingest.discover(spark, dataclasses.replace(cfg.ingest.source, path=str(src)))
    commit = Path(ingest.checkpoint_path(cfg, source)) / "commits" / "0"
    assert commit.exists()
    commit.unlink()
    for crc in commit.parent.glob(".0.crc"):
        crc.unlink()
    ctx = Context(cfg, _spark=spark)
    out["replay"] = (run_ingest(ctx, "--source", str(src)), snapshot(ctx))

    # Two new events, one already ingested (a duplicate), one bad row.
    write_lines(src / "b.csv", ["user_id,item_id,ts,value", "u3,i1,1700000300,5", "u3,i2,1700000360,4",
                                GOOD[0], "u3,,1700000400,1"])
    ctx = Context(cfg, _spark=spark)
    out["append"] = (run_ingest(ctx, "--source", str(src)), snapshot(ctx))
    return out


def test_first_run(lifecycle):
    s, snap = lifecycle["first"]
    assert (s["rows_read"], s["bronze_new"], s["quarantined"], s["duplicates"]) == (4, 3, 1, 0)
    assert len(snap["bronze"]) == 3 and len(snap["quarantine"]) == 1


def test_rerun_adds_nothing_and_changes_nothing(lifecycle):
    s, snap = lifecycle["rerun"]
    assert (s["batches"], s["rows_read"], s["bronze_new"], s["quarantined"]) == (0, 0, 0, 0)
    assert snap == lifecycle["first"][1]  # same rows, same contents, not even a new table version


def test_a_batch_replayed_after_a_crash_inserts_nothing_twice(lifecycle):
    first, before = lifecycle["first"]
    s, snap = lifecycle["replay"]
    assert s["batches"] == 1
    for k in ("rows_read", "bronze_new", "quarantined", "duplicates"):
        assert s[k] == first[k], k
    assert snap["bronze"] == before["bronze"]
    assert snap["quarantine"] == before["quarantine"]
    strip = lambda r: {k: v for k, v in r.items() if k not in ("ingest_run_id", "processed_at")}  # noqa: E731
    assert [strip(r) for r in snap["log"]] == [strip(r) for r in before["log"]]


def test_an_appended_file_adds_exactly_its_rows(lifecycle):
    _, old = lifecycle["replay"]
    s, new = lifecycle["append"]
    assert (s["files"], s["rows_read"], s["bronze_new"], s["quarantined"], s["duplicates"]) == (1, 4, 2, 1, 1)
    assert len(new["bronze"]) == len(old["bronze"]) + 2
    added = [r for r in new["bronze"] if r not in old["bronze"]]
    assert sorted((r["user_id"], r["item_id"]) for r in added) == [("u3", "i1"), ("u3", "i2")]
    assert all(r["source_file"].endswith("b.csv") for r in added)
    assert [r for r in new["bronze"] if r in old["bronze"]] == old["bronze"]  # earlier rows untouched
    assert len(new["quarantine"]) == len(old["quarantine"]) + 1
    assert [r["batch_id"] for r in new["log"]] == [0, 1]
    assert_invariant(new["log"])


def test_accounting_invariant_holds_per_batch_and_matches_the_tables(ctx, tmp_path):
    src = tmp_path / "raw"
    files = {
        "1.csv": ["user_id,item_id,ts,value", *GOOD, GOOD[0], "u1,i1,oops,1"],          # in-file duplicate
        "2.csv": ["user_id,item_id,ts,value", GOOD[1], "u4,i4,1700001000,1", "u4,i4"],  # cross-file duplicate
        "3.csv": ["user_id,item_id,ts,value", "", "u5,i5,1700002000,1", ",,,", "u5,i5,1700002000,1"],
    }
    for name, lines in files.items():
        write_lines(src / name, lines)
    data_lines = sum(1 for lines in files.values() for line in lines[1:] if line.strip())

    s = run_ingest(with_ingest(ctx, max_files_per_trigger=1), "--source", str(src))
    assert s["batches"] == 3 and s["files"] == 3
    log_rows = ops_log(ctx)
    assert [r["batch_id"] for r in log_rows] == [0, 1, 2]
    assert_invariant(log_rows)
    assert sum(r["rows_read"] for r in log_rows) == data_lines == s["rows_read"]
    assert sum(r["rows_bronze_new"] for r in log_rows) == len(bronze(ctx)) == 5
    assert sum(r["rows_quarantined"] for r in log_rows) == len(quarantine(ctx)) == 3
    assert sum(r["rows_duplicate"] for r in log_rows) == 3
    assert s["rows_read"] == s["bronze_new"] + s["quarantined"] + s["duplicates"]


def test_an_empty_source_creates_empty_tables(ctx, tmp_path):
    (tmp_path / "empty").mkdir()
    s = run_ingest(ctx, "--source", str(tmp_path / "empty"))
    assert (s["batches"], s["rows_read"]) == (0, 0)
    for name in (ingest.BRONZE, ingest.QUARANTINE, ingest.OPS_LOG):
        assert ctx.spark.table(tables.full_name(ctx.cfg, name)).count() == 0
        assert_matches_spec(ctx.spark, ctx.cfg, name)
    with pytest.raises(FileNotFoundError, match="--source"):
        run_ingest(ctx, "--source", str(tmp_path / "nowhere"))


def test_each_file_is_read_by_its_own_header(ctx, tmp_path, capsys):
    # Columns added and reordered over time, an empty file (sorting first) and a header-only file.
    folder = tmp_path / "drift"
    write_lines(folder / "a-empty.csv", [])
    write_lines(folder / "b.csv", ["user_id,item_id,ts", "d-u1,d-i1,1700000000"])
    write_lines(folder / "c.csv", ["ts,item_id,user_id,device", "1700000001,d-i2,d-u2,ios"])
    write_lines(folder / "d.csv", ["ts,item_id,device", "1700000002,d-i3,web"])
    write_lines(folder / "e-header-only.csv", ["user_id,item_id,ts"])

    dry = run_ingest(ctx, "--source", str(folder), "--dry-run")
    assert (dry["rows_sampled"], dry["would_land"], dry["quarantine"]) == (3, 2, {ingest.R_MISSING_USER: 1})
    assert "nothing was written" in capsys.readouterr().out
    assert not tables.exists(ctx.spark, ctx.cfg, ingest.BRONZE) or not [
        r for r in bronze(ctx) if r["user_id"].startswith("d-")]

    s = run_ingest(ctx, "--source", str(folder))
    assert (s["rows_read"], s["bronze_new"], s["quarantined"]) == (3, 2, 1)
    rows = {r["user_id"]: r for r in bronze(ctx) if r["user_id"].startswith("d-")}
    assert rows["d-u2"]["item_id"] == "d-i2" and rows["d-u2"]["extra"] == {"device": "ios"}
    assert rows["d-u2"]["ts"] == utc(2023, 11, 14, 22, 13, 21)


def test_a_rerun_with_other_reading_settings_reads_the_files_again(ctx, tmp_path):
    src = write_lines(tmp_path / "millis" / "log.csv", ["user_id,item_id,ts", "p-u1,p-i1,1700000000000"])
    first = run_ingest(ctx, "--source", str(src), "--ts-unit", "s")   # ms read as seconds: out of range
    assert (first["rows_read"], first["quarantined"]) == (1, 1)
    fixed = run_ingest(ctx, "--source", str(src), "--ts-unit", "ms")
    assert fixed["stream_id"] != first["stream_id"]
    assert (fixed["rows_read"], fixed["bronze_new"]) == (1, 1)
    again = run_ingest(ctx, "--source", str(src), "--ts-unit", "ms")
    assert again["rows_read"] == 0


# ---------------------------------------------------------------------------------------------
# real data
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_movielens_latest_small(ctx, ml_small):
    s = run_ingest(ctx, "--source", str(ml_small / "ratings.csv"), "--adapter", "movielens")
    assert s["rows_read"] == 100_836
    n = tables.read(ctx.spark, ctx.cfg, ingest.BRONZE).count()
    assert n == 100_836 - s["quarantined"] - s["duplicates"] == s["bronze_new"]
    assert s["quarantined"] == 0  # MovieLens latest-small is clean
    stats = ctx.spark.sql(
        f"SELECT count(DISTINCT user_id) u, count(DISTINCT item_id) i, min(ts) lo, max(ts) hi "
        f"FROM {tables.full_name(ctx.cfg, ingest.BRONZE)}"
    ).first()
    assert (stats["u"], stats["i"]) == (610, 9724)
    assert stats["lo"].year == 1996 and stats["hi"].year == 2018
