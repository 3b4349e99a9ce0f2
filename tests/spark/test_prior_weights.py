"""The popularity prior's p_recent in Spark: what evaluation and training take from the train split
is the recent_popular baseline's own decayed counts, and what the nightly job takes from
silver_events counts only known items' events before midnight."""
from __future__ import annotations

from datetime import datetime, timezone

import numpy as np
import pytest

from test_baseline_aggregates import HALF_LIFE_S, _frame

pytestmark = pytest.mark.spark

DAY = 86400.0


def test_train_split_weights_are_the_baselines_decayed_counts(spark):
    from ebbtide.evaluation import baselines as B, protocols as P
    from ebbtide.model import prior

    ex, n_items, _ = _frame(spark, "small")
    tr = P.training_rows(ex)
    agg = B.TrainAggregates.from_spark(tr, n_items, [HALF_LIFE_S])
    both = prior.item_weights(tr, n_items, agg.t_ref, [HALF_LIFE_S, 2 * HALF_LIFE_S])  # one aggregation
    w = both[HALF_LIFE_S]
    assert not np.allclose(both[2 * HALF_LIFE_S], w)
    np.testing.assert_allclose(w, agg.decayed[HALF_LIFE_S], rtol=1e-12, atol=0)
    assert w[:2].sum() == 0 and (w[2:] > 0).any()
    # So the evaluation's log p_recent (from the aggregates) is the one training chose the weight on.
    np.testing.assert_array_equal(prior.log_prior(w, n_items), prior.log_prior(agg.decayed[HALF_LIFE_S], n_items))


def test_nightly_weights_count_known_items_before_midnight_only(spark):
    import pandas as pd

    from ebbtide.model import prior
    from ebbtide.scoring import transform as T

    midnight = datetime(2025, 3, 10, tzinfo=timezone.utc)
    t = midnight.timestamp()
    ev = pd.DataFrame({
        "user_id": ["a", "a", "b", "b", "c", "c"],
        "item_id": ["x", "y", "x", "zz", "y", "x"],
        # 1 day, 8 days and 2 days before midnight; an unknown item; one event at midnight, one long ago.
        "ts": pd.to_datetime([t - DAY, t - 8 * DAY, t - 2 * DAY, t - DAY, t, t - 400 * DAY], unit="s"),
    })
    events = spark.createDataFrame(ev)
    vocab = spark.createDataFrame(pd.DataFrame({"item_id": ["x", "y"], "item_index": [2, 3]}))
    h = 7 * DAY
    w = prior.item_weights(T.item_events(T.events_before(events, midnight), vocab), 4, t, [h])[h]
    # x: 1 and 2 days old (the 400-day-old event is past 20 half-lives); y: 8 days old (the one at
    # midnight belongs to the next night).
    want = np.array([0.0, 0.0, 2 ** (-1 / 7) + 2 ** (-2 / 7), 2 ** (-8 / 7)])
    np.testing.assert_allclose(w, want, rtol=1e-9)


def test_the_nightly_job_ranks_with_the_models_prior_from_the_events_before_midnight(spark, cfg, ctx, tmp_path):
    """A predictor folder whose training chose a prior (weight 1, half-life 7 days) and an
    item-neighbour term (m1 leads to m7): the published scores are the network's plus log p_recent
    of silver_events before the score date plus the window's neighbour term."""
    import dataclasses

    import pandas as pd
    import torch

    from ebbtide import tables
    from ebbtide.model import predictor as Pr, prior
    from ebbtide.model.config import ModelConf
    from ebbtide.model.network import EbbtideNet
    from ebbtide.scoring.run import ModelRef, score_and_publish
    from test_score import BASE_EVENTS, D, ITEM_IDS, N_ITEMS, with_score, write_inputs

    torch.manual_seed(0)
    mc = dataclasses.replace(ModelConf(), item_dim=8, hidden_dim=16, time_dim=4, event_type_dim=2, decay_heads=2)
    items = pd.DataFrame({"item_id": ITEM_IDS[2:].astype(str), "item_index": range(2, N_ITEMS)})
    # The window length of the scoring job's windows (sequences.max_len), as a trained model has it.
    folder = Pr.save(str(tmp_path / "pred"), EbbtideNet(mc, N_ITEMS, 3).state_dict(), dataclasses.asdict(mc), N_ITEMS,
                     3, cfg.sequences.max_len, items, pd.DataFrame({"event_type": ["view"], "event_type_index": [2]}), session_gap_s=1800.0)
    # The nightly table ranks with the nightly view's choice, not the request-time one.
    Pr.set_meta(folder, prior.META_KEY, {"nightly": {"half_life_days": 7.0, "weight": 1.0},
                                         "request_time": {"half_life_days": 60.0, "weight": 0.25}})
    from scipy import sparse

    from ebbtide.model import neighbours as NB

    sim = sparse.csr_matrix(([1.0, 0.5], ([3, 3], [9, 4])), shape=(N_ITEMS, N_ITEMS), dtype=np.float32)  # m1 -> m7, m2
    NB.save(folder, sim)
    Pr.set_meta(folder, NB.META_KEY, {"nightly": {"half_life_days": 30.0, "weight": 2.0},
                                      "request_time": {"half_life_days": None, "weight": 0.0}})
    write_inputs(spark, cfg)
    cfg = with_score(cfg, k=3, because_top=0)
    score_and_publish(ctx.__class__(cfg, _spark=spark), D, ModelRef(folder, "tiny", 1, None))
    recs = tables.read(spark, cfg, "gold_recommendations").toPandas()

    midnight = datetime(D.year, D.month, D.day, tzinfo=timezone.utc).timestamp()
    w = np.zeros(N_ITEMS)
    index = {str(i): j for j, i in enumerate(ITEM_IDS)}
    for _, item, ts in BASE_EVENTS:
        age = midnight - datetime.fromisoformat(ts).replace(tzinfo=timezone.utc).timestamp()
        if age > 0:
            w[index[item]] += 2 ** (-age / (7 * DAY))
    log_p = prior.log_prior(w, N_ITEMS)
    p = Pr.Predictor.load(folder)
    u1 = [(i, datetime.fromisoformat(t).replace(tzinfo=timezone.utc).timestamp()) for u, i, t in BASE_EVENTS if u == "u1"]
    f = p.features_from_events([[i for i, _ in u1]], [[t for _, t in u1]], [["view"] * len(u1)])
    s = p.score_all(f, np.array([midnight - f["last_ts"][0]], np.float32), log_p=log_p)[0]
    s[[0, 1, index["m0"], index["m1"]]] = -np.inf  # pad, OOV and what u1 consumed
    top = np.argsort(-s, kind="stable")[:3]
    got = recs[recs.user_id == "u1"].sort_values("rank")
    assert list(got.item_id) == list(ITEM_IDS[top])
    np.testing.assert_allclose(got.score, s[top], rtol=1e-5)
    e = np.array([midnight - f["last_ts"][0]], np.float32)
    nb = p.neighbour_term(f, e)[0]
    # m1 (u1's last item) leads to m7 (the strongest) and to m2 at half its similarity; m8 to nothing
    want = {"m7": 1.0, "m2": 0.5, "m8": 0.0}
    assert {k: float(nb[index[k]]) for k in want} == pytest.approx({k: 2.0 * np.log(a + NB.FLOOR) for k, a in want.items()})
    plain = p.score_all(f, e)[0]
    assert not np.allclose(got.score, plain[top])  # the prior moved the scores
    np.testing.assert_allclose(p.score_all(f, e, log_p=log_p)[0][2:] - plain[2:], log_p[2:], rtol=1e-5, atol=1e-5)


def test_a_capped_view_is_sampled_in_spark_before_it_reaches_the_driver(spark, cfg):
    from ebbtide.evaluation.run import _collect

    rows = spark.range(2000).withColumnRenamed("id", "example_id")
    ec = cfg.section("evaluate")
    got = _collect(rows, ec, "rows", cap=200)
    assert 100 <= len(got) <= 300 and got["example_id"].is_monotonic_increasing
    again = _collect(rows, ec, "rows", cap=200)
    assert got["example_id"].tolist() == again["example_id"].tolist()  # seeded
    assert len(_collect(rows, ec, "rows")) == min(2000, ec.max_examples)
