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
