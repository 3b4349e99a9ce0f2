"""Pure arithmetic of the monitor on small aggregates (bin counts, per-bin sums): no Spark.

- PSI (population stability index) of two binned distributions: sum over bins of
  ``(a - e) * ln(a / e)`` with ``e``, ``a`` the reference and current shares, each floored at
  ``floor`` so that an empty bin counts as a rare one instead of an infinite term.
- Served-ranking metrics of one user: the recommendations as published (ranks 1..k, no re-ranking)
  against the set of items of the user's day. HR@k = any hit; NDCG@k = DCG / IDCG with
  DCG = sum over hits of 1 / log2(rank + 1) and IDCG the best DCG that many items can reach in k.
- Calibration from equal-width bins of predicted probability ``[i/n, (i+1)/n)`` (1.0 in the last):
  Brier score, expected calibration error and the reliability table.
- The status of a metric: ``ok`` / ``warn`` / ``alert`` from its two thresholds and its bound.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Optional, Sequence

OK, WARN, ALERT = "ok", "warn", "alert"
STATUSES = (OK, WARN, ALERT)

# Metric name -> (config key under monitor.thresholds, bound). "lower": breaches below the
# threshold; "upper": above it; "abs": |value| above it. Names ending in ".*" match a prefix.
BOUNDS: dict[str, tuple[str, str]] = {
    "inputs.events": ("events", "lower"),
    "inputs.new_user_share": ("new_user_share", "upper"),
    "inputs.new_item_share": ("new_item_share", "upper"),
    "drift.gap_psi": ("gap_psi", "upper"),
    "drift.event_type_psi": ("event_type_psi", "upper"),
    "outputs.recommended_users": ("recommended_users", "lower"),
    "outputs.score_psi": ("score_psi", "upper"),
    "outputs.churn_share_change.*": ("churn_tier_change", "abs"),
    "outcomes.hit_rate@*": ("hit_rate", "lower"),
    "outcomes.ndcg@*": ("ndcg", "lower"),
    "outcomes.coverage@*": ("coverage", "lower"),
    "calibration.*.brier": ("brier", "upper"),
    "calibration.*.ece": ("ece", "upper"),
}


def bound_of(metric: str) -> Optional[tuple[str, str]]:
    """(threshold key, bound) of a metric name, or None for a metric that is only recorded."""
    if metric in BOUNDS:
        return BOUNDS[metric]
    for pattern, spec in BOUNDS.items():
        if "*" in pattern:
            head, _, tail = pattern.partition("*")
            if metric.startswith(head) and metric.endswith(tail) and len(metric) > len(head) + len(tail):
                return spec
    return None


def _finite(v: Any) -> bool:
    return v is not None and isinstance(v, (int, float)) and math.isfinite(float(v))


def classify(value: Optional[float], warn: Optional[float], alert: Optional[float], bound: Optional[str]) -> str:
    """ok / warn / alert. A missing or non-finite value, or an unset threshold, never breaches."""
    if bound is None or not _finite(value):
        return OK
    x = abs(float(value)) if bound == "abs" else float(value)

    def beyond(t: Optional[float]) -> bool:
        if t is None:
            return False
        return x < t if bound == "lower" else x > t

    if beyond(alert):
        return ALERT
    if beyond(warn):
        return WARN
    return OK


def check_band(key: str, warn: Optional[float], alert: Optional[float], bound: str) -> Optional[str]:
    """Why a pair of thresholds cannot work (warn past alert), or None."""
    if warn is None or alert is None:
        return None
    if bound == "lower" and warn < alert:
        return f"monitor.thresholds.{key}: warn {warn:g} is below alert {alert:g} (a lower bound warns first: warn >= alert)"
    if bound != "lower" and warn > alert:
        return f"monitor.thresholds.{key}: warn {warn:g} is above alert {alert:g} (an upper bound warns first: warn <= alert)"
    return None


@dataclass
class Metric:
    """One ops_monitoring row before its date and lineage: the value, what it describes, its
    thresholds and status (filled by :func:`judge`)."""

    name: str
    value: Optional[float]
    subject: str = ""
    detail: dict[str, Any] = field(default_factory=dict)
    bound: Optional[str] = None
    warn: Optional[float] = None
    alert: Optional[float] = None
    status: str = OK

    def breach(self) -> str:
        """One phrase naming the metric, its value and the threshold it crossed."""
        level = self.alert if self.status == ALERT else self.warn
        op = "<" if self.bound == "lower" else ">"
        key = bound_of(self.name)
        where = f"monitor.thresholds.{key[0]}.{self.status}" if key else "threshold"
        shown = f"|{_fmt(self.value)}|" if self.bound == "abs" else _fmt(self.value)
        return f"{self.name} = {shown} {op} {where} {level:g}" if level is not None else self.name


def _fmt(v: Optional[float]) -> str:
    return "null" if not _finite(v) else f"{float(v):.4g}"


def judge(metrics: Iterable[Metric], thresholds: Any) -> list[Metric]:
    """Set each metric's bound, thresholds and status from ``monitor.thresholds`` (a
    ThresholdsConf, or any object whose attributes are objects with ``warn`` / ``alert``)."""
    out = []
    for m in metrics:
        spec = bound_of(m.name)
        if spec is not None:
            band = getattr(thresholds, spec[0])
            m.bound, m.warn, m.alert = spec[1], band.warn, band.alert
            m.status = classify(m.value, m.warn, m.alert, m.bound)
        else:
            m.bound, m.warn, m.alert, m.status = None, None, None, OK
        out.append(m)
    return out


# ------------------------------------------------------------------------------------------
# Drift
# ------------------------------------------------------------------------------------------


def shares(counts: Mapping[Any, float]) -> dict[Any, float]:
    total = float(sum(counts.values()))
    return {k: (float(v) / total if total > 0 else 0.0) for k, v in counts.items()}


def psi(reference: Mapping[Any, float], current: Mapping[Any, float], floor: float = 1e-4) -> Optional[float]:
    """Population stability index of two binned counts (bins absent on one side count 0).
    None when either side is empty."""
    if sum(reference.values()) <= 0 or sum(current.values()) <= 0:
        return None
    e, a = shares(reference), shares(current)
    total = 0.0
    for b in sorted(set(e) | set(a), key=str):
        pe = max(e.get(b, 0.0), floor)
        pa = max(a.get(b, 0.0), floor)
        total += (pa - pe) * math.log(pa / pe)
    return total


def bin_labels(edges: Sequence[float], unit: str = "s") -> list[str]:
    """Labels of the bins that ``edges`` cut: ``< e0``, ``e0-e1``, ..., ``>= en`` (seconds
    written as s / min / h / d)."""

    def human(x: float) -> str:
        if unit != "s":
            return f"{x:g}"
        for size, name in ((86400.0, "d"), (3600.0, "h"), (60.0, "min")):
            if x >= size:
                return f"{x / size:g}{name}"
        return f"{x:g}s"

    e = list(edges)
    if not e:
        return ["all"]
    return [f"< {human(e[0])}"] + [f"{human(a)}-{human(b)}" for a, b in zip(e, e[1:])] + [f">= {human(e[-1])}"]


def quantile_edges(quantiles: Sequence[Optional[float]]) -> list[float]:
    """Increasing, distinct bin edges from quantiles (ties among them collapse into one edge)."""
    out: list[float] = []
    for q in quantiles:
        if _finite(q) and (not out or float(q) > out[-1]):
            out.append(float(q))
    return out


# ------------------------------------------------------------------------------------------
# Served ranking
# ------------------------------------------------------------------------------------------


def discount(rank: int) -> float:
    """DCG weight of 1-based rank r: 1 / log2(r + 1)."""
    return 1.0 / math.log2(rank + 1.0)


def ideal_dcg(n_relevant: int, k: int) -> float:
    """The best DCG@k a set of n relevant items can reach (all of them at the top)."""
    return sum(discount(r) for r in range(1, min(int(n_relevant), int(k)) + 1))


def served_ranking(hit_ranks: Iterable[int], n_relevant: int, k: int) -> tuple[float, float]:
    """(HR@k, NDCG@k) of one user: ``hit_ranks`` the 1-based ranks of the served items that are in
    the user's day, ``n_relevant`` the number of distinct items of that day."""
    ranks = sorted({int(r) for r in hit_ranks if 1 <= int(r) <= k})
    idcg = ideal_dcg(n_relevant, k)
    hit = 1.0 if ranks else 0.0
    ndcg = sum(discount(r) for r in ranks) / idcg if idcg > 0 else 0.0
    return hit, ndcg


# ------------------------------------------------------------------------------------------
# Calibration
# ------------------------------------------------------------------------------------------


def calibration(bins: Iterable[Mapping[str, Any]], n_bins: int) -> dict[str, Any]:
    """Brier score, ECE, base rate and the reliability table from per-bin sums.

    Each bin: ``bin`` (0..n_bins-1), ``n``, ``sum_p`` (predictions), ``sum_y`` (outcomes 0/1) and
    ``sum_sq`` (sum of (p - y)^2). Empty bins are left out of the table."""
    rows = sorted((b for b in bins if (b.get("n") or 0) > 0), key=lambda b: int(b["bin"]))
    n = float(sum(b["n"] for b in rows))
    if n == 0:
        return {"n": 0, "brier": None, "ece": None, "base_rate": None, "mean_pred": None, "bins": []}
    table = []
    ece = 0.0
    for b in rows:
        i, cnt = int(b["bin"]), float(b["n"])
        mean_p, rate = float(b["sum_p"]) / cnt, float(b["sum_y"]) / cnt
        ece += cnt / n * abs(mean_p - rate)
        table.append({"bin": i, "lo": i / n_bins, "hi": (i + 1) / n_bins, "n": int(cnt),
                      "mean_pred": mean_p, "observed": rate})
    return {
        "n": int(n),
        "brier": float(sum(b["sum_sq"] for b in rows)) / n,
        "ece": ece,
        "base_rate": float(sum(b["sum_y"] for b in rows)) / n,
        "mean_pred": float(sum(b["sum_p"] for b in rows)) / n,
        "bins": table,
    }
