"""Each night costs what its own data costs: a micro-batch reads only the bronze files that its
events can match (the partitions of the days they fall on; for source ids, the files whose id
range overlaps theirs), both to count duplicates and in the MERGE, never the whole table.

The proof: after some nights, the files of the older days are made unreadable (their bytes
replaced), so any job that opens one fails; the next night still ingests and counts exactly."""
from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path
from urllib.parse import urlparse

import pytest

from ebbtide import ingest, tables
from test_ingest import run_ingest, write_lines

DAY0 = date(2025, 3, 1)
DAY0_S = 1_740_787_200  # 2025-03-01T00:00:00Z


def day(n: int) -> date:
    return DAY0 + timedelta(days=n)


def event(d: int, k: int, event_id: str | None = None) -> str:
    """One CSV line: user u<k> saw item i<k> on day ``d``, k minutes after midnight."""
    line = f"u{k},i{k},{DAY0_S + d * 86_400 + 60 * k},1"
    return line if event_id is None else f"{line},{event_id}"


def night(src: Path, d: int, lines: list[str], header: str = "user_id,item_id,ts,value") -> None:
    write_lines(src / f"day-{d:02d}.csv", [header, *lines])


def bronze_files(ctx) -> dict[date, list[str]]:
    from pyspark.sql import functions as F

    rows = (tables.read(ctx.spark, ctx.cfg, ingest.BRONZE)
            .select("event_date", F.col("_metadata.file_path").alias("file")).distinct().collect())
    out: dict[date, list[str]] = {}
    for r in rows:
        out.setdefault(r["event_date"], []).append(r["file"])
    return out


def make_unreadable(files: list[str]) -> None:
    """Replace a Parquet file's bytes: reading it fails from now on, skipping it does not."""
    for f in files:
        p = Path(urlparse(f).path)
        p.write_bytes(b"not parquet " * max(1, p.stat().st_size // 12))


def files_scanned(df) -> int:
    """Files that the scans of ``df``'s executed plan opened (Spark's "number of files read"), after running it."""
    df.collect()
    todo, n = [df._jdf.queryExecution().executedPlan()], 0
    while todo:
        p = todo.pop()
        name = p.getClass().getSimpleName()
        if name == "AdaptiveSparkPlanExec":
            todo.append(p.executedPlan())
        elif name.endswith("QueryStageExec"):
            todo.append(p.plan())
        elif name == "FileSourceScanExec":
            n += int(p.metrics().apply("numFiles").value())
        kids = p.children()
        todo.extend(kids.apply(i) for i in range(kids.size()))
    return n


def test_a_night_reads_only_the_days_its_events_fall_on(ctx, tmp_path):
    src = tmp_path / "raw"
    for d in range(6):  # six nights, each a new file of its day
        night(src, d, [event(d, k) for k in range(3)])
        assert run_ingest(ctx, "--source", str(src))["bronze_new"] == 3
    by_day = bronze_files(ctx)
    assert sorted(by_day) == [day(d) for d in range(6)]
    total = sum(len(f) for f in by_day.values())

    # The lookup for a batch of days 5 and 6 opens the files of day 5 only (day 6 has none yet).
    bronze = tables.read(ctx.spark, ctx.cfg, ingest.BRONZE)
    known = ingest.known_events(bronze, ingest.date_ranges([day(5), day(6)]), None)
    assert files_scanned(known) == len(by_day[day(5)]) < total

    # Days 0-3 become unreadable: a job that reads all of bronze fails from now on ...
    make_unreadable([f for d in range(4) for f in by_day[day(d)]])
    with pytest.raises(Exception, match="(?i)parquet"):
        tables.read(ctx.spark, ctx.cfg, ingest.BRONZE).select("user_id").collect()  # count() reads only the log

    # ... and the next night, two new events of day 6 and the last event of day 5 again (an export
    # that overlaps the previous one), neither looks them up nor MERGEs into them.
    night(src, 6, [event(6, 0), event(6, 1), event(5, 2)])
    s = run_ingest(ctx, "--source", str(src))
    assert (s["batches"], s["rows_read"], s["bronze_new"], s["quarantined"], s["duplicates"]) == (1, 3, 2, 0, 1)
    recent = (tables.read(ctx.spark, ctx.cfg, ingest.BRONZE).where(f"event_date >= DATE'{day(4)}'")
              .groupBy("event_date").count().collect())
    assert {r["event_date"]: r["count"] for r in recent} == {day(4): 3, day(5): 3, day(6): 2}


def test_source_ids_are_looked_up_by_their_range_on_any_day(ctx, tmp_path):
    # The source names its events with ids that grow with time (a sequence), so each file of bronze
    # holds a narrow id range.
    src, header = tmp_path / "raw", "user_id,item_id,ts,value,event_id"
    for d in range(4):
        night(src, d, [event(d, k, f"e{d}-{k:03d}") for k in range(3)], header)
        run_ingest(ctx, "--source", str(src))
    by_day = bronze_files(ctx)
    make_unreadable([f for d in range(3) for f in by_day[day(d)]])

    # Night 4: two new ids, and an id of day 3 sent again with a timestamp of day 4. A source id
    # does not fix the day, so it is found by its id (the files of day 3), not by its date, and
    # counted as the duplicate it is; the files of days 0-2 hold no id in range and stay unread.
    night(src, 4, [event(4, 0, "e4-000"), event(4, 1, "e4-001"), event(4, 2, "e3-002")], header)
    s = run_ingest(ctx, "--source", str(src))
    assert (s["rows_read"], s["bronze_new"], s["duplicates"]) == (3, 2, 1)
    ids = (tables.read(ctx.spark, ctx.cfg, ingest.BRONZE).where(f"event_date >= DATE'{day(3)}'")
           .select("event_id").collect())
    assert sorted(r[0] for r in ids) == ["e3-000", "e3-001", "e3-002", "e4-000", "e4-001"]


def test_a_replayed_night_still_inserts_nothing_twice_and_counts_the_same(ctx, tmp_path):
    import dataclasses

    src = tmp_path / "raw"
    night(src, 0, [event(0, k) for k in range(3)])
    run_ingest(ctx, "--source", str(src))
    night(src, 1, [event(1, 0), event(1, 1), event(0, 2)])
    first = run_ingest(ctx, "--source", str(src))
    # A crash after the batch's writes, before its checkpoint commit: the batch runs again.
    source = ingest.discover(ctx.spark, dataclasses.replace(ctx.cfg.ingest.source, path=str(src)))
    commit = Path(ingest.checkpoint_path(ctx.cfg, source)) / "commits" / "1"
    commit.unlink()
    for crc in commit.parent.glob(".1.crc"):
        crc.unlink()
    replay = run_ingest(ctx, "--source", str(src))
    for k in ("rows_read", "bronze_new", "quarantined", "duplicates"):
        assert replay[k] == first[k], k
    assert (first["bronze_new"], first["duplicates"]) == (2, 1)
    assert tables.read(ctx.spark, ctx.cfg, ingest.BRONZE).count() == 5
