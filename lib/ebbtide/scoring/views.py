"""The analysts' views over the scoring tables: `latest_recommendations` and `latest_churn_decay`
(the newest score date published in both tables) and `explained_recommendations`.

deploy/sql/02_score_views.sql holds the same views as DDL for platforms where they are created
ahead of the job; a test keeps the two in step. The tables themselves (columns, comments,
partitioning) are specified in ebbtide.catalog.
"""
from __future__ import annotations

from ebbtide import catalog

RECOMMENDATIONS = catalog.GOLD_RECOMMENDATIONS.name
CHURN_DECAY = catalog.GOLD_CHURN_DECAY.name

VIEWS = {
    "latest_recommendations": RECOMMENDATIONS,
    "latest_churn_decay": CHURN_DECAY,
}
EXPLAINED = "explained_recommendations"


def view_sql(database: str, view: str) -> str:
    """The view of the newest score date published in BOTH tables. A run publishes the two tables
    one commit after the other; a view on its own table's newest date showed the new day in
    latest_recommendations while latest_churn_decay still showed the previous one (a reader saw a
    half-published day between the two commits, found by the chaos bench's reader)."""
    table = f"{database}.{VIEWS[view]}"
    both = " INTERSECT ".join(f"SELECT score_date FROM {database}.{t}" for t in (RECOMMENDATIONS, CHURN_DECAY))
    return (
        f"CREATE OR REPLACE VIEW {database}.{view} "
        f"COMMENT 'The newest score_date published in both gold_recommendations and gold_churn_decay' AS "
        f"SELECT * FROM {table} WHERE score_date = (SELECT max(score_date) FROM ({both}))"
    )


def explained_sql(database: str) -> str:
    """One row per (recommendation, reason): every score date's recommendations with each `because`
    entry on its own row, reason 1 = most weight. OUTER, so a recommendation without reasons (scored
    before the column existed, or by a model that cannot explain itself) still shows, with nulls."""
    return (
        f"CREATE OR REPLACE VIEW {database}.{EXPLAINED} "
        f"COMMENT 'gold_recommendations with one row per because entry (reason 1 = most weight)' AS "
        f"SELECT r.score_date, r.user_id, r.rank, r.item_id, r.score, b.pos + 1 AS reason, "
        f"b.event.item_id AS because_item_id, b.event.ts AS because_ts, b.event.weight AS because_weight, "
        f"r.model_name, r.model_version "
        f"FROM {database}.{RECOMMENDATIONS} r LATERAL VIEW OUTER posexplode(r.because) b AS pos, event"
    )


def create_views(spark, database: str) -> list[str]:
    """(Re)create the latest_* views once both score tables exist (each reads both), and
    explained_recommendations once gold_recommendations has `because` (a table written before the
    column existed gains it at the next publish; every command starts by creating the views, so
    such a table must not stop them)."""
    if not all(spark.catalog.tableExists(f"{database}.{t}") for t in VIEWS.values()):
        return []
    made = []
    for view in VIEWS:
        spark.sql(view_sql(database, view))
        made.append(f"{database}.{view}")
    if "because" in spark.table(f"{database}.{RECOMMENDATIONS}").columns:
        spark.sql(explained_sql(database))
        made.append(f"{database}.{EXPLAINED}")
    return made
