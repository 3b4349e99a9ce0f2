"""The monitor's report of one day: ``report.md`` and PNG figures (drift, hit rate by day,
calibration) in ``{monitor.report_dir}/{D}/``. Pure in -> files out; no Spark."""
from __future__ import annotations

import datetime as dt
import math
import os
from typing import Any, Optional, Sequence

from ebbtide.monitor.metrics import ALERT, STATUSES, WARN, Metric

_SECTIONS = (
    ("inputs", "Inputs: the events of the day"),
    ("drift", "Drift against the training snapshot (PSI)"),
    ("outputs", "Outputs: the tables published for the day"),
    ("outcomes", "Realized outcomes: the served recommendations against the day's events"),
    ("calibration", "Calibration: predicted returns against who came back"),
)


def _fmt(v: Any) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    if isinstance(v, float):
        if v.is_integer() and abs(v) < 1e15:
            return str(int(v))
        return f"{v:.4f}" if abs(v) < 1e5 else f"{v:.4g}"
    return str(v)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def drift_plot(panels: Sequence[tuple[str, list[str], list[float], list[float], Optional[float]]], path: str) -> None:
    """One bar panel per distribution: (title, labels, reference shares, current shares, PSI)."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 3.6), squeeze=False)
    for ax, (title, labels, ref, cur, value) in zip(axes[0], panels):
        x = list(range(len(labels)))
        ax.bar([i - 0.2 for i in x], ref, width=0.4, label="reference (training snapshot)", color="#9aa5b1")
        ax.bar([i + 0.2 for i in x], cur, width=0.4, label="day", color="#2f6db3")
        ax.set_xticks(x)
        ax.set_xticklabels(labels, rotation=45, ha="right", fontsize=7)
        ax.set_ylabel("share")
        ax.set_title(f"{title} (PSI {_fmt(value)})", fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def history_plot(history: dict[str, list[tuple[dt.date, float]]], path: str, title: str) -> None:
    """Lines of a few metrics by day (e.g. hit rate and NDCG at k)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 3.4))
    for name, points in history.items():
        pts = sorted((d, v) for d, v in points if v is not None and math.isfinite(v))
        if pts:
            ax.plot([d for d, _ in pts], [v for _, v in pts], marker="o", ms=3, label=name)
    ax.set_ylim(bottom=0)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def calibration_plot(curves: dict[str, dict[str, Any]], path: str) -> None:
    """Reliability diagram: observed return rate against mean prediction per bin, one line per horizon."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.8, 4.8))
    ax.plot([0, 1], [0, 1], color="grey", lw=1, ls="--", label="perfect")
    for name, c in curves.items():
        bins = c.get("bins") or []
        ax.plot([b["mean_pred"] for b in bins], [b["observed"] for b in bins], marker="o", ms=3,
                label=f"{name} (Brier {_fmt(c.get('brier'))}, ECE {_fmt(c.get('ece'))})")
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("predicted probability")
    ax.set_ylabel("observed rate")
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _threshold(m: Metric) -> str:
    if m.bound is None or (m.warn is None and m.alert is None):
        return ""
    op = "<" if m.bound == "lower" else ">"
    what = "abs(x)" if m.bound == "abs" else "x"  # a literal | would end the Markdown table cell
    parts = [f"{level} if {what} {op} {t:g}" for level, t in (("warn", m.warn), ("alert", m.alert)) if t is not None]
    return ", ".join(parts)


def write_report(out_dir: str, day: dt.date, metrics: Sequence[Metric], notes: Sequence[str],
                 figures: dict[str, str], header: dict[str, Any],
                 calibration: Optional[dict[str, dict[str, Any]]] = None) -> str:
    """``report.md`` in out_dir (which already holds the figures); returns its path. ``calibration``:
    horizon -> metrics.calibration(...) result, shown as reliability tables."""
    os.makedirs(out_dir, exist_ok=True)
    counts = {s: sum(m.status == s for m in metrics) for s in STATUSES}
    lines = [f"# ebbtide monitor: {day.isoformat()}", ""]
    for k, v in header.items():
        lines.append(f"- **{k}**: {v}")
    lines.append(f"- **status**: {counts['ok']} ok, {counts[WARN]} warn, {counts[ALERT]} alert")
    breaches = [m for m in metrics if m.status in (WARN, ALERT)]
    if breaches:
        lines += ["", "## Breaches", ""]
        lines += [f"- **{m.status}**: {m.breach()}" for m in sorted(breaches, key=lambda m: (m.status != ALERT, m.name))]
    for prefix, title in _SECTIONS:
        rows = [m for m in metrics if m.name.split(".", 1)[0] == prefix and ".bin_" not in m.name]
        if not rows:
            continue
        lines += ["", f"## {title}", "", "| metric | value | status | thresholds | subject |", "|---|---|---|---|---|"]
        for m in rows:
            lines.append(f"| {m.name} | {_fmt(m.value)} | {m.status} | {_threshold(m)} | {m.subject} |")
    for name, cal in (calibration or {}).items():
        lines += ["", f"### Reliability: {name}", "", "| predicted | users | mean predicted | observed |", "|---|---|---|---|"]
        lines += [f"| {b['lo']:.2f}-{b['hi']:.2f} | {b['n']} | {b['mean_pred']:.4f} | {b['observed']:.4f} |"
                  for b in cal.get("bins") or []]
    if notes:
        lines += ["", "## Not measured", ""] + [f"- {n}" for n in notes]
    for title, fname in figures.items():
        lines += ["", f"## {title}", "", f"![{title}]({fname})"]
    path = os.path.join(out_dir, "report.md")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path
