"""The item-neighbour term of the ranking: what people who had the user's recent items also had.

The network ranks from a user's window through a learned representation; on a large catalogue with
few events per item (ml-latest-small: 9,724 items, 100 k events) many items are seen too rarely for
their embeddings to place them, while an item-to-item co-occurrence count (the ``cooccurrence``
baseline) still knows them: on that set's test days it ranked the nightly view better than the
network. So after training, beside the popularity prior (``ebbtide.model.prior``), the ranking may
add

    weight x log(aff(item) / max over items of aff + FLOOR)

where ``aff(item) = sum over the window's items j of 2^(-age_j / half-life) x sim(j, item)`` and
``sim`` is the Jaccard similarity of the items' user sets in the train split (the baseline's own,
``baselines.cooccurrence_counts``), kept to each item's ``train.neighbour_top_k`` most similar
items so that the predictor folder stays small. Normalised per row, the term is
``weight x log(1 + FLOOR)`` for the user's strongest neighbour and ``weight x log FLOOR`` for an
item no window item leads to; a window without any neighbour gets no term.

(half-life, weight) are chosen on the validation split after the popularity prior, one pair per
view, each with that view's popularity prior applied and on that view's objective (``prior.fit``),
from a grid that includes weight 0 (no term): the term must earn its place. The similarity is
saved in the predictor folder (``neighbours.npz``), the choices in ``predictor.json`` under
``item_neighbours``; scoring, evaluation and the pyfunc apply them through ``Predictor.score_all``.
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Optional

import numpy as np

from ebbtide.log import get_logger

if TYPE_CHECKING:
    from scipy import sparse

log = get_logger("model.neighbours")

META_KEY = "item_neighbours"
SIM_FILE = "neighbours.npz"
# log(aff / max + FLOOR): how far below the strongest neighbour an item no window item leads to
# sits, per unit of weight (log 0.1 = -2.3). Chosen among 0.01, 0.1 and a linear form on
# ml-latest-small's validation split; 0.1 ranked best or level on the request-time view.
FLOOR = 0.1
DAY_S = 86400.0


def similarity(agg, top_k: int) -> "sparse.csr_matrix":
    """(n_items, n_items) float32 CSR: per item its ``top_k`` most similar items by the Jaccard
    similarity of their train users (``agg``: ``evaluation.baselines.TrainAggregates``)."""
    from ebbtide.evaluation.baselines import ItemCooccurrence

    sim = ItemCooccurrence(agg.n_items).fit(agg).sim.tocsr().astype(np.float32)
    if top_k > 0:
        keep = np.ones(sim.nnz, dtype=bool)
        for i in range(sim.shape[0]):
            a, b = sim.indptr[i], sim.indptr[i + 1]
            if b - a > top_k:
                keep[a:b] = False
                keep[a + np.argpartition(-sim.data[a:b], top_k - 1)[:top_k]] = True
        sim.data[~keep] = 0.0
        sim.eliminate_zeros()
    return sim


def save(folder: str, sim: "sparse.csr_matrix") -> str:
    from scipy import sparse

    path = os.path.join(folder, SIM_FILE)
    sparse.save_npz(path, sim.tocsr(), compressed=True)
    return path


def load(folder: str) -> Optional["sparse.csr_matrix"]:
    """The saved similarity of a predictor folder, or None (a predictor trained without the term)."""
    path = os.path.join(folder, SIM_FILE)
    if not os.path.exists(path):
        return None
    from scipy import sparse

    return sparse.load_npz(path).tocsr()


def chosen(meta: Optional[dict], view: str = "nightly") -> dict:
    """The (half-life, weight) chosen for ``view``, or {} when none was."""
    return ((meta or {}).get(META_KEY) or {}).get(view) or {}


def affinity(sim: "sparse.csr_matrix", batch: dict, elapsed_s: np.ndarray, half_life_s: float) -> np.ndarray:
    """(n, n_sim) float32: per row, the window's items' decayed weights times their similarities
    (``baselines.window_affinity``, the co-occurrence baseline's score), divided by the row's
    largest (a row without any neighbour stays 0)."""
    from ebbtide.evaluation.baselines import window_affinity

    aff = window_affinity(sim, batch, elapsed_s, half_life_s).astype(np.float32)
    top = aff.max(axis=1, keepdims=True) if aff.size else np.zeros((len(aff), 1), np.float32)
    return np.divide(aff, top, out=np.zeros_like(aff), where=top > 0)


def term_of(aff: np.ndarray, weight: float) -> np.ndarray:
    """weight x log(aff + FLOOR) on rows with a neighbour, 0 on rows without."""
    has = aff.max(axis=1, keepdims=True) > 0 if aff.size else np.zeros((len(aff), 1), bool)
    return np.where(has, np.float32(weight) * np.log(aff + np.float32(FLOOR)), np.float32(0.0)).astype(np.float32)


def term(sim: Optional["sparse.csr_matrix"], meta: Optional[dict], batch: dict, elapsed_s: np.ndarray,
         n_items: int, view: str = "nightly") -> Optional[np.ndarray]:
    """(n, n_items) what the ranking read as ``view`` adds for the window's neighbours, or None (no
    similarity, or no term chosen for ``view``)."""
    c = chosen(meta, view)
    w = float(c.get("weight", 0.0) or 0.0)
    if sim is None or w == 0.0:
        return None
    t = term_of(affinity(sim, batch, elapsed_s, float(c["half_life_days"]) * DAY_S), w)
    out = np.zeros((t.shape[0], n_items), dtype=np.float32)
    k = min(n_items, t.shape[1])
    out[:, :k] = t[:, :k]
    return out


def fit(spark, cfg, version: int, predictor_dir: str, val=None) -> Optional[dict[str, Any]]:
    """Build the similarity from the train split, save it in ``predictor_dir``, and choose the term
    per view on the validation split on top of the network and its chosen popularity prior (the
    rows, candidates and objectives ``prior.fit`` chooses on; ``val``, ``prior.validation``'s, when
    the caller has it). ``{view: choice}``, or None without validation rows or item pairs."""
    from ebbtide.evaluation import baselines as B
    from ebbtide.evaluation import protocols as P
    from ebbtide.model import prior
    from ebbtide.model.predictor import Predictor

    tc = cfg.section("train")
    val = val or prior.validation(spark, cfg, version)
    if val is None:
        return None
    pred = Predictor.load(predictor_dir)
    pred.meta.pop(META_KEY, None)  # the network and its popularity prior alone
    prior_h = {v: prior.half_life_s(pred.meta, v) for v in prior.VIEWS}
    agg = B.TrainAggregates.from_spark(P.training_rows(val.df), val.n_items, sorted({h for h in prior_h.values() if h}))
    if not len(agg.pair_n):
        return None
    sim = similarity(agg, int(tc.neighbour_top_k))
    model = B.PredictorScorer(pred, log_p={v: prior.log_prior(agg.decayed[h], val.n_items) for v, h in prior_h.items() if h})
    base = {v: model.in_view(v).score_all(batch, elapsed) for v, (batch, elapsed, _t) in val.views.items()}
    scores: dict[tuple, dict[str, float]] = {(None, 0.0): {v: val.ndcg(v, s) for v, s in base.items()}}
    for h in sorted(float(x) for x in tc.neighbour_half_lives_days):
        aff = {v: affinity(sim, batch, elapsed, h * DAY_S) for v, (batch, elapsed, _t) in val.views.items()}
        for w in sorted(float(x) for x in tc.neighbour_weights if x > 0):
            scores[(h, w)] = {v: val.ndcg(v, base[v] + term_of(aff[v], w)[:, : base[v].shape[1]]) for v in base}
    save(predictor_dir, sim)
    out = {}
    for view, on in val.objectives().items():
        c = prior.choose({k: float(np.mean([s[v] for v in on])) for k, s in scores.items()})
        out[view] = {**c, "chosen_on": on, "rows": {v: int(len(val.views[v][2])) for v in on},
                     "top_k": int(tc.neighbour_top_k), "floor": FLOOR}
    return out
