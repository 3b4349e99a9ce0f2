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

import copy
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional, Protocol, Sequence

import numpy as np

from ebbtide.evaluation.metrics import N_SPECIAL
from ebbtide.evaluation.protocols import DAY_S
from ebbtide.model.calibration import rfm_features  # one definition for these baselines and the model's churn calibration

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

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
    """Train targets as numpy arrays, one entry per train target (``protocols.training_rows``
    collected): a small-data source of ``TrainAggregates``, e.g. for hand-built tests."""

    user: np.ndarray         # (m,) int user codes
    item: np.ndarray         # (m,) target item index
    ts_s: np.ndarray         # (m,) target time, epoch seconds
    last_item: np.ndarray    # (m,) the last input item before the target (Markov)
    time_to_next_s: Optional[np.ndarray] = None  # (m,) return gap, target - last input (churn)

    @classmethod
    def from_pandas(cls, pdf) -> "TrainEvents":
        codes = pdf["user_id"].astype("category").cat.codes.to_numpy().astype(np.int64)
        gaps = pdf["time_to_next_s"].to_numpy().astype(np.float64) if "time_to_next_s" in pdf else None
        return cls(
            user=codes,
            item=pdf["target_item"].to_numpy().astype(np.int64),
            ts_s=pdf["target_ts_s"].to_numpy().astype(np.float64),
            last_item=pdf["last_item"].to_numpy().astype(np.int64),
            time_to_next_s=gaps,
        )

    def real(self, n_items: int) -> "TrainEvents":
        keep = (self.item >= N_SPECIAL) & (self.item < n_items)
        return TrainEvents(self.user[keep], self.item[keep], self.ts_s[keep], self.last_item[keep])

    def aggregates(self, n_items: int, half_lives_s: Sequence[float] = ()) -> "TrainAggregates":
        """The numpy twin of ``TrainAggregates.from_spark``: the same counts from these arrays."""
        gap_s = gap_n = None
        if self.time_to_next_s is not None:
            gap_s, gap_n = _value_counts(self.time_to_next_s)
        ev = self.real(n_items)
        last = np.clip(ev.last_item, 0, n_items - 1)
        key, n = np.unique(last * n_items + ev.item, return_counts=True)
        t_ref = float(ev.ts_s.max()) if len(ev.ts_s) else 0.0
        decayed = {
            float(h): np.bincount(ev.item, weights=decay_weight(t_ref - ev.ts_s, h), minlength=n_items)[:n_items]
            for h in half_lives_s
        }
        pair_a, pair_b, pair_n, item_users = cooccurrence_counts(ev.user, ev.item, n_items)
        return TrainAggregates(
            n_items=n_items, last_item=key // n_items, item=key % n_items, n=n, t_ref=t_ref, decayed=decayed,
            pair_a=pair_a, pair_b=pair_b, pair_n=pair_n, item_users=item_users, gap_s=gap_s, gap_n=gap_n,
        )


def cooccurrence_counts(user: np.ndarray, item: np.ndarray, n_items: int, pairs: bool = True):
    """From (user code, item) rows (repeats allowed): ``(pair_a, pair_b, pair_n, item_users)``, per
    pair of items a < b the users who have both, and per item the users who have it. One sparse
    product of the user x item presence matrix: seconds where a Spark self-join of the presence on
    the user took minutes (ml-latest-small's train split: 80,639 rows, 22 M joined rows, 9.6 M
    pairs). ``pairs=False``: the per-item counts alone, the pairs empty."""
    from scipy import sparse

    user = np.asarray(user, dtype=np.int64)
    item = np.asarray(item, dtype=np.int64)
    n_users = int(user.max()) + 1 if len(user) else 0
    ui = sparse.csr_matrix((np.ones(len(item), dtype=np.int64), (user, item)), shape=(n_users, n_items))
    ui.data[:] = 1  # the constructor summed repeats: keep presence only
    item_users = np.asarray(ui.sum(axis=0)).ravel().astype(np.int64)
    if not pairs:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty, item_users
    c = sparse.triu(ui.T @ ui, k=1).tocoo()
    return c.row.astype(np.int64), c.col.astype(np.int64), c.data.astype(np.int64), item_users


@dataclass
class TrainAggregates:
    """What item baselines fit on: counts over the train split's targets with a real item
    (``N_SPECIAL <= item < n_items``), never one row per example. Built in Spark
    (``from_spark``, only these aggregates reach the driver) or from ``TrainEvents``
    (``TrainEvents.aggregates``); every ``fit`` reads only this, so both sources fit alike.

    Sizes: O(items) for the per-item arrays, O(nonzero pairs) for the transition and
    co-occurrence triplets, O(distinct gaps) for the return gaps."""

    n_items: int
    last_item: np.ndarray    # (k,) transitions last input item (clipped to [0, n_items)) ->
    item: np.ndarray         # (k,) target item,
    n: np.ndarray            # (k,) how many train targets: popularity and Markov
    t_ref: float             # the latest train target time (0 when none)
    decayed: dict            # half-life s -> (n_items,) sum over targets of 2^(-(t_ref - ts) / half-life)
    pair_a: np.ndarray       # (p,) item pairs a < b ...
    pair_b: np.ndarray
    pair_n: np.ndarray       # (p,) ... and the users who have both among their train targets
    item_users: np.ndarray   # (n_items,) users who have the item among their train targets
    gap_s: Optional[np.ndarray] = None  # distinct return gaps (time_to_next_s) of ALL train targets
    gap_n: Optional[np.ndarray] = None  # and how many targets have each

    def __post_init__(self):
        """One order whatever the source (Spark's grouping has none): transitions by (last
        item, item), pairs by (a, b), gaps by value."""
        o = np.lexsort((self.item, self.last_item))
        self.last_item, self.item, self.n = self.last_item[o], self.item[o], self.n[o]
        o = np.lexsort((self.pair_b, self.pair_a))
        self.pair_a, self.pair_b, self.pair_n = self.pair_a[o], self.pair_b[o], self.pair_n[o]
        if self.gap_s is not None:
            o = np.argsort(self.gap_s, kind="stable")
            self.gap_s, self.gap_n = self.gap_s[o], self.gap_n[o]

    @property
    def count(self) -> np.ndarray:
        """(n_items,) train targets per item."""
        return np.bincount(self.item, weights=self.n, minlength=self.n_items)[: self.n_items]

    @property
    def n_rows(self) -> int:
        """Train targets of any item (pad/OOV included): the rows the return gaps are counted over."""
        return int(np.sum(self.gap_n)) if self.gap_n is not None else int(np.sum(self.n))

    @classmethod
    def from_spark(cls, tr: "DataFrame", n_items: int, half_lives_s: Sequence[float] = (),
                   pairs: bool = True) -> "TrainAggregates":
        """From ``protocols.training_rows``: one Spark aggregation per kind (``protocols``'s
        ``train_*`` functions) on the persisted rows; only the aggregates are collected, and the
        (user, item) presence, one row per distinct pair, from which ``cooccurrence_counts``
        multiplies the item pairs out. ``pairs=False`` leaves the pairs empty: their count grows
        with the square of a user's history, and only the ``cooccurrence`` baseline reads them."""
        import pandas as pd
        from pyspark import StorageLevel

        from ebbtide.evaluation import protocols as P

        tr = tr.persist(StorageLevel.MEMORY_AND_DISK)
        try:
            trans = P.train_transitions(tr, n_items).toPandas()
            t_ref = float(trans["max_ts_s"].max()) if len(trans) else 0.0
            dec = P.train_decayed_counts(tr, n_items, t_ref, half_lives_s).toPandas() if len(half_lives_s) else None
            pres = P.train_item_presence(tr, n_items).toPandas()
            gaps = P.train_return_gaps(tr).toPandas()
        finally:
            tr.unpersist()

        def col(pdf, c, dtype=np.int64):
            return pdf[c].to_numpy().astype(dtype)

        def per_item(pdf, c, dtype):
            out = np.zeros(n_items, dtype=dtype)
            out[col(pdf, "item")] = col(pdf, c, dtype)
            return out

        decayed = {float(h): per_item(dec, f"w{j}", np.float64) for j, h in enumerate(half_lives_s)}
        pair_a, pair_b, pair_n, item_users = cooccurrence_counts(
            pd.factorize(pres["user_id"])[0], col(pres, "item"), n_items, pairs)
        return cls(
            n_items=n_items, last_item=col(trans, "last_item"), item=col(trans, "item"), n=col(trans, "n"),
            t_ref=t_ref, decayed=decayed, pair_a=pair_a, pair_b=pair_b, pair_n=pair_n,
            item_users=item_users, gap_s=col(gaps, "time_to_next_s", np.float64), gap_n=col(gaps, "n"),
        )


def _value_counts(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(distinct values, how many times each) of a float array; NaN (a null) counts as one value."""
    v, n = np.unique(np.asarray(values, dtype=np.float64), return_counts=True, equal_nan=True)
    return v, n


def as_aggregates(train, n_items: int, half_lives_s: Sequence[float] = ()) -> TrainAggregates:
    """``TrainAggregates`` as is (checked for this catalogue and these half-lives), or built
    from ``TrainEvents``."""
    if isinstance(train, TrainEvents):
        return train.aggregates(n_items, half_lives_s)
    if train.n_items != n_items:
        raise ValueError(f"aggregates of {train.n_items} items given to a baseline of {n_items}")
    missing = [h for h in half_lives_s if float(h) not in train.decayed]
    if missing:
        raise ValueError(f"aggregates lack the decayed counts for half-lives {missing} s; "
                         f"pass them to TrainAggregates.from_spark (has {sorted(train.decayed)})")
    return train


def decay_weight(age_s, half_life_s: float):
    """2^(-age / half-life), in the numeric form every decayed count uses (exp of -ln 2 x age / h);
    ``protocols.train_decayed_counts`` writes the same expression in Spark."""
    return np.exp(-LN2 * np.asarray(age_s, dtype=np.float64) / half_life_s)


def _popularity(count: np.ndarray, n_items: int) -> np.ndarray:
    c = np.asarray(count, dtype=np.float64)[:n_items].copy()
    c[:N_SPECIAL] = 0.0
    return c / max(c.max(), 1.0)


def input_ages_s(batch: dict[str, np.ndarray], elapsed_s: np.ndarray) -> np.ndarray:
    """(n, L) age of every input event at "now" = elapsed + the gaps after it (inf for pad)."""
    gap = np.asarray(batch["gap_s"], dtype=np.float64)
    after = np.cumsum(gap[:, ::-1], axis=1)[:, ::-1] - gap  # sum of gaps strictly after j
    ages = after + np.asarray(elapsed_s, dtype=np.float64)[:, None]
    return np.where(np.asarray(batch["item_idx"]) >= N_SPECIAL, ages, np.inf)


def window_affinity(sim, batch: dict[str, np.ndarray], elapsed_s: np.ndarray, half_life_s: float) -> np.ndarray:
    """(n, sim's items) float64: per row, the sum over the window's items j of 2^(-age_j / half-life)
    x sim(j, item), ``sim`` a sparse (items x items) similarity. An item at or past the similarity's
    size (newer than it) has no neighbours. The co-occurrence baseline's score and the model's
    item-neighbour term (``ebbtide.model.neighbours``)."""
    from scipy import sparse

    items = np.asarray(batch["item_idx"], dtype=np.int64)
    n, L = items.shape
    n_sim = sim.shape[0]
    w = decay_weight(input_ages_s(batch, elapsed_s), half_life_s)  # 0 for pad (age inf)
    w = np.where(items < n_sim, w, 0.0)
    rows = np.repeat(np.arange(n), L)
    win = sparse.csr_matrix((w.ravel(), (rows, np.minimum(items, n_sim - 1).ravel())), shape=(n, n_sim))
    return np.asarray((win @ sim).todense(), dtype=np.float64)


class MostPopular:
    name = "most_popular"

    def __init__(self, n_items: int):
        self.n_items = n_items

    def fit(self, train) -> "MostPopular":
        """``train``: ``TrainAggregates`` or ``TrainEvents`` (``as_aggregates``), as for every item baseline."""
        self.pop = _popularity(as_aggregates(train, self.n_items).count, self.n_items)
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

    def fit(self, train) -> "RecentPopular":
        agg = as_aggregates(train, self.n_items, (self.h,))
        self.t_ref = agg.t_ref
        self.w = np.asarray(agg.decayed[float(self.h)], dtype=np.float64)[: self.n_items]
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

    def fit(self, train) -> "ItemCooccurrence":
        from scipy import sparse

        agg = as_aggregates(train, self.n_items)
        # Jaccard = users with both / users with either, in float32 (exact counts up to 2^24).
        both = agg.pair_n.astype(np.float32)
        occ = agg.item_users.astype(np.float32)
        jac = both / (occ[agg.pair_a] + occ[agg.pair_b] - both)
        # Symmetric, and no diagonal: an item does not recommend itself through itself.
        row = np.concatenate([agg.pair_a, agg.pair_b])
        col = np.concatenate([agg.pair_b, agg.pair_a])
        self.sim = sparse.csr_matrix((np.concatenate([jac, jac]), (row, col)), shape=(self.n_items, self.n_items))
        self.sim.sum_duplicates()  # canonical (sorted) whatever order the pairs came in
        self.pop = _popularity(agg.count, self.n_items)
        return self

    def score_all(self, batch, elapsed_s):
        s = window_affinity(self.sim, batch, elapsed_s, self.h)
        return (s + _TIE_BREAK * self.pop[None, :]).astype(np.float32)


class LastItemMarkov:
    """First-order transitions last input item -> target, row-normalised (train split)."""

    name = "markov"

    def __init__(self, n_items: int):
        self.n_items = n_items

    def fit(self, train) -> "LastItemMarkov":
        from scipy import sparse

        agg = as_aggregates(train, self.n_items)
        li = np.clip(agg.last_item, 0, self.n_items - 1)
        t = sparse.csr_matrix(
            (agg.n.astype(np.float64), (li, agg.item)), shape=(self.n_items, self.n_items)
        )
        t.sum_duplicates()
        rs = np.asarray(t.sum(axis=1)).ravel()
        self.trans = sparse.diags(1.0 / np.maximum(rs, 1.0)) @ t
        self.trans = self.trans.tocsr()
        self.pop = _popularity(agg.count, self.n_items)
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

    def __init__(self, predictor, name: str = "ebbtide", log_p: Optional[dict] = None, view: str = "nightly"):
        self.predictor = predictor
        self.name = name
        # view -> the catalogue's recent popularity (ebbtide.model.prior) at the half-life chosen for
        # that view; a view without one ranks with the network alone.
        self.log_p = log_p or {}
        self.view = view

    def in_view(self, view: str) -> "PredictorScorer":
        """This scorer ranking as ``view`` is read: with the popularity prior chosen for it."""
        out = copy.copy(self)
        out.view = view
        return out

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
        e = np.asarray(elapsed_s, dtype=np.float32)
        return np.asarray(self.predictor.score_all(self._b(batch), e, log_p=self.log_p.get(self.view), view=self.view))

    def churn(self, batch, elapsed_s):
        out = self.predictor.churn(self._b(batch), np.asarray(elapsed_s, dtype=np.float32))
        return {k: np.asarray(v) for k, v in out.items()}
