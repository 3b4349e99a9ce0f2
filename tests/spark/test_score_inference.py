"""The worker-side scoring functions on plain Arrow batches (no Spark session needed): the same
functions mapInArrow runs, called directly."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from ebbtide.scoring import inference


def _users(vecs: np.ndarray, consumed=None) -> pa.RecordBatch:
    cols = {
        "user_id": pa.array([f"u{i}" for i in range(len(vecs))]),
        "user_vec": pa.array(list(vecs.astype(np.float32)), pa.list_(pa.float32())),
    }
    if consumed is not None:
        cols["consumed"] = pa.array(consumed, pa.list_(pa.int32()))
    return pa.RecordBatch.from_pydict(cols)


def _recs(fn, batch: pa.RecordBatch):
    """score_fn's recommendation rows (those with a rank), as gold_recommendations holds them."""
    out = pa.Table.from_batches(list(fn(iter([batch]))), schema=inference.SCORED_SCHEMA).to_pandas()
    return out[out["rank"].notna()]


def _score_fn(path, **kw):
    return inference.score_fn(path, churn=False, loader=kw.pop("loader", inference.load_embeddings), **kw)


@pytest.fixture
def items(tmp_path):
    rng = np.random.default_rng(1)
    m = rng.standard_normal((50, 4)).astype(np.float32)
    path = tmp_path / "items.npy"
    np.save(path, m)
    inference._MODELS.clear()
    return str(path), m


def test_score_fn_matches_numpy_and_honours_every_exclusion(items):
    path, m = items
    rng = np.random.default_rng(2)
    users = rng.standard_normal((700, 4))
    consumed = [[int(j) for j in rng.choice(np.arange(2, 50), 5, replace=False)] for _ in range(700)]
    fn = _score_fn(path, k=7, deny=["i10", "i11"], batch_users=64, max_batch_mfloats=1.0)
    out = _recs(fn, _users(users, consumed))
    assert len(out) == 700 * 7
    scores = users.astype(np.float32) @ m.T
    scores[:, [0, 1, 10, 11]] = -np.inf
    for i in (0, 123, 699):
        s = scores[i].copy()
        s[consumed[i]] = -np.inf
        want = np.argsort(-s, kind="stable")[:7]
        got = out[out.user_id == f"u{i}"].sort_values("rank")
        assert list(got.item_index) == list(want)
        assert np.allclose(got.score, s[want], rtol=1e-5)
        assert list(got.item_id) == [f"i{j}" for j in want]
    excluded = {0, 1, 10, 11}
    assert not excluded & set(out.item_index)
    assert all(j not in consumed[int(u[1:])] for u, j in zip(out.user_id, out.item_index))


def test_allow_list_smaller_than_k_gives_fewer_rows(items):
    path, _ = items
    fn = _score_fn(path, k=5, allow=["i3", "i4"], exclude_consumed=True)
    out = _recs(fn, _users(np.ones((3, 4)), [[3], [], [3, 4]]))
    assert sorted(out[out.user_id == "u0"].item_id) == ["i4"]
    assert sorted(out[out.user_id == "u1"].item_id) == ["i3", "i4"]
    assert (out.user_id != "u2").all()  # everything allowed was consumed: no rows, the gate counts coverage


def test_model_is_loaded_once_per_worker(items):
    path, _ = items
    loads = []

    def loader(uri, uris=None):
        loads.append(uri)
        return inference.EmbeddingScorer(uri)

    for _ in range(3):
        list(_score_fn(path, k=2, loader=loader)(iter([_users(np.ones((2, 4)))])))
    assert loads == [path]


def test_ragged_windows_are_refused():
    col = pa.array([[1, 2, 3], [1, 2]], pa.list_(pa.int32()))
    with pytest.raises(ValueError, match="left-padded"):
        inference.fixed_list_to_numpy(col, np.int64)
    sliced = pa.array([[9, 9], [1, 2], [3, 4]], pa.list_(pa.int32())).slice(1)
    assert inference.fixed_list_to_numpy(sliced, np.int64).tolist() == [[1, 2], [3, 4]]


def test_fading_lists_largest_losses_first_and_only_losses():
    names = np.array(["a", "b", "c"], dtype=object)
    then = np.array([[0.5, 0.3, 0.2], [0.1, 0.1, 0.8]])
    now = np.array([[0.1, 0.25, 0.3], [0.1, 0.1, 0.8]])
    rows = inference.fading_interest(names, then, now, top=3)
    assert rows[0] == [("a", 0.1, 0.5), ("b", 0.25, 0.3)]
    assert rows[1] == []
    g_names, g_then, g_now = inference.group_mass(then, now, np.array(["x", "x", None], dtype=object))
    assert list(g_names) == ["x"] and np.allclose(g_then[:, 0], [0.8, 0.2]) and np.allclose(g_now[:, 0], [0.35, 0.2])


def test_because_lists_follow_the_published_rows_most_weight_first():
    """Predictor.explain's (n, k, top) arrays -> one list per published (user, rank) row: rows cut
    by -inf scores drop, and a list holds the found slots (position >= 0) in order."""
    t0 = 1_741_564_800_000_000  # 2025-03-10 00:00 UTC in microseconds
    because = {
        "position": np.array([[[4, 2, -1], [3, -1, -1]], [[-1, -1, -1], [1, 0, 2]]]),
        "item_id": np.array([[["a", "b", None], ["c", None, None]], [[None] * 3, ["d", "e", "f"]]], dtype=object),
        "ts_us": np.array([[[t0, t0 - 5, -1], [t0 - 9, -1, -1]], [[-1] * 3, [t0 - 1, t0 - 2, t0 - 3]]]),
        "weight": np.array([[[0.7, 0.2, 0.0], [1.0, 0.0, 0.0]], [[0.0] * 3, [0.5, 0.3, 0.2]]]),
    }
    valid = np.array([[True, False], [True, True]])
    got = inference.because_array(because, valid).to_pylist()
    assert [[(e["item_id"], e["weight"]) for e in row] for row in got] == [
        [("a", 0.7), ("b", 0.2)], [], [("d", 0.5), ("e", 0.3), ("f", 0.2)]]
    assert got[0][1]["ts"].timestamp() * 1e6 == t0 - 5
    assert inference.because_array(None, valid).to_pylist() == [[], [], []]
    assert inference.because_array(None, valid).type == inference.BECAUSE_TYPE


def test_recent_activity_counts_the_last_week_against_the_users_own_pace():
    day = 86400.0
    # u0: events 30, 20, 10, 3 and 1 days before the score date; u1: one event 2 days before;
    # u2: two events 40 and 35 days before.
    gaps = [[0, 10 * day, 10 * day, 7 * day, 2 * day], [0, 0, 0, 0, 0], [0, 0, 0, 0, 5 * day]]
    batch = pa.RecordBatch.from_pydict({
        "gap_s": pa.array(gaps, pa.list_(pa.float32())),
        "length": pa.array([5, 1, 2], pa.int64()),
        "elapsed_s": pa.array([1 * day, 2 * day, 35 * day], pa.float64()),
    })
    recent, ratio = inference.recent_activity(batch)
    assert recent.tolist() == [2, 1, 0]
    # u0: 5 events over 30 days = 7/6 a week, 2 this week; u1: a window inside the week reads 1
    assert ratio == pytest.approx([2 / (5 / (30 / 7)), 1.0, 0.0])


def test_score_fn_asks_every_question_of_a_sub_batch_of_the_same_batch():
    """Both tables come from one pass: the recommendations, the churn read-out and the interest are
    asked of the same batch object, which is what lets the predictor run its encoder once for all
    (PredictorScorer._feats keys the feature arrays on it); one churn row per user, rank null."""
    asked: list[tuple[str, int]] = []
    alive: list = []  # keeps each sub-batch alive, so that an id is never reused within the test

    class Scorer:
        n_items = 6

        def scores(self, batch):
            asked.append(("scores", id(batch)))
            alive.append(batch)
            return np.tile(np.arange(self.n_items, dtype=np.float32), (batch.num_rows, 1))

        def item_ids(self, idx):
            return np.asarray([f"i{i}" for i in np.asarray(idx).ravel()], dtype=object)

        def churn(self, batch):
            asked.append(("churn", id(batch)))
            alive.append(batch)
            n = batch.num_rows
            return {k: np.full(n, 0.5) for k in ("p_return_7d", "p_return_30d", "expected_days_to_return",
                                                 "half_life_days")}

        def interest(self, batch, by):
            asked.append(("interest", id(batch)))
            alive.append(batch)
            return np.array(["a"], dtype=object), np.ones((batch.num_rows, 1)), np.zeros((batch.num_rows, 1))

    n = 5
    batch = pa.RecordBatch.from_pydict({
        "user_id": pa.array([f"u{i}" for i in range(n)]),
        "gap_s": pa.array([[0.0, 60.0]] * n, pa.list_(pa.float32())),
        "length": pa.array([2] * n, pa.int64()),
        "elapsed_s": pa.array([86400.0] * n, pa.float64()),
    })
    fn = inference.score_fn("stub", k=2, loader=lambda uri, uris=None: Scorer(), identity="one-pass-test",
                            exclude_consumed=False, batch_users=2)
    out = pa.Table.from_batches(list(fn(iter([batch]))), schema=inference.SCORED_SCHEMA).to_pandas()
    per_batch: dict[int, list[str]] = {}
    for question, b in asked:
        per_batch.setdefault(b, []).append(question)
    assert len(per_batch) == 3  # sub-batches of 2, 2 and 1 users
    assert all(qs == ["scores", "churn", "interest"] for qs in per_batch.values())
    churn = out[out["rank"].isna()]
    assert sorted(churn.user_id) == [f"u{i}" for i in range(n)] and (churn.p_return_30d == 0.5).all()
    recs = out[out["rank"].notna()]
    assert len(recs) == n * 2 and recs.p_return_30d.isna().all() and set(recs.item_id) == {"i5", "i4"}


def test_score_fn_blends_the_popularity_prior_into_the_ranking():
    """The night's log p_recent reaches the scorer's ranking (ebbtide.model.prior); without one the
    scorer is asked as before, so scorers that know no prior (the embedding scorer) still work."""
    seen: list = []

    class Scorer:
        n_items = 6

        def scores(self, batch, log_p=None):
            seen.append(log_p)
            s = np.tile(np.arange(self.n_items, dtype=np.float32), (batch.num_rows, 1))
            return s if log_p is None else s + log_p[None, :]

        def item_ids(self, idx):
            return np.asarray([f"i{i}" for i in np.asarray(idx).ravel()], dtype=object)

    batch = pa.RecordBatch.from_pydict({"user_id": pa.array(["u0", "u1"])})
    log_p = np.array([0, 0, 10, 0, 0, 0], np.float32)
    for lp, want in ((None, ["i5", "i4"]), (log_p, ["i2", "i5"])):
        fn = inference.score_fn("stub", k=2, churn=False, loader=lambda uri, uris=None: Scorer(), identity="prior-test",
                                exclude_consumed=False, log_p=lp)
        recs = _recs(fn, batch)
        assert list(recs[recs.user_id == "u1"].sort_values("rank").item_id) == want
    assert seen[0] is None and seen[-1] is log_p
