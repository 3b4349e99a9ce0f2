"""EbbtideNet and its heads on tiny CPU tensors: shapes, masking, time dependence, learning, the hazard math."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import integrate

from ebbtide.model import heads
from ebbtide.model.config import ModelConf
from ebbtide.model.network import FEATURES, EbbtideNet

N_ITEMS = 20  # 0 pad, 1 OOV, 2..19 real
N_EVENT_TYPES = 4
DAY = 86400.0

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_conf(**kw) -> ModelConf:
    base = dict(item_dim=16, hidden_dim=32, event_type_dim=4, time_dim=8, dropout=0.0, sampled_negatives=8)
    base.update(kw)
    return ModelConf(**base)


def successor(items: torch.Tensor) -> torch.Tensor:
    return 2 + (items - 2 + 1) % (N_ITEMS - 2)


def make_batch(b: int = 64, l: int = 8, seed: int = 0, n_items: int = N_ITEMS) -> dict[str, torch.Tensor]:
    """Left-padded windows of random real items; the target is the successor of the last item."""
    g = torch.Generator().manual_seed(seed)
    length = torch.randint(1, l + 1, (b,), generator=g)
    real = torch.arange(l).unsqueeze(0) >= (l - length).unsqueeze(1)
    items = torch.randint(2, n_items, (b, l), generator=g) * real
    last = items[:, -1]
    return {
        "item_idx": items,
        "event_type_idx": torch.randint(2, N_EVENT_TYPES, (b, l), generator=g) * real,
        "gap_s": torch.rand(b, l, generator=g) * 5 * DAY * real,
        "hour_of_week": torch.randint(0, 168, (b, l), generator=g) * real,
        "session_start": torch.randint(0, 2, (b, l), generator=g) * real,
        "length": length,
        "target_item": 2 + (last - 2 + 1) % (n_items - 2),
        "time_to_next_s": torch.rand(b, generator=g) * 10 * DAY,
        "censored": torch.zeros(b, dtype=torch.long),
    }


def train(net: EbbtideNet, batch, steps: int, lr: float = 0.01) -> list[float]:
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        total, parts = net.loss(batch)
        total.backward()
        opt.step()
        losses.append(parts["next_item"].item())
    return losses


# ------------------------------------------------------------------ shapes, masking, variants


@pytest.mark.parametrize("encoder", ["lstm", "gru", "time_lstm", "time_gru", "attention"])
def test_shapes_and_pad_oov_never_scored(encoder):
    torch.manual_seed(0)
    net = EbbtideNet(tiny_conf(encoder=encoder), N_ITEMS, N_EVENT_TYPES).eval()
    batch = make_batch(b=6)
    batch["item_idx"][0, -1] = 1  # an OOV input event is allowed
    elapsed = torch.full((6,), 3600.0)
    with torch.no_grad():
        scores = net.item_scores(batch, elapsed)
        state = net.encode(batch)
        rt = net.return_time(batch)
    assert scores.shape == (6, N_ITEMS)
    assert torch.isneginf(scores[:, :2]).all()
    assert torch.isfinite(scores[:, 2:]).all()
    assert state.shape == (6, 32)
    for key in ("p_return_7d", "p_return_30d", "expected_days_to_return", "half_life_days"):
        assert rt[key].shape == (6,) and torch.isfinite(rt[key]).all(), key
    assert ((rt["p_return_7d"] >= 0) & (rt["p_return_7d"] <= rt["p_return_30d"]) & (rt["p_return_30d"] <= 1)).all()
    assert (rt["half_life_days"] > 0).all()
    assert ((rt["expected_days_to_return"] >= 0) & (rt["expected_days_to_return"] <= 365)).all()


@pytest.mark.parametrize("encoder", ["lstm", "time_lstm", "attention"])
def test_padding_content_is_ignored(encoder):
    """Whatever sits in the feature columns at padded positions must not change any output."""
    torch.manual_seed(0)
    net = EbbtideNet(tiny_conf(encoder=encoder), N_ITEMS, N_EVENT_TYPES).eval()
    batch = make_batch(b=8, seed=3)
    pad = batch["item_idx"] == 0
    assert pad.any()
    noisy = dict(batch)
    noisy["event_type_idx"] = torch.where(pad, 3, batch["event_type_idx"])
    noisy["gap_s"] = torch.where(pad, 1e6, batch["gap_s"])
    noisy["hour_of_week"] = torch.where(pad, 100, batch["hour_of_week"])
    noisy["session_start"] = torch.where(pad, 1, batch["session_start"])
    elapsed = torch.full((8,), 7200.0)
    with torch.no_grad():
        assert torch.equal(net.item_scores(batch, elapsed), net.item_scores(noisy, elapsed))
        assert torch.equal(net.return_time(batch)["half_life_days"], net.return_time(noisy)["half_life_days"])


def test_item_scores_depend_on_elapsed_time_only_for_time_aware_encoder():
    batch = make_batch(b=8)
    hour, month = torch.full((8,), 3600.0), torch.full((8,), 30 * DAY)
    torch.manual_seed(0)
    timed = EbbtideNet(tiny_conf(encoder="time_lstm"), N_ITEMS, N_EVENT_TYPES).eval()
    with torch.no_grad():
        timed.readout_gate.fill_(1.0)  # gates start at zero; a trained network opens them
        timed.elapsed_gate.fill_(1.0)
        diff = (timed.item_scores(batch, hour) - timed.item_scores(batch, month))[:, 2:].abs()
    assert (diff.amax(dim=1) > 1e-3).all()
    # The plain baselines ignore the elapsed time by construction: that is what the ablation measures.
    plain = EbbtideNet(tiny_conf(encoder="lstm"), N_ITEMS, N_EVENT_TYPES).eval()
    with torch.no_grad():
        assert torch.equal(plain.item_scores(batch, hour), plain.item_scores(batch, month))


def test_decay_readout_forgets_with_elapsed_time():
    """With zero content scores, the read-out's weight on the user's events is governed by the decay
    alone: it shrinks as the elapsed time grows and tends to zero (all weight in the sink)."""
    torch.manual_seed(0)
    net = EbbtideNet(tiny_conf(encoder="time_lstm", user_decay=False), N_ITEMS, N_EVENT_TYPES).eval()
    with torch.no_grad():
        net.readout.q.weight.zero_()
        net.readout.q.bias.zero_()
    batch = make_batch(b=4)
    cats = torch.zeros(N_ITEMS, dtype=torch.long)
    cats[2:] = 1 + torch.arange(N_ITEMS - 2) % 3
    with torch.no_grad():
        masses = [net.category_interest(batch, cats, torch.full((4,), s)).sum(1) for s in (0.0, DAY, 30 * DAY, 3650 * DAY)]
    for earlier, later in zip(masses, masses[1:]):
        assert (later < earlier).all()
    assert (masses[-1] < 1e-3).all()
    interest = net.category_interest(batch, cats, torch.zeros(4))
    assert interest.shape == (4, 4)
    assert (interest[:, 0] == 0).all()  # category of pad / OOV only
    assert (interest >= 0).all() and (interest.sum(1) <= 1 + 1e-6).all()
    hl = net.decay_half_lives_days()
    assert hl.shape == (4,) and torch.allclose(hl[[0, -1]], torch.tensor([0.05, 60.0]), rtol=1e-4)


@pytest.mark.parametrize("encoder", ["lstm", "gru", "time_lstm", "time_gru", "attention"])
def test_every_encoder_runs_forward_and_backward(encoder):
    torch.manual_seed(0)
    net = EbbtideNet(tiny_conf(encoder=encoder, dropout=0.1), N_ITEMS, N_EVENT_TYPES).train()
    total, parts = net(make_batch(b=16))  # forward is loss, for the DDP / Horovod wrappers
    total.backward()
    assert set(parts) == {"next_item", "return_time"}
    for name, p in net.named_parameters():
        assert p.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(p.grad).all(), name


def test_gated_network_starts_without_the_read_out_and_the_elapsed_time():
    """With the read-out and elapsed-time gates at zero the elapsed time changes no score at first;
    closing the side-input gate too makes it a plain item sequence model."""
    torch.manual_seed(0)
    net = EbbtideNet(tiny_conf(encoder="time_lstm"), N_ITEMS, N_EVENT_TYPES).eval()
    batch = make_batch(b=8, seed=1)
    with torch.no_grad():
        assert torch.equal(net.item_scores(batch, torch.full((8,), 3600.0)), net.item_scores(batch, torch.full((8,), 90 * DAY)))
        net.side_gate.zero_()
        other = dict(batch, gap_s=batch["gap_s"] * 7 + 60, hour_of_week=(batch["hour_of_week"] + 5) % 168)
        a = net.item_scores(batch, torch.full((8,), 3600.0))
        b = net.item_scores(other, torch.full((8,), 90 * DAY))
    assert torch.equal(a, b)


def test_no_time_ablation_ignores_every_time_input():
    torch.manual_seed(0)
    net = EbbtideNet(tiny_conf(encoder="time_lstm", use_time=False), N_ITEMS, N_EVENT_TYPES).eval()
    with torch.no_grad():
        net.side_gate.fill_(1.0)
        net.readout_gate.fill_(1.0)
        net.elapsed_gate.fill_(1.0)
    batch = make_batch(b=8, seed=2)
    other = dict(batch, gap_s=batch["gap_s"] * 3 + 10, hour_of_week=(batch["hour_of_week"] + 11) % 168,
                 session_start=1 - batch["session_start"])
    with torch.no_grad():
        a = net.item_scores(batch, torch.full((8,), 3600.0))
        b = net.item_scores(other, torch.full((8,), 30 * DAY))
    assert torch.equal(a, b)


def _open_gates(net: EbbtideNet) -> None:
    with torch.no_grad():
        net.side_gate.fill_(1.0)
        net.readout_gate.fill_(1.0)
        net.elapsed_gate.fill_(1.0)


@pytest.mark.parametrize("encoder", ["time_lstm", "time_gru", "attention"])
def test_time_inputs_modes_build_the_same_network(encoder):
    """model.time_inputs adds no parameter and no draw: every mode starts from the same weights, and
    `all` (the default) computes what it computed before the switch existed."""
    nets = {}
    for mode in ("all", "gaps", "none"):
        torch.manual_seed(0)
        nets[mode] = EbbtideNet(tiny_conf(encoder=encoder, time_inputs=mode), N_ITEMS, N_EVENT_TYPES)
    for mode in ("gaps", "none"):
        a, b = nets["all"].state_dict(), nets[mode].state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    torch.manual_seed(0)
    default = EbbtideNet(tiny_conf(encoder=encoder), N_ITEMS, N_EVENT_TYPES)
    assert default.time_inputs == "all"
    batch = make_batch(b=8, seed=3)
    torch.manual_seed(1)
    loss_default, _ = default.loss(batch)
    torch.manual_seed(1)
    loss_all, _ = nets["all"].loss(batch)
    assert torch.equal(loss_default, loss_all)
    with pytest.raises(ValueError, match="time_inputs"):
        EbbtideNet(tiny_conf(time_inputs="hours"), N_ITEMS, N_EVENT_TYPES)


def test_time_inputs_gaps_ignores_the_hour_of_week_only():
    torch.manual_seed(0)
    net = EbbtideNet(tiny_conf(encoder="time_lstm", time_inputs="gaps"), N_ITEMS, N_EVENT_TYPES).eval()
    _open_gates(net)
    batch = make_batch(b=8, seed=2)
    hours = dict(batch, hour_of_week=(batch["hour_of_week"] + 11) % 168)
    gaps = dict(batch, gap_s=batch["gap_s"] * 3 + 10)
    e = torch.full((8,), 3600.0)
    with torch.no_grad():
        a = net.item_scores(batch, e)
        assert torch.equal(a, net.item_scores(hours, e))
        assert not torch.allclose(a, net.item_scores(gaps, e))
        torch.manual_seed(0)
        full = EbbtideNet(tiny_conf(encoder="time_lstm"), N_ITEMS, N_EVENT_TYPES).eval()
        _open_gates(full)
        assert not torch.allclose(full.item_scores(batch, e), full.item_scores(hours, e))


@pytest.mark.parametrize("encoder", ["time_lstm", "time_gru", "attention"])
def test_time_inputs_none_keeps_time_only_in_the_read_out_and_the_elapsed_time(encoder):
    """The recurrence reads no gap, hour or session start, so its outputs (and the return-time head
    on them) do not change with those inputs; the read-out still ages the events by the real gaps
    (its weights and so the scores move with the gaps, not with hours or session starts), and the
    elapsed time still moves the scores and the return-time figures."""
    torch.manual_seed(0)
    net = EbbtideNet(tiny_conf(encoder=encoder, time_inputs="none"), N_ITEMS, N_EVENT_TYPES).eval()
    _open_gates(net)
    batch = make_batch(b=8, seed=2)
    side = dict(batch, hour_of_week=(batch["hour_of_week"] + 11) % 168, session_start=1 - batch["session_start"])
    gaps = dict(side, gap_s=batch["gap_s"] * 3 + 10 * (batch["item_idx"] > 0))
    e = torch.full((8,), 3600.0)
    with torch.no_grad():
        enc, enc_gaps = net._run_encoder(batch), net._run_encoder(gaps)
        real = enc["mask"].float()
        assert torch.allclose(enc["cum_days"], torch.cumsum(batch["gap_s"].float() * real, 1) / DAY)
        assert not torch.allclose(enc["cum_days"], enc_gaps["cum_days"])
        a = net.item_scores(batch, e)
        assert torch.equal(a, net.item_scores(side, e))
        assert not torch.allclose(a, net.item_scores(gaps, e))
        assert not torch.allclose(a, net.item_scores(batch, torch.full((8,), 30 * DAY)))
        r, r_gaps = net.return_time_at(batch, e), net.return_time_at(gaps, e)
        assert not torch.allclose(r["p_return_7d"], net.return_time_at(batch, torch.full((8,), 30 * DAY))["p_return_7d"])
    if encoder != "attention":
        # The recurrence's outputs ignore all three inputs, and so does the return-time head. (The
        # attention encoder decays its own scores by the real event times, so its outputs do not.)
        assert torch.equal(enc["outputs"], enc_gaps["outputs"])
        assert torch.equal(r["p_return_7d"], r_gaps["p_return_7d"])


@pytest.mark.parametrize("encoder", ["gru", "time_lstm", "attention"])
def test_every_position_loss_labels_each_slot_with_the_next_item(encoder):
    """The every-position loss is the mean over all slots with a real next item; a window of one
    event has one label (its target), so there it equals the target-only loss."""
    torch.manual_seed(0)
    net = EbbtideNet(tiny_conf(encoder=encoder, hazard_weight=0.0), N_ITEMS, N_EVENT_TYPES).eval()
    batch = make_batch(b=8, l=6, seed=4)
    single = {k: (v.clone() if torch.is_tensor(v) else v) for k, v in batch.items()}
    single["item_idx"][:, :-1] = 0
    single["length"] = torch.ones(8, dtype=torch.long)
    with torch.no_grad():
        last, _ = net.loss(single)
        net.every_position = True
        dense_single, _ = net.loss(single)
        dense, _ = net.loss(batch)
    assert torch.allclose(last, dense_single, atol=1e-6)
    # By hand for the full windows: each real slot j scored at the time of event j + 1.
    with torch.no_grad():
        enc = net._run_encoder(batch)
        labels = torch.cat([batch["item_idx"][:, 1:], batch["target_item"].view(-1, 1)], 1)
        elapsed = torch.cat([enc["gap"][:, 1:], batch["time_to_next_s"].view(-1, 1)], 1)
        total, n = 0.0, 0
        for j in range(6):
            state = net._states(enc, torch.tensor([j]), elapsed[:, j : j + 1])[:, 0]
            z = net._item_vectors(state, batch["item_idx"][:, j])
            logits = net._full_logits(z)
            ok = (batch["item_idx"][:, j] > 0) & (labels[:, j] >= 2)
            if ok.any():
                total += torch.nn.functional.cross_entropy(logits[ok], labels[ok, j], reduction="sum")
                n += int(ok.sum())
    assert torch.allclose(dense, total / n, atol=1e-5)
    # label_positions: the same sum over the last slots only.
    with torch.no_grad():
        net.label_positions = 2
        tail, _ = net.loss(batch)
        total, n = 0.0, 0
        for j in (4, 5):
            state = net._states(enc, torch.tensor([j]), elapsed[:, j : j + 1])[:, 0]
            logits = net._full_logits(net._item_vectors(state, batch["item_idx"][:, j]))
            ok = (batch["item_idx"][:, j] > 0) & (labels[:, j] >= 2)
            if ok.any():
                total += torch.nn.functional.cross_entropy(logits[ok], labels[ok, j], reduction="sum")
                n += int(ok.sum())
    assert torch.allclose(tail, total / n, atol=1e-5)


def test_per_user_decay_rates_start_at_the_global_rates():
    torch.manual_seed(0)
    net = EbbtideNet(tiny_conf(encoder="time_lstm"), N_ITEMS, N_EVENT_TYPES)
    state = torch.randn(5, 32)
    assert torch.allclose(net.readout.rates(state), net.readout.rates().expand(5, -1))
    with torch.no_grad():
        net.readout.user_rate.weight.normal_()
    assert not torch.allclose(net.readout.rates(state), net.readout.rates().expand(5, -1))


def test_bad_encoder_name_is_refused():
    with pytest.raises(ValueError, match="model.encoder"):
        EbbtideNet(tiny_conf(encoder="transformer"), N_ITEMS, N_EVENT_TYPES)


# ------------------------------------------------------------------ learning


@pytest.mark.parametrize("encoder", ["lstm", "gru", "time_lstm", "time_gru", "attention"])
def test_learns_the_successor_of_the_last_item(encoder):
    torch.manual_seed(0)
    net = EbbtideNet(tiny_conf(encoder=encoder), N_ITEMS, N_EVENT_TYPES)
    batch = make_batch(b=64)
    losses = train(net, batch, steps=50)
    assert losses[-1] < 0.5 * losses[0]
    net.eval()
    with torch.no_grad():
        top1 = net.item_scores(batch, batch["time_to_next_s"]).argmax(1)
    assert (top1 == batch["target_item"]).float().mean() >= 0.8


@pytest.mark.parametrize("transitions", ["last", "decayed"])
def test_transitions_start_at_zero_so_the_network_starts_as_without_them(transitions):
    batch = make_batch(b=16)
    nets = []
    for t in ("none", transitions):
        torch.manual_seed(0)
        nets.append(EbbtideNet(tiny_conf(encoder="time_lstm", transitions=t), N_ITEMS, N_EVENT_TYPES).eval())
    with torch.no_grad():
        a, b = (n.item_scores(batch, batch["time_to_next_s"]) for n in nets)
    assert torch.equal(a, b)


@pytest.mark.parametrize("encoder", ["time_lstm", "attention", "lstm"])
def test_decayed_transitions_add_the_read_out_weighted_successor_vectors(encoder):
    """scores(T) - scores(T = 0) = E_item . sum_j w_j T[item_j], with w_j the read-out's weight on
    event j at the scoring time, averaged over heads; encoders without a read-out use T[last item]."""
    torch.manual_seed(0)
    net = EbbtideNet(tiny_conf(encoder=encoder, transitions="decayed"), N_ITEMS, N_EVENT_TYPES).eval()
    batch = make_batch(b=8, seed=2)
    elapsed = batch["time_to_next_s"]
    with torch.no_grad():
        before = net.item_scores(batch, elapsed)
        net.transition.weight.normal_()
        net.transition.weight[0].zero_()
        after = net.item_scores(batch, elapsed)
        items = batch["item_idx"]
        if net.time_aware:
            _, w = net._state_at(net._run_encoder(batch), elapsed, return_weights=True)  # (B, heads, L)
            expect = (w.mean(1).unsqueeze(-1) * net.transition(items)).sum(1)
        else:
            expect = net.transition(items[:, -1])
        delta = expect @ net.item_emb.weight.T
    real = slice(2, None)
    assert not torch.allclose(after[:, real], before[:, real])
    assert torch.allclose(after[:, real] - before[:, real], delta[:, real], atol=1e-4)


def _top3_by_hand(contrib: torch.Tensor, real: torch.Tensor, wbar: torch.Tensor):
    """The three largest positive contributions per (user, item) of (B, K, L), as positions (-1
    beyond) and shares of the positive total; an item without any positive contribution takes the
    read-out weights wbar (B, L) of the real events instead."""
    c = contrib.masked_fill(~real.unsqueeze(1), 0.0).clamp_min(0.0)
    fallback = wbar.masked_fill(~real, 0.0).clamp_min(0.0).unsqueeze(1).expand_as(c)
    c = torch.where(c.sum(-1, keepdim=True) > 0, c, fallback)
    total = c.sum(-1)
    pos = torch.full(c.shape[:2] + (3,), -1, dtype=torch.long)
    share = torch.zeros(c.shape[:2] + (3,))
    for bi in range(c.shape[0]):
        for ki in range(c.shape[1]):
            order = [j for j in torch.argsort(c[bi, ki], descending=True).tolist() if c[bi, ki, j] > 0][:3]
            pos[bi, ki, : len(order)] = torch.tensor(order, dtype=torch.long)
            share[bi, ki, : len(order)] = c[bi, ki, order] / total[bi, ki]
    return pos, share


def test_explain_with_decayed_transitions_lists_the_largest_terms_of_the_score():
    """With decayed transitions event j adds wbar_j T[item_j] . E_i to item i's score: the terms
    summed over every event are exactly the transitions' part of the score, and `explain` lists the
    three largest positive terms, as shares of the positive total."""
    torch.manual_seed(0)
    net = EbbtideNet(tiny_conf(encoder="time_lstm", transitions="decayed"), N_ITEMS, N_EVENT_TYPES).eval()
    batch = make_batch(b=8, seed=4)
    elapsed = batch["time_to_next_s"]
    with torch.no_grad():
        before = net.item_scores(batch, elapsed)
        net.transition.weight.normal_()
        net.transition.weight[0].zero_()
        after = net.item_scores(batch, elapsed)
        item_idx = torch.topk(after, 5, dim=1).indices  # (B, K)
        _, w = net._state_at(net._run_encoder(batch), elapsed, return_weights=True)
        wbar = w.mean(1)  # (B, L)
        terms = wbar.unsqueeze(1) * (net.item_emb(item_idx) @ net.transition(batch["item_idx"]).transpose(1, 2))
        positions, weights = net.explain(batch, elapsed, item_idx)
    part = (after - before).gather(1, item_idx)
    assert torch.allclose(terms.sum(-1), part, atol=1e-4)
    want_pos, want_share = _top3_by_hand(terms, batch["item_idx"] >= 2, wbar)
    assert positions.shape == weights.shape == (8, 5, 3) and positions.dtype == torch.long
    assert torch.equal(positions, want_pos)
    assert torch.allclose(weights, want_share, atol=1e-5)
    assert (weights[..., :-1] >= weights[..., 1:]).all() and (weights.sum(-1) <= 1 + 1e-5).all()


@pytest.mark.parametrize("encoder", ["lstm", "time_lstm", "attention"])
def test_explain_pads_with_minus_one_and_names_only_real_events(encoder):
    """Windows of one and two events: the third (and second) slot reads -1 with weight 0; positions
    point at real slots; without decayed transitions the attribution is the event's weight times the
    positive part of its item's similarity to the recommended one."""
    torch.manual_seed(1)
    net = EbbtideNet(tiny_conf(encoder=encoder), N_ITEMS, N_EVENT_TYPES).eval()
    batch = make_batch(b=6, l=5, seed=5)
    batch["length"] = torch.tensor([1, 2, 1, 2, 5, 5])
    real = torch.arange(5).unsqueeze(0) >= (5 - batch["length"]).unsqueeze(1)
    for k in ("item_idx", "event_type_idx", "gap_s", "hour_of_week", "session_start"):
        batch[k] = batch[k] * real
    batch["item_idx"][4, 0] = 1  # an OOV event is never a reason: it has no item id to show
    elapsed = batch["time_to_next_s"]
    item_idx = torch.tensor([[2, 3], [4, 5], [6, 7], [8, 9], [10, 11], [12, 13]])
    with torch.no_grad():
        positions, weights = net.explain(batch, elapsed, item_idx, top=3)
        enc = net._run_encoder(batch)
        wbar = net._event_weights(enc, net._elapsed(elapsed, 6))
        sim = (net.item_emb(item_idx) @ net.item_emb(batch["item_idx"]).transpose(1, 2)).clamp_min(0.0)
    want_pos, want_share = _top3_by_hand(wbar.unsqueeze(1) * sim, batch["item_idx"] >= 2, wbar)
    assert torch.equal(positions, want_pos)
    assert torch.allclose(weights, want_share, atol=1e-5)
    one = batch["length"] == 1
    assert (positions[one][..., 1:] == -1).all() and (weights[one][..., 1:] == 0).all()
    assert (positions[batch["length"] == 2][..., 2] == -1).all()
    found = positions >= 0
    assert real.gather(1, positions.clamp_min(0).flatten(1)).view_as(positions)[found].all()
    assert not (positions[4] == 0).any()
    # Every item has a reason: one alike to it, else the events the read-out weighs most.
    assert found[:, :, 0].all()
    alike = ((wbar.unsqueeze(1) * sim).masked_fill(~(batch["item_idx"] >= 2).unsqueeze(1), 0.0).sum(-1) > 0)
    assert alike.float().mean() > 0.5  # most items resemble some past item


@pytest.mark.parametrize("encoder", ["lstm", "time_lstm", "attention"])
def test_explain_names_reasons_for_a_user_gone_so_long_that_every_weight_underflows(encoder):
    """At 30 years the read-out's weights (and exp(-b x age)) are 0 in float32; the ratios still
    decide: reasons by the return-hazard decay from the latest known event, which ranks first
    (an event at the same time ties with it)."""
    torch.manual_seed(1)
    net = EbbtideNet(tiny_conf(encoder=encoder), N_ITEMS, N_EVENT_TYPES).eval()
    batch = make_batch(b=6, l=5, seed=5)
    batch["length"] = torch.tensor([5, 5, 4, 3, 2, 1])
    real = torch.arange(5).unsqueeze(0) >= (5 - batch["length"]).unsqueeze(1)
    batch["item_idx"] = (2 + torch.arange(30).view(6, 5) % (N_ITEMS - 2)) * real
    batch["item_idx"][:, -1] = 1  # the latest event is OOV: the latest known one is the 4th
    gone = torch.full((6,), 30 * 365 * DAY)
    item_idx = torch.tensor([[2, 3], [4, 5], [6, 7], [8, 9], [10, 11], [12, 13]])
    with torch.no_grad():
        enc = net._run_encoder(batch)
        assert (net._event_weights(enc, net._elapsed(gone, 6)) == 0).all()
        positions, weights = net.explain(batch, gone, item_idx, top=3)
    known = batch["length"] > 1  # a user whose one event is OOV has nothing to show
    days = enc["cum_days"].float()
    latest = days[:, 3:4]  # same-time events tie with it
    first = days.gather(1, positions[..., 0].clamp_min(0))
    assert torch.allclose(first[known], latest[known].expand_as(first[known])) and (weights[known][..., 0] > 0).all()
    assert (positions[~known] == -1).all() and (weights[~known] == 0).all()
    assert (weights.sum(-1) <= 1 + 1e-5).all() and not torch.isnan(weights).any()


def test_explain_of_plain_encoders_decays_with_the_return_half_life():
    """lstm / gru have no read-out: an event's weight is exp(-b x age), b the user's return-hazard rate."""
    torch.manual_seed(2)
    net = EbbtideNet(tiny_conf(encoder="gru"), N_ITEMS, N_EVENT_TYPES).eval()
    batch = make_batch(b=4, seed=6)
    elapsed = batch["time_to_next_s"]
    with torch.no_grad():
        enc = net._run_encoder(batch)
        _, b = heads.hazard_rates(*net._hazard_params(enc))
        age = enc["cum_days"][:, -1:] - enc["cum_days"] + (elapsed / DAY).unsqueeze(1)
        assert torch.allclose(net._event_weights(enc, elapsed), torch.exp(-b.unsqueeze(1) * age))


def test_bad_transitions_name_is_refused():
    with pytest.raises(ValueError, match="model.transitions"):
        EbbtideNet(tiny_conf(transitions="bigram"), N_ITEMS, N_EVENT_TYPES)


def _query_times(net, batch, monkeypatch) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(positions, elapsed_s) of every `_states` call of one `net.loss(batch)`."""
    seen, states = [], EbbtideNet._states

    def spy(self, enc, positions, elapsed_s, return_weights=False):
        seen.append((positions.clone(), elapsed_s.detach().clone()))
        return states(self, enc, positions, elapsed_s, return_weights)

    monkeypatch.setattr(EbbtideNet, "_states", spy)
    net.loss(batch)
    monkeypatch.setattr(EbbtideNet, "_states", states)
    return seen


def test_uniform_query_time_draws_the_elapsed_time_within_the_gap_to_the_next_event(monkeypatch):
    """train.query_time_uniform_share: in training, the item ranking at position j is queried at
    u x t_next_j (u ~ U(0, 1) from torch's stream) for that share of the positions, at t_next_j for
    the rest; in eval mode (validation) always at t_next_j; the return-time loss keeps the true gaps."""
    torch.manual_seed(0)
    # Ungated: the gated network starts without the read-out and the elapsed time (they would not
    # change the item loss yet).
    net = EbbtideNet(tiny_conf(encoder="time_lstm", dropout=0.0, time_gates=False), N_ITEMS, N_EVENT_TYPES)
    net.every_position = True
    batch = make_batch(b=64, l=8, seed=5)
    with torch.no_grad():
        enc = net._run_encoder(batch)
    t_next = torch.cat([enc["gap"][:, 1:], batch["time_to_next_s"].view(-1, 1).float()], 1)

    net.query_time_uniform_share = 1.0
    torch.manual_seed(11)
    [(positions, elapsed)] = _query_times(net, batch, monkeypatch)
    gap = t_next[:, positions]
    assert (elapsed >= 0).all() and (elapsed <= gap).all()
    torch.manual_seed(11)
    assert torch.equal(elapsed, gap * torch.rand(gap.shape))  # exactly u x t_next, u from torch's stream
    real = gap > 0
    assert (elapsed[real] < gap[real]).float().mean() > 0.99
    assert 0.4 < (elapsed[real] / gap[real]).mean() < 0.6

    net.query_time_uniform_share = 0.5
    [(_, mixed)] = _query_times(net, batch, monkeypatch)
    assert (mixed >= 0).all() and (mixed <= gap).all()
    at_next = (mixed[real] == gap[real]).float().mean()
    assert 0.4 < at_next < 0.6  # half the positions keep the next event's time

    net.eval()  # validation: the next event's time, whatever the share
    [(_, evaluated)] = _query_times(net, batch, monkeypatch)
    assert torch.equal(evaluated, gap)
    net.train()

    # The return-time loss is fitted to the true gaps: the same with and without the uniform query.
    with torch.no_grad():
        net.query_time_uniform_share = 0.0
        _, today = net.loss(batch)
        net.query_time_uniform_share = 1.0
        _, uniform = net.loss(batch)
    assert torch.equal(today["return_time"], uniform["return_time"])
    assert not torch.equal(today["next_item"], uniform["next_item"])


@pytest.mark.parametrize("every_position", [True, False])
def test_uniform_query_time_share_zero_trains_exactly_as_without_the_option(every_position, monkeypatch):
    """Share 0 draws nothing from the random stream: with dropout and sampled negatives drawing
    from it, the weights after a few steps are bit-identical to the next-event query time."""
    def run(share, patch):
        torch.manual_seed(7)
        net = EbbtideNet(tiny_conf(encoder="time_lstm", dropout=0.2, full_softmax_max_items=10), N_ITEMS, N_EVENT_TYPES)
        net.every_position = every_position
        net.query_time_uniform_share = share
        if patch:
            monkeypatch.setattr(EbbtideNet, "_query_elapsed", lambda self, t: t)
        losses = train(net, make_batch(b=32), steps=3)
        monkeypatch.undo()
        return losses, net.state_dict()

    (la, a), (lb, b) = run(0.0, False), run(0.0, True)
    assert la == lb
    for k in a:
        assert torch.equal(a[k], b[k]), k
    lc, _ = run(1.0, False)
    assert lc != la


def test_query_time_share_comes_from_the_train_config():
    from ebbtide.model.config import TrainConf
    from ebbtide.model.train import set_objective

    net = EbbtideNet(tiny_conf(), N_ITEMS, N_EVENT_TYPES)
    assert net.query_time_uniform_share == 0.0 and TrainConf().query_time_uniform_share == 0.0
    set_objective(net, TrainConf(query_time_uniform_share=0.5))
    assert net.query_time_uniform_share == 0.5
    with pytest.raises(ValueError, match="query_time_uniform_share"):
        set_objective(net, TrainConf(query_time_uniform_share=1.5))


def test_rows_without_a_next_item_only_train_the_return_time():
    torch.manual_seed(0)
    net = EbbtideNet(tiny_conf(), N_ITEMS, N_EVENT_TYPES)
    batch = make_batch(b=8)
    batch["target_item"] = torch.zeros(8, dtype=torch.long)  # censored windows carry target 0
    batch["censored"] = torch.ones(8, dtype=torch.long)
    total, parts = net.loss(batch)
    assert parts["next_item"].item() == 0.0
    assert torch.isclose(total, net.mcfg.hazard_weight * parts["return_time"])
    total.backward()
    # The item head gets nothing (the item embeddings still learn as inputs of the hazard).
    assert net.item_bias.grad.abs().sum() == 0
    assert net.to_item_space.weight.grad.abs().sum() == 0


def test_same_seed_same_weights():
    def run():
        torch.manual_seed(123)
        net = EbbtideNet(tiny_conf(encoder="time_lstm", dropout=0.2), N_ITEMS, N_EVENT_TYPES)
        train(net, make_batch(b=32), steps=3)
        return net.state_dict()

    a, b = run(), run()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


# ------------------------------------------------------------------ sampled softmax


def test_sampled_softmax_matches_hand_computation():
    torch.manual_seed(0)
    z = torch.randn(3, 4)
    w = torch.randn(10, 4)
    bias = torch.randn(10)
    target = torch.tensor([2, 5, 7])
    negatives = torch.tensor([3, 5, 9, 9])
    log_q = torch.log(torch.softmax(torch.randn(10), 0))
    got = heads.sampled_softmax_loss(z, w, bias, target, negatives, log_q, reduction="none")
    k = len(negatives)
    for r in range(3):
        logits = [float(z[r] @ w[target[r]] + bias[target[r]] - log_q[target[r]] - math.log(k))]
        for j in negatives.tolist():
            if j != target[r]:  # the accidental hit of row 1 (item 5) is left out
                logits.append(float(z[r] @ w[j] + bias[j] - log_q[j] - math.log(k)))
        want = -logits[0] + math.log(sum(math.exp(x) for x in logits))
        assert got[r].item() == pytest.approx(want, rel=1e-5)


@pytest.mark.parametrize("proposal", ["uniform", "popularity"])
def test_sampled_softmax_path_learns(proposal):
    torch.manual_seed(0)
    conf = tiny_conf(encoder="time_lstm", full_softmax_max_items=10, sampled_negatives=8, sampled_proposal=proposal)
    net = EbbtideNet(conf, N_ITEMS, N_EVENT_TYPES)
    assert net.sampled
    if proposal == "popularity":
        net.set_item_counts(torch.arange(N_ITEMS, dtype=torch.float32) * 10)
        q = net.item_log_q.exp()
        assert q[:2].sum() == 0 or net.item_log_q[:2].eq(0).all()
        assert q[2:].sum().item() == pytest.approx(1.0, rel=1e-5)
        assert q[N_ITEMS - 1] > q[2]
    for _ in range(50):  # proposals never hand out pad or OOV
        assert (net._sample_negatives(torch.device("cpu")) >= 2).all()
    batch = make_batch(b=64)
    losses = train(net, batch, steps=60)
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5])
    net.eval()
    with torch.no_grad():
        top1 = net.item_scores(batch, batch["time_to_next_s"]).argmax(1)
    assert (top1 == batch["target_item"]).float().mean() >= 0.8


def test_popularity_counts_must_match_catalogue():
    net = EbbtideNet(tiny_conf(sampled_proposal="popularity"), N_ITEMS, N_EVENT_TYPES)
    with pytest.raises(ValueError, match="n_items=20"):
        net.set_item_counts(torch.ones(5))


# ------------------------------------------------------------------ return-time (hazard) head


def sample_return_times(a: float, b: float, n: int, horizon: float, seed: int):
    """Draws from lambda(t) = a exp(-b t) by inverting S(t) = exp(-a/b (1 - exp(-b t))), then censors
    at a uniform cut-off in [0, horizon] days; the cured (never returning) are always censored."""
    rng = np.random.default_rng(seed)
    u = rng.uniform(size=n)
    cured = u <= math.exp(-a / b)
    with np.errstate(invalid="ignore", divide="ignore"):
        t = np.where(cured, np.inf, -np.log1p(b * np.log(u) / a) / b)
    cut = rng.uniform(0, horizon, size=n)
    censored = t > cut
    return torch.tensor(np.minimum(t, cut), dtype=torch.float32), torch.tensor(censored, dtype=torch.float32)


@pytest.mark.parametrize("a,b", [(0.3, 0.2), (0.1, 0.02)])
def test_hazard_nll_recovers_known_parameters(a, b):
    t, censored = sample_return_times(a, b, n=20000, horizon=120.0, seed=1)
    assert 0.05 < censored.mean() < 0.95
    log_a = torch.zeros((), requires_grad=True)
    log_b = torch.tensor(math.log(0.5), requires_grad=True)
    opt = torch.optim.Adam([log_a, log_b], lr=0.05)
    for _ in range(600):
        opt.zero_grad()
        nll = heads.hazard_nll(log_a, log_b, t, censored).mean()
        nll.backward()
        opt.step()
    assert log_a.exp().item() == pytest.approx(a, rel=0.2)
    assert log_b.exp().item() == pytest.approx(b, rel=0.2)
    assert heads.half_life_days(log_b.exp()).item() == pytest.approx(math.log(2) / b, rel=0.2)


def test_hazard_likelihood_limits():
    a, b = torch.tensor(0.7), torch.tensor(0.1)
    la, lb = a.log(), b.log()
    zero, one = torch.tensor(0.0), torch.tensor(1.0)
    # Censored at 0: no information, zero loss.
    assert heads.hazard_nll(la, lb, zero, one).item() == pytest.approx(0.0, abs=1e-7)
    # Censored forever: only the cure fraction explains it, -log P(never) = a/b.
    assert heads.hazard_nll(la, lb, torch.tensor(1e4), one).item() == pytest.approx(7.0, rel=1e-5)
    # Observed at t: -log a + b t + a/b (1 - exp(-b t)).
    t = 3.0
    want = -math.log(0.7) + 0.1 * t + 7.0 * (1 - math.exp(-0.1 * t))
    assert heads.hazard_nll(la, lb, torch.tensor(t), zero).item() == pytest.approx(want, rel=1e-5)
    # b -> 0: the exponential (constant hazard) law, Lambda(t) = a t, without 0/0.
    tiny_b = torch.tensor(math.log(1e-4))
    assert heads.cumulative_hazard(a, torch.tensor(1e-9), torch.tensor(5.0)).item() == pytest.approx(3.5, rel=1e-6)
    assert torch.isfinite(heads.hazard_nll(la, tiny_b, torch.tensor(5.0), zero))


def test_left_truncated_likelihood_conditions_on_no_return_before_entry():
    a, b = torch.tensor(0.7), torch.tensor(0.1)
    la, lb = a.log(), b.log()
    zero, one = torch.tensor(0.0), torch.tensor(1.0)
    g, t = 0.5, 3.0
    # -log[f(t) / S(g)] = -log lambda(t) + Lambda(t) - Lambda(g)
    want = heads.hazard_nll(la, lb, torch.tensor(t), zero) - heads.cumulative_hazard(a, b, torch.tensor(g))
    assert heads.hazard_nll(la, lb, torch.tensor(t), zero, g).item() == pytest.approx(want.item(), rel=1e-6)
    # Gaps shorter than the entry time (the same session) carry nothing, observed or censored.
    short = torch.tensor([0.01, 0.2])
    assert heads.hazard_nll(la, lb, short, torch.tensor([0.0, 1.0]), g).abs().sum().item() == 0.0
    assert heads.at_risk_after(torch.tensor([0.1, 0.5, 2.0]), g).tolist() == [False, True, True]


def test_return_probabilities_and_conditioning():
    a, b = torch.tensor([0.7, 0.05]), torch.tensor([0.1, 0.02])
    s = lambda t: torch.exp(-heads.cumulative_hazard(a, b, torch.tensor(t)))  # noqa: E731
    assert torch.allclose(heads.p_return_within(a, b, 0.0), torch.zeros(2))
    assert torch.allclose(heads.p_return_within(a, b, 1e5), 1 - torch.exp(-a / b))
    assert torch.allclose(heads.p_return_ever(a, b), 1 - torch.exp(-a / b))
    # As of e days without a return: 1 - S(e + d) / S(e).
    e, d = 12.0, 7.0
    assert torch.allclose(heads.p_return_within(a, b, d, e), 1 - s(e + d) / s(e), atol=1e-6)
    assert torch.allclose(heads.p_return_within(a, b, d, 0.0), 1 - s(d), atol=1e-7)
    # The longer the absence, the less likely a return in the next week (the hazard decays).
    p = [heads.p_return_within(a, b, 7.0, e) for e in (0.0, 10.0, 100.0)]
    assert (p[0] > p[1]).all() and (p[1] > p[2]).all()


@pytest.mark.parametrize("a,b,e", [(0.7, 0.1, 0.0), (20.0, 2.0, 0.0), (0.01, 0.3, 5.0), (0.3, 0.001, 40.0)])
def test_expected_days_is_the_conditional_mean_within_the_horizon(a, b, e):
    horizon = 365.0
    ae = a * math.exp(-b * e)
    surv = lambda u: math.exp(-ae / b * (1 - math.exp(-b * u)))  # noqa: E731
    s_h = surv(horizon)
    dens = lambda u: ae * math.exp(-b * u) * surv(u)  # noqa: E731
    num, _ = integrate.quad(lambda u: u * dens(u), 0, horizon, points=[1 / b], limit=200)
    want = num / (1 - s_h)
    got = heads.expected_days_to_return(torch.tensor([a]), torch.tensor([b]), torch.tensor([e]), horizon).item()
    assert got == pytest.approx(want, rel=0.01, abs=1e-3)


def test_expected_days_stays_finite_for_users_who_never_return():
    got = heads.expected_days_to_return(torch.tensor([1e-9, 1.0]), torch.tensor([0.5, 0.5]), torch.tensor([0.0, 5000.0]))
    assert torch.isfinite(got).all() and (got > 0).all() and (got < 365).all()
    # Both are "almost surely never": the shape-only limit, the same for both.
    assert got[0].item() == pytest.approx(got[1].item(), rel=1e-3)


@pytest.mark.parametrize("encoder", ["time_lstm", "gru"])
def test_return_time_at_conditions_on_the_elapsed_time(encoder):
    torch.manual_seed(0)
    net = EbbtideNet(tiny_conf(encoder=encoder), N_ITEMS, N_EVENT_TYPES).eval()
    batch = make_batch(b=5)
    with torch.no_grad():
        now, later = net.return_time(batch), net.return_time_at(batch, torch.full((5,), 20 * DAY))
        zero = net.return_time_at(batch, torch.zeros(5))
    assert torch.allclose(now["p_return_7d"], zero["p_return_7d"])
    assert (later["p_return_7d"] < now["p_return_7d"]).all()
    assert torch.allclose(later["half_life_days"], now["half_life_days"])


def test_features_constant_lists_the_batch_columns():
    assert FEATURES == ("item_idx", "event_type_idx", "gap_s", "hour_of_week", "session_start", "length")


def test_the_weight_average_is_an_exponential_moving_average_of_the_steps():
    from ebbtide.model.train import weight_average

    assert weight_average(torch.nn.Linear(2, 1), 0.0) is None
    with pytest.raises(ValueError, match="ema_decay"):
        weight_average(torch.nn.Linear(2, 1), 1.0)
    lin = torch.nn.Linear(2, 1, bias=False)
    ema = weight_average(lin, 0.75)
    seen = []
    for v in (4.0, 8.0, 0.0):
        with torch.no_grad():
            lin.weight.fill_(v)
        ema.update_parameters(lin)
        seen.append(float(ema.module.weight[0, 0]))
    # The first update copies; then 0.75 x average + 0.25 x weights.
    assert seen == [4.0, 0.75 * 4.0 + 0.25 * 8.0, 0.75 * 5.0]
    again = weight_average(lin, 0.75)
    again.load_state_dict(ema.state_dict())  # what a resumed run restores from its checkpoint
    assert float(again.module.weight[0, 0]) == seen[-1] and int(again.n_averaged) == 3
