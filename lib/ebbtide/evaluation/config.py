"""Config section `evaluate` (kept free of heavy imports so that loading the config stays instant)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ebbtide.config import register_section


@register_section("evaluate")
@dataclass(frozen=True)
class EvaluateConf:
    # Model scored by default: the registered challenger.
    model_uri: str = "models:/ebbtide@challenger"
    split: Literal["valid", "test"] = "test"
    # temporal: the split column of gold_training_examples (global cut-offs T1/T2);
    # leave-last-out: each user's last uncensored target is the test example (for papers).
    protocol: Literal["temporal", "leave-last-out"] = "temporal"
    ks: list[int] = field(default_factory=lambda: [10, 20, 50])
    # Remove the items already in the input window from the ranking (off: re-consumption counts).
    exclude_history: bool = False
    # Secondary sampled metrics: negatives per example, seed (persisted under the storage root).
    sampled_negatives: int = 100
    sampled_seed: int = 2024
    # Users scored per chunk of the full-catalogue ranking (memory: chunk x n_items floats).
    chunk_size: int = 1024
    # Examples collected to the driver at most; above it a uniform sample (seeded) is evaluated.
    max_examples: int = 2000000
    # Churn labels: returned within these many days after the as-of cut.
    churn_horizons_days: list[int] = field(default_factory=lambda: [7, 30])
    calibration_bins: int = 10
    # Baselines (fitted on the train split only).
    popularity_half_life_days: float = 14.0
    cooccurrence_half_life_days: float = 30.0
    # The gate: the challenger must reach champion + tolerance on the primary metric
    # (negative: accept a small drop) and beat every baseline by more than baseline_margin.
    primary_metric: str = "ndcg@10"
    tolerance: float = 0.0
    baseline_margin: float = 0.0
    require_beat_baselines: bool = True
    champion_alias: str = "champion"
    challenger_alias: str = "challenger"
    # Apply the gate (move the alias); false: compute and log the decision only.
    promote: bool = True
    report_dir: str = "{root}/reports/evaluate"
