"""The churn calibration: fitted on a snapshot, applied in numpy, absent for older models."""
from __future__ import annotations

import numpy as np

from ebbtide.evaluation.metrics import roc_auc
from ebbtide.model import calibration

DAY = 86400.0


def snapshot(n: int, seed: int):
    """Users whose return depends on recency, with a head whose 7-day figure knows nothing of it."""
    rng = np.random.default_rng(seed)
    L = 6
    item_idx = np.where(rng.random((n, L)) < 0.8, rng.integers(2, 50, (n, L)), 0)
    item_idx[:, -1] = rng.integers(2, 50, n)
    batch = {"item_idx": item_idx, "gap_s": rng.exponential(DAY, (n, L)).astype(np.float32),
             "session_start": (rng.random((n, L)) < 0.5).astype(np.int64)}
    elapsed = rng.exponential(10 * DAY, n)
    returned_7 = (rng.random(n) < 1 / (1 + elapsed / (5 * DAY))).astype(float)
    head = {"p_return_7d": np.full(n, 0.5) + rng.normal(0, 0.01, n), "p_return_30d": np.full(n, 0.7),
            "p_return_ever": np.full(n, 0.9), "half_life_days": np.full(n, 3.0)}
    return batch, elapsed, head, {7: returned_7}


def test_the_stack_learns_what_the_head_missed_and_keeps_the_head_figures():
    batch, elapsed, head, labels = snapshot(2000, 0)
    calib = calibration.fit(head, batch, elapsed, labels)
    assert calib is not None and set(calib["horizons"]) == {"7"}
    tb, te, th, tl = snapshot(2000, 1)
    out = calibration.apply(calib, th, tb, te)
    assert roc_auc(tl[7], out["p_return_7d"]) > roc_auc(tl[7], th["p_return_7d"]) + 0.1
    assert np.array_equal(out["p_return_7d_raw"], th["p_return_7d"])
    # No calibration fitted for 30d: the head's, raised where the calibrated 7-day figure is higher.
    assert np.array_equal(out["p_return_30d"], np.maximum(th["p_return_30d"], out["p_return_7d"]))
    assert (out["p_return_7d"] <= out["p_return_30d"]).all()
    assert ((out["p_return_7d"] > 0) & (out["p_return_7d"] < 1)).all()


def test_too_few_rows_or_one_class_leave_the_head_as_it_is():
    batch, elapsed, head, labels = snapshot(30, 2)
    assert calibration.fit(head, batch, elapsed, labels) is None
    batch, elapsed, head, _ = snapshot(500, 3)
    assert calibration.fit(head, batch, elapsed, {7: np.ones(500)}) is None
    assert calibration.apply(None, head, batch, elapsed) is head
