"""The ranking's recent-popularity prior (ebbtide.model.prior): the log prior, the choice on
validation, and how a predictor applies it. No Spark."""
from __future__ import annotations

import numpy as np
import pytest

from ebbtide.model import predictor as P
from ebbtide.model import prior


def test_log_prior_is_a_log_distribution_with_pseudo_counts():
    lp = prior.log_prior(np.array([5.0, 5.0, 3.0, 0.0, 1.0]), 6)  # pad and OOV weights are ignored; item 5 unseen
    p = np.exp(lp.astype(np.float64))
    want = np.array([0.5, 0.5, 3.5, 0.5, 1.5, 0.5])
    np.testing.assert_allclose(p, want / want.sum(), rtol=1e-6)
    assert lp.dtype == np.float32 and lp.shape == (6,)


def test_no_weight_no_term():
    lp = np.log(np.full(4, 0.25, np.float32))
    assert prior.term(None, lp) is None
    assert prior.term({prior.META_KEY: None}, lp) is None
    assert prior.term({prior.META_KEY: {"half_life_days": None, "weight": 0.0}}, lp) is None
    assert prior.term({prior.META_KEY: {"half_life_days": 7.0, "weight": 0.5}}, None) is None
    np.testing.assert_allclose(prior.term({prior.META_KEY: {"half_life_days": 7.0, "weight": 0.5}}, lp), 0.5 * lp)
    assert prior.half_life_s({prior.META_KEY: {"half_life_days": 7.0, "weight": 0.5}}) == 7 * 86400.0
    assert prior.half_life_s({prior.META_KEY: {"half_life_days": None, "weight": 0.0}}) is None
    assert prior.half_life_s({}) is None


def test_each_view_reads_its_own_choice():
    lp = np.log(np.full(4, 0.25, np.float32))
    meta = {prior.META_KEY: {"nightly": {"half_life_days": 3.0, "weight": 2.0},
                             "request_time": {"half_life_days": None, "weight": 0.0}}}
    np.testing.assert_allclose(prior.term(meta, lp), 2.0 * lp)  # the nightly table's, by default
    np.testing.assert_allclose(prior.term(meta, lp, "nightly"), 2.0 * lp)
    assert prior.term(meta, lp, "request_time") is None
    assert prior.half_life_s(meta, "nightly") == 3 * 86400.0 and prior.half_life_s(meta, "request_time") is None
    # A predictor saved before the choice was made per view: its one pair serves both.
    old = {prior.META_KEY: {"half_life_days": 14.0, "weight": 1.0}}
    assert prior.half_life_s(old, "nightly") == prior.half_life_s(old, "request_time") == 14 * 86400.0


def _hit_rate(scores, targets):
    """choose's metric: the share of rows whose top item is the target, the term added to ``scores``."""
    return lambda term: float((np.argmax(scores if term is None else scores + term[None, :], axis=1) == targets).mean())


def test_choose_keeps_the_network_alone_when_no_blend_is_better():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(50, 8)).astype(np.float32)
    targets = np.argmax(scores, axis=1)  # the network is already right everywhere
    lps = {7.0: np.log(np.full(8, 1 / 8, np.float32)), 30.0: np.log(np.arange(1, 9, dtype=np.float32) / 36)}
    c = prior.choose(prior.grid_scores(lps, [0.5, 1.0], _hit_rate(scores, targets)))
    assert c["weight"] == 0.0 and c["half_life_days"] is None
    assert c["valid_ndcg_at_10"] == c["valid_ndcg_at_10_without"] == 1.0
    assert set(c["grid"]) == {"0", "7d x 0.5", "7d x 1", "30d x 0.5", "30d x 1"}


def test_choose_finds_the_half_life_and_weight_that_fix_the_ranking():
    # Every user's target is item 3, which the catalogue favours lately (the 30-day prior) while
    # the network prefers item 5 by a margin of 1.
    scores = np.zeros((20, 6), np.float32)
    scores[:, 5] = 1.0
    flat = np.log(np.full(6, 1 / 6, np.float32))
    recent = np.log(np.array([0.05, 0.05, 0.05, 0.6, 0.15, 0.1], np.float32))  # log 0.6 - log 0.1 = 1.79
    c = prior.choose(prior.grid_scores({7.0: flat, 30.0: recent}, [0.25, 0.5, 1.0], _hit_rate(scores, np.full(20, 3))))
    assert (c["half_life_days"], c["weight"]) == (30.0, 1.0)  # 0.25 x 1.79 and 0.5 x 1.79 do not reach 1
    assert c["valid_ndcg_at_10"] == 1.0 and c["valid_ndcg_at_10_without"] == 0.0


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    from conftest import tiny_predictor

    return tiny_predictor(tmp_path_factory.mktemp("pred"), 12)


def test_a_predictor_adds_its_chosen_prior_to_the_ranking_only(folder):
    plain = P.Predictor.load(folder)
    f = plain.features_from_events([["i3", "i4"], ["i9"]], [[0.0, 60.0], [0.0]])
    e = np.array([3600.0, 86400.0], np.float32)
    lp = prior.log_prior(np.arange(12, dtype=np.float64), 14)  # a newer vocabulary: 2 items the model lacks
    base = plain.score_all(f, e)
    np.testing.assert_array_equal(plain.score_all(f, e, log_p=lp), base)  # no prior chosen: the network alone

    P.set_meta(folder, prior.META_KEY, {"nightly": {"half_life_days": 30.0, "weight": 0.5},
                                        "request_time": {"half_life_days": 3.0, "weight": 0.25}})
    withp = P.Predictor.load(folder)
    assert P.read_meta(folder)[prior.META_KEY]["nightly"]["weight"] == 0.5
    got = withp.score_all(f, e, log_p=lp)
    np.testing.assert_allclose(got[:, 2:], base[:, 2:] + 0.5 * lp[None, 2:12], rtol=1e-6)
    np.testing.assert_allclose(withp.score_all(f, e, log_p=lp, view="request_time")[:, 2:],
                               base[:, 2:] + 0.25 * lp[None, 2:12], rtol=1e-6)
    np.testing.assert_array_equal(withp.score_all(f, e), base)  # no log_p: the network alone
    idx, sc = withp.recommend(f, e, 3, log_p=lp)
    want = np.argsort(-got, axis=1, kind="stable")[:, :3]
    np.testing.assert_array_equal(idx, want)
    np.testing.assert_allclose(sc, np.take_along_axis(got, want, 1), rtol=1e-6)
    # The churn and interest read-outs are the user's alone.
    for k, v in withp.churn(f, e).items():
        np.testing.assert_allclose(v, plain.churn(f, e)[k], rtol=1e-6)
    P.set_meta(folder, prior.META_KEY, None)


def test_evaluation_ranks_each_view_with_its_own_prior(folder):
    from ebbtide.evaluation.baselines import PredictorScorer

    P.set_meta(folder, prior.META_KEY, {"nightly": {"half_life_days": 30.0, "weight": 2.0},
                                        "request_time": {"half_life_days": 3.0, "weight": 0.5}})
    p = P.Predictor.load(folder)
    f = p.features_from_events([["i3", "i4"]], [[0.0, 60.0]])
    e = np.array([3600.0], np.float32)
    lp30 = prior.log_prior(np.arange(12, dtype=np.float64), 12)
    lp3 = prior.log_prior(np.arange(12, dtype=np.float64)[::-1].copy(), 12)
    sc = PredictorScorer(p, log_p={"nightly": lp30, "request_time": lp3})
    np.testing.assert_allclose(sc.in_view("nightly").score_all(f, e), p.score_all(f, e, log_p=lp30, view="nightly"))
    np.testing.assert_allclose(sc.in_view("request_time").score_all(f, e),
                               p.score_all(f, e) + 0.5 * lp3[None, :], rtol=1e-6)
    assert sc.view == "nightly"  # in_view leaves the scorer as it was
    P.set_meta(folder, prior.META_KEY, None)
