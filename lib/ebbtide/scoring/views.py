"""What analysts see in the catalog: table and column comments, the two `latest_*` views and
`explained_recommendations`.

deploy/sql/ holds the same definitions as DDL for platforms where the tables are created
ahead of the job; a test keeps the two in step.
"""
from __future__ import annotations

RECOMMENDATIONS = "gold_recommendations"
CHURN_DECAY = "gold_churn_decay"

TABLE_COMMENTS = {
    RECOMMENDATIONS: (
        "Nightly top-K recommendations per active user, as of score_date 00:00 UTC (only events "
        "before it are used). One partition per score_date, a rerun replaces that date only."
    ),
    CHURN_DECAY: (
        "Nightly churn and interest-decay scores per active user, as of score_date 00:00 UTC. "
        "One partition per score_date, a rerun replaces that date only."
    ),
}

_LINEAGE = {
    "model_name": "registered model name (or the model URI when scored from a bare URI)",
    "model_version": "registered model version, null when scored from a bare URI",
    "run_id": "id of the scoring run that wrote the row",
    "scored_at": "UTC time the scoring run started",
}

COLUMN_COMMENTS = {
    RECOMMENDATIONS: {
        "score_date": "the day scored: features use events before this date 00:00 UTC (partition)",
        "user_id": "user scored (active within score.lookback_days before score_date)",
        "rank": "1 = best, at most score.k per user",
        "item_id": "recommended item, items the user already consumed are excluded unless configured otherwise",
        "score": "model score (logit) of the item for this user at the time elapsed since the last event, "
                 "comparable within a user and a model version only",
        **_LINEAGE,
        "because": "up to score.because_top past events of the user that weighed most for this item in the model, "
                   "most weight first: item_id, ts (event time), weight (share of the event in the positive "
                   "attribution over the window of the user, 0..1); empty when the model cannot explain itself, "
                   "null on rows scored before the column existed",
    },
    CHURN_DECAY: {
        "score_date": "the day scored: features use events before this date 00:00 UTC (partition)",
        "user_id": "user scored (active within score.lookback_days before score_date)",
        "days_since_last_event": "days from the last event of the user to score_date 00:00 UTC",
        "p_return_7d": "probability of any event within 7 days after score_date, given none since the last event",
        "p_return_30d": "probability of any event within 30 days after score_date, given none since the last event",
        "expected_days_to_return": "expected days from score_date to the next event (see docs: Scoring)",
        "interest_half_life_days": "days for the urge of this user to come back to fall to half (the return-time hazard of the model)",
        "churn_risk": "high / medium / low from p_return_30d and score.churn_high_below / churn_medium_below",
        "top_fading": "categories (or items) whose predicted interest fell most since the last event: "
                      "item_or_category, decayed_interest (share of next-item probability now), "
                      "interest_at_last_event (the same share right after the last event)",
        **_LINEAGE,
        "events_last_7d": "events of the user in the 7 days before score_date (among the last sequences.max_len)",
        "activity_ratio": "events_last_7d over the usual pace of the user (events per 7 days in the window, first event to "
                          "score_date, at least 7 days): 0 silent lately, < 1 slowing down, 1 as usual, > 1 more active",
    },
}

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
