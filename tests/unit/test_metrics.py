"""Metric functions against hand-computed cases."""
import math

import numpy as np
import pytest
import torch

from ebbtide.evaluation import metrics as M

NEG = -1e9  # stands for any score; pad/OOV columns are masked by the metric code itself


def test_single_target_rank_hand_case():
    # items 2..5 score .1 .5 .3 .2; target 4 (.3) has one item above it -> 0-based rank 1
    s = np.array([[9.0, 9.0, 0.1, 0.5, 0.3, 0.2]])
    r = M.full_ranking_metrics(s, [4], ks=(1, 2, 3))
    assert r["hr@1"] == 0.0 and r["hr@2"] == 1.0 and r["recall@2"] == 1.0
    assert r["ndcg@2"] == pytest.approx(1 / math.log2(3))
    assert r["mrr@3"] == pytest.approx(0.5)
    assert r["mrr@1"] == 0.0
    # pad/OOV scored 9 but never ranked: top-1 is item 3 only
    assert r["coverage@1"] == pytest.approx(1 / 4)


def test_ties_are_averaged_over_the_tied_ranks():
    # target 3 tied with items 2 and 4 at the top: ranks 0, 1, 2 equally likely
    s = np.array([[0.0, 0.0, 1.0, 1.0, 1.0, 0.0]])
    r = M.full_ranking_metrics(s, [3], ks=(1, 2, 3))
    assert r["hr@1"] == pytest.approx(1 / 3)
    assert r["hr@2"] == pytest.approx(2 / 3)
    assert r["hr@3"] == pytest.approx(1.0)
    assert r["ndcg@1"] == pytest.approx(1 / 3)
    assert r["ndcg@2"] == pytest.approx((1 + 1 / math.log2(3)) / 3)
    assert r["mrr@3"] == pytest.approx((1 + 1 / 2 + 1 / 3) / 3)


def test_constant_scores_are_not_rewarded_by_index_order():
    n_items = 102  # 100 real items, all tied: expected HR@10 = 10 / 100 whatever the target
    s = np.zeros((3, n_items))
    r = M.full_ranking_metrics(s, [2, 50, 101], ks=(10,))
    assert r["hr@10"] == pytest.approx(0.1)


def test_means_over_examples_and_misses():
    s = np.array([
        [0, 0, 0.9, 0.1, 0.2],   # target 2 first
        [0, 0, 0.9, 0.1, 0.2],   # target 3 last (rank 2)
        [0, 0, 0.9, 0.1, 0.2],   # target 1 = OOV: a miss
        [0, 0, 0.9, 0.1, 0.2],   # target 0 = pad: a miss
    ])
    r = M.full_ranking_metrics(s, [2, 3, 1, 0], ks=(1, 3))
    assert r["n_examples"] == 4
    assert r["hr@1"] == pytest.approx(1 / 4)
    assert r["hr@3"] == pytest.approx(2 / 4)
    assert r["ndcg@3"] == pytest.approx((1 + 1 / math.log2(4)) / 4)
    assert r["mrr@3"] == pytest.approx((1 + 1 / 3) / 4)


def test_history_exclusion_and_excluded_target():
    s = np.array([[0, 0, 0.9, 0.8, 0.1]])
    hist = np.array([[0, 2]])  # left-padded window holding item 2
    excl = M.exclusion_mask(1, 5, history=hist)
    assert excl.tolist() == [[True, True, True, False, False]]
    assert M.full_ranking_metrics(s, [3], ks=(1,), exclude=excl)["hr@1"] == 1.0
    assert M.full_ranking_metrics(s, [3], ks=(1,))["hr@1"] == 0.0
    # the target itself excluded: a miss at every K
    assert M.full_ranking_metrics(s, [2], ks=(3,), exclude=excl)["hr@3"] == 0.0
    extra = M.exclusion_mask(1, 5, extra=[np.array([4])])
    assert extra.tolist() == [[True, True, False, False, True]]


def test_input_matrix_is_not_modified():
    s = torch.tensor([[5.0, 5.0, 1.0, 2.0]])
    M.full_ranking_metrics(s, [2], ks=(1,))
    assert s.tolist() == [[5.0, 5.0, 1.0, 2.0]]


def test_factor_ranking_equals_explicit_matrix_in_chunks():
    g = torch.Generator().manual_seed(0)
    U, V = torch.randn(37, 4, generator=g), torch.randn(30, 4, generator=g)
    b = torch.randn(30, generator=g)
    t = torch.randint(0, 30, (37,), generator=g)
    hist = torch.randint(0, 30, (37, 3), generator=g).numpy()
    a = M.rank_factors(U, V, t, ks=(5, 10), item_bias=b, history=hist, chunk_size=8)
    full = U @ V.T + b
    e = M.full_ranking_metrics(full, t, ks=(5, 10), exclude=M.exclusion_mask(37, 30, history=hist))
    assert a.keys() == e.keys()
    for k in a:
        assert a[k] == pytest.approx(e[k]), k


def test_coverage_counts_distinct_top_k_items():
    s = np.array([[0, 0, 3, 2, 1, 0], [0, 0, 3, 1, 2, 0]], dtype=float)
    r = M.full_ranking_metrics(s, [2, 2], ks=(1, 2))
    assert r["coverage@1"] == pytest.approx(1 / 4)  # item 2 only
    assert r["coverage@2"] == pytest.approx(3 / 4)  # items 2, 3, 4


def test_sampled_negatives_exclude_positives_are_seeded_and_persisted(tmp_path):
    rng = np.random.default_rng(1)
    n_items = 130
    positives = [rng.choice(np.arange(2, n_items), size=25, replace=False) for _ in range(50)]
    a = M.sample_negatives(positives, n_items, n_neg=100, seed=7)
    b = M.sample_negatives(positives, n_items, n_neg=100, seed=7)
    c = M.sample_negatives(positives, n_items, n_neg=100, seed=8)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    for row, pos in zip(a, positives):
        assert len(set(row)) == 100
        assert not set(row) & set(pos.tolist())
        assert row.min() >= 2 and row.max() < n_items
    ids = [f"u{i}" for i in range(50)]
    path = str(tmp_path / "neg.npz")
    M.save_negatives(path, a, ids)
    assert np.array_equal(M.load_negatives(path, ids), a)
    assert M.load_negatives(path, ids[:-1]) is None
    with pytest.raises(ValueError, match="sampled_negatives"):
        M.sample_negatives([np.arange(2, 120)], 130, n_neg=100)


def test_sampled_negatives_large_catalogue_path():
    rng = np.random.default_rng(2)
    n_items = 5000
    positives = [rng.choice(np.arange(2, 60), size=40, replace=False) for _ in range(3000)]
    neg = M.sample_negatives(positives, n_items, n_neg=100, seed=1, chunk=512)
    assert neg.shape == (3000, 100)
    assert all(len(set(r)) == 100 for r in neg)
    assert not any(set(r) & set(p.tolist()) for r, p in zip(neg, positives))
    # uniform over the non-positive items: the low indices (mostly positives) are rare
    assert (neg < 60).mean() < 0.02 and neg.min() >= 2 and neg.max() < n_items


def test_sampled_metrics_hand_case():
    s = np.array([[0, 0, 0.5, 0.9, 0.1, 0.7]])
    # target 2 (.5) against negatives 4 (.1) and 5 (.7): rank 1 of 3; item 3 (.9) is not sampled
    r = M.sampled_ranking_metrics(s, [2], np.array([[4, 5]]), ks=(1, 2))
    assert r["sampled_hr@1"] == 0.0 and r["sampled_hr@2"] == 1.0
    assert r["sampled_ndcg@2"] == pytest.approx(1 / math.log2(3))
    assert M.sampled_ranking_metrics(s, [1], np.array([[4, 5]]), ks=(2,))["sampled_hr@2"] == 0.0


def test_roc_pr_brier_hand_cases():
    y = [1, 0, 1, 0]
    p = [0.9, 0.1, 0.4, 0.4]
    # pairs (pos, neg): (.9,.1) (.9,.4) (.4,.1) win, (.4,.4) ties -> 3.5 / 4
    assert M.roc_auc(y, p) == pytest.approx(0.875)
    # ranking .9(+) then {.4(+), .4(-)} tied then .1(-): AP = .5*1 + .5*(2/3)
    assert M.pr_auc(y, p) == pytest.approx(0.5 + 0.5 * 2 / 3)
    assert M.brier([1, 0], [0.8, 0.3]) == pytest.approx((0.04 + 0.09) / 2)
    # unknown labels (NaN) are dropped, one class only -> NaN
    assert M.roc_auc([1, np.nan, 0], [0.2, 0.5, 0.1]) == 1.0
    assert math.isnan(M.roc_auc([1, 1], [0.2, 0.3]))


def test_calibration_curve_bins():
    y = [0, 1, 1, 1]
    p = [0.05, 0.15, 0.95, 0.85]
    c = M.calibration_curve(y, p, n_bins=2)
    assert c["count"].tolist() == [2, 2]
    assert c["mean_pred"] == pytest.approx([0.1, 0.9])
    assert c["observed"] == pytest.approx([0.5, 1.0])
    assert c["ece"] == pytest.approx((2 * 0.4 + 2 * 0.1) / 4)
    m = M.churn_metrics(y, p, n_bins=2, prefix="r7_")
    assert m["r7_n"] == 4 and m["r7_positive_rate"] == 0.75


def _cindex_brute(t, e, r):
    num = den = 0.0
    for i in range(len(t)):
        for j in range(len(t)):
            if e[i] == 1 and t[i] < t[j]:
                den += 1
                num += 1.0 if r[i] > r[j] else 0.5 if r[i] == r[j] else 0.0
    return num / den


def test_concordance_index_hand_and_brute_force():
    assert M.concordance_index([1, 2, 3], [1, 1, 0], [3, 2, 1]) == 1.0
    assert M.concordance_index([1, 2, 3], [1, 1, 0], [1, 2, 3]) == 0.0
    # only the censored user is earlier: no comparable pair
    assert math.isnan(M.concordance_index([1, 2], [0, 1], [1, 2]))
    # equal times are not comparable; ties in risk count half
    assert M.concordance_index([2, 2, 5], [1, 1, 1], [1, 2, 0]) == 1.0
    assert M.concordance_index([1, 2], [1, 1], [0.5, 0.5]) == 0.5
    rng = np.random.default_rng(3)
    t = rng.integers(0, 20, 300).astype(float)
    e = rng.integers(0, 2, 300)
    r = rng.integers(0, 10, 300).astype(float)
    assert M.concordance_index(t, e, r) == pytest.approx(_cindex_brute(t, e, r))


# ---------------------------------------------------------------------------------------
# Target sets (the nightly view) and the candidate catalogue
# ---------------------------------------------------------------------------------------


def test_set_metrics_hand_case():
    # items 2..7 score .9 .8 .7 .6 .5 .4; the day's set {3, 5} sits at ranks 1 and 3
    s = np.array([[NEG, NEG, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4]])
    r = M.full_ranking_metrics(s, M.pad_targets([[3, 5]], width=4), ks=(1, 3, 5))
    g1, g3 = 1 / math.log2(3), 1 / math.log2(5)
    assert r["hr@1"] == 0.0 and r["recall@1"] == 0.0 and r["ndcg@1"] == 0.0 and r["mrr@1"] == 0.0
    assert r["hr@3"] == 1.0 and r["recall@3"] == pytest.approx(0.5) and r["mrr@3"] == pytest.approx(0.5)
    # DCG counts item 3 only; IDCG is that of two targets at ranks 0 and 1
    assert r["ndcg@3"] == pytest.approx(g1 / (1 + g1))
    assert r["recall@5"] == 1.0 and r["ndcg@5"] == pytest.approx((g1 + g3) / (1 + g1))
    # the whole set on top: NDCG 1 at every K; IDCG stops at K when the set is larger
    assert M.full_ranking_metrics(s, [[2, 3, -1]], ks=(1, 2))["ndcg@2"] == pytest.approx(1.0)
    assert M.full_ranking_metrics(s, [[2, 3, 4]], ks=(1, 2))["ndcg@2"] == pytest.approx(1.0)
    assert M.full_ranking_metrics(s, [[2, 3, 4]], ks=(2,))["recall@2"] == pytest.approx(2 / 3)


def test_set_metrics_misses_stay_in_the_denominator_and_repeats_count_once():
    s = np.array([[NEG, NEG, 0.9, 0.8, 0.7, 0.6]])
    # OOV (1) and an excluded item (3) are unreachable but still part of the day's set
    excl = M.exclusion_mask(1, 6, candidates=np.array([False, False, True, False, True, True]))
    r = M.full_ranking_metrics(s, [[2, 1, 3, 2, -1]], ks=(2,), exclude=excl)
    assert r["recall@2"] == pytest.approx(1 / 3)  # {2, 1, 3}: one hit of three
    assert r["hr@2"] == 1.0 and r["mrr@2"] == 1.0
    assert r["ndcg@2"] == pytest.approx(1 / (1 + 1 / math.log2(3)))
    # nothing reachable: every metric 0, not NaN
    r = M.full_ranking_metrics(s, [[3, 1]], ks=(2,), exclude=excl)
    assert r["hr@2"] == 0.0 and r["ndcg@2"] == 0.0 and r["mrr@2"] == 0.0 and r["recall@2"] == 0.0


def test_set_metrics_average_ties_exactly():
    # four real items all tied, set {2, 3}: every order of the four equally likely
    s = np.zeros((1, 6))
    r = M.full_ranking_metrics(s, [[2, 3]], ks=(1, 2))
    assert r["hr@1"] == pytest.approx(0.5)  # 1 - C(3,2)/C(4,2)
    assert r["recall@1"] == pytest.approx(0.25)
    assert r["mrr@2"] == pytest.approx(0.5 + (0.5 - 1 / 6) / 2)
    assert r["ndcg@2"] == pytest.approx(0.5)


def _brute_force_set_metrics(scores, targets, ks):
    """Every order of the real items consistent with the scores (ties in all orders), averaged."""
    import itertools

    tset, size = set(targets), len(set(targets))
    idcg = {k: sum(1 / math.log2(i + 2) for i in range(min(size, k))) for k in ks}
    acc, n = {f"{m}@{k}": 0.0 for k in ks for m in ("hr", "recall", "ndcg", "mrr")}, 0
    for perm in itertools.permutations(range(2, len(scores))):
        if any(scores[a] < scores[b] for a, b in zip(perm, perm[1:])):
            continue
        n += 1
        ranks = [r for r, i in enumerate(p for p in perm if np.isfinite(scores[p])) if i in tset]
        for k in ks:
            hits = [r for r in ranks if r < k]
            acc[f"hr@{k}"] += bool(hits)
            acc[f"recall@{k}"] += len(hits) / size
            acc[f"ndcg@{k}"] += sum(1 / math.log2(r + 2) for r in hits) / idcg[k]
            acc[f"mrr@{k}"] += 1 / (min(hits) + 1) if hits else 0.0
    return {key: v / n for key, v in acc.items()}


def test_set_metrics_equal_brute_force_over_tied_orders():
    rng = np.random.default_rng(0)
    ks = (1, 2, 3, 5)
    for _ in range(60):
        n_items = 2 + int(rng.integers(2, 7))
        s = rng.integers(0, 3, n_items).astype(float)
        if rng.random() < 0.3:
            s[rng.integers(2, n_items)] = -np.inf  # an excluded item, perhaps a target
        t = rng.choice(np.arange(2, n_items), size=int(rng.integers(1, n_items - 1)), replace=False)
        got = M.full_ranking_metrics(s[None, :], M.pad_targets([t], width=len(t) + 2), ks=ks)
        want = _brute_force_set_metrics(s, t.tolist(), ks)
        for key in want:
            assert got[key] == pytest.approx(want[key], abs=1e-9), (key, s, t)


def test_a_set_of_one_equals_the_single_target_ranking():
    g = torch.Generator().manual_seed(0)
    s = torch.randint(0, 5, (50, 30), generator=g).float()  # many ties
    t = torch.randint(0, 30, (50,), generator=g)
    one = M.full_ranking_metrics(s, t, ks=(1, 5, 10), chunk_size=16)
    as_set = M.full_ranking_metrics(s, torch.stack([t, torch.full_like(t, -1)], 1), ks=(1, 5, 10), chunk_size=16)
    assert one.keys() == as_set.keys()
    for k in one:
        assert as_set[k] == pytest.approx(one[k]), k


def test_pad_targets():
    p = M.pad_targets([np.array([5, 3]), [], [7]])
    assert p.dtype == np.int64 and p.tolist() == [[5, 3], [-1, -1], [7, -1]]
    assert M.pad_targets([[1, 2, 3]], width=2).tolist() == [[1, 2]]


def test_candidate_mask_excludes_items_outside_the_catalogue():
    cand = M.candidate_mask(np.array([0, 1, 3, 4, 4, 99]), 6)  # pad, OOV and out-of-range ignored
    assert cand.tolist() == [False, False, False, True, True, False]
    excl = M.exclusion_mask(2, 6, history=np.array([[0, 4], [0, 0]]), candidates=cand)
    # row 0 also excludes its history (item 4): only item 3 is left to rank
    assert excl.tolist() == [[True, True, True, False, True, True], [True, True, True, False, False, True]]
    s = np.array([[0, 0, 0.9, 0.5, 0.4, 0.8]])  # items 2 and 5 score best but are not candidates
    e = M.exclusion_mask(1, 6, candidates=cand)
    assert M.full_ranking_metrics(s, [3], ks=(1,), exclude=e)["hr@1"] == 1.0
    # a target outside the candidates is a miss, and stays in the mean
    assert M.full_ranking_metrics(np.repeat(s, 2, 0), [3, 2], ks=(3,), exclude=e.repeat(2, 1))["hr@3"] == 0.5


def test_sampled_negatives_come_from_the_candidates():
    pos = [np.array([2, 3, 150])] * 40
    plain = M.sample_negatives(pos, 300, 10, seed=3)
    # every real item a candidate: the very same draws as the plain catalogue
    assert np.array_equal(M.sample_negatives(pos, 300, 10, seed=3, candidates=np.ones(300, bool)), plain)
    cand = np.zeros(300, bool)
    cand[100:200] = True
    neg = M.sample_negatives(pos, 300, 10, seed=3, candidates=cand)
    assert neg.min() >= 100 and neg.max() < 200 and not (neg == 150).any()
    with pytest.raises(ValueError, match="sampled_negatives"):
        M.sample_negatives(pos, 300, 100, seed=3, candidates=cand)  # 99 non-positive candidates
