"""The baselines fitted on Spark aggregates of the train split (``TrainAggregates.from_spark``)
score exactly as the same baselines fitted on the collected train rows did before evaluate
stopped collecting them (``_reference_*`` below: that fitting code, kept as it was)."""
from __future__ import annotations

from datetime import datetime, timedelta

import numpy as np
import pytest

from test_evaluate import build_examples, examples_schema

pytestmark = pytest.mark.spark

DAY = 86400.0
LN2 = np.log(2.0)
N_SMALL = 8  # pad 0, OOV 1, items 2..7
HALF_LIFE_S = 14.0 * DAY


def _small_rows():
    """Windows of 3, three users. u1 repeats item 3 (and 2, once in valid); u2 has an OOV (1) and
    a pad (0) target and an OOV last input item; u3's item 7 is only in valid. Every user has a
    censored row. Many return gaps tie; at day 5 (``_cut``) u2 has been idle 0.5 day, u1's last
    train gap."""
    t0 = datetime(2025, 2, 1)
    ev = {
        "u1": [(2, 0.0), (3, 1.0), (2, 2.0), (3, 3.0), (4, 3.5), (2, 40.0)],
        "u2": [(3, 0.5), (4, 1.5), (1, 2.5), (5, 3.5), (0, 4.5), (6, 5.5)],
        "u3": [(5, 1.0), (6, 2.0), (5, 3.0), (7, 35.0)],
    }
    rows = []
    for uid, e in ev.items():
        def window(end):
            w = e[max(0, end - 3):end]
            pad = 3 - len(w)
            gaps = [0.0] * pad + [0.0] + [(w[j][1] - w[j - 1][1]) * DAY for j in range(1, len(w))]
            return ([0] * pad + [i for i, _ in w], [0] * pad + [2] * len(w), gaps, [0] * 3,
                    [0] * pad + [1] * len(w), len(w), t0 + timedelta(days=w[-1][1]))

        for k in range(1, len(e)):
            items, types, gaps, how, sess, n, last = window(k)
            item, day = e[k]
            split = "train" if day < 30 else "valid"
            rows.append((f"{uid}#{k}", uid, split, items, types, gaps, how, sess, n, last, item, 2,
                         t0 + timedelta(days=day), float((day - e[k - 1][1]) * DAY), 0))
        items, types, gaps, how, sess, n, last = window(len(e))
        rows.append((f"{uid}#censored-train", uid, "train", items, types, gaps, how, sess, n, last, 0, 0, None,
                     DAY, 1))
    return rows


def _triplets(*cols):
    return sorted(zip(*(c.tolist() for c in cols)))


# -- the fitting code as it was when evaluate collected the train rows -----------------------


def _reference_real(ev, n_items):
    keep = (ev.item >= 2) & (ev.item < n_items)
    return ev.user[keep], ev.item[keep], ev.ts_s[keep], ev.last_item[keep]


def _reference_popularity(item, n_items):
    c = np.bincount(item, minlength=n_items).astype(np.float64)[:n_items]
    c[:2] = 0.0
    return c / max(c.max(), 1.0)


def _reference_fit(ev, n_items, scorers):
    """Sets on each scorer the attributes its old ``fit(TrainEvents)`` set."""
    from scipy import sparse

    from ebbtide.evaluation import baselines as B

    user, item, ts, last = _reference_real(ev, n_items)
    for s in scorers:
        if isinstance(s, B.MostPopular):
            s.pop = _reference_popularity(item, n_items)
        elif isinstance(s, B.RecentPopular):
            s.t_ref = float(ts.max()) if len(ts) else 0.0
            w = np.exp(-LN2 * (s.t_ref - ts) / s.h)
            s.w = np.bincount(item, weights=w, minlength=n_items)[:n_items]
            s.log_w = np.log(np.maximum(s.w, 1e-300))
            s.log_w[s.w == 0] = -700.0
        elif isinstance(s, B.ItemCooccurrence):
            n_users = int(user.max()) + 1 if len(user) else 0
            ui = sparse.csr_matrix((np.ones(len(item), dtype=np.float32), (user, item)), shape=(n_users, n_items))
            ui.data[:] = 1.0
            c = (ui.T @ ui).tocoo()
            occ = np.asarray(ui.sum(axis=0)).ravel()
            jac = c.data / (occ[c.row] + occ[c.col] - c.data)
            off = c.row != c.col
            s.sim = sparse.csr_matrix((jac[off], (c.row[off], c.col[off])), shape=(n_items, n_items))
            s.pop = _reference_popularity(item, n_items)
        elif isinstance(s, B.LastItemMarkov):
            li = np.clip(last, 0, n_items - 1)
            t = sparse.csr_matrix((np.ones(len(li)), (li, item)), shape=(n_items, n_items))
            t.sum_duplicates()
            rs = np.asarray(t.sum(axis=1)).ravel()
            s.trans = (sparse.diags(1.0 / np.maximum(rs, 1.0)) @ t).tocsr()
            s.pop = _reference_popularity(item, n_items)
    return scorers


def _reference_kaplan_meier(d, e):
    times, inv = np.unique(d, return_inverse=True)
    deaths = np.bincount(inv, weights=e.astype(bool), minlength=len(times))
    leaving = np.bincount(inv, minlength=len(times))
    at_risk = len(d) - np.concatenate([[0], np.cumsum(leaving)[:-1]])
    surv = np.cumprod(1.0 - deaths / np.maximum(at_risk, 1))
    keep = deaths > 0
    return times[keep], surv[keep]


# ---------------------------------------------------------------------------------------------


def _frame(spark, which):
    """(examples, catalogue size, a churn cut inside the train period)"""
    from pyspark.sql import functions as F

    if which == "small":
        ex = spark.createDataFrame(_small_rows(), examples_schema())
        t0 = ex.agg(F.min(F.col("last_ts").cast("double"))).collect()[0][0]
        return ex, N_SMALL, t0 + 5 * DAY
    from test_evaluate import N_ITEMS, T1_DAY, _epoch

    return spark.createDataFrame(build_examples(), examples_schema()), N_ITEMS, _epoch(T1_DAY)


@pytest.mark.parametrize("which,protocol", [("small", "temporal"), ("evaluate", "temporal"), ("evaluate", "leave-last-out")])
def test_baselines_fitted_on_spark_aggregates_score_like_the_collected_rows_fit(spark, which, protocol):
    from ebbtide.evaluation import baselines as B, protocols as P

    ex, n_items, cut = _frame(spark, which)
    df = P.apply_protocol(ex, protocol).cache()
    tr_rows = P.training_rows(df)
    pdf = tr_rows.toPandas()
    ev = B.TrainEvents.from_pandas(pdf)
    agg = B.TrainAggregates.from_spark(tr_rows, n_items, [HALF_LIFE_S])

    # the Spark aggregates are the numpy ones (decayed sums to float tolerance: another summation order)
    ref = ev.aggregates(n_items, [HALF_LIFE_S])
    assert _triplets(agg.last_item, agg.item, agg.n) == _triplets(ref.last_item, ref.item, ref.n)
    assert _triplets(agg.pair_a, agg.pair_b, agg.pair_n) == _triplets(ref.pair_a, ref.pair_b, ref.pair_n)
    assert np.array_equal(agg.item_users, ref.item_users) and np.array_equal(agg.count, ref.count)
    assert agg.t_ref == ref.t_ref
    np.testing.assert_allclose(agg.decayed[HALF_LIFE_S], ref.decayed[HALF_LIFE_S], rtol=1e-13, atol=0)
    assert np.array_equal(agg.gap_s, ref.gap_s) and np.array_equal(agg.gap_n, ref.gap_n)
    assert agg.n_rows == len(pdf)
    if which == "small":
        assert agg.count[:2].tolist() == [0, 0] and agg.count[7] == 0  # pad/OOV targets, a valid-only item
        assert agg.count[3] == 2 and agg.item_users[3] == 1  # u1's repeat of 3 is one user
        assert _triplets(agg.pair_a, agg.pair_b, agg.pair_n) == [(2, 3, 1), (2, 4, 1), (3, 4, 1), (4, 5, 1),
                                                                 (4, 6, 1), (5, 6, 2)]
        assert (1, 5, 1) in _triplets(agg.last_item, agg.item, agg.n)  # after an OOV input
        assert (agg.gap_n > 1).any()

    # without the pairs (evaluate --models-only): every other aggregate alike
    light = B.TrainAggregates.from_spark(tr_rows, n_items, [HALF_LIFE_S], pairs=False)
    assert len(light.pair_a) == len(light.pair_b) == len(light.pair_n) == 0
    assert np.array_equal(light.item_users, ref.item_users) and np.array_equal(light.count, ref.count)
    np.testing.assert_array_equal(light.decayed[HALF_LIFE_S], agg.decayed[HALF_LIFE_S])
    assert np.array_equal(light.gap_s, agg.gap_s) and light.t_ref == agg.t_ref

    # every item baseline scores every uncensored row as the reference fit does
    rows = df.filter("censored = 0").orderBy("example_id").toPandas()
    batch, elapsed = P.to_batch(rows), rows["time_to_next_s"].to_numpy().astype(np.float64)
    fitted = [b.fit(agg) for b in B.item_baselines(n_items, 14.0, 30.0)]
    reference = _reference_fit(ev, n_items, B.item_baselines(n_items, 14.0, 30.0))
    for new, old in zip(fitted, reference):
        got, want = new.score_all(batch, elapsed), old.score_all(batch, elapsed)
        if isinstance(new, B.RecentPopular):
            np.testing.assert_allclose(new.w, old.w, rtol=1e-13, atol=0)
            np.testing.assert_allclose(got, want, rtol=1e-6, atol=0)
        else:
            assert np.array_equal(got, want), new.name

    # churn baselines: train return gaps plus the windows open at the cut, grouped with counts
    open_at = P.churn_snapshot(df, cut, observe_until_s=cut)
    at = P.value_counts(open_at, "elapsed_s").toPandas()
    raw_open = open_at.select("elapsed_s").toPandas()["elapsed_s"].to_numpy()
    dur = np.concatenate([agg.gap_s, at["elapsed_s"].to_numpy(dtype=np.float64)])
    obs = np.concatenate([np.ones(len(agg.gap_s)), np.zeros(len(at))])
    cnt = np.concatenate([agg.gap_n, at["n"].to_numpy(dtype=np.int64)])
    raw_d = np.concatenate([pdf["time_to_next_s"].to_numpy(), raw_open])
    raw_e = np.concatenate([np.ones(len(pdf)), np.zeros(len(raw_open))])
    if which == "small":
        assert 0.5 * DAY in set(agg.gap_s) and 0.5 * DAY in set(raw_open)  # one value observed and censored
    km, km_ref = B.KaplanMeierChurn().fit(dur, obs, cnt), _reference_kaplan_meier(raw_d, raw_e)
    assert np.array_equal(km.t, km_ref[0]) and np.array_equal(km.s, km_ref[1])
    ed = B.ExponentialDecay().fit(dur, obs, cnt)
    assert ed.prior_s == pytest.approx(float(np.sum(raw_d) / raw_e.sum()), rel=1e-14)
    ed_ref = B.ExponentialDecay()
    ed_ref.prior_s = float(np.sum(raw_d) / raw_e.sum())
    for k, v in ed.churn(batch, elapsed).items():
        np.testing.assert_allclose(v, ed_ref.churn(batch, elapsed)[k], rtol=1e-12, atol=0)
    df.unpersist()
