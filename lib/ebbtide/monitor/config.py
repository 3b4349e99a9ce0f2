"""Config section `monitor`: daily input drift, output and outcome metrics, and their thresholds.

Kept free of pyspark imports so that loading the config stays instant.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from ebbtide.config import register_section


@dataclass(frozen=True)
class Band:
    """Two thresholds of one metric; null leaves that level unchecked. Whether a value beyond a
    threshold is above or below it is the metric's own (``ebbtide.monitor.metrics.BOUNDS``)."""

    warn: Optional[float] = None
    alert: Optional[float] = None


def _band(warn: Optional[float], alert: Optional[float]):
    return field(default_factory=lambda: Band(warn, alert))


@dataclass(frozen=True)
class ThresholdsConf:
    # Lower bounds: the metric breaches when it falls below the threshold.
    events: Band = _band(None, 1.0)  # events on the day (0: stale input)
    recommended_users: Band = _band(1.0, None)  # users with recommendations for the score date
    hit_rate: Band = _band(None, None)  # share of returning users with a hit in the top k
    ndcg: Band = _band(None, None)
    coverage: Band = _band(None, None)  # share of the catalogue in someone's top k
    # Upper bounds: the metric breaches when it rises above the threshold.
    new_user_share: Band = _band(None, None)
    new_item_share: Band = _band(None, None)
    gap_psi: Band = _band(0.1, 0.25)  # PSI of the gap distribution against the training snapshot
    event_type_psi: Band = _band(0.1, 0.25)
    score_psi: Band = _band(0.1, 0.25)  # PSI of the day's scores against the previous score date's
    churn_tier_change: Band = _band(0.05, 0.10)  # |day-over-day change| of a churn tier's share
    brier: Band = _band(None, 0.25)
    ece: Band = _band(0.05, 0.10)


@register_section("monitor")
@dataclass(frozen=True)
class MonitorConf:
    # Cut-off of the served-ranking metrics (hit rate, NDCG, coverage at k).
    k: int = 10
    # Drift reference: the last reference_days days of the training snapshot's train split, which
    # ends at reference_end (empty: the ebbtide.split.valid_start of gold_training_examples). 0 = all.
    reference_days: int = 28
    reference_end: str = ""
    # Bin edges (seconds) of the gap distribution: the time between a user's consecutive events.
    gap_edges_s: list[float] = field(
        default_factory=lambda: [60.0, 600.0, 3600.0, 21600.0, 86400.0, 259200.0, 604800.0, 2592000.0]
    )
    # Quantile bins of the previous score date's scores for the day-over-day score PSI.
    score_bins: int = 10
    # Share floor for empty bins in PSI (ln(0) is undefined).
    psi_floor: float = 0.0001
    # Horizons (days) whose p_return_<h>d is checked against who came back: 7 and / or 30.
    calibration_horizons_days: list[int] = field(default_factory=lambda: [7, 30])
    calibration_bins: int = 10
    report_dir: str = "{root}/reports/monitor"
    # Days of ops_monitoring history in the report's hit-rate plot.
    report_days: int = 30
    # Also measure a most-popular table served to the same users on the same score date
    # (outcomes.popular_hit_rate@k, outcomes.popular_ndcg@k): what the served table has to beat.
    popular_baseline: bool = True
    thresholds: ThresholdsConf = field(default_factory=ThresholdsConf)
