"""The table writer's crash safety: a table folder a crash left without a commit never stops a
command, and a new table is created in one metadata-only commit."""
from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from ebbtide import tables


def orphan(cfg, name: str) -> Path:
    """What kill -9 during a table's first write leaves: a _delta_log with only _staged_commits
    (no NNN.json, no checkpoint) and a data file no commit references."""
    folder = Path(tables.table_path(cfg, name))
    (folder / "_delta_log" / "_staged_commits").mkdir(parents=True)
    (folder / "part-00000-stray.snappy.parquet").write_bytes(b"PAR1 not a whole file")
    return folder


def test_register_all_sets_a_folder_without_a_commit_aside_and_registers_the_rest(spark, cfg, caplog):
    tables.write(spark.createDataFrame([(1, "a")], "id long, v string"), cfg, "good_table", "overwrite")
    folder = orphan(cfg, "quarantine_events")

    with caplog.at_level(logging.WARNING, logger="ebbtide.tables"):
        names = tables.register_all(spark, cfg, grace_s=0)

    assert names == ["good_table"]
    assert not folder.exists()
    (moved,) = folder.parent.glob("quarantine_events.orphaned-*")
    assert (moved / "part-00000-stray.snappy.parquet").exists()  # moved, not deleted
    assert (moved / "_delta_log" / "_staged_commits").is_dir()
    warning = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert str(folder) in warning and str(moved) in warning

    # The stage recreates the table, and the set-aside folder is never taken for a table.
    tables.write(spark.createDataFrame([("q1",)], "quarantine_id string"), cfg, "quarantine_events",
                 "merge", keys=["quarantine_id"])
    assert tables.register_all(spark, cfg, grace_s=0) == ["good_table", "quarantine_events"]
    assert moved.exists()
    assert spark.table(tables.full_name(cfg, "quarantine_events")).count() == 1


def test_a_fresh_folder_is_skipped_at_start_and_set_aside_by_the_writer(spark, cfg, caplog):
    folder = orphan(cfg, "bronze_events")
    with caplog.at_level(logging.WARNING, logger="ebbtide.tables"):
        assert tables.register_all(spark, cfg) == []  # younger than the grace period: maybe being created
    assert folder.exists()
    assert any("not registering" in r.getMessage() for r in caplog.records)

    tables.write(spark.createDataFrame([("e1",)], "event_id string"), cfg, "bronze_events", "merge",
                 keys=["event_id"])
    assert len(list(folder.parent.glob("bronze_events.orphaned-*"))) == 1
    assert tables.read(spark, cfg, "bronze_events").count() == 1


def test_a_new_table_is_created_by_a_metadata_only_commit(spark, cfg):
    from pyspark.sql import functions as F

    df = spark.createDataFrame([("a",)], "k string").withColumn("one", F.lit(1))  # `one` is non-null
    tables.write(df, cfg, "created", "merge", keys=["k"], comment="what it holds")
    log_dir = Path(tables.table_path(cfg, "created")) / "_delta_log"
    first = (log_dir / f"{0:020d}.json").read_text()
    assert '"add"' not in first and '"metaData"' in first  # the create commit adds no data file
    assert tables.has_commit(str(log_dir.parent))
    fq = tables.full_name(cfg, "created")
    ext = {r.col_name: r.data_type for r in spark.sql(f"DESCRIBE TABLE EXTENDED {fq}").collect()}
    assert ext.get("Comment") == "what it holds"
    assert all(f.nullable for f in spark.table(fq).schema.fields)
    # A null in a column that was non-null in the first batch is still accepted.
    tables.write(spark.createDataFrame([("b", None)], "k string, one int"), cfg, "created", "merge", keys=["k"])
    assert spark.table(fq).count() == 2


def test_has_commit_reads_only_committed_versions(tmp_path):
    log_dir = tmp_path / "t" / "_delta_log"
    (log_dir / "_staged_commits").mkdir(parents=True)
    (log_dir / "00000000000000000000.crc").write_text("")
    (log_dir / ".00000000000000000000.json.tmp").write_text("")
    assert not tables.has_commit(str(tmp_path / "t"))
    (log_dir / "00000000000000000010.checkpoint.parquet").write_text("")
    assert tables.has_commit(str(tmp_path / "t"))
    os.remove(log_dir / "00000000000000000010.checkpoint.parquet")
    (log_dir / "00000000000000000000.json").write_text("{}")
    assert tables.has_commit(str(tmp_path / "t"))
    assert not tables.has_commit(str(tmp_path / "missing"))


def test_every_write_mode_creates_a_new_table_then_writes_its_rows(spark, cfg):
    import datetime as dt

    df = spark.createDataFrame([(dt.date(2025, 1, 1), "a"), (dt.date(2025, 1, 2), "b")], "d date, k string")
    for name, mode, kw in [
        ("by_overwrite", "overwrite", {"partition_by": ["d"]}),
        ("by_replace_where", "replace_where", {"replace_where": "d = '2025-01-01'", "partition_by": ["d"]}),
        ("by_append", "append", {}),
        ("by_merge", "merge", {"keys": ["k"]}),
    ]:
        tables.write(df, cfg, name, mode, **kw)
        assert tables.read(spark, cfg, name).count() == 2, name  # a new table takes every row
        assert tables.version(spark, cfg, name) == 1, name         # the create, then the rows
    detail = spark.sql(f"DESCRIBE DETAIL {tables.full_name(cfg, 'by_overwrite')}").first()
    assert list(detail["partitionColumns"]) == ["d"]


def test_overwrite_with_properties_commits_rows_and_properties_together(spark, cfg):
    """gold_training_examples' split cut-offs used to follow the rows in an ALTER TABLE commit of
    their own: a crash between the two left new rows described by the previous build's cut-offs.
    Now the rows and the properties that describe them are one commit, build after build."""
    import json

    import pytest

    name = "described"
    log_dir = Path(tables.table_path(cfg, name)) / "_delta_log"
    for build, rows in enumerate([[(1, "train"), (2, "test")], [(3, "train"), (4, "valid")]], start=1):
        df = spark.createDataFrame(rows, "x int, split string")
        tables.write(df, cfg, name, "overwrite", partition_by=["split"], comment="examples",
                     properties={"ebbtide.build": str(build)})
        v = tables.version(spark, cfg, name)
        actions = [json.loads(line) for line in (log_dir / f"{v:020d}.json").read_text().splitlines()]
        meta = [a["metaData"] for a in actions if "metaData" in a]
        assert meta and meta[0]["configuration"]["ebbtide.build"] == str(build)  # in the commit that ...
        assert sum(1 for a in actions if "add" in a) == len(rows)              # ... adds the rows
        assert meta[0]["description"] == "examples" and meta[0]["partitionColumns"] == ["split"]
        got = sorted((r["x"], r["split"]) for r in tables.read(spark, cfg, name).collect())
        assert got == sorted(rows)
    assert tables.version(spark, cfg, name) == 2  # create, then one commit per build
    with pytest.raises(ValueError, match="overwrite only"):
        tables.write(df, cfg, name, "append", properties={"ebbtide.build": "3"})


def test_merge_with_replace_scope_makes_the_scopes_rows_equal_to_the_source_in_one_commit(spark, cfg):
    schema = "user_id string, row_id string, v long"
    tables.write(spark.createDataFrame([
        ("u1", "a", 1), ("u1", "b", 2), ("u1", "c", 3),  # u1: b is updated, c goes, d is new
        ("u2", "e", 5),                                  # u2: in the scope, gone from the source
        ("u3", "f", 6),                                  # u3: outside the scope, untouched
    ], schema), cfg, "scoped_table", "overwrite")
    before = tables.version(spark, cfg, "scoped_table")
    users = spark.createDataFrame([("u1",), ("u2",)], "user_id string")
    new = spark.createDataFrame([("u1", "a", 1), ("u1", "b", 20), ("u1", "d", 4)], schema)

    tables.write(new, cfg, "scoped_table", "merge", keys=["row_id"], replace_scope=users)
    rows = sorted(tuple(r) for r in tables.read(spark, cfg, "scoped_table").collect())
    assert rows == [("u1", "a", 1), ("u1", "b", 20), ("u1", "d", 4), ("u3", "f", 6)]
    assert tables.version(spark, cfg, "scoped_table") == before + 1
    # The same write again changes nothing (idempotent), and an empty scope touches nothing.
    tables.write(new, cfg, "scoped_table", "merge", keys=["row_id"], replace_scope=users)
    tables.write(new.limit(0), cfg, "scoped_table", "merge", keys=["row_id"], replace_scope=users.limit(0))
    assert sorted(tuple(r) for r in tables.read(spark, cfg, "scoped_table").collect()) == rows

    with pytest.raises(ValueError, match="merge only"):
        tables.write(new, cfg, "scoped_table", "replace_where", replace_where="true", replace_scope=users)


def _stats_of_new_files(spark, cfg, name: str) -> list[dict]:
    """The min/max statistics of the data files the table's latest commit added."""
    import json

    log_dir = Path(tables.table_path(cfg, name)) / "_delta_log"
    last = sorted(log_dir.glob("*.json"))[-1]
    adds = [json.loads(line)["add"] for line in last.read_text().splitlines() if '"add"' in line]
    return [json.loads(a["stats"]) for a in adds if a.get("stats")]


def test_declared_statistics_columns_reach_new_and_existing_tables(spark, cfg):
    from ebbtide import catalog

    spec = catalog.GOLD_RECOMMENDATIONS
    assert spec.stats_columns == ("user_id", "rank")
    day1 = spark.createDataFrame([("u1", 1, "i1", 0.5)], "user_id string, rank int, item_id string, score double") \
        .selectExpr("DATE'2025-01-01' score_date", "user_id", "rank", "item_id", "score")
    # A table created before the declaration: Delta's default statistics on every column.
    day1.write.format("delta").partitionBy("score_date").save(tables.table_path(cfg, spec.name))
    assert set(_stats_of_new_files(spark, cfg, spec.name)[0]["minValues"]) == {"user_id", "rank", "item_id", "score"}

    day2 = day1.selectExpr("DATE'2025-01-02' score_date", "user_id", "rank", "item_id", "score")
    tables.write(day2, cfg, spec.name, "replace_where", replace_where="score_date = '2025-01-02'",
                 partition_by=["score_date"])
    props = spark.sql(f"SHOW TBLPROPERTIES delta.`{tables.table_path(cfg, spec.name)}`").collect()
    assert {r["key"]: r["value"] for r in props}[catalog.STATS_COLUMNS_PROPERTY] == "user_id,rank"
    (stats,) = _stats_of_new_files(spark, cfg, spec.name)
    assert set(stats["minValues"]) == {"user_id", "rank"} and stats["numRecords"] == 1

    # A table the writer creates has them from its first commit; a table the catalog does not know keeps the default.
    tables.write(day2, cfg, catalog.GOLD_CHURN_DECAY.name, "overwrite", partition_by=["score_date"])
    assert set(_stats_of_new_files(spark, cfg, catalog.GOLD_CHURN_DECAY.name)[0]["minValues"]) == {"user_id"}
    tables.write(day2, cfg, "not_in_the_catalog", "overwrite")
    assert set(_stats_of_new_files(spark, cfg, "not_in_the_catalog")[0]["minValues"]) >= {"item_id", "score"}


def test_append_with_txn_commits_once_per_app_version(spark, cfg):
    """Delta's idempotent writes: the same (app id, version) again commits nothing, a higher version
    commits, another app id has its own versions."""
    df = spark.createDataFrame([("a", 1)], "k string, v int")
    tables.write(df, cfg, "appended", "append", txn=("app", 5))
    v = tables.version(spark, cfg, "appended")
    tables.write(df, cfg, "appended", "append", txn=("app", 5))
    tables.write(df, cfg, "appended", "append", txn=("app", 4))
    assert tables.version(spark, cfg, "appended") == v and tables.read(spark, cfg, "appended").count() == 1
    tables.write(df, cfg, "appended", "append", txn=("app", 6))
    tables.write(df, cfg, "appended", "append", txn=("other app", 1))
    assert tables.version(spark, cfg, "appended") == v + 2 and tables.read(spark, cfg, "appended").count() == 3
    with pytest.raises(ValueError, match="append only"):
        tables.write(df, cfg, "appended", "merge", keys=["k"], txn=("app", 7))
