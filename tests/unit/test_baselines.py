"""Baselines on hand-built train events: each ranks what its definition says it ranks."""
import numpy as np
import pytest

from ebbtide.evaluation import baselines as B
from ebbtide.evaluation.protocols import DAY_S, churn_labels

N_ITEMS = 7  # pad, OOV, items 2..6


def _events(rows):
    """rows: (user, item, day, last_item)"""
    a = np.array(rows, dtype=np.float64)
    return B.TrainEvents(a[:, 0].astype(int), a[:, 1].astype(int), a[:, 2] * DAY_S, a[:, 3].astype(int))


def _batch(windows, gaps_days=None, last_day=100.0):
    items = np.array(windows, dtype=np.int64)
    n, L = items.shape
    gaps = np.zeros((n, L), np.float32) if gaps_days is None else np.array(gaps_days, np.float32) * DAY_S
    return {
        "item_idx": items,
        "event_type_idx": (items > 0).astype(np.int64) * 2,
        "gap_s": gaps,
        "hour_of_week": np.zeros((n, L), np.int64),
        "session_start": (items > 0).astype(np.int64),
        "length": (items > 0).sum(1),
        "last_ts_s": np.full(n, last_day * DAY_S),
    }


EV = _events([
    # user 0: 2 -> 3 -> 4 ; user 1: 2 -> 3 ; user 2: 5 -> 6 (recent) ; OOV and pad targets ignored
    (0, 2, 1, 0), (0, 3, 2, 2), (0, 4, 3, 3),
    (1, 2, 1, 0), (1, 3, 2, 2),
    (2, 5, 90, 0), (2, 6, 91, 5),
    (2, 1, 92, 6), (2, 0, 92, 6),
])


def test_train_aggregates_count_real_targets_pairs_of_users_and_transitions():
    ev = _events([(0, 2, 1, 0), (0, 3, 2, 2), (0, 3, 3, 3), (1, 3, 1, 0), (1, 2, 2, 3), (1, 1, 3, 2), (1, 9, 4, 2)])
    agg = ev.aggregates(N_ITEMS, [DAY_S])
    assert agg.count.tolist() == [0, 0, 2, 3, 0, 0, 0]  # OOV 1 and item 9 (outside the catalogue) left out
    assert agg.item_users.tolist() == [0, 0, 2, 2, 0, 0, 0]  # user 0's repeat of 3 counts once
    assert list(zip(agg.pair_a, agg.pair_b, agg.pair_n)) == [(2, 3, 2)]
    assert sorted(zip(agg.last_item, agg.item, agg.n)) == [(0, 2, 1), (0, 3, 1), (2, 3, 1), (3, 2, 1), (3, 3, 1)]
    assert agg.t_ref == 3 * DAY_S
    assert agg.decayed[DAY_S][2:4] == pytest.approx([0.25 + 0.5, 0.5 + 1 + 0.25])
    # a baseline given aggregates without its decay refuses them rather than guessing
    with pytest.raises(ValueError, match="half-lives"):
        B.RecentPopular(N_ITEMS, 2.0).fit(agg)
    assert B.RecentPopular(N_ITEMS, 1.0).fit(agg).w[3] == pytest.approx(1.75)


def test_most_popular_counts_train_targets_only():
    s = B.MostPopular(N_ITEMS).fit(EV).score_all(_batch([[0, 2]]), np.zeros(1))
    assert s.shape == (1, N_ITEMS)
    # items 2 and 3 twice, 4, 5, 6 once; pad/OOV zero
    assert s[0, 2] == s[0, 3] > s[0, 4] == s[0, 5] == s[0, 6] > 0
    assert s[0, 0] == s[0, 1] == 0


def test_recent_popular_prefers_recent_items_and_half_life_matters():
    b = _batch([[0, 2]], last_day=100.0)
    fast = B.RecentPopular(N_ITEMS, half_life_days=1.0).fit(EV).score_all(b, np.zeros(1))
    slow = B.RecentPopular(N_ITEMS, half_life_days=1e6).fit(EV).score_all(b, np.zeros(1))
    assert fast[0, 6] > fast[0, 5] > fast[0, 2]      # day 91 > day 90 > day 1
    assert slow[0, 2] > slow[0, 6]                    # no decay: plain counts
    # 2^(-1) per day: item 5 (day 90) weighs half of item 6 (day 91)
    assert fast[0, 6] - fast[0, 5] == pytest.approx(np.log(2.0), rel=1e-4)
    # "now" later by 3 days shifts every item alike
    later = B.RecentPopular(N_ITEMS, 1.0).fit(EV).score_all(b, np.full(1, 3 * DAY_S))
    assert np.argsort(later[0, 2:]).tolist() == np.argsort(fast[0, 2:]).tolist()


def test_cooccurrence_scores_items_seen_with_the_window_and_decays_old_inputs():
    m = B.ItemCooccurrence(N_ITEMS, half_life_days=1.0).fit(EV)
    # Jaccard(2,3) = 2/2 = 1, Jaccard(2,4) = 1/2, Jaccard(5,6) = 1, no self-similarity
    assert m.sim[2, 3] == pytest.approx(1.0) and m.sim[2, 4] == pytest.approx(0.5)
    assert m.sim[2, 2] == 0
    s = m.score_all(_batch([[0, 2]]), np.zeros(1))
    assert s[0, 3] > s[0, 4] > s[0, 5]
    # window [5, 2]: 5 is 10 days older than 2, so 2's neighbours win
    s = m.score_all(_batch([[5, 2]], gaps_days=[[0, 10]]), np.zeros(1))
    assert s[0, 3] > s[0, 6]
    s = m.score_all(_batch([[2, 5]], gaps_days=[[0, 10]]), np.zeros(1))
    assert s[0, 6] > s[0, 3]


def test_input_ages_add_the_elapsed_time():
    b = _batch([[0, 3, 4]], gaps_days=[[0, 0, 2]])
    ages = B.input_ages_s(b, np.array([DAY_S]))
    assert np.isinf(ages[0, 0])
    assert ages[0, 1:].tolist() == [3 * DAY_S, DAY_S]


def test_markov_follows_the_last_item():
    m = B.LastItemMarkov(N_ITEMS).fit(EV)
    s = m.score_all(_batch([[4, 2], [0, 5], [0, 4]]), np.zeros(3))
    assert s[0].argmax() == 3                       # 2 -> 3 twice
    assert s[1].argmax() == 6                       # 5 -> 6
    assert s[0, 3] == pytest.approx(1.0, abs=1e-5)  # row-normalised
    # an item with no observed successor: popularity order only
    assert s[2].max() < 1e-5 and s[2, 2] > s[2, 6]


def _churn_fixture(n=400, seed=0):
    """Users whose window gap predicts their return: frequent users come back soon."""
    rng = np.random.default_rng(seed)
    mean_gap_days = rng.choice([0.5, 20.0], size=n)
    L = 6
    gaps = rng.exponential(mean_gap_days[:, None], size=(n, L)).astype(np.float32)
    gaps[:, 0] = 0
    items = np.full((n, L), 3)
    b = _batch(items, gaps_days=gaps)
    elapsed = rng.exponential(mean_gap_days) * DAY_S * 0.5
    ret = rng.exponential(mean_gap_days) * DAY_S
    labels = {d: churn_labels(np.ones(n), ret, d) for d in (7, 30)}
    return b, elapsed, labels, ret


def test_rfm_and_days_since_last_learn_the_direction():
    from ebbtide.evaluation.metrics import roc_auc

    b, e, y, _ = _churn_fixture()
    for cls in (B.RFMLogistic, B.DaysSinceLast):
        m = cls((7, 30)).fit(b, e, y)
        bt, et, yt, _ = _churn_fixture(seed=1)
        p = m.churn(bt, et)
        assert set(p) == {"p_return_7d", "p_return_30d"}
        assert ((p["p_return_7d"] >= 0) & (p["p_return_7d"] <= 1)).all()
        assert roc_auc(yt[7], p["p_return_7d"]) > 0.7, cls.name
    # RFM sees the gaps in the window, days-since-last does not: RFM must be better here
    bt, et, yt, _ = _churn_fixture(seed=1)
    rfm = roc_auc(yt[7], B.RFMLogistic().fit(b, e, y).churn(bt, et)["p_return_7d"])
    dsl = roc_auc(yt[7], B.DaysSinceLast().fit(b, e, y).churn(bt, et)["p_return_7d"])
    assert rfm > dsl


def test_kaplan_meier_hand_case_and_conditional_return():
    # durations 1,2,2,3(censored),4 days
    t, s = B.kaplan_meier(np.array([1, 2, 2, 3, 4.0]), np.array([1, 1, 1, 0, 1]))
    assert t.tolist() == [1, 2, 4]
    assert s == pytest.approx([4 / 5, 4 / 5 * 2 / 4, 4 / 5 * 2 / 4 * 0])
    km = B.KaplanMeierChurn((1,)).fit(np.array([1, 2, 2, 3, 4.0]) * DAY_S, np.array([1, 1, 1, 0, 1]))
    b = _batch([[0, 2], [0, 2]])
    p = km.churn(b, np.array([0.5 * DAY_S, 1.5 * DAY_S]))["p_return_1d"]
    # idle 0.5 d: returns by 1.5 d with 1 - S(1.5)/S(0.5) = 1 - .8 ; idle 1.5 d: 1 - S(2.5)/S(1.5) = 1 - .4/.8
    assert p == pytest.approx([0.2, 0.5])


def test_churn_fits_on_grouped_durations_equal_the_ungrouped_fit():
    """Durations grouped as (value, observed, count), as evaluate aggregates them in Spark, fit
    Kaplan-Meier and the exponential prior exactly as the raw durations do."""
    rng = np.random.default_rng(3)
    d = np.round(rng.exponential(5.0, 300), 1).astype(np.float32).astype(np.float64) * DAY_S
    e = (rng.random(300) < 0.7).astype(float)
    (v, o), n = np.unique(np.stack([d, e]), axis=1, return_counts=True)
    assert len(v) < len(d)  # real ties, some shared by observed and censored entries
    rev = np.arange(len(v))[::-1]  # in any order
    t0, s0 = B.kaplan_meier(d, e)
    t1, s1 = B.kaplan_meier(v[rev], o[rev], n[rev])
    assert np.array_equal(t0, t1) and np.array_equal(s0, s1)
    b = _batch([[0, 2], [2, 3]], gaps_days=[[0, 0], [0, 4]])
    el = np.array([0.5, 3.0]) * DAY_S
    for cls in (B.KaplanMeierChurn, B.ExponentialDecay):
        raw = cls().fit(d, e).churn(b, el)
        grouped = cls().fit(v[rev], o[rev], n[rev]).churn(b, el)
        for k in raw:
            assert np.array_equal(raw[k], grouped[k]), (cls.name, k)


def test_exponential_decay_rate_from_the_window():
    m = B.ExponentialDecay((7,), prior_gaps=0.0, prior_days=0.0)
    b = _batch([[2, 3, 4], [0, 2, 3]], gaps_days=[[0, 1, 1], [0, 0, 10]])
    p = m.churn(b, np.zeros(2))["p_return_7d"]
    assert p == pytest.approx([1 - np.exp(-7 * 2 / 2), 1 - np.exp(-7 * 1 / 10)])
    # idle time counts as exposure without a return: lower rate
    assert m.churn(b, np.full(2, 5 * DAY_S))["p_return_7d"][0] < p[0]


def test_churn_labels_known_and_unknown():
    y = churn_labels(np.array([1, 1, 0, 0]), np.array([3, 10, 8, 5]) * DAY_S, 7)
    assert y[:3].tolist() == [1.0, 0.0, 0.0] and np.isnan(y[3])


def test_predictor_scorer_reads_items_newer_than_the_model_as_oov():
    """A champion evaluated on a newer snapshot: input items and event types appended after it was
    trained read as OOV (1), as scoring reads them, instead of indexing past its embeddings."""
    seen = {}

    class OldModel:
        n_items, meta = 5, {"n_event_types": 3}

        def score_all(self, batch, elapsed_s, log_p=None, view="nightly"):
            seen.update(batch)
            return np.zeros((len(batch["length"]), self.n_items), np.float32)

    batch = _batch([[2, 4, 6], [0, 3, 5]])
    batch["event_type_idx"][0, 2] = 3
    out = B.PredictorScorer(OldModel()).score_all(batch, np.zeros(2))
    assert out.shape == (2, 5)
    assert seen["item_idx"].tolist() == [[2, 4, 1], [0, 3, 1]]
    assert seen["event_type_idx"].tolist() == [[2, 2, 1], [0, 2, 2]]
    assert batch["item_idx"].tolist() == [[2, 4, 6], [0, 3, 5]]  # the shared batch is left as it was
