"""Config section `score`: the nightly scoring job and its quality gate.

Kept free of pyspark and torch imports so that loading the config stays instant.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ebbtide.config import register_section


@dataclass(frozen=True)
class QualityConf:
    # Fraction of active users that must receive at least one recommendation. Below 1.0
    # because a user who consumed every allowed item legitimately gets none.
    min_user_coverage: float = 0.99
    # A day with fewer active users than this is almost always stale input, not a quiet day.
    min_active_users: int = 1
    # Largest tolerated share of nulls in any published column except the nullable lineage ones.
    max_null_rate: float = 0.0
    # Model scores outside [-max_abs_score, max_abs_score] mean a broken model or features.
    max_abs_score: float = 1.0e6


@register_section("score")
@dataclass(frozen=True)
class ScoreConf:
    # Recommendations per user.
    k: int = 20
    # Users whose last event falls within this many days before the score date are scored.
    lookback_days: int = 30
    # Drop items the user already interacted with (before the score date) from the candidates.
    exclude_consumed: bool = True
    # Only these item ids may be recommended (empty: every item the model knows).
    allow_items: list[str] = field(default_factory=list)
    # These item ids are never recommended.
    deny_items: list[str] = field(default_factory=list)
    # A table name in the ebbtide database, or a file (.txt one id a line, .csv/.parquet with an
    # item_id column) holding more ids for the allow / deny lists; empty: none.
    allow_source: str = ""
    deny_source: str = ""
    # Model: registered name (empty: mlflow.model_name) and the alias scored by default.
    model_name: str = ""
    model_alias: str = "champion"
    # churn_risk from p_return_30d: below churn_high_below -> high, below churn_medium_below -> medium, else low.
    churn_high_below: float = 0.3
    churn_medium_below: float = 0.6
    # top_fading: how many categories (or items) with the largest interest lost since the last event.
    top_fading: int = 5
    # category: needs item categories in the model's vocabulary, else falls back to item.
    fading_by: Literal["category", "item"] = "category"
    # because: up to this many past events of the user that weighed most for each recommended item
    # (0: empty lists, and no second pass of the model over the windows).
    because_top: int = 3
    # Users per inference call; the score matrix of one call is batch_users x catalogue floats.
    batch_users: int = 512
    # Upper bound on one call's score matrix, in millions of floats (shrinks batch_users for big catalogues).
    max_batch_mfloats: float = 32.0
    # Torch threads per Python worker; 0 = torch's default. With several workers per machine,
    # cores / workers avoids oversubscription.
    torch_threads: int = 0
    # Partitions of the scoring input; 0 = from the data and the cluster: one per
    # users_per_partition active users, and at least two per core of the session
    # (scoring.run.scoring_partitions).
    partitions: int = 0
    users_per_partition: int = 50_000
    quality: QualityConf = field(default_factory=QualityConf)
