"""deploy/sql/ on real Spark SQL and Delta: the DDL matches what the job writes, the views pick
the newest score date, and every analyst query runs and answers correctly on small tables."""
from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.spark

SQL = Path(__file__).resolve().parents[2] / "deploy" / "sql"
D1, D2 = dt.date(2025, 3, 9), dt.date(2025, 3, 10)
AT = dt.datetime(2025, 3, 10, 1, 0, tzinfo=dt.timezone.utc)
T1, T2 = dt.datetime(2025, 3, 1, 8, tzinfo=dt.timezone.utc), dt.datetime(2025, 3, 8, 20, tzinfo=dt.timezone.utc)
# Reasons of a recommendation: past events of the user, most weight first.
BECAUSE = [{"item_id": "c", "ts": T2, "weight": 0.6}, {"item_id": "x", "ts": T1, "weight": 0.3}]


def statements(path: Path) -> list[str]:
    from ebbtide.sql import split_statements

    return split_statements(path.read_text())


@pytest.fixture(scope="module")
def db(spark, tmp_path_factory):
    """A fresh database holding the tables made by the DDL file, filled with two score dates
    (read-only for the tests, so built once for the module)."""
    name = f"q_{abs(hash(tmp_path_factory.mktemp('sql'))) % 10**8}"
    spark.sql(f"CREATE DATABASE {name}")
    spark.catalog.setCurrentDatabase(name)
    try:
        for s in statements(SQL / "01_score_tables.sql"):
            spark.sql(s)
        recs = [
            # yesterday: u1 had a, b, c; u2 had x (scored before `because` existed: null)
            (D1, "u1", 1, "a", 3.0, "ebbtide", 1, "r1", AT, None), (D1, "u1", 2, "b", 2.0, "ebbtide", 1, "r1", AT, None),
            (D1, "u1", 3, "c", 1.0, "ebbtide", 1, "r1", AT, None), (D1, "u2", 1, "x", 1.0, "ebbtide", 1, "r1", AT, None),
            # today: u1 keeps a, b and gains d; u3 is new; u2 not scored
            (D2, "u1", 1, "b", 3.5, "ebbtide", 2, "r2", AT, BECAUSE[:1]),
            (D2, "u1", 2, "a", 2.5, "ebbtide", 2, "r2", AT, BECAUSE),
            (D2, "u1", 3, "d", 0.5, "ebbtide", 2, "r2", AT, []), (D2, "u3", 1, "a", 0.1, "ebbtide", 2, "r2", AT, []),
        ]
        spark.createDataFrame(recs, spark.table("gold_recommendations").schema).write.insertInto("gold_recommendations")
        fading = [{"item_or_category": "drama", "decayed_interest": 0.1, "interest_at_last_event": 0.4}]
        churn = [
            (D1, "u1", 1.0, 0.5, 0.9, 3.0, 2.0, "low", fading, "ebbtide", 1, "r1", AT, None, None),
            (D2, "u1", 0.5, 0.6, 0.95, 2.0, 2.0, "low", fading, "ebbtide", 2, "r2", AT, 4, 1.5),
            (D2, "u3", 20.0, 0.05, 0.2, 40.0, 0.5, "high", fading, "ebbtide", 2, "r2", AT, 0, 0.0),
            (D2, "u4", 10.0, 0.02, 0.1, 60.0, 45.0, "high", [], "ebbtide", 2, "r2", AT, 0, 0.0),
            (D2, "u5", 5.0, 0.3, 0.5, 9.0, 8.0, "medium", [], "ebbtide", 2, "r2", AT, 1, 0.5),
        ]
        spark.createDataFrame(churn, spark.table("gold_churn_decay").schema).write.insertInto("gold_churn_decay")
        vocab = [("a", 2, "drama"), ("b", 3, "comedy"), ("c", 4, "drama"), ("d", 5, "horror"), ("x", 6, None)]
        spark.createDataFrame(vocab, "item_id string, item_index int, category string").write.format("delta").saveAsTable("gold_item_vocab")
        for s in statements(SQL / "02_score_views.sql"):
            spark.sql(s)
        yield name
    finally:
        spark.catalog.setCurrentDatabase("default")


def run_query(spark, name: str, variables: dict[str, str] | None = None):
    """Every statement of the file in order (after its DECLAREs, SET VAR for the given values);
    returns the rows of each SELECT."""
    out = []
    for s in statements(SQL / name):
        spark.sql(s)
        if re.match(r"(?is)^\s*DECLARE", s):
            var = re.search(r"(?i)VARIABLE\s+(\w+)", s).group(1)
            if variables and var in variables:
                spark.sql(f"SET VAR {var} = '{variables[var]}'")
        else:
            out.append(spark.sql(s).collect())
    return out


def test_ddl_matches_the_job_schema_and_comments(spark, db):
    import datetime as dt

    from ebbtide import catalog
    from ebbtide.scoring import transform
    from ebbtide.scoring.inference import SCORED_DDL

    # The job's own output schemas: its transforms over an empty frame of what the workers return.
    scored = spark.createDataFrame([], SCORED_DDL)
    lineage = dict(score_date=dt.date(2025, 1, 1), model_name="m", model_version=1, run_id="r",
                   scored_at=dt.datetime(2025, 1, 1))
    for table, cols, out in [
        ("gold_recommendations", transform.RECS_COLUMNS, transform.recommendations(scored, lineage)),
        ("gold_churn_decay", transform.CHURN_COLUMNS,
         transform.churn_decay(scored, lineage, high_below=0.2, medium_below=0.5)),
    ]:
        job = {f.name: f.dataType for f in out.schema.fields}
        schema = spark.table(table).schema
        assert schema.names == cols
        for f in schema.fields:
            assert f.dataType == job[f.name], (table, f.name)
        desc = {r.col_name: r.comment for r in spark.sql(f"DESCRIBE TABLE {table}").collect()}
        spec = catalog.spec(table)
        for c, text in spec.comments.items():
            assert desc[c] == text, (table, c)
        ext = {r.col_name: r.data_type for r in spark.sql(f"DESCRIBE TABLE EXTENDED {table}").collect()}
        assert ext.get("Comment") == spec.comment
        parts = [r.col_name for r in spark.sql(f"DESCRIBE TABLE {table}").collect()]
        assert parts[parts.index("# Partition Information") + 2] == "score_date" == spec.partition_by[0]


def test_views_show_the_newest_date(spark, db):
    assert {r[0] for r in spark.sql("SELECT DISTINCT score_date FROM latest_recommendations").collect()} == {D2}
    assert spark.sql("SELECT count(*) FROM latest_churn_decay").first()[0] == 4
    # The job's own view text says the same as the DDL file.
    from ebbtide.scoring.views import create_views

    assert create_views(spark, db) == [f"{db}.latest_recommendations", f"{db}.latest_churn_decay",
                                       f"{db}.explained_recommendations"]
    assert spark.sql("SELECT count(*) FROM latest_recommendations").first()[0] == 4


def test_explained_recommendations_has_a_row_per_reason(spark, db):
    """The DDL file's view (and the job's, recreated by the test above: the two must read alike):
    one row per because entry, a recommendation without reasons kept once with nulls."""
    rows = spark.sql("SELECT * FROM explained_recommendations WHERE score_date = DATE'2025-03-10' "
                     "ORDER BY user_id, rank, reason").collect()
    got = [(r.user_id, r.item_id, r.reason, r.because_item_id, r.because_weight) for r in rows]
    assert got == [("u1", "b", 1, "c", 0.6), ("u1", "a", 1, "c", 0.6), ("u1", "a", 2, "x", 0.3),
                   ("u1", "d", None, None, None), ("u3", "a", None, None, None)]
    assert rows[2].because_ts == dt.datetime.fromtimestamp(T1.timestamp())  # PySpark hands back local naive times
    assert spark.sql("SELECT count(*) FROM explained_recommendations WHERE score_date = DATE'2025-03-09'").first()[0] == 4


def test_views_show_a_day_only_once_both_tables_have_it(spark, tmp_path):
    """`ebbtide score` publishes gold_recommendations, then gold_churn_decay. Each view used to
    follow its own table's newest date, so between the two commits latest_recommendations showed
    the new day and latest_churn_decay the previous one (a half-published day, found by the chaos
    bench's reader). Both views now show the newest day published in both tables."""
    from ebbtide.scoring.views import create_views

    name = f"v_{abs(hash(tmp_path)) % 10**8}"
    before = spark.catalog.currentDatabase()
    spark.sql(f"CREATE DATABASE {name}")
    spark.catalog.setCurrentDatabase(name)
    try:
        for s in statements(SQL / "01_score_tables.sql"):
            spark.sql(s)
        recs = [(d, "u1", 1, "a", 1.0, "ebbtide", 1, "r", AT, []) for d in (D1, D2)]
        spark.createDataFrame(recs, spark.table("gold_recommendations").schema).write.insertInto("gold_recommendations")
        churn = [(D1, "u1", 1.0, 0.5, 0.9, 3.0, 2.0, "low", [], "ebbtide", 1, "r", AT, 1, 1.0)]
        spark.createDataFrame(churn, spark.table("gold_churn_decay").schema).write.insertInto("gold_churn_decay")

        def shown():
            return {v: {r[0] for r in spark.sql(f"SELECT DISTINCT score_date FROM {v}").collect()}
                    for v in ("latest_recommendations", "latest_churn_decay")}

        for s in statements(SQL / "02_score_views.sql"):
            spark.sql(s)
        assert shown() == {"latest_recommendations": {D1}, "latest_churn_decay": {D1}}  # D2: recommendations only
        assert create_views(spark, name)[:2] == [f"{name}.latest_recommendations", f"{name}.latest_churn_decay"]
        assert shown() == {"latest_recommendations": {D1}, "latest_churn_decay": {D1}}
        churn2 = [(D2, "u1", 1.0, 0.5, 0.9, 3.0, 2.0, "low", [], "ebbtide", 1, "r", AT, 1, 1.0)]
        spark.createDataFrame(churn2, spark.table("gold_churn_decay").schema).write.insertInto("gold_churn_decay")
        assert shown() == {"latest_recommendations": {D2}, "latest_churn_decay": {D2}}
    finally:
        spark.catalog.setCurrentDatabase(before)


def test_q01_recommendations_for_a_user(spark, db):
    (rows,) = run_query(spark, "q01_recommendations_for_user.sql", {"target_user": "u1"})
    assert [(r.rank, r.item_id, r.category) for r in rows] == [(1, "b", "comedy"), (2, "a", "drama"), (3, "d", "horror")]
    assert all(r.score_date == D2 and r.model_version == 2 for r in rows)


def test_q02_high_churn_risk(spark, db):
    (rows,) = run_query(spark, "q02_high_churn_risk.sql")
    assert [r.user_id for r in rows] == ["u4", "u3"]  # least likely to return first
    assert rows[1].fading == ["drama"] and rows[0].fading == []


def test_q03_half_life_distribution(spark, db):
    summary, hist = run_query(spark, "q03_half_life_distribution.sql")
    assert summary[0].users == 4 and summary[0].median_days == 2.0
    assert {r.half_life_bucket: r.users for r in hist} == {
        "1: < 1 day": 1, "2: 1-7 days": 1, "3: 7-30 days": 1, "4: 30-90 days": 1}


def test_q04_recommendation_changes(spark, db):
    (rows,) = run_query(spark, "q04_recommendation_changes.sql")
    got = {r.user_id: (r.kept, r.added, r.dropped, r.jaccard) for r in rows}
    assert got == {"u1": (2, 1, 1, 0.5), "u2": (0, 0, 1, 0.0), "u3": (0, 1, 0, 0.0)}


def test_q05_model_versions(spark, db):
    (rows,) = run_query(spark, "q05_model_versions.sql")
    got = [(r.table_name, r.score_date, r.model_version, r.users, r.rows) for r in rows]
    assert got == [
        ("gold_churn_decay", D2, 2, 4, 4), ("gold_recommendations", D2, 2, 2, 4),
        ("gold_churn_decay", D1, 1, 1, 1), ("gold_recommendations", D1, 1, 2, 4),
    ]


def test_q06_churn_risk_by_day(spark, db):
    (rows,) = run_query(spark, "q06_churn_risk_by_day.sql")
    assert [(r.score_date, r.high, r.medium, r.low) for r in rows] == [(D2, 2, 1, 1), (D1, 0, 0, 1)]


def test_q07_why_recommended(spark, db):
    (rows,) = run_query(spark, "q07_why_recommended.sql", {"target_user": "u1", "target_item": "a"})
    got = [(r.score_date, r.rank, r.category, r.reason, r.because_item_id, r.because_category, r.because_weight)
           for r in rows]
    # a was recommended on both days: the newest one answers, most weight first
    assert got == [(D2, 2, "drama", 1, "c", "drama", 0.6), (D2, 2, "drama", 2, "x", None, 0.3)]
    (rows,) = run_query(spark, "q07_why_recommended.sql", {"target_user": "u1", "target_item": "c"})
    assert [(r.score_date, r.reason, r.because_item_id) for r in rows] == [(D1, None, None)]  # scored before `because`


def test_every_query_file_has_a_test():
    tested = {n for n in globals() if n.startswith("test_q")}
    files = sorted(p.stem for p in SQL.glob("q*.sql"))
    assert len(files) >= 5
    assert {f"test_{f.split('_')[0]}" for f in files} <= {t.split("_", 2)[0] + "_" + t.split("_", 2)[1] for t in tested}
