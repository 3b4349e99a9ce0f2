"""Churn calibration: the return-time head's probabilities stacked with recency and frequency.

The return-time head is fitted to every gap of every training window, most of them gaps inside an
active stretch of a user's history; the churn question is asked at a cut, often after weeks of
silence. So after training, a logistic model per horizon is fitted on a churn snapshot *inside the
train period* (users as of T1 - the longest horizon, outcomes observed until T1, as the churn
baselines are fitted), with the head's own probabilities (as logits) and the window's recency and
frequency as inputs. Its coefficients travel in the predictor's meta.json and the predictor applies
them in numpy, so scoring needs nothing new. The raw head's figures stay available
(``p_return_7d_raw`` ...).
"""
from __future__ import annotations

from typing import Optional

import numpy as np

DAY_S = 86400.0
# The head's outputs that enter the stack, as logits.
HEAD_KEYS = ("p_return_7d", "p_return_30d", "p_return_ever")


def rfm_features(batch: dict, elapsed_s: np.ndarray) -> np.ndarray:
    """Recency, frequency and 'monetary' stand-ins from the window alone: log days since the
    last event, log window length, log sessions in the window, log mean gap and log span."""
    gap = np.asarray(batch["gap_s"], dtype=np.float64)
    real = np.asarray(batch["item_idx"]) > 0
    n = np.maximum(real.sum(1), 1)
    span = (gap * real).sum(1)
    sessions = (np.asarray(batch["session_start"]) * real).sum(1)
    mean_gap = span / np.maximum(n - 1, 1)
    return np.column_stack([
        np.log1p(np.asarray(elapsed_s, dtype=np.float64) / DAY_S),
        np.log1p(n),
        np.log1p(sessions),
        np.log1p(mean_gap / DAY_S),
        np.log1p(span / DAY_S),
    ])


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), 1e-6, 1 - 1e-6)
    return np.log(p) - np.log1p(-p)


def features(head: dict, batch: dict, elapsed_s: np.ndarray) -> np.ndarray:
    """(n, 8): the head's probabilities as logits, then the window's RFM features."""
    x = [_logit(head[k]) for k in HEAD_KEYS]
    return np.column_stack([*x, rfm_features(batch, elapsed_s)])


def fit(head: dict, batch: dict, elapsed_s: np.ndarray, labels: dict[int, np.ndarray],
        min_rows: int = 50) -> Optional[dict]:
    """One standardised L2 logistic regression per horizon (days -> its labels: 1 returned, 0 not,
    NaN unobservable). None when no horizon has ``min_rows`` observable rows of both classes (then
    the head's own probabilities are served)."""
    from sklearn.linear_model import LogisticRegression

    x = features(head, batch, elapsed_s)
    out: dict[str, dict] = {}
    for d, y in labels.items():
        keep = np.isfinite(y) & np.isfinite(x).all(1)
        ys = y[keep]
        if keep.sum() < min_rows or len(np.unique(ys)) < 2:
            continue
        mean, scale = x[keep].mean(0), x[keep].std(0)
        scale = np.where(scale > 1e-9, scale, 1.0)
        m = LogisticRegression(max_iter=1000).fit((x[keep] - mean) / scale, ys.astype(int))
        out[str(int(d))] = {"mean": mean.tolist(), "scale": scale.tolist(), "coef": m.coef_[0].tolist(),
                            "intercept": float(m.intercept_[0]), "rows": int(keep.sum()), "positives": int(ys.sum())}
    return {"features": [*HEAD_KEYS, "rfm_recency", "rfm_length", "rfm_sessions", "rfm_mean_gap", "rfm_span"],
            "horizons": out} if out else None


def apply(calibration: Optional[dict], head: dict, batch: dict, elapsed_s: np.ndarray) -> dict:
    """``head`` with p_return_{d}d replaced by the calibrated probability for each fitted horizon,
    and the head's own kept as p_return_{d}d_raw. Unchanged without a calibration."""
    if not calibration:
        return head
    x = features(head, batch, elapsed_s)
    out = dict(head)
    for d, c in calibration["horizons"].items():
        z = ((x - np.asarray(c["mean"])) / np.asarray(c["scale"])) @ np.asarray(c["coef"]) + c["intercept"]
        out[f"p_return_{d}d_raw"] = head[f"p_return_{d}d"]
        out[f"p_return_{d}d"] = 1.0 / (1.0 + np.exp(-z))
    # Fitted apart, two horizons could cross; a return within 7 days is a return within 30.
    horizons = sorted(int(k[len("p_return_"):-1]) for k in out if k.startswith("p_return_") and k[-1] == "d"
                      and k[len("p_return_"):-1].isdigit())
    for shorter, longer in zip(horizons, horizons[1:]):
        out[f"p_return_{longer}d"] = np.maximum(out[f"p_return_{longer}d"], out[f"p_return_{shorter}d"])
    return out
