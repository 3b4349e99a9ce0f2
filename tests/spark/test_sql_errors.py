"""`ebbtide sql` failures end in one line naming the fix, not in a JVM stack trace (main called
in this process, on the shared Spark session)."""
from __future__ import annotations

import pytest

from ebbtide.cli import main


@pytest.fixture
def sql(spark, cfg, capfd):
    """Run `ebbtide sql ...` against the test's own warehouse; (exit status, stdout, stderr)."""
    before = spark.catalog.currentDatabase()

    def run(*argv: str) -> tuple[int, str, str]:
        capfd.readouterr()
        status = main(["sql", *argv, "--set", f"storage.root={cfg.storage.root}",
                       "--set", f"storage.database={cfg.storage.database}"])
        out, err = capfd.readouterr()
        return status, out, err

    yield run
    spark.catalog.setCurrentDatabase(before)


def test_a_missing_table_is_one_line_naming_the_stage(sql):
    status, out, err = sql("SELECT count(*) FROM bronze_events")
    assert status == 1
    assert "Traceback" not in err and "at org.apache" not in err
    line = err.rstrip("\n").split("\n")[-1]
    assert line.startswith("ebbtide sql: error: table or view bronze_events not found; ")
    assert "run the stage that writes it (ebbtide ingest)" in line


def test_a_syntax_error_is_one_line_and_a_usage_error(sql):
    status, _, err = sql("SELEC 1")
    assert status == 2
    assert "Traceback" not in err
    line = err.rstrip("\n").split("\n")[-1]
    assert line.startswith("ebbtide sql: error: SQL syntax: ") and line.endswith("; fix the statement")


def test_a_working_query_still_prints_its_summary(sql):
    status, out, _ = sql("SELECT 1 AS one")
    assert status == 0 and '"statements": 1' in out
