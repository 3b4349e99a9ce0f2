"""`ebbtide ingest` reading again a file that bronze already holds, under other reading settings
(another checkpoint): rows a corrected setting rescues from quarantine land, rows that would come
back under new event ids are refused before anything is written, or with ``--reread replace``
replace the file's old rows in the same commit; the accounting invariant holds throughout."""
from __future__ import annotations

from datetime import date

import pytest

from ebbtide import cli, ingest, tables
from test_ingest import assert_invariant, bronze, ops_log, quarantine, run_ingest, write_lines

HEADER = "user_id,item_id,ts,value"
GOOD = ["r-u1,r-i1,1700000000,1", "r-u2,r-i2,1700000060,2", "r-u3,r-i3,1700000120,3"]
NA_USER = "NA,r-i4,1700000180,4"  # quarantined while NA means missing (the default null values)
NO_USER = ",r-i5,1700000240,5"    # quarantined whatever the settings
# A setting that gives every row another event id: the source's own id, built from its columns.
NEW_IDS = ("--column", "event_id=expr:concat_ws(':', user_id, item_id, ts)")


def snapshot(ctx) -> dict:
    return {
        "bronze": bronze(ctx), "quarantine": quarantine(ctx), "log": ops_log(ctx),
        "versions": [tables.version(ctx.spark, ctx.cfg, t) for t in (ingest.BRONZE, ingest.QUARANTINE, ingest.OPS_LOG)],
    }


def counts(s: dict) -> tuple:
    return s["rows_read"], s["bronze_new"], s["quarantined"], s["duplicates"]


@pytest.fixture
def src(ctx, tmp_path):
    """A CSV file ingested once with the default settings: 3 rows in bronze, 2 in quarantine."""
    path = write_lines(tmp_path / "raw" / "a.csv", [HEADER, *GOOD, NA_USER, NO_USER])
    assert counts(run_ingest(ctx, "--source", str(path))) == (5, 3, 2, 0)
    return path


def test_a_setting_that_rescues_quarantined_rows_adds_only_them(ctx, src):
    s = run_ingest(ctx, "--source", str(src), "--null-values", "")
    assert counts(s) == (5, 1, 1, 3)  # NA is now a user; the other rows keep their ids
    assert sorted(r["user_id"] for r in bronze(ctx)) == ["NA", "r-u1", "r-u2", "r-u3"]
    log_rows = ops_log(ctx)
    assert_invariant(log_rows)
    assert sum(r["rows_bronze_new"] for r in log_rows) == len(bronze(ctx)) == 4


def test_settings_that_change_event_ids_are_refused_before_anything_is_written(ctx, src):
    before = snapshot(ctx)
    with pytest.raises(ingest.RereadError) as e:
        run_ingest(ctx, "--source", str(src), *NEW_IDS)
    msg = str(e.value)
    assert "\n" not in msg
    assert f"{src.name}: bronze holds 3 of its rows (3 under ids this reading does not give)" in msg
    assert "this reading adds 3 under new ids (3 with the same user, item, ts and event type)" in msg
    assert "nothing was written" in msg and "--reread replace" in msg
    line, status = cli.describe_failure("ingest", e.value)  # what the command line prints
    assert line.startswith("error: 1 file(s) read before with other settings would get new event ids") and status == 1
    assert "--reread replace" in line
    assert snapshot(ctx) == before  # not even a new table version

    # Back to the settings the file was ingested with: its checkpoint has it, nothing to do.
    assert counts(run_ingest(ctx, "--source", str(src))) == (0, 0, 0, 0)
    assert snapshot(ctx) == before


def test_a_row_hash_scheme_change_is_refused(ctx, tmp_path, monkeypatch):
    # Rows ingested by an older row_hash (the timestamp hashed as its text), then read again by
    # today's (as its instant) under another setting: the same events under new ids.
    path = write_lines(tmp_path / "old" / "u.csv", [HEADER, *GOOD])
    current = ingest.row_hash
    with monkeypatch.context() as m:
        m.setattr(ingest, "row_hash", lambda ts_column=None, ts_us=None, columns=(): current(None, None, columns))
        assert counts(run_ingest(ctx, "--source", str(path))) == (3, 3, 0, 0)
    before = snapshot(ctx)
    with pytest.raises(ingest.RereadError, match=r"adds 3 under new ids \(3 with the same user"):
        run_ingest(ctx, "--source", str(path), "--ts-unit", "s")
    assert snapshot(ctx) == before


def test_replace_leaves_exactly_one_copy_read_the_new_way(ctx, src):
    old_ids = {r["event_id"] for r in bronze(ctx)}
    s = run_ingest(ctx, "--source", str(src), *NEW_IDS, "--reread", "replace")
    assert counts(s) == (5, 3, 2, 0) and s["bronze_replaced"] == 3
    rows = bronze(ctx)
    assert sorted(r["event_id"] for r in rows) == [f"r-u{i}:r-i{i}:{1700000000 + 60 * (i - 1)}" for i in (1, 2, 3)]
    assert not old_ids & {r["event_id"] for r in rows}
    assert all(r["source_file"].endswith("raw/a.csv") for r in rows)
    assert len(quarantine(ctx)) == 2  # the same two lines, not quarantined twice
    assert_invariant(ops_log(ctx))

    # Rerunning either way is a no-op: each checkpoint has the file.
    after = snapshot(ctx)
    assert counts(run_ingest(ctx, "--source", str(src), *NEW_IDS, "--reread", "replace")) == (0, 0, 0, 0)
    assert counts(run_ingest(ctx, "--source", str(src))) == (0, 0, 0, 0)
    assert snapshot(ctx) == after


def test_replace_killed_after_its_bronze_commit_completes_on_rerun(ctx, src, monkeypatch):
    write = tables.write

    def crash_at_the_log(df, cfg, name, *a, **kw):
        if name == ingest.OPS_LOG:
            raise RuntimeError("killed before the accounting row")
        return write(df, cfg, name, *a, **kw)

    with monkeypatch.context() as m:
        m.setattr(tables, "write", crash_at_the_log)
        with pytest.raises(Exception, match="killed before the accounting row"):
            run_ingest(ctx, "--source", str(src), *NEW_IDS, "--reread", "replace")
    assert len(bronze(ctx)) == 3  # replaced: the delete and the insert are one commit

    s = run_ingest(ctx, "--source", str(src), *NEW_IDS, "--reread", "replace")
    assert counts(s) == (5, 3, 2, 0)  # what the killed attempt would have logged
    assert sorted(r["event_id"] for r in bronze(ctx))[0] == "r-u1:r-i1:1700000000" and len(bronze(ctx)) == 3
    log_rows = ops_log(ctx)
    assert_invariant(log_rows)
    assert [(r["rows_bronze_new"], r["rows_duplicate"]) for r in log_rows if r["stream_id"] == s["stream_id"]] == [(3, 0)]


def test_replace_keeps_what_it_matches_and_deletes_the_rest_on_any_day(ctx, tmp_path):
    # The bronze MERGE is confined to the batch's days, but a replaced file's old rows may lie on
    # others: read with another timestamp column, a row with the source's own id keeps its id (and
    # its old row, on the old day), while a row without one gets a new id on a new day, and its old
    # row, on a day this reading has no row on, must go all the same.
    header = "event_id,user_id,item_id,ts,ts2"
    path = write_lines(tmp_path / "raw" / "b.csv",
                       [header, "e1,u1,i1,1700000000,1700400000", ",u2,i2,1700000060,1700400060"])
    assert counts(run_ingest(ctx, "--source", str(path))) == (2, 2, 0, 0)
    before = {r["user_id"]: r for r in bronze(ctx)}
    assert {r["event_date"] for r in before.values()} == {date(2023, 11, 14)}

    s = run_ingest(ctx, "--source", str(path), "--column", "ts=ts2", "--reread", "replace")
    assert counts(s) == (2, 1, 0, 1) and s["bronze_replaced"] == 1
    after = {r["user_id"]: r for r in bronze(ctx)}
    assert len(bronze(ctx)) == 2
    assert after["u1"]["event_id"] == "e1" and after["u1"]["event_date"] == date(2023, 11, 14)
    assert after["u2"]["event_id"] != before["u2"]["event_id"] and after["u2"]["event_date"] == date(2023, 11, 19)
    assert_invariant(ops_log(ctx))
