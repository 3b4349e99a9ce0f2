"""The ranking's item-neighbour term (ebbtide.model.neighbours): the similarity, the affinity of a
window, the term, and how a predictor applies the choice per view. No Spark."""
from __future__ import annotations

import numpy as np
import pytest

from ebbtide.evaluation import baselines as B
from ebbtide.model import neighbours as NB
from ebbtide.model import predictor as P

DAY = 86400.0


def _agg(n_items=8):
    # users 0 and 1 both have items 2 and 3; user 1 also 4; user 2 has 4 and 5.
    ev = B.TrainEvents(user=np.array([0, 0, 1, 1, 1, 2, 2]), item=np.array([2, 3, 2, 3, 4, 4, 5]),
                       ts_s=np.arange(7, dtype=float), last_item=np.zeros(7, dtype=np.int64))
    return ev.aggregates(n_items)


def _batch(windows, gaps_days):
    items = np.array(windows, dtype=np.int64)
    return {"item_idx": items, "gap_s": np.array(gaps_days, dtype=np.float32) * DAY,
            "length": (items > 0).sum(1)}


def test_similarity_is_the_baselines_jaccard_cut_to_each_items_top_k():
    agg = _agg()
    full = NB.similarity(agg, 0).toarray()
    assert full[2, 3] == pytest.approx(1.0)          # both users of 2 have 3
    assert full[2, 4] == pytest.approx(1 / 3)        # 2's users {0, 1}, 4's {1, 2}: one of three
    assert full[4, 5] == pytest.approx(1 / 2) and full[2, 2] == 0.0
    top1 = NB.similarity(agg, 1).toarray()
    assert (np.count_nonzero(top1, axis=1) <= 1).all()
    assert top1[2, 3] == pytest.approx(1.0) and top1[2, 4] == 0.0  # 2 keeps its closest neighbour only


def test_affinity_decays_the_window_and_is_normalised_per_row():
    sim = NB.similarity(_agg(), 0)
    # one window: item 2 then item 5 a day later; asked at the moment of the last event
    b = _batch([[0, 2, 5]], [[0, 0, 1]])
    aff = NB.affinity(sim, b, np.zeros(1), 1 * DAY)
    # item 2 is a day old (weight 1/2), item 5 new (weight 1): 3 <- 0.5 x 1, 4 <- 0.5 x 1/3 + 1 x 1/2
    raw = np.zeros(8)
    raw[3], raw[4] = 0.5 * 1.0, 0.5 * (1 / 3) + 1.0 * 0.5
    np.testing.assert_allclose(aff[0], raw / raw.max(), rtol=1e-6)
    assert NB.affinity(sim, _batch([[0, 0, 7]], [[0, 0, 0]]), np.zeros(1), DAY).max() == 0.0  # no neighbour


def test_term_is_zero_for_the_strongest_neighbour_and_weight_x_log_floor_for_none():
    aff = np.array([[0.0, 1.0, 0.5], [0.0, 0.0, 0.0]], np.float32)
    t = NB.term_of(aff, 2.0)
    np.testing.assert_allclose(t[0], 2.0 * np.log(np.array([0.0, 1.0, 0.5]) + NB.FLOOR), rtol=1e-6)
    np.testing.assert_array_equal(t[1], 0.0)  # a window without neighbours gets no term


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    from conftest import tiny_predictor

    return tiny_predictor(tmp_path_factory.mktemp("pred"), 8)


def test_a_predictor_adds_the_term_chosen_for_each_view(folder):
    plain = P.Predictor.load(folder)
    f = plain.features_from_events([["i2", "i5"], ["i7"]], [[0.0, DAY], [0.0]])
    e = np.array([3600.0, DAY], np.float32)
    base = plain.score_all(f, e)
    assert plain.neighbours is None and plain.neighbour_term(f, e) is None

    sim = NB.similarity(_agg(), 0)
    NB.save(folder, sim)
    P.set_meta(folder, NB.META_KEY, {"nightly": {"half_life_days": 30.0, "weight": 2.0},
                                     "request_time": {"half_life_days": None, "weight": 0.0}})
    p = P.Predictor.load(folder)
    want = base + 2.0 * np.where(np.arange(2)[:, None] == 0, np.log(NB.affinity(sim, f, e, 30 * DAY) + NB.FLOOR), 0.0)
    got = p.score_all(f, e)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    assert np.isfinite(got[:, 2:]).all()  # pad and OOV stay -inf, every item keeps a finite score
    np.testing.assert_array_equal(p.score_all(f, e, view="request_time"), base)  # weight 0 there
    idx, sc = p.recommend(f, e, 3)
    order = np.argsort(-got, axis=1, kind="stable")[:, :3]
    np.testing.assert_allclose(sc, np.take_along_axis(got, order, 1), rtol=1e-5)
    # evaluation's scorer ranks each view with that view's choice
    sc_eval = B.PredictorScorer(p)
    np.testing.assert_allclose(sc_eval.in_view("nightly").score_all(f, e), got, rtol=1e-6)
    np.testing.assert_allclose(sc_eval.in_view("request_time").score_all(f, e), base, rtol=1e-6)
