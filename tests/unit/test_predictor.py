"""Predictor folder round trip, raw events -> features, top-k with exclusions; train/registry helpers. No Spark."""
from __future__ import annotations

import dataclasses
from datetime import datetime, timezone

import numpy as np
import pandas as pd
import pytest
import torch

from ebbtide.model import predictor as P
from ebbtide.model.config import ModelConf
from ebbtide.model.network import EbbtideNet

N_ITEMS, N_EVENTS, L = 30, 4, 6
MONDAY = datetime(2025, 1, 6, tzinfo=timezone.utc).timestamp()  # a Monday, 00:00 UTC


@pytest.fixture(scope="module")
def pred(tmp_path_factory):
    torch.manual_seed(0)
    mc = dataclasses.replace(ModelConf(), item_dim=8, hidden_dim=16, time_dim=4, event_type_dim=2, decay_heads=2)
    net = EbbtideNet(mc, N_ITEMS, N_EVENTS)
    with torch.no_grad():  # the time gates start closed; a trained network opens them
        for gate in (net.side_gate, net.readout_gate, net.elapsed_gate):
            gate.fill_(1.0)
    items = pd.DataFrame({"item_id": [f"i{i}" for i in range(2, N_ITEMS)], "item_index": range(2, N_ITEMS),
                          "category": [f"c{i % 3}" for i in range(2, N_ITEMS)]})
    events = pd.DataFrame({"event_type": ["view", "buy"], "event_type_index": [2, 3]})
    folder = P.save(str(tmp_path_factory.mktemp("pred")), net.state_dict(), dataclasses.asdict(mc), N_ITEMS, N_EVENTS, L,
                    items, events, session_gap_s=1800.0)
    return P.Predictor.load(folder), net


def test_round_trip_gives_the_same_scores(pred):
    p, net = pred
    f = p.features_from_events([["i3", "i4", "i5"]], [[MONDAY, MONDAY + 60, MONDAY + 7200]])
    e = np.array([3600.0], np.float32)
    net.eval()
    with torch.no_grad():
        want = net.item_scores({k: torch.as_tensor(v) for k, v in f.items() if k != "last_ts"}, torch.as_tensor(e)).numpy()
    got = p.score_all(f, e)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert np.isneginf(got[0, :2]).all()


def test_features_from_events_match_the_sequences_conventions(pred):
    p, _ = pred
    ts = [MONDAY + 7200, MONDAY + 1800, MONDAY + 1860]  # given out of order
    f = p.features_from_events([["i9", "i7", "zzz"]], [ts], [["buy", "view", "nope"]])
    assert f["length"].tolist() == [3]
    assert f["item_idx"][0].tolist() == [0, 0, 0, 7, 1, 9]  # sorted by time, unknown item -> OOV 1
    assert f["event_type_idx"][0].tolist() == [0, 0, 0, 2, 1, 3]
    assert f["gap_s"][0].tolist() == [0, 0, 0, 0, 60, 5340]
    assert f["hour_of_week"][0, 3:].tolist() == [0, 0, 2]  # Monday 00:30, 00:31, 02:00
    assert f["session_start"][0, 3:].tolist() == [1, 0, 1]  # 5340 s > the 30-minute gap
    assert f["last_ts"][0] == MONDAY + 7200
    long = p.features_from_events([[f"i{i}" for i in range(2, 12)]], [[MONDAY + 60 * i for i in range(10)]])
    assert long["length"].tolist() == [L] and long["item_idx"][0].tolist() == [6, 7, 8, 9, 10, 11]
    assert long["gap_s"][0, 0] == 0.0  # the window's first event has no previous input event


def test_recommend_excludes_and_sorts(pred):
    p, _ = pred
    f = p.features_from_events([["i3"], ["i4", "i5"]], [[MONDAY], [MONDAY, MONDAY + 5]])
    e = np.array([60.0, 86400.0], np.float32)
    full = p.score_all(f, e)
    best = int(np.argmax(full[0]))
    idx, sc = p.recommend(f, e, k=5, exclude=[np.array([best]), np.array([], np.int64)])
    assert idx.shape == (2, 5) and best not in idx[0]
    assert (np.diff(sc, axis=1) <= 0).all() and (idx >= 2).all()
    np.testing.assert_allclose(sc[1], np.sort(full[1])[::-1][:5], rtol=1e-6)
    assert p.item_ids(idx[1]).tolist() == [f"i{i}" for i in idx[1]]
    assert p.recommend(f, e, k=1000)[0].shape == (2, N_ITEMS - 2)


def test_elapsed_time_changes_scores_and_churn(pred):
    p, _ = pred
    f = p.features_from_events([["i3", "i4"]] * 2, [[MONDAY, MONDAY + 600]] * 2)
    e = np.array([60.0, 30 * 86400.0], np.float32)
    s = p.score_all(f, e)
    assert not np.allclose(s[0, 2:], s[1, 2:])
    c = p.churn(f, e)
    assert set(c) >= {"p_return_7d", "p_return_30d", "expected_days_to_return", "half_life_days"}
    assert (0 <= c["p_return_7d"]).all() and (c["p_return_7d"] <= c["p_return_30d"] + 1e-12).all()
    assert c["p_return_7d"][1] <= c["p_return_7d"][0]  # a long absence lowers the chance to return
    assert p.category_interest(f, e).shape == (2, 3)


def test_explain_names_the_users_own_events_with_their_times(pred):
    """Positions become the window's item ids and event times; windows keep no times, so they come
    from last_ts and the gaps, and must land on the raw timestamps."""
    p, net = pred
    ts = [[MONDAY, MONDAY + 600.5, MONDAY + 3 * 86400, MONDAY + 40 * 86400 + 0.25], [MONDAY + 10.0]]
    ids = [["i3", "i4", "i9", "i12"], ["i5"]]
    f = p.features_from_events(ids, ts)
    e = np.array([3600.0, 86400.0], np.float32)
    idx, _ = p.recommend(f, e, k=4)
    out = p.explain(f, e, idx, top=3)
    assert {k: v.shape for k, v in out.items()} == {k: (2, 4, 3) for k in ("position", "item_id", "ts_us", "weight")}
    net.eval()
    with torch.no_grad():
        pos, w = net.explain({k: torch.as_tensor(v) for k, v in f.items() if k != "last_ts"}, torch.as_tensor(e),
                             torch.as_tensor(idx), 3)
    assert np.array_equal(out["position"], pos.numpy()) and np.allclose(out["weight"], w.numpy(), atol=1e-6)
    time_of = {(u, i): round(t * 1e6) for u in range(2) for i, t in zip(ids[u], ts[u])}
    found = out["position"] >= 0
    assert found[0, :, 0].all()  # four past items: each recommendation resembles one of them
    for u, k, j in zip(*np.nonzero(found)):
        assert out["ts_us"][u, k, j] == time_of[(u, out["item_id"][u, k, j])]
    assert (out["item_id"][~found] == None).all() and (out["ts_us"][~found] == -1).all()  # noqa: E711
    assert (out["position"][1, :, 1:] == -1).all()  # one event: one reason at most


def test_predict_frame_is_the_pyfunc_contract(pred):
    p, _ = pred
    ex = p.input_example()
    out = p.predict_frame(ex, k=4)
    assert list(out["user_id"]) == ["u1", "u2"]
    assert all(len(r) == 4 for r in out["item_ids"]) and all(len(r) == 4 for r in out["scores"])
    assert out["days_since_last_event"].tolist() == pytest.approx([(7200 - 4000) / 86400, 29.0])
    with pytest.raises(ValueError, match="as_of"):
        p.predict_frame(ex.drop(columns=["as_of"]))


def test_flatten_and_metric_direction():
    from ebbtide.model.registry import flatten
    from ebbtide.model.train import _metric_is_better

    assert flatten({"a": {"b": 1, "c": {}}, "d": [1, 2]}) == {"a.b": "1", "a.c": "{}", "d": "[1, 2]"}
    assert _metric_is_better("val_ndcg_at_10", 0.2, 0.1) and not _metric_is_better("val_ndcg_at_10", 0.1, 0.2)
    assert _metric_is_better("val_loss", 0.1, 0.2) and not _metric_is_better("val_loss", float("nan"), None)


def test_fingerprint_follows_config_data_and_world_size():
    from ebbtide.config import load_config
    from ebbtide.model.train import fingerprint

    cfg = load_config(env="local")
    v = {"gold_training_examples": 3}
    base = fingerprint(cfg, v, 2)
    assert base == fingerprint(load_config(env="local", overrides=["train.launcher=horovod"]), v, 2)
    assert base != fingerprint(cfg, {"gold_training_examples": 4}, 2)
    assert base != fingerprint(cfg, v, 1)
    assert base != fingerprint(load_config(env="local", overrides=["train.lr=0.01"]), v, 2)
    # An option added later counts only when set: at its default the fingerprint is what it was.
    assert base == fingerprint(load_config(env="local", overrides=["train.query_time_uniform_share=0.0"]), v, 2)
    assert base != fingerprint(load_config(env="local", overrides=["train.query_time_uniform_share=0.5"]), v, 2)


def test_a_folder_saved_before_the_last_item_skip_still_loads(tmp_path):
    mc = dataclasses.replace(ModelConf(), item_dim=8, hidden_dim=16, time_dim=4, event_type_dim=2, decay_heads=2,
                             last_item_skip=False)
    net = EbbtideNet(mc, N_ITEMS, N_EVENTS)
    old_conf = {k: v for k, v in dataclasses.asdict(mc).items() if k != "last_item_skip"}
    items = pd.DataFrame({"item_id": [f"i{i}" for i in range(2, N_ITEMS)], "item_index": range(2, N_ITEMS)})
    events = pd.DataFrame({"event_type": ["view"], "event_type_index": [2]})
    folder = P.save(str(tmp_path), net.state_dict(), old_conf, N_ITEMS, N_EVENTS, L, items, events, session_gap_s=1800.0)
    loaded = P.Predictor.load(folder)
    assert loaded.net.last_item_skip is None


def test_one_encoder_pass_answers_every_question_of_a_batch(pred, monkeypatch):
    """Scores, explanations, churn and interest of the same arrays share one encoder pass and give
    what separate passes give; new arrays (another batch) are encoded afresh."""
    p, net = pred
    f = p.features_from_events([["i3", "i4", "i5"], ["i7", "i2"]],
                               [[MONDAY, MONDAY + 60, MONDAY + 7200], [MONDAY, MONDAY + 99_000]])
    e = np.array([3600.0, 86_400.0], np.float32)
    tb = {k: torch.as_tensor(v) for k, v in f.items() if k != "last_ts"}
    net.eval()
    with torch.no_grad():
        want_scores = net.item_scores(tb, torch.as_tensor(e)).numpy()
        want_churn = net.return_time_at(tb, torch.as_tensor(e))["p_return_7d"].double().numpy()
        want_interest = net.category_interest(tb, torch.as_tensor(p._item_category), torch.as_tensor(e)).numpy()
    idx = np.argsort(-want_scores, axis=1)[:, :3]
    with torch.no_grad():
        want_pos, _ = net.explain(tb, torch.as_tensor(e), torch.as_tensor(idx), 2)

    calls = []
    real = p.net.encoder_outputs
    monkeypatch.setattr(p.net, "encoder_outputs", lambda b: calls.append(1) or real(b))
    p._encoded_memo.clear()
    np.testing.assert_allclose(p.score_all(f, e), want_scores, rtol=1e-6)
    np.testing.assert_allclose(p.churn(f, e)["p_return_7d_raw" if p.meta.get("churn_calibration") else "p_return_7d"],
                               want_churn, rtol=1e-6)
    np.testing.assert_allclose(p.category_interest(f, e)[:, : want_interest.shape[1]], want_interest, rtol=1e-6)
    np.testing.assert_allclose(p.category_interest(f, np.zeros_like(e)).sum(), p.category_interest(f, 0 * e).sum())
    assert (p.explain({**f}, e, idx, 2)["position"] == want_pos.numpy()).all()  # a new dict of the same arrays
    assert len(calls) == 1

    g = {k: v.copy() for k, v in f.items()}  # equal values, other arrays: encoded again
    np.testing.assert_allclose(p.score_all(g, e), want_scores, rtol=1e-6)
    assert len(calls) == 2 and len(p._encoded_memo) == 1
