"""The evaluation report: a Markdown page with PNG figures (metric table, calibration plot,
decay curves of a few users). Pure in -> files out; no Spark, no MLflow."""
from __future__ import annotations

import math
import os
from typing import Any, Callable, Optional

import numpy as np

RANK_COLUMNS = ("ndcg@10", "recall@10", "hr@10", "mrr@10", "ndcg@20", "hr@20", "ndcg@50", "hr@50", "coverage@10",
                "sampled_ndcg@10", "sampled_hr@10")
VIEW_TITLES = {
    "nightly": "Nightly view (headline): each (user, day) ranked from the window before midnight UTC "
               "against the set of items of the user's day",
    "request_time": "Request-time view: each event's item ranked as of that event's time "
                    "(sampled = persisted negatives, secondary)",
}

# What a results table keeps of an evaluate summary, per model: the nightly view's metrics, the
# request-time view's as request_time_{metric}, and the churn ROC-AUCs under these names.
FIGURE_METRICS = ("ndcg@10", "recall@10", "mrr@10")
CHURN_FIGURES = {"churn_auc": "churn_roc_auc_7d", "churn_auc_30d": "churn_roc_auc_30d",
                 "churn_auc_recent": "churn_roc_auc_7d_recent", "churn_auc_30d_recent": "churn_roc_auc_30d_recent"}


def figures_by_model(summary: dict) -> dict[str, dict[str, float]]:
    """An evaluate summary's figures as model -> {figure: value} (FIGURE_METRICS, request_time_*,
    CHURN_FIGURES); the evaluated model is "ebbtide" whatever its variant."""
    out: dict[str, dict[str, float]] = {}
    for metric in FIGURE_METRICS:
        for model, v in summary.get(metric, {}).items():
            out.setdefault(model, {})[metric] = v
        for model, v in summary.get("request_time", {}).get(metric, {}).items():
            out.setdefault(model, {})[f"request_time_{metric}"] = v
    for key, horizon in CHURN_FIGURES.items():
        for model, v in (summary.get(horizon) or {}).items():
            out.setdefault(model, {})[key] = v
    return out


def _fmt(v: Any) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def markdown_table(rows: dict[str, dict[str, float]], columns, bold_best: bool = True) -> str:
    cols = [c for c in columns if any(c in r for r in rows.values())]
    best = {}
    for c in cols:
        vals = [r.get(c) for r in rows.values() if isinstance(r.get(c), float) and math.isfinite(r.get(c))]
        lower_better = c.endswith("brier") or c.endswith("ece")
        if vals:
            best[c] = min(vals) if lower_better else max(vals)
    out = ["| model | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    for name, r in rows.items():
        cells = []
        for c in cols:
            s = _fmt(r.get(c))
            if bold_best and c in best and r.get(c) == best[c] and len(rows) > 1:
                s = f"**{s}**"
            cells.append(s)
        out.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def calibration_plot(curves: dict[str, dict[str, np.ndarray]], path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], color="grey", lw=1, ls="--", label="perfect")
    for name, c in curves.items():
        ax.plot(c["mean_pred"], c["observed"], marker="o", ms=3, label=f"{name} (ECE {c['ece']:.3f})")
    ax.set_xlabel("predicted probability")
    ax.set_ylabel("observed rate")
    ax.set_title(title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def decay_plot(
    churn_fns: dict[str, Callable[[dict, np.ndarray], dict[str, np.ndarray]]],
    batch: dict[str, np.ndarray],
    user_labels: list[str],
    path: str,
    key: str = "p_return_7d",
    max_days: float = 60.0,
) -> None:
    """P(return within the horizon | idle for e days) against e, for a few users and scorers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    days = np.linspace(0.0, max_days, 61)
    n = len(user_labels)
    fig, axes = plt.subplots(1, n, figsize=(4 * n, 3.2), squeeze=False)
    for u in range(n):
        ax = axes[0, u]
        one = {k: np.repeat(v[u : u + 1], len(days), axis=0) for k, v in batch.items()}
        for name, fn in churn_fns.items():
            p = fn(one, days * 86400.0).get(key)
            if p is not None:
                ax.plot(days, np.asarray(p, dtype=float), label=name)
        ax.set_title(f"user {user_labels[u]}", fontsize=9)
        ax.set_xlabel("days since last event")
        ax.set_ylim(0, 1)
        if u == 0:
            ax.set_ylabel(key.replace("_", " "))
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(
    out_dir: str,
    header: dict[str, Any],
    ranking: dict[str, dict[str, dict[str, float]]],
    churn: dict[str, dict[str, float]],
    decision: Optional[dict[str, Any]],
    figures: dict[str, str],
) -> str:
    """Write ``report.md`` beside the figures and return its path. ``ranking`` is view ->
    scorer -> metrics; every view's table ranks the same candidate catalogue."""
    os.makedirs(out_dir, exist_ok=True)
    lines = ["# ebbtide evaluation", ""]
    for k, v in header.items():
        lines.append(f"- **{k}**: {v}")
    for view, rows in ranking.items():
        if rows:
            lines += ["", f"## {VIEW_TITLES.get(view, view)}", ""]
            lines.append(markdown_table(rows, RANK_COLUMNS))
    if churn:
        cols = sorted({c for r in churn.values() for c in r if not c.endswith("_n") and "positive_rate" not in c})
        lines += ["", "## Return within 7 / 30 days, as of the split's cut date "
                  "(recent_roc_auc: users active in the week before the cut only)", ""]
        lines.append(markdown_table(churn, cols))
    if decision:
        lines += ["", "## Promotion gate", "", f"**{decision.get('summary', '')}**", ""]
        for k in ("model_name", "challenger_version", "champion_before", "champion_after"):
            if k in decision:
                lines.append(f"- {k}: {decision[k]}")
    for title, fname in figures.items():
        lines += ["", f"## {title}", "", f"![{title}]({fname})"]
    path = os.path.join(out_dir, "report.md")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path
