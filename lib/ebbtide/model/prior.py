"""The recent-popularity prior of the ranking: which items everyone is turning to lately.

The network ranks from one user's window and learns the catalogue's popularity averaged over the
whole train split. Popularity drifts (new releases, seasons, a catalogue that turns over), and a
nightly table is read weeks or months after the newest event the network was trained on: on
ml-latest-small the train split's recent popularity alone (the ``recent_popular`` baseline)
ranked the test days better than the network. So the ranking score is

    score(item) = network logit + weight x log p_recent(item)

``p_recent`` is each item's share of the events before the scoring moment, every event weighing
2^(-age / half-life), plus ``PSEUDO_COUNT`` per item (an item with no recent events is not ruled
out, it just gets no lift). A product of the network's distribution and p_recent^weight, so the
user's own sequence still decides between the items the catalogue currently favours.

(half-life, weight) are chosen after training on the validation split (``fit``), one pair per way
the ranking is read, from a small grid that includes weight 0 (no prior):

- ``nightly``, what the nightly table ranks with: the mean NDCG@10 of the nightly and request-time
  views. The nightly view alone is small (163 (user, day) rows on MovieLens-100k), too few to choose on;
- ``request_time``, what a caller that knows the request time ranks with (and what evaluation's
  request-time view ranks with): that view alone, which has thousands of rows. Within a visit the
  user's own sequence matters more than the catalogue's drift, and one pair for both views made
  the request-time ranking worse on both MovieLens sets.

They are recorded in the predictor's meta as ``popularity_prior`` (``{view: choice}``). Where
p_recent comes from:

- evaluation: the train split's targets, decayed to its newest one, exactly what the
  ``recent_popular`` baseline fits on, so the model sees no later data than the baselines;
- the nightly job: silver_events before the score date (``ebbtide.scoring.run``).

Only the ranking reads the prior; the churn, interest and decay read-outs are the network's alone.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional, Sequence

import numpy as np

from ebbtide.log import get_logger

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

log = get_logger("model.prior")

META_KEY = "popularity_prior"
PSEUDO_COUNT = 0.5
# Events older than this many half-lives weigh under 2^-20 (1e-6): left out of the sums.
MAX_AGE_HALF_LIVES = 20
DAY_S = 86400.0
# The choice ranks one (rows x items) float32 matrix per grid point: at most this many floats (512 MiB).
MAX_SCORE_FLOATS = 1 << 27
# The ways a ranking is read: the nightly table's, and a request-time caller's (evaluation's views).
VIEWS = ("nightly", "request_time")


def log_prior(weights: np.ndarray, n_items: int) -> np.ndarray:
    """(n_items,) float32 log p_recent from per-item decayed event weights (pad and OOV get none)."""
    w = np.zeros(n_items, dtype=np.float64)
    src = np.asarray(weights, dtype=np.float64)[:n_items]
    w[: len(src)] = src
    w[:2] = 0.0
    w = np.maximum(w, 0.0) + PSEUDO_COUNT
    return np.log(w / w.sum()).astype(np.float32)


def chosen(meta: Optional[dict], view: str = "nightly") -> dict:
    """The (half-life, weight) chosen for ``view`` ({} when none was). A predictor saved before the
    choice was made per view holds one pair, which then serves both."""
    c = (meta or {}).get(META_KEY) or {}
    if "weight" in c:
        return c
    return c.get(view) or {}


def term(meta: Optional[dict], log_p: Optional[np.ndarray], view: str = "nightly") -> Optional[np.ndarray]:
    """What the ranking read as ``view`` adds to the network's logits: weight x log p_recent, or
    None (no prior chosen, weight 0, or no p_recent given)."""
    w = float(chosen(meta, view).get("weight", 0.0) or 0.0)
    if log_p is None or w == 0.0:
        return None
    return (w * np.asarray(log_p, dtype=np.float32)).astype(np.float32)


def half_life_s(meta: Optional[dict], view: str = "nightly") -> Optional[float]:
    """The half-life chosen for ``view`` in seconds, or None when that view ranks without a prior."""
    c = chosen(meta, view)
    if not c or not float(c.get("weight", 0.0) or 0.0):
        return None
    return float(c["half_life_days"]) * DAY_S


def item_weights(events: "DataFrame", n_items: int, t_ref_s: float, half_lives_s: Sequence[float]) -> dict[float, np.ndarray]:
    """Per half-life h, (n_items,) per real item the sum over ``events`` (columns ``target_item``,
    ``target_ts_s``; the train split's targets, or the night's events) of 2^(-(t_ref - ts) / h),
    for the events at or before ``t_ref_s`` and younger than MAX_AGE_HALF_LIVES of the longest
    half-life. One Spark aggregation for all half-lives (``evaluation.protocols.train_decayed_counts``,
    the recent_popular baseline's own); only (item, weights) rows reach the driver."""
    from pyspark.sql import functions as F

    from ebbtide.evaluation import protocols as P

    hs = [float(h) for h in half_lives_s]
    ts = F.col("target_ts_s")
    oldest = float(t_ref_s) - MAX_AGE_HALF_LIVES * max(hs)
    recent = events.where((ts <= F.lit(float(t_ref_s))) & (ts > F.lit(oldest)))
    pdf = P.train_decayed_counts(recent, n_items, t_ref_s, hs).toPandas()
    idx = pdf["item"].to_numpy(dtype=np.int64)
    out = {}
    for j, h in enumerate(hs):
        w = np.zeros(n_items, dtype=np.float64)
        w[idx] = pdf[f"w{j}"].to_numpy(dtype=np.float64)
        out[h] = w
    return out


def grid_scores(log_priors: dict[float, np.ndarray], weights: Sequence[float], metric) -> dict[tuple, Any]:
    """``metric(term)`` at weight 0 (key ``(None, 0.0)``, the network alone) and at every
    (half-life in days, weight > 0) of the grid, in that order; ``term`` is the (n_items,) addition to
    the network's logits (None: the network alone). ``log_priors``: half-life in days -> (n_items,)
    log p_recent."""
    out = {(None, 0.0): metric(None)}
    for h, lp in sorted(log_priors.items()):
        for w in sorted(weights):
            if w > 0:
                out[(float(h), float(w))] = metric(np.float32(w) * lp)
    return out


def choose(scores: dict[tuple, float]) -> dict[str, Any]:
    """The (half-life, weight) of ``grid_scores`` that ranks best. Weight 0 is kept on ties (and
    wins ties first): a prior must earn its place."""
    base = float(scores[(None, 0.0)])
    best = {"half_life_days": None, "weight": 0.0, "valid_ndcg_at_10": base}
    grid = {}
    for (h, w), v in scores.items():
        grid["0" if not w else f"{h:g}d x {w:g}"] = float(v)
        if w and v > best["valid_ndcg_at_10"]:
            best = {"half_life_days": float(h), "weight": float(w), "valid_ndcg_at_10": float(v)}
    return {**best, "valid_ndcg_at_10_without": base, "grid": grid}


class Validation:
    """The validation split as the ranking's post-training choices read it (this module's priors,
    ``ebbtide.model.neighbours``): the rows, candidates and exclusions ``ebbtide evaluate`` ranks.
    ``views``: view -> (batch, elapsed, targets); ``df``: the examples under the protocol (its
    train rows give p_recent and the neighbours)."""

    def __init__(self, df, n_items: int, candidates: np.ndarray, views: dict, exclude_history: bool):
        self.df, self.n_items, self.candidates, self.views = df, n_items, candidates, views
        self.exclude_history = exclude_history

    def ndcg(self, view: str, scores: np.ndarray) -> float:
        """NDCG@10 of (rows x items) ``scores`` on ``view``."""
        from ebbtide.evaluation.run import rank_scorer

        class _Fixed:
            name = "choice-grid"

            def score_all(self, part, elapsed_s):
                return scores  # one chunk: rank_scorer gets the whole view at once

        batch, elapsed, targets = self.views[view]
        return rank_scorer(_Fixed(), batch, elapsed, targets, self.n_items, (10,), self.candidates,
                           exclude_history=self.exclude_history, chunk_size=max(len(scores), 1), quiet=True)["ndcg@10"]

    def objectives(self) -> dict[str, list[str]]:
        """Per view, the views its choice is judged on: the nightly choice pools both (its own is
        small); the request-time one reads its own."""
        return {"nightly": list(self.views),
                "request_time": ["request_time"] if "request_time" in self.views else list(self.views)}


def validation(spark, cfg, version: int) -> Optional[Validation]:
    """The validation views of ``gold_training_examples`` at ``version``; None without rows."""
    from ebbtide import tables
    from ebbtide.evaluation import protocols as P
    from ebbtide.evaluation.metrics import candidate_mask
    from ebbtide.evaluation.run import EXAMPLE_COLUMNS, _collect, _n_items, nightly_view
    from ebbtide.model import feed

    ec = cfg.section("evaluate")
    ex = tables.read(spark, cfg, feed.EXAMPLES_TABLE, version)
    df = P.apply_protocol(ex, ec.protocol)
    n_items = _n_items(spark, cfg, ex)
    candidates = candidate_mask(P.candidate_items(df).toPandas()["item"].to_numpy(), n_items)
    rows = P.evaluation_rows(df, "valid")
    # The grids rank score matrices held in memory: above this many rows a view is a seeded sample,
    # drawn in Spark so that only the sample reaches the driver.
    cap = max(1, MAX_SCORE_FLOATS // n_items // len(VIEWS))
    views: dict[str, tuple] = {}
    nightly = nightly_view(rows, ec, cap)
    if nightly is not None:
        views["nightly"] = (nightly["batch"], nightly["elapsed"], nightly["targets"])
    rt = _collect(rows.select(*EXAMPLE_COLUMNS), ec, "examples", cap)
    if not rt.empty:
        views["request_time"] = (P.to_batch(rt), rt["time_to_next_s"].to_numpy().astype(np.float64),
                                 rt["target_item"].to_numpy().astype(np.int64))
    if not views:
        return None
    return Validation(df, n_items, candidates, views, ec.exclude_history)


def fit(spark, cfg, version: int, predictor_dir: str, val: Optional[Validation] = None) -> Optional[dict]:
    """Choose the priors of a freshly trained predictor on the validation split, one per view (see
    the module's docstring for each one's objective): ``{view: choice}``. The views are the rows,
    candidates and exclusions ``ebbtide evaluate`` ranks, with p_recent from the train split as
    evaluation computes it (``val``: ``validation``'s views when the caller has them). None without
    validation rows."""
    from pyspark.sql import functions as F

    from ebbtide.evaluation import protocols as P
    from ebbtide.evaluation.baselines import PredictorScorer
    from ebbtide.model import neighbours
    from ebbtide.model.predictor import Predictor
    from ebbtide.sequences import FIRST_INDEX

    tc = cfg.section("train")
    val = val or validation(spark, cfg, version)
    if val is None:
        return None
    n_items = val.n_items
    pred = Predictor.load(predictor_dir)
    pred.meta.pop(META_KEY, None)  # the network's own scores
    pred.meta.pop(neighbours.META_KEY, None)
    model = PredictorScorer(pred)
    scored = {v: model.score_all(batch, elapsed) for v, (batch, elapsed, _t) in val.views.items()}
    tr = P.training_rows(val.df).persist()
    try:
        # The newest real target, as TrainAggregates (and so the evaluation's p_recent) takes it.
        real = (F.col("target_item") >= FIRST_INDEX) & (F.col("target_item") < n_items)
        t_ref = tr.where(real).agg(F.max("target_ts_s")).collect()[0][0]
        if t_ref is None:
            return None
        hs = [float(h) for h in tc.prior_half_lives_days]
        weights = item_weights(tr, n_items, float(t_ref), [h * DAY_S for h in hs])
        priors = {h: log_prior(weights[h * DAY_S], n_items) for h in hs}
    finally:
        tr.unpersist()

    def ndcg(term: Optional[np.ndarray]) -> dict[str, float]:
        return {v: val.ndcg(v, s if term is None else s + term[None, : s.shape[1]]) for v, s in scored.items()}

    by_view = grid_scores(priors, tc.prior_weights, ndcg)
    out = {}
    for view, on in val.objectives().items():
        c = choose({k: float(np.mean([s[v] for v in on])) for k, s in by_view.items()})
        out[view] = {**c, "chosen_on": on, "rows": {v: int(len(val.views[v][2])) for v in on}}
    return out
