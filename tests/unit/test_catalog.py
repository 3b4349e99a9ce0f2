"""The table specs (ebbtide.catalog) and what derives from them without Spark: types, the DDL of
deploy/sql/01_score_tables.sql, docs/tables.md."""
from __future__ import annotations

from pathlib import Path

import pytest

from ebbtide import catalog

ROOT = Path(__file__).resolve().parents[2]
DDL_FILE = ROOT / "deploy" / "sql" / "01_score_tables.sql"


@pytest.mark.parametrize("text, simple, ddl", [
    ("string", "string", "STRING"),
    ("long", "bigint", "BIGINT"),
    ("array<int>", "array<int>", "ARRAY<INT>"),
    ("map<string,string>", "map<string,string>", "MAP<STRING, STRING>"),
    ("array<struct<item_id: string, ts: timestamp, weight: double>>",
     "array<struct<item_id:string,ts:timestamp,weight:double>>",
     "ARRAY<STRUCT<item_id: STRING, ts: TIMESTAMP, weight: DOUBLE>>"),
    ("STRUCT<a INT, b ARRAY<FLOAT>>", "struct<a:int,b:array<float>>", "STRUCT<a: INT, b: ARRAY<FLOAT>>"),
])
def test_types_parse_and_render_as_spark_names_them(text, simple, ddl):
    assert catalog.simple_string(text) == simple
    assert catalog.type_ddl(text, upper=True) == ddl
    assert catalog.simple_string(catalog.type_ddl(text)) == simple


@pytest.mark.parametrize("bad", ["strin", "array<int", "map<string>", "struct<>", "array<int>>"])
def test_a_type_that_does_not_parse_is_refused(bad):
    with pytest.raises(ValueError, match="cannot read type"):
        catalog.parse_type(bad)


def test_spark_and_arrow_types_match_the_simple_string():
    pa = pytest.importorskip("pyarrow")
    pytest.importorskip("pyspark")
    for s in catalog.TABLES.values():
        for c in s.columns:
            assert catalog.spark_type(c.type).simpleString() == catalog.simple_string(c.type), (s.name, c.name)
        schema = s.arrow_schema()
        assert schema.names == list(s.names)
    because = catalog.GOLD_RECOMMENDATIONS.arrow_schema(["because"]).field("because").type
    assert because == pa.list_(pa.struct([("item_id", pa.string()), ("ts", pa.timestamp("us", tz="UTC")),
                                          ("weight", pa.float64())]))


def test_every_spec_is_whole():
    assert list(catalog.TABLES) == [s.name for s in catalog.TABLES.values()]
    for s in catalog.TABLES.values():
        assert s.comment and s.written_by.startswith("ebbtide ") and s.writes, s.name
        for c in s.columns:
            assert c.comment, (s.name, c.name)
        # A partition column never holds null (a key may: MERGE matches keys null-safely, and
        # ops_evaluations' k is null for return_cindex).
        for k in s.partition_by:
            assert not s.column(k).nullable, (s.name, k)
    with pytest.raises(ValueError, match="not columns"):
        catalog.TableSpec("t", "c", (catalog.Column("a", "int", "a"),), "ebbtide x", "w", keys=("b",))
    with pytest.raises(ValueError, match="cannot read type"):
        catalog.Column("a", "integr", "a")
    with pytest.raises(KeyError, match="no table spec named"):
        catalog.spec("gold_nothing")


def test_schema_ddl_is_what_the_jobs_hand_to_spark():
    assert catalog.OPS_SESSIONIZE_LOG.schema_ddl() == (
        "run_id string, mode string, bronze_version bigint, gap_minutes double, affected_users bigint, "
        "events_written bigint, sessions_written bigint, processed_at timestamp")
    assert catalog.GOLD_RECOMMENDATIONS.schema_ddl(["user_id", "because"]) == (
        "user_id string, because array<struct<item_id: string, ts: timestamp, weight: double>>")


def test_score_tables_ddl_file_is_the_specs_ddl():
    """deploy/sql/01_score_tables.sql: free comments, then exactly the statements the specs render
    (scripts/catalog_docs.py writes them)."""
    text = DDL_FILE.read_text()
    start = text.index("CREATE TABLE")
    assert text[start:] == catalog.create_tables_sql(catalog.SCORE_TABLES), (
        f"{DDL_FILE.relative_to(ROOT)} differs from the table specs: run `make catalog-docs`")
    assert all(line.startswith("--") or not line.strip() for line in text[:start].splitlines())


def test_tables_doc_is_the_specs_markdown():
    """docs/tables.md is generated (scripts/catalog_docs.py): it cannot drift from the specs."""
    doc = ROOT / "docs" / "tables.md"
    assert doc.read_text() == catalog.render_markdown(), \
        "docs/tables.md differs from the table specs: run `make catalog-docs`"
    for s in catalog.TABLES.values():
        assert f"\n## {s.name}\n" in doc.read_text()


def test_generator_check_mode_agrees_and_the_docs_link_to_it():
    import subprocess
    import sys

    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "catalog_docs.py"), "--check"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "(tables.md)" in (ROOT / "docs" / "architecture.md").read_text()
    assert "(docs/tables.md)" in (ROOT / "README.md").read_text()
    # Every table the architecture describes has a spec, and every spec a section there.
    import re

    described = set(re.findall(r"^### ([a-z_]+)", (ROOT / "docs" / "architecture.md").read_text(), re.M))
    assert set(catalog.TABLES) <= described
    tables = {d for d in described if d.startswith(("bronze_", "silver_", "gold_", "ops_", "quarantine_"))}
    assert tables == set(catalog.TABLES)
