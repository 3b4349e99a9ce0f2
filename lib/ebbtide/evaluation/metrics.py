"""Ranking and churn metrics, numpy/torch only.

Ranking is over the whole catalogue by default: every real item (index >= 2) competes; pad (0),
OOV (1), the items outside the candidate catalogue and optionally the user's history are
excluded (``exclusion_mask``). ``RankingAccumulator`` takes one target per example, so HR@K
and Recall@K coincide (both are reported under their usual names); ``SetRankingAccumulator``
takes a set of targets per example (the nightly view: every item of the user's day), padded
with -1 to a fixed width: NDCG@K = DCG / IDCG with DCG = sum over the targets ranked < K of
1 / log2(rank + 2) and IDCG = the best DCG a set of that size can reach in K, Recall@K = hits
/ set size, HR@K = any hit, MRR@K = 1 / (first hit's rank + 1).

Ties are broken at random *in expectation*: when the target shares its score with ``e`` other
items and ``g`` items score strictly higher, it sits at each rank ``g .. g+e`` with equal
probability, and every metric is averaged over those ranks exactly. A model that scores many
items alike (popularity counts, empty co-occurrence rows) is thus neither rewarded nor punished
by the order of item indices. With a target set the same holds: DCG and hits are sums over
targets, each uniform over its own tied ranks, and HR / MRR come from the exact distribution of
the first target's position among the items tied at the best target's score. A target that is
excluded (or is pad/OOV, or not a candidate) counts as a miss and stays in the denominator.

Scores come either as a matrix chunk (``RankingAccumulator.update``) or as user and item
factors (``rank_factors``), ranked in chunks with one matrix product and one top-k per chunk.
"""
from __future__ import annotations

from typing import Callable, Iterable, Mapping, Optional, Sequence

import numpy as np
import torch

N_SPECIAL = 2  # pad 0 and OOV 1 are never ranked
DEFAULT_KS = (10, 20, 50)
_RANK_METRICS = ("hr", "recall", "ndcg", "mrr")


def _as_tensor(x, dtype=None) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x if dtype is None else x.to(dtype)
    return torch.as_tensor(np.asarray(x), dtype=dtype)


def candidate_mask(items, n_items: int) -> np.ndarray:
    """Bool (n_items,): True for the candidate catalogue, the real items among ``items``
    (indices; out-of-range ones are ignored)."""
    idx = np.asarray(items, dtype=np.int64).ravel()
    out = np.zeros(n_items, dtype=bool)
    out[idx[(idx >= N_SPECIAL) & (idx < n_items)]] = True
    return out


def pad_targets(sets: Sequence, width: Optional[int] = None) -> np.ndarray:
    """Target sets (one index array per example) -> int64 (n, width) padded with -1 on the
    right, the input of ``SetRankingAccumulator``; width defaults to the largest set."""
    sets = [np.asarray(t, dtype=np.int64).ravel() for t in sets]
    w = max((len(t) for t in sets), default=0) if width is None else int(width)
    out = np.full((len(sets), max(w, 1)), -1, dtype=np.int64)
    for r, t in enumerate(sets):
        out[r, : min(len(t), w)] = t[:w]
    return out


def exclusion_mask(
    n_rows: int,
    n_items: int,
    history: Optional[np.ndarray | torch.Tensor] = None,
    extra: Optional[Sequence[np.ndarray]] = None,
    candidates: Optional[np.ndarray | torch.Tensor] = None,
) -> torch.Tensor:
    """Bool (n_rows, n_items): True where an item must not be ranked.

    Always pad and OOV; ``history`` is an index matrix (e.g. the left-padded ``item_idx``
    window, whose 0 entries land on pad anyway); ``extra`` one index array per row;
    ``candidates`` a bool (n_items,) vector (``candidate_mask``), every other item excluded.
    """
    mask = torch.zeros(n_rows, n_items, dtype=torch.bool)
    if candidates is not None:
        mask |= ~_as_tensor(candidates, torch.bool)[None, :n_items]
    mask[:, :N_SPECIAL] = True
    if history is not None:
        h = _as_tensor(history, torch.long).clamp(0, n_items - 1)
        mask.scatter_(1, h, True)
    if extra is not None:
        for r, idx in enumerate(extra):
            if idx is not None and len(idx):
                mask[r, torch.as_tensor(np.asarray(idx), dtype=torch.long)] = True
    return mask


def _column_rank_stats(scores: torch.Tensor, col: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    ts = scores.gather(1, col[:, None])
    greater = (scores > ts).sum(1)
    ties = (scores == ts).sum(1) - 1
    miss = torch.isneginf(ts[:, 0]) | torch.isnan(ts[:, 0])
    return greater, ties, miss


def target_rank_stats(scores: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(greater, ties): items scoring strictly above the target, and other items tied with it.

    Rows whose target scores -inf (excluded) or is not a real item get greater = n_items
    (a certain miss)."""
    n_items = scores.shape[1]
    t = targets.long()
    greater, ties, miss = _column_rank_stats(scores, t.clamp(0, n_items - 1))
    miss = miss | (t < N_SPECIAL) | (t >= n_items)
    greater = torch.where(miss, torch.full_like(greater, n_items), greater)
    ties = torch.where(miss, torch.zeros_like(ties), ties)
    return greater, ties


def _cum(fn: Callable[[np.ndarray], np.ndarray], n: int) -> np.ndarray:
    """C[p] = sum_{r < p} fn(r), so the sum over ranks a..b-1 is C[b] - C[a]."""
    return np.concatenate([[0.0], np.cumsum(fn(np.arange(n, dtype=np.float64)))])


def rank_metrics_from_stats(
    greater: np.ndarray, ties: np.ndarray, ks: Iterable[int] = DEFAULT_KS
) -> dict[str, np.ndarray]:
    """Per-example HR/Recall, NDCG, MRR at each K, and the expected 0-based rank, from
    (greater, ties), averaging over the tied ranks exactly (see the module doc)."""
    g = np.asarray(greater, dtype=np.int64)
    e = np.asarray(ties, dtype=np.int64)
    span = e + 1
    out: dict[str, np.ndarray] = {"rank": g + e / 2.0}
    for k in ks:
        hit = _cum(np.ones_like, k)
        dcg = _cum(lambda r: 1.0 / np.log2(r + 2.0), k)
        rr = _cum(lambda r: 1.0 / (r + 1.0), k)
        lo = np.minimum(g, k)
        hi = np.minimum(g + span, k)
        out[f"hr@{k}"] = (hit[hi] - hit[lo]) / span
        out[f"recall@{k}"] = out[f"hr@{k}"]
        out[f"ndcg@{k}"] = (dcg[hi] - dcg[lo]) / span
        out[f"mrr@{k}"] = (rr[hi] - rr[lo]) / span
    return out


def _dedupe_targets(t: torch.Tensor) -> torch.Tensor:
    """Each row's repeated target indices (beyond the first) become padding (-1)."""
    srt = torch.sort(t, dim=1).values
    rep = torch.zeros_like(srt, dtype=torch.bool)
    rep[:, 1:] = (srt[:, 1:] == srt[:, :-1]) & (srt[:, 1:] >= 0)
    return srt.masked_fill(rep, -1)


def _log_choose(n: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    return torch.lgamma(n + 1) - torch.lgamma(m + 1) - torch.lgamma(n - m + 1)


def set_rank_metrics(scores: torch.Tensor, targets: torch.Tensor, ks: Iterable[int] = DEFAULT_KS) -> dict[str, np.ndarray]:
    """Per-example metrics of a target set (see the module doc) from a score matrix whose
    excluded entries are already -inf; ``targets`` (n, W) item indices padded with -1.

    Targets that are pad/OOV, out of range or scored -inf are misses but count in the set size.
    ``rank`` is the expected 0-based rank of the best-ranked target (n_items when none can hit).
    """
    ks = tuple(ks)
    s = scores.masked_fill(torch.isnan(scores), float("-inf"))  # NaN ranks nowhere, as in the single-target path
    n, n_items = s.shape
    t = _dedupe_targets(_as_tensor(targets, torch.long).reshape(n, -1))
    size = (t >= 0).sum(1).numpy()
    asc = torch.from_numpy(np.sort(s.numpy(), axis=1))  # values only: torch.sort would add int64 indices
    ts = s.gather(1, t.clamp(0, n_items - 1))
    # One sort per row and a binary search per target: greater / tied counts for a whole set at
    # the cost of one ranking, however many targets a user's day holds.
    upto = torch.searchsorted(asc, ts.contiguous(), right=True)
    below = torch.searchsorted(asc, ts.contiguous(), right=False)
    miss = (t < N_SPECIAL) | (t >= n_items) | torch.isneginf(ts)
    greater = torch.where(miss, torch.full_like(upto, n_items), n_items - upto)
    ties = torch.where(miss, torch.zeros_like(upto), upto - below - 1)
    per_target = rank_metrics_from_stats(greater.reshape(-1).numpy(), ties.reshape(-1).numpy(), ks)

    # The best target's tie group: g items above it, N items at its score, m of them targets.
    hit_any = (~miss).any(1)
    best = torch.where(miss, torch.full_like(ts, float("-inf")), ts).max(1).values
    g = (n_items - torch.searchsorted(asc, best[:, None].contiguous(), right=True)[:, 0]).double()
    big_n = (torch.searchsorted(asc, best[:, None].contiguous(), right=True)
             - torch.searchsorted(asc, best[:, None].contiguous(), right=False))[:, 0].double()
    m = ((~miss) & (ts == best[:, None])).sum(1).double()
    kmax = max(ks)
    j = torch.arange(kmax + 1, dtype=torch.float64)[None, :]
    # P(first target of the group at position >= j) = C(N - j, m) / C(N, m)
    left = big_n[:, None] - j
    ok = left >= m[:, None]
    surv = torch.where(ok, torch.exp(_log_choose(left.clamp(min=0), m[:, None]) - _log_choose(big_n, m)[:, None]),
                       torch.zeros_like(left))
    surv = torch.where(hit_any[:, None], surv, torch.ones_like(surv))  # no hittable target: never a hit
    pmf = surv[:, :-1] - surv[:, 1:]
    rr = 1.0 / (g[:, None] + j[:, :-1] + 1.0)

    out: dict[str, np.ndarray] = {
        "rank": torch.where(hit_any, g + (big_n - m) / (m + 1.0), torch.full_like(g, float(n_items))).numpy()
    }
    denom = np.maximum(size, 1).astype(np.float64)
    can_hit = (~miss).numpy()  # a miss's rank n_items could still fall below a K larger than the catalogue
    for k in ks:
        room = (k - g).clamp(0, kmax).long()  # positions of the group that land in the top k
        hits = (per_target[f"hr@{k}"].reshape(n, -1) * can_hit).sum(1)
        dcg = (per_target[f"ndcg@{k}"].reshape(n, -1) * can_hit).sum(1)
        idcg = _cum(lambda r: 1.0 / np.log2(r + 2.0), k)[np.minimum(size, k)]
        out[f"hr@{k}"] = (1.0 - surv.gather(1, room[:, None])[:, 0]).numpy()
        out[f"recall@{k}"] = hits / denom
        out[f"ndcg@{k}"] = np.where(idcg > 0, dcg / np.where(idcg > 0, idcg, 1.0), 0.0)
        out[f"mrr@{k}"] = (pmf * rr * (j[:, :-1] < room[:, None])).sum(1).numpy()
    return out


class RankingAccumulator:
    """Full-catalogue ranking metrics over chunks of examples, plus catalogue coverage.

    ``update(scores, targets, exclude)`` takes one chunk's score matrix (n, n_items); excluded
    entries are set to -inf before ranking. ``result()`` gives means over every example.
    """

    def __init__(self, n_items: int, ks: Iterable[int] = DEFAULT_KS):
        self.n_items = int(n_items)
        self.ks = tuple(sorted(int(k) for k in ks))
        self._parts: list[dict[str, np.ndarray]] = []
        self._covered = {k: torch.zeros(self.n_items, dtype=torch.bool) for k in self.ks}

    def _masked(self, scores, exclude: Optional[torch.Tensor]) -> torch.Tensor:
        s = _as_tensor(scores, torch.float32)
        if s.shape[1] != self.n_items:
            raise ValueError(f"scores have {s.shape[1]} items, the catalogue {self.n_items}")
        s = s.clone()  # the caller's matrix stays untouched
        s[:, :N_SPECIAL] = float("-inf")
        if exclude is not None:
            s.masked_fill_(exclude, float("-inf"))
        return s

    def _cover(self, s: torch.Tensor) -> None:
        kmax = min(max(self.ks), self.n_items)
        top = torch.topk(s, kmax, dim=1)
        for k in self.ks:
            idx = top.indices[:, :k]
            valid = torch.isfinite(top.values[:, :k])
            self._covered[k][idx[valid]] = True

    def update(self, scores, targets, exclude: Optional[torch.Tensor] = None) -> None:
        s = self._masked(scores, exclude)
        t = _as_tensor(targets, torch.long)
        greater, ties = target_rank_stats(s, t)
        self._parts.append(rank_metrics_from_stats(greater.numpy(), ties.numpy(), self.ks))
        self._cover(s)

    def per_example(self) -> dict[str, np.ndarray]:
        if not self._parts:
            return {}
        return {key: np.concatenate([p[key] for p in self._parts]) for key in self._parts[0]}

    def result(self) -> dict[str, float]:
        per = self.per_example()
        n = len(per.get("rank", []))
        out: dict[str, float] = {"n_examples": float(n)}
        for key, v in per.items():
            if key != "rank":
                out[key] = float(v.mean()) if n else float("nan")
        n_real = max(self.n_items - N_SPECIAL, 1)
        for k in self.ks:
            out[f"coverage@{k}"] = float(self._covered[k][N_SPECIAL:].sum()) / n_real
        return out


class SetRankingAccumulator(RankingAccumulator):
    """``RankingAccumulator`` for target sets: ``update(scores, targets, exclude)`` with
    ``targets`` (n, W) padded with -1 (``pad_targets``); same keys, same coverage."""

    def update(self, scores, targets, exclude: Optional[torch.Tensor] = None) -> None:
        s = self._masked(scores, exclude)
        self._parts.append(set_rank_metrics(s, targets, self.ks))
        self._cover(s)


def full_ranking_metrics(
    scores,
    targets,
    ks: Iterable[int] = DEFAULT_KS,
    exclude: Optional[torch.Tensor] = None,
    chunk_size: int = 4096,
) -> dict[str, float]:
    """Metrics of a whole score matrix (n, n_items) in row chunks (small data, tests); 2-D
    ``targets`` are target sets padded with -1."""
    s = _as_tensor(scores, torch.float32)
    t = _as_tensor(targets, torch.long)
    acc = (SetRankingAccumulator if t.dim() == 2 else RankingAccumulator)(s.shape[1], ks)
    for a in range(0, s.shape[0], chunk_size):
        b = a + chunk_size
        acc.update(s[a:b], t[a:b], None if exclude is None else exclude[a:b])
    return acc.result()


def rank_factors(
    user_vecs,
    item_vecs,
    targets,
    ks: Iterable[int] = DEFAULT_KS,
    item_bias=None,
    history: Optional[np.ndarray] = None,
    chunk_size: int = 1024,
    progress: Optional[Callable[[int, int], None]] = None,
) -> dict[str, float]:
    """Full ranking for a factor model: scores = U @ V.T (+ bias), one chunk of users at a time,
    so memory stays at chunk x n_items floats however many users there are."""
    u = _as_tensor(user_vecs, torch.float32)
    v = _as_tensor(item_vecs, torch.float32)
    t = _as_tensor(targets, torch.long)
    bias = None if item_bias is None else _as_tensor(item_bias, torch.float32)
    acc = RankingAccumulator(v.shape[0], ks)
    vt = v.T.contiguous()
    for a in range(0, u.shape[0], chunk_size):
        b = min(a + chunk_size, u.shape[0])
        s = u[a:b] @ vt
        if bias is not None:
            s += bias
        excl = None if history is None else exclusion_mask(b - a, v.shape[0], history[a:b])
        acc.update(s, t[a:b], excl)
        if progress:
            progress(b, u.shape[0])
    return acc.result()


# ---------------------------------------------------------------------------------------
# Sampled metrics (secondary column only: they overstate quality, see Krichene & Rendle 2020)
# ---------------------------------------------------------------------------------------


def sample_negatives(
    positives: Sequence[np.ndarray],
    n_items: int,
    n_neg: int = 100,
    seed: int = 2024,
    chunk: int = 1024,
    candidates: Optional[np.ndarray] = None,
) -> np.ndarray:
    """(n, n_neg) item indices, uniform over real items (over the candidate catalogue when
    ``candidates``, a bool (n_items,) vector, is given), never one of the row's positives.

    Seeded by ``seed`` alone, so the same examples always get the same negatives; the caller
    persists them (``save_negatives``) so that every model of a run, and later runs, share them.
    With every real item a candidate the draws are those of the plain catalogue.
    """
    rng = np.random.default_rng(seed)
    in_pool = np.ones(n_items, dtype=bool) if candidates is None else np.asarray(candidates, dtype=bool)[:n_items].copy()
    in_pool[:N_SPECIAL] = False
    pool = np.flatnonzero(in_pool)
    n_real = len(pool)
    pos_rows = []
    for r, pos in enumerate(positives):
        pos = np.unique(np.asarray(pos, dtype=np.int64))
        pos = pos[(pos >= 0) & (pos < n_items)]
        pos = pos[in_pool[pos]]
        if n_real - len(pos) < n_neg:
            raise ValueError(
                f"row {r}: only {n_real - len(pos)} non-positive items for {n_neg} negatives; "
                "lower evaluate.sampled_negatives"
            )
        pos_rows.append(pos)
    out = np.empty((len(pos_rows), n_neg), dtype=np.int64)
    draw = 2 * n_neg + 16
    for a in range(0, len(pos_rows), chunk):
        rows = pos_rows[a : a + chunk]
        c = len(rows)
        width = max((len(p) for p in rows), default=0) or 1
        pm = np.full((c, width), -1, dtype=np.int64)
        for i, p in enumerate(rows):
            pm[i, : len(p)] = p
        cand = pool[rng.integers(0, n_real, size=(c, draw))]
        bad = (cand[:, :, None] == pm[:, None, :]).any(-1)
        # Repeats within a row: keep the first occurrence only.
        order = np.argsort(cand, axis=1, kind="stable")
        srt = np.take_along_axis(cand, order, 1)
        rep = np.zeros_like(bad)
        np.put_along_axis(rep, order[:, 1:], srt[:, 1:] == srt[:, :-1], 1)
        ok = ~bad & ~rep
        enough = ok.sum(1) >= n_neg
        for i in np.nonzero(enough)[0]:
            out[a + i] = cand[i, ok[i]][:n_neg]
        for i in np.nonzero(~enough)[0]:  # rare: users with most of the catalogue as positives
            free = np.setdiff1d(pool, rows[i])
            out[a + i] = rng.choice(free, size=n_neg, replace=False)
    return out


def save_negatives(path: str, negatives: np.ndarray, example_ids: Sequence[str],
                   options: Optional[Mapping[str, str]] = None) -> None:
    """Persist the negatives at a local path or a storage URL (see ebbtide.storage; ``options``:
    storage.options_from_spark, the store's endpoint)."""
    import io

    from ebbtide import storage

    buf = io.BytesIO()
    np.savez_compressed(buf, negatives=negatives, example_ids=np.asarray(example_ids, dtype=object))
    storage.write_bytes(path, buf.getvalue(), options)


def load_negatives(path: str, example_ids: Sequence[str],
                   options: Optional[Mapping[str, str]] = None) -> Optional[np.ndarray]:
    """The persisted negatives if they were drawn for exactly these examples, else None."""
    import io

    from ebbtide import storage

    data = storage.read_bytes(path, options)
    if data is None:
        return None
    z = np.load(io.BytesIO(data), allow_pickle=True)
    if len(z["example_ids"]) != len(example_ids) or not np.array_equal(z["example_ids"], np.asarray(example_ids, dtype=object)):
        return None
    return z["negatives"]


class SampledAccumulator:
    """The target ranked against its sampled negatives only; keys carry a ``sampled_`` prefix."""

    def __init__(self, ks: Iterable[int] = DEFAULT_KS):
        self.ks = tuple(ks)
        self._parts: list[tuple[np.ndarray, np.ndarray]] = []

    def update(self, scores, targets, negatives: np.ndarray) -> None:
        s = _as_tensor(scores, torch.float32)
        t = _as_tensor(targets, torch.long)
        neg = torch.as_tensor(np.asarray(negatives), dtype=torch.long)
        cand = torch.cat([t[:, None].clamp(0, s.shape[1] - 1), neg], 1)
        cs = s.gather(1, cand)
        g, e, miss = _column_rank_stats(cs, torch.zeros_like(t))
        # Column 0 holds the target: a pad/OOV target is a miss, as in the full ranking.
        miss = miss | (t < N_SPECIAL) | (t >= s.shape[1])
        g = torch.where(miss, torch.full_like(g, cs.shape[1]), g)
        e = torch.where(miss, torch.zeros_like(e), e)
        self._parts.append((g.numpy(), e.numpy()))

    def result(self) -> dict[str, float]:
        if not self._parts:
            return {}
        g = np.concatenate([p[0] for p in self._parts])
        e = np.concatenate([p[1] for p in self._parts])
        per = rank_metrics_from_stats(g, e, self.ks)
        return {f"sampled_{k}": float(v.mean()) for k, v in per.items() if k != "rank"}


def sampled_ranking_metrics(scores, targets, negatives: np.ndarray, ks: Iterable[int] = DEFAULT_KS) -> dict[str, float]:
    acc = SampledAccumulator(ks)
    acc.update(scores, targets, negatives)
    return acc.result()


# ---------------------------------------------------------------------------------------
# Churn / return time
# ---------------------------------------------------------------------------------------


def _clean(y, p) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y, dtype=np.float64)
    p = np.asarray(p, dtype=np.float64)
    keep = np.isfinite(y) & np.isfinite(p)
    return y[keep], p[keep]


def roc_auc(y, p) -> float:
    """Probability that a random positive scores above a random negative (ties count half).
    NaN labels (unknown: the horizon is not yet observed) are dropped."""
    y, p = _clean(y, p)
    n_pos = int((y == 1).sum())
    n_neg = int((y == 0).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    from scipy.stats import rankdata

    r = rankdata(p)  # average ranks handle ties
    return float((r[y == 1].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def pr_auc(y, p) -> float:
    """Average precision (the step-wise area under the precision-recall curve)."""
    y, p = _clean(y, p)
    if (y == 1).sum() == 0:
        return float("nan")
    from sklearn.metrics import average_precision_score

    return float(average_precision_score(y, p))


def brier(y, p) -> float:
    y, p = _clean(y, p)
    return float(np.mean((p - y) ** 2)) if len(y) else float("nan")


def calibration_curve(y, p, n_bins: int = 10) -> dict[str, np.ndarray]:
    """Equal-width bins of predicted probability: mean prediction, observed rate and count
    per bin (empty bins are dropped), and the expected calibration error."""
    y, p = _clean(y, p)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    b = np.clip(np.digitize(p, edges[1:-1], right=False), 0, n_bins - 1)
    cnt = np.bincount(b, minlength=n_bins).astype(np.float64)
    sp = np.bincount(b, weights=p, minlength=n_bins)
    sy = np.bincount(b, weights=y, minlength=n_bins)
    keep = cnt > 0
    mean_p = sp[keep] / cnt[keep]
    rate = sy[keep] / cnt[keep]
    ece = float(np.sum(cnt[keep] * np.abs(mean_p - rate)) / max(cnt.sum(), 1.0))
    return {"bin_lo": edges[:-1][keep], "bin_hi": edges[1:][keep], "mean_pred": mean_p,
            "observed": rate, "count": cnt[keep], "ece": ece}


def concordance_index(time, event, risk) -> float:
    """Harrell's C for censored return times: over pairs where the earlier time is an observed
    return (event = 1), the share where that user has the higher predicted risk (ties in risk
    count half). Higher risk = expected to return sooner. O(n log n) with a Fenwick tree."""
    time = np.asarray(time, dtype=np.float64)
    event = np.asarray(event, dtype=np.int64)
    risk = np.asarray(risk, dtype=np.float64)
    keep = np.isfinite(time) & np.isfinite(risk)
    time, event, risk = time[keep], event[keep], risk[keep]
    n = len(time)
    if n < 2:
        return float("nan")
    # Rank risks 1..m (equal risks share a rank) for the tree.
    uniq, rr = np.unique(risk, return_inverse=True)
    m = len(uniq)
    tree = np.zeros(m + 1, dtype=np.int64)

    def add(i: int) -> None:
        i += 1
        while i <= m:
            tree[i] += 1
            i += i & -i

    def prefix(i: int) -> int:  # count of inserted ranks < i
        s = 0
        while i > 0:
            s += tree[i]
            i -= i & -i
        return int(s)

    order = np.argsort(-time, kind="stable")
    ts = time[order]
    concordant = 0.0
    comparable = 0
    inserted = 0
    i = 0
    # Walk times from the longest down; a group of equal times is queried before it is inserted,
    # so each observed return is compared only with strictly longer times.
    while i < n:
        j = i
        while j < n and ts[j] == ts[i]:
            j += 1
        group = order[i:j]
        for u in group:
            if event[u] == 1 and inserted:
                lower = prefix(rr[u])
                equal = prefix(rr[u] + 1) - lower
                concordant += lower + 0.5 * equal
                comparable += inserted
        for u in group:
            add(rr[u])
            inserted += 1
        i = j
    return float(concordant / comparable) if comparable else float("nan")


def churn_metrics(y, p, n_bins: int = 10, prefix: str = "") -> dict[str, float]:
    """ROC-AUC, PR-AUC, Brier, ECE and the positive rate for one horizon's labels."""
    yc, pc = _clean(y, p)
    cal = calibration_curve(yc, pc, n_bins)
    return {
        f"{prefix}roc_auc": roc_auc(yc, pc),
        f"{prefix}pr_auc": pr_auc(yc, pc),
        f"{prefix}brier": brier(yc, pc),
        f"{prefix}ece": cal["ece"],
        f"{prefix}positive_rate": float(yc.mean()) if len(yc) else float("nan"),
        f"{prefix}n": float(len(yc)),
    }
