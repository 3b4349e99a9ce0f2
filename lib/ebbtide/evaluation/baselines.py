"""Baselines, fitted on the train split only, behind the same scorer interface as the model.

Every item scorer has ``score_all(batch, elapsed_s) -> (n, n_items)``; every churn scorer has
``churn(batch, elapsed_s) -> {"p_return_7d": (n,), "p_return_30d": (n,)}`` (probability of
an event within 7 / 30 days *after the scoring moment*, i.e. after ``elapsed_s`` of
inactivity). ``batch`` is the numpy batch of ``protocols.to_batch``: the (n, L) left-padded
windows, ``length`` and ``last_ts_s``; "now" for an example is ``last_ts_s + elapsed_s``.

Item baselines add a tiny popularity term so that items they know nothing about are ordered
by popularity rather than tied (ties are averaged by the metrics anyway).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Protocol

import numpy as np

from ebbtide.evaluation.metrics import N_SPECIAL
from ebbtide.evaluation.protocols import DAY_S
from ebbtide.model.calibration import rfm_features  # one definition for these baselines and the model's churn calibration

LN2 = np.log(2.0)
_TIE_BREAK = 1e-6


class ItemScorer(Protocol):
    name: str

    def score_all(self, batch: dict[str, np.ndarray], elapsed_s: np.ndarray) -> np.ndarray: ...


class ChurnScorer(Protocol):
    name: str

    def churn(self, batch: dict[str, np.ndarray], elapsed_s: np.ndarray) -> dict[str, np.ndarray]: ...


@dataclass
class TrainEvents:
    """What item baselines fit on (from ``protocols.training_rows``): one row per train target."""

    user: np.ndarray         # (m,) int user codes
    item: np.ndarray         # (m,) target item index
    ts_s: np.ndarray         # (m,) target time, epoch seconds
    last_item: np.ndarray    # (m,) the last input item before the target (Markov)

    @classmethod
    def from_pandas(cls, pdf) -> "TrainEvents":
        codes = pdf["user_id"].astype("category").cat.codes.to_numpy().astype(np.int64)
        return cls(
            user=codes,
            item=pdf["target_item"].to_numpy().astype(np.int64),
            ts_s=pdf["target_ts_s"].to_numpy().astype(np.float64),
            last_item=pdf["last_item"].to_numpy().astype(np.int64),
        )

    def real(self, n_items: int) -> "TrainEvents":
        keep = (self.item >= N_SPECIAL) & (self.item < n_items)
        return TrainEvents(self.user[keep], self.item[keep], self.ts_s[keep], self.last_item[keep])


def _popularity(ev: TrainEvents, n_items: int) -> np.ndarray:
    c = np.bincount(ev.item, minlength=n_items).astype(np.float64)[:n_items]
    c[:N_SPECIAL] = 0.0
    return c / max(c.max(), 1.0)


def input_ages_s(batch: dict[str, np.ndarray], elapsed_s: np.ndarray) -> np.ndarray:
    """(n, L) age of every input event at "now" = elapsed + the gaps after it (inf for pad)."""
    gap = np.asarray(batch["gap_s"], dtype=np.float64)
    after = np.cumsum(gap[:, ::-1], axis=1)[:, ::-1] - gap  # sum of gaps strictly after j
    ages = after + np.asarray(elapsed_s, dtype=np.float64)[:, None]
    return np.where(np.asarray(batch["item_idx"]) >= N_SPECIAL, ages, np.inf)


class MostPopular:
    name = "most_popular"

    def __init__(self, n_items: int):
        self.n_items = n_items

    def fit(self, ev: TrainEvents) -> "MostPopular":
        self.pop = _popularity(ev.real(self.n_items), self.n_items)
        return self

    def score_all(self, batch, elapsed_s):
        return np.broadcast_to(self.pop, (len(elapsed_s), self.n_items)).astype(np.float32)


class RecentPopular:
    """Popularity where each train event weighs 2^(-age / half-life) at the scoring moment.

    With the temporal protocol every train event precedes every evaluation "now", so the
    order is the same for all users (the decay shifts every item by the same factor); events
    after "now" (possible under leave-last-out only) are counted at age 0.
    """

    name = "recent_popular"

    def __init__(self, n_items: int, half_life_days: float = 14.0):
        self.n_items = n_items
        self.h = half_life_days * DAY_S

    def fit(self, ev: TrainEvents) -> "RecentPopular":
        ev = ev.real(self.n_items)
        self.t_ref = float(ev.ts_s.max()) if len(ev.ts_s) else 0.0
        w = np.exp(-LN2 * (self.t_ref - ev.ts_s) / self.h)
        self.w = np.bincount(ev.item, weights=w, minlength=self.n_items)[: self.n_items]
        self.log_w = np.log(np.maximum(self.w, 1e-300))
        self.log_w[self.w == 0] = -700.0
        return self

    def score_all(self, batch, elapsed_s):
        now = np.asarray(batch["last_ts_s"], dtype=np.float64) + np.asarray(elapsed_s, dtype=np.float64)
        shift = -LN2 * np.maximum(now - self.t_ref, 0.0) / self.h
        return (self.log_w[None, :] + shift[:, None]).astype(np.float32)


class ItemCooccurrence:
    """SAR-like: item-item Jaccard similarity of train co-occurrence (per user), scored against
    the user's input window weighted by 2^(-age / half-life) at the scoring moment."""

    name = "cooccurrence"

    def __init__(self, n_items: int, half_life_days: float = 30.0):
        self.n_items = n_items
        self.h = half_life_days * DAY_S

    def fit(self, ev: TrainEvents) -> "ItemCooccurrence":
        from scipy import sparse

        ev = ev.real(self.n_items)
        n_users = int(ev.user.max()) + 1 if len(ev.user) else 0
        ui = sparse.csr_matrix(
            (np.ones(len(ev.item), dtype=np.float32), (ev.user, ev.item)), shape=(n_users, self.n_items)
        )
        ui.data[:] = 1.0  # the constructor summed repeats: keep presence only
        c = (ui.T @ ui).tocoo()
        occ = np.asarray(ui.sum(axis=0)).ravel()
        jac = c.data / (occ[c.row] + occ[c.col] - c.data)
        off = c.row != c.col  # an item does not recommend itself through itself
        self.sim = sparse.csr_matrix((jac[off], (c.row[off], c.col[off])), shape=(self.n_items, self.n_items))
        self.pop = _popularity(ev, self.n_items)
        return self

    def score_all(self, batch, elapsed_s):
        from scipy import sparse

        items = np.asarray(batch["item_idx"], dtype=np.int64)
        w = np.exp(-LN2 * input_ages_s(batch, elapsed_s) / self.h)  # 0 for pad (age inf)
        n, L = items.shape
        rows = np.repeat(np.arange(n), L)
        aff = sparse.csr_matrix((w.ravel(), (rows, items.ravel())), shape=(n, self.n_items))
        s = np.asarray((aff @ self.sim).todense(), dtype=np.float64)
        return (s + _TIE_BREAK * self.pop[None, :]).astype(np.float32)


class LastItemMarkov:
    """First-order transitions last input item -> target, row-normalised (train split)."""

    name = "markov"

    def __init__(self, n_items: int):
        self.n_items = n_items

    def fit(self, ev: TrainEvents) -> "LastItemMarkov":
        from scipy import sparse

        ev = ev.real(self.n_items)
        li = np.clip(ev.last_item, 0, self.n_items - 1)
        t = sparse.csr_matrix(
            (np.ones(len(li)), (li, ev.item)), shape=(self.n_items, self.n_items)
        )
        t.sum_duplicates()
        rs = np.asarray(t.sum(axis=1)).ravel()
        self.trans = sparse.diags(1.0 / np.maximum(rs, 1.0)) @ t
        self.trans = self.trans.tocsr()
        self.pop = _popularity(ev, self.n_items)
        return self

    def score_all(self, batch, elapsed_s):
        last = np.clip(np.asarray(batch["item_idx"])[:, -1].astype(np.int64), 0, self.n_items - 1)
        s = np.asarray(self.trans[last].todense(), dtype=np.float64)
        return (s + _TIE_BREAK * self.pop[None, :]).astype(np.float32)


# ---------------------------------------------------------------------------------------
# Churn baselines
# ---------------------------------------------------------------------------------------


class _LogisticChurn:
    features: tuple[int, ...] = ()

    def __init__(self, horizons_days=(7, 30)):
        self.horizons = tuple(int(d) for d in horizons_days)

    def _x(self, batch, elapsed_s):
        return rfm_features(batch, elapsed_s)[:, list(self.features)]

    def fit(self, batch, elapsed_s, labels: dict[int, np.ndarray]):
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        x = self._x(batch, elapsed_s)
        self.models = {}
        for d in self.horizons:
            y = labels[d]
            keep = np.isfinite(y)
            ys = y[keep]
            if len(np.unique(ys)) < 2:
                self.models[d] = float(ys.mean()) if len(ys) else 0.5
                continue
            self.models[d] = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(x[keep], ys)
        return self

    def churn(self, batch, elapsed_s):
        x = self._x(batch, elapsed_s)
        out = {}
        for d, m in self.models.items():
            out[f"p_return_{d}d"] = np.full(len(x), m) if isinstance(m, float) else m.predict_proba(x)[:, 1]
        return out


class DaysSinceLast(_LogisticChurn):
    """Only the days since the last event, mapped to a probability by a logistic fit."""

    name = "days_since_last"
    features = (0,)


class RFMLogistic(_LogisticChurn):
    name = "rfm_logistic"
    features = (0, 1, 2, 3, 4)


def _weights(weights: Optional[np.ndarray], n: int) -> np.ndarray:
    """Per-duration counts (1 each when None): grouped durations weigh as many as they stand for."""
    return np.ones(n) if weights is None else np.asarray(weights, dtype=np.float64)


def kaplan_meier(durations: np.ndarray, observed: np.ndarray,
                 weights: Optional[np.ndarray] = None) -> tuple[np.ndarray, np.ndarray]:
    """(event times, survival just after each): the product-limit estimate. ``weights``: how
    many users each (duration, observed) entry stands for (counts of grouped durations)."""
    d = np.asarray(durations, dtype=np.float64)
    e = np.asarray(observed).astype(bool)
    w = _weights(weights, len(d))
    times, inv = np.unique(d, return_inverse=True)
    deaths = np.bincount(inv, weights=w * e, minlength=len(times))
    leaving = np.bincount(inv, weights=w, minlength=len(times))
    at_risk = w.sum() - np.concatenate([[0], np.cumsum(leaving)[:-1]])
    surv = np.cumprod(1.0 - deaths / np.maximum(at_risk, 1))
    keep = deaths > 0
    return times[keep], surv[keep]


class KaplanMeierChurn:
    """Population return-time curve S(t) from train gaps: P(return within D | idle e) =
    1 - S(e + D) / S(e)."""

    name = "kaplan_meier"

    def __init__(self, horizons_days=(7, 30)):
        self.horizons = tuple(int(d) for d in horizons_days)

    def fit(self, durations_s: np.ndarray, observed: np.ndarray,
            weights: Optional[np.ndarray] = None) -> "KaplanMeierChurn":
        self.t, self.s = kaplan_meier(durations_s, observed, weights)
        return self

    def survival(self, t_s: np.ndarray) -> np.ndarray:
        i = np.searchsorted(self.t, np.asarray(t_s, dtype=np.float64), side="right")
        return np.concatenate([[1.0], self.s])[i]

    def churn(self, batch, elapsed_s):
        e = np.asarray(elapsed_s, dtype=np.float64)
        se = np.maximum(self.survival(e), 1e-12)
        return {f"p_return_{d}d": np.clip(1.0 - self.survival(e + d * DAY_S) / se, 0.0, 1.0) for d in self.horizons}


class ExponentialDecay:
    """Per-user constant return rate from the window (gaps observed, the current idle time
    censored): rate = gaps / (sum of gaps + elapsed); P(return within D) = 1 - exp(-rate D).
    Memoryless, so the idle time lowers the rate but not the horizon's shape."""

    name = "exponential_decay"

    def __init__(self, horizons_days=(7, 30), prior_gaps: float = 1.0, prior_days: float = 30.0):
        self.horizons = tuple(int(d) for d in horizons_days)
        # A weak prior (one gap of prior_days) keeps one-event users finite.
        self.prior_gaps, self.prior_s = prior_gaps, prior_days * DAY_S

    def fit(self, durations_s: Optional[np.ndarray] = None, observed=None,
            weights: Optional[np.ndarray] = None) -> "ExponentialDecay":
        """The prior gap is the train mean return gap: exposure (every duration, ``weights``
        times) over returns. The sum is exactly rounded (``math.fsum``): it does not depend on the
        order the durations come in, which Spark's grouping does not fix."""
        if durations_s is not None and len(durations_s):
            import math

            obs = np.asarray(observed).astype(bool)
            w = _weights(weights, len(obs))
            if obs.any():
                exposure = math.fsum(np.asarray(durations_s, dtype=np.float64) * w)
                self.prior_s = float(exposure / w[obs].sum()) * self.prior_gaps
        return self

    def churn(self, batch, elapsed_s):
        gap = np.asarray(batch["gap_s"], dtype=np.float64)
        real = np.asarray(batch["item_idx"]) > 0
        n_gaps = np.maximum(real.sum(1) - 1, 0)
        total = (gap * real).sum(1)
        rate = (n_gaps + self.prior_gaps) / (total + np.asarray(elapsed_s, dtype=np.float64) + self.prior_s)
        return {f"p_return_{d}d": 1.0 - np.exp(-rate * d * DAY_S) for d in self.horizons}


def item_baselines(n_items: int, popularity_half_life_days: float, cooccurrence_half_life_days: float) -> list:
    return [
        MostPopular(n_items),
        RecentPopular(n_items, popularity_half_life_days),
        ItemCooccurrence(n_items, cooccurrence_half_life_days),
        LastItemMarkov(n_items),
    ]


class PredictorScorer:
    """The trained model behind the same interface (``ebbtide.model.predictor.Predictor``)."""

    FEATURES = ("item_idx", "event_type_idx", "gap_s", "hour_of_week", "session_start", "length")

    def __init__(self, predictor, name: str = "ebbtide"):
        self.predictor = predictor
        self.name = name

    def _b(self, batch):
        """The model's inputs; items and event types it has never seen (indices appended to the
        vocabularies after it was trained, e.g. a champion evaluated on a newer snapshot) read as OOV
        (1), as scoring reads them (``ebbtide.scoring.inference.features_from_arrow``)."""
        out = {k: batch[k] for k in self.FEATURES}
        meta = getattr(self.predictor, "meta", None) or {}
        for key, n in (("item_idx", getattr(self.predictor, "n_items", None)), ("event_type_idx", meta.get("n_event_types"))):
            if n is not None:
                idx = np.asarray(out[key])
                if (idx >= int(n)).any():
                    out[key] = np.where(idx >= int(n), 1, idx).astype(idx.dtype)
        return out

    def score_all(self, batch, elapsed_s):
        return np.asarray(self.predictor.score_all(self._b(batch), np.asarray(elapsed_s, dtype=np.float32)))

    def churn(self, batch, elapsed_s):
        out = self.predictor.churn(self._b(batch), np.asarray(elapsed_s, dtype=np.float32))
        return {k: np.asarray(v) for k, v in out.items()}
