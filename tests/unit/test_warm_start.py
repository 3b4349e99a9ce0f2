"""Warm start (ebbtide.model.warm_start): the weight transfer, the architecture and vocabulary
checks, the warm run's schedule and its fingerprint."""
from __future__ import annotations

import dataclasses
import math

import pandas as pd
import pytest
import torch

from ebbtide.config import ConfigError
from ebbtide.model import warm_start
from ebbtide.model.config import ModelConf, TrainConf
from ebbtide.model.network import EbbtideNet

# Sizes that no other dimension of the tiny network shares, so "first dim = n_items" finds only
# item-indexed tensors.
N_OLD, N_NEW = 37, 45
E_OLD, E_NEW = 5, 7

pytestmark = pytest.mark.usefixtures("one_thread")


def conf(**kw) -> ModelConf:
    base = dict(item_dim=16, hidden_dim=32, event_type_dim=4, time_dim=8, dropout=0.0, transitions="last")
    return ModelConf(**{**base, **kw})


def trained_parent(mc: ModelConf, n_items: int = N_OLD, n_event_types: int = E_OLD) -> EbbtideNet:
    """A parent whose every parameter is away from its initialisation (as after training)."""
    torch.manual_seed(1)
    net = EbbtideNet(mc, n_items, n_event_types)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.1 + 0.5)
    net.item_log_q.fill_(-1.0)  # a proposal of its own catalogue: must not reach the child
    return net


def test_transfer_copies_old_rows_keeps_new_rows_fresh():
    mc = conf()
    parent = trained_parent(mc)
    torch.manual_seed(2)
    child = EbbtideNet(mc, N_NEW, E_NEW)
    fresh = {k: v.clone() for k, v in child.state_dict().items()}

    report = warm_start.transfer(child, parent.state_dict())

    got, old = child.state_dict(), parent.state_dict()
    assert got["item_emb.weight"].shape == (N_NEW, 16) and got["item_bias"].shape == (N_NEW,)
    assert got["transition.weight"].shape == (N_NEW, 16) and got["event_emb.weight"].shape == (E_NEW, 4)
    for name, n_old in (("item_emb.weight", N_OLD), ("item_bias", N_OLD), ("transition.weight", N_OLD),
                        ("event_emb.weight", E_OLD)):
        assert torch.equal(got[name][:n_old], old[name]), name
        assert torch.equal(got[name][n_old:], fresh[name][n_old:]), name  # the new rows' own initialisation
        assert not torch.equal(got[name][:n_old], fresh[name][:n_old]), name
    # Every other parameter is the parent's.
    for name in got:
        if name not in warm_start.ITEM_INDEXED + warm_start.EVENT_TYPE_INDEXED + warm_start.RECOMPUTED:
            assert torch.equal(got[name], old[name]), name
    # The proposal is the child's own, over the new catalogue.
    assert torch.allclose(got["item_log_q"][2:], torch.full((N_NEW - 2,), -math.log(N_NEW - 2)))
    assert report["item_rows_copied"] == N_OLD and report["new_item_rows"] == N_NEW - N_OLD
    assert report["prefix_copied"] == {"item_emb.weight": N_OLD, "item_bias": N_OLD, "transition.weight": N_OLD,
                                       "event_emb.weight": E_OLD}
    assert report["recomputed"] == ["item_log_q"]
    # And the network still runs and trains from there.
    child.train()
    b = {"item_idx": torch.randint(2, N_NEW, (4, 6)), "event_type_idx": torch.randint(2, E_NEW, (4, 6)),
         "gap_s": torch.rand(4, 6) * 1e4, "hour_of_week": torch.randint(0, 168, (4, 6)),
         "session_start": torch.zeros(4, 6, dtype=torch.long), "length": torch.full((4,), 6),
         "target_item": torch.randint(2, N_NEW, (4,)), "time_to_next_s": torch.rand(4) * 1e5,
         "censored": torch.zeros(4)}
    total, _ = child.loss(b)
    assert torch.isfinite(total)


@pytest.mark.parametrize("encoder", ["time_lstm", "lstm", "attention"])
def test_every_item_indexed_tensor_is_listed(encoder):
    """A new parameter or buffer indexed by item must be named in ITEM_INDEXED (copied by prefix)
    or RECOMPUTED: otherwise a warm start would refuse every grown catalogue."""
    net = EbbtideNet(conf(encoder=encoder), N_NEW, E_NEW)
    by_item = {k for k, v in net.state_dict().items() if v.dim() and v.shape[0] == N_NEW}
    assert by_item <= set(warm_start.ITEM_INDEXED + warm_start.RECOMPUTED)
    assert {"item_emb.weight", "item_bias", "item_log_q"} <= by_item
    by_event = {k for k, v in net.state_dict().items() if v.dim() and v.shape[0] == E_NEW}
    assert by_event == set(warm_start.EVENT_TYPE_INDEXED)


def test_same_catalogue_copies_everything_but_the_proposal():
    mc = conf(transitions="none")
    parent = trained_parent(mc)
    child = EbbtideNet(mc, N_OLD, E_OLD)
    warm_start.transfer(child, parent.state_dict())
    got = child.state_dict()
    assert all(torch.equal(got[k], v) for k, v in parent.state_dict().items() if k != "item_log_q")


def test_transfer_refuses_other_shapes_and_parameters():
    parent = trained_parent(conf())
    with pytest.raises(warm_start.WarmStartError, match="rnn.weight_ih_l0 has shape"):
        warm_start.transfer(EbbtideNet(conf(hidden_dim=24), N_NEW, E_NEW), parent.state_dict())
    with pytest.raises(warm_start.WarmStartError, match="only in the parent: .*transition.weight"):
        warm_start.transfer(EbbtideNet(conf(transitions="none"), N_NEW, E_NEW), parent.state_dict())
    with pytest.raises(warm_start.WarmStartError, match="catalogue may only grow"):
        warm_start.transfer(EbbtideNet(conf(), N_OLD - 3, E_OLD), parent.state_dict())


def test_mismatched_model_config_is_refused_naming_every_key():
    parent = dataclasses.asdict(conf())
    warm_start.check_model_config(parent, dataclasses.asdict(conf(dropout=0.1, hazard_weight=1.0)))  # training-only
    with pytest.raises(ConfigError) as e:
        warm_start.check_model_config(parent, dataclasses.asdict(conf(encoder="gru", hidden_dim=48)))
    msg = str(e.value)
    assert "\n" not in msg and "model.encoder ('time_lstm' in the parent, 'gru' now)" in msg
    assert "model.hidden_dim (32 in the parent, 48 now)" in msg and "item_dim" not in msg
    # A parent saved before a switch existed had the switch's old value (predictor.ADDED_LATER).
    old = {k: v for k, v in parent.items() if k != "time_gates"}
    with pytest.raises(ConfigError, match=r"model.time_gates \(False in the parent, True now\)"):
        warm_start.check_model_config(old, dataclasses.asdict(conf()))


def _vocab(ids):
    return pd.DataFrame({"item_id": [str(i) for i in ids], "item_index": list(range(2, 2 + len(ids)))})


def test_vocabulary_prefix_accepted_and_moved_items_refused():
    parent = _vocab(["a", "b", "c"])
    assert warm_start.check_vocab_prefix(parent, _vocab(["a", "b", "c", "d", "e"]), "item_id", "item_index", "gold_item_vocab") == 3
    assert warm_start.check_vocab_prefix(parent, parent, "item_id", "item_index", "gold_item_vocab") == 3
    with pytest.raises(ConfigError) as e:  # rebuilt in another order: b and a swapped
        warm_start.check_vocab_prefix(parent, _vocab(["b", "a", "c", "d"]), "item_id", "item_index", "gold_item_vocab")
    assert "\n" not in str(e.value) and "2 of the parent's 3 gold_item_vocab entries" in str(e.value)
    assert "index 2: 'a' in the parent, 'b' now" in str(e.value)
    with pytest.raises(warm_start.WarmStartError, match="index 4: 'c' in the parent, nothing now"):
        warm_start.check_vocab_prefix(parent, _vocab(["a", "b"]), "item_id", "item_index", "gold_item_vocab")


def test_warm_runs_train_warm_start_epochs_without_warmup():
    tc = TrainConf(epochs=12, warm_start_epochs=3, warmup_share=0.05)
    warm = warm_start.effective_train_conf(tc)
    assert (warm.epochs, warm.warmup_share) == (3, 0.0)
    assert warm_start.effective_train_conf(tc, epochs_override=5).epochs == 5  # --epochs wins
    with pytest.raises(ConfigError, match="warm_start_epochs"):
        warm_start.effective_train_conf(dataclasses.replace(tc, warm_start_epochs=0))


def test_fingerprint_separates_warm_and_cold_runs(tmp_path):
    from conftest import make_config

    from ebbtide.model.train import fingerprint

    cfg = make_config(tmp_path)
    versions = {"gold_training_examples": 3}
    cold = fingerprint(cfg, versions, 1)
    assert cold == fingerprint(cfg, versions, 1, "")
    warm1, warm2 = fingerprint(cfg, versions, 1, "models:/ebbtide/1"), fingerprint(cfg, versions, 1, "models:/ebbtide/2")
    assert len({cold, warm1, warm2}) == 3
    # The URI as written does not count (an alias moves): only the resolved parent does.
    tc = dataclasses.replace(cfg.section("train"), warm_start="models:/ebbtide@champion", warm_start_epochs=7)
    cfg2 = dataclasses.replace(cfg, extra={**cfg.extra, "train": tc})
    assert fingerprint(cfg2, versions, 1, "models:/ebbtide/1") == warm1


def test_bad_reference_is_a_configuration_error(tmp_path):
    from conftest import make_config

    with pytest.raises(ConfigError, match="neither a models:/NAME@ALIAS"):
        warm_start.resolve_parent(make_config(tmp_path), "ebbtide@champion")
    with pytest.raises(ConfigError, match="neither a models:/NAME@ALIAS"):
        warm_start.check_reference("s3://bucket/model")
    for ok in ("models:/ebbtide@champion", "models:/ebbtide/3", "runs:/abc123/model", "runs:/abc123", "7", str(tmp_path)):
        warm_start.check_reference(ok)


def test_cli_flag_and_config_key(tmp_path):
    import argparse

    from conftest import make_config

    from ebbtide.model import train

    p = argparse.ArgumentParser()
    train.add_arguments(p)
    assert "--warm-start" in p.format_help()
    cfg = make_config(tmp_path, "train.warm_start=models:/ebbtide@champion")
    assert cfg.section("train").warm_start == "models:/ebbtide@champion"
    args = p.parse_args(["--warm-start", ""])  # the flag overrides the config, "" = a fresh start
    assert train._with_overrides(cfg, args).section("train").warm_start == ""
    assert train._with_overrides(cfg, p.parse_args([])).section("train").warm_start == "models:/ebbtide@champion"


def test_unset_alias_falls_back_only_for_an_alias_not_set(tmp_path):
    """train.warm_start_if_missing=scratch (the weekly workflow's first run, before any champion):
    only a models:/NAME@ALIAS that is not set yet (or a model not registered yet) gives a reason;
    other references are left to resolve_parent, which fails on them as before."""
    import argparse

    from conftest import make_config

    from ebbtide import mlflow_uris
    from ebbtide.model import train

    cfg = make_config(tmp_path, "train.warm_start_if_missing=scratch")
    assert cfg.section("train").warm_start_if_missing == "scratch"
    with pytest.raises(ConfigError):
        make_config(tmp_path, "train.warm_start_if_missing=maybe")
    assert "not set" in warm_start.unset_alias(cfg, "models:/ebbtide@champion")  # nothing registered
    client = mlflow_uris.client(mlflow_uris.from_config(cfg))
    client.create_registered_model("ebbtide")
    reason = warm_start.unset_alias(cfg, "models:/ebbtide@champion")  # registered, alias not set
    assert reason and "models:/ebbtide@champion" in reason
    for pinned in ("models:/ebbtide/3", "runs:/abc123", "7", str(tmp_path)):
        assert warm_start.unset_alias(cfg, pinned) is None

    p = argparse.ArgumentParser()
    train.add_arguments(p)
    args = p.parse_args(["--warm-start", "models:/ebbtide@champion", "--warm-start-if-missing", "scratch"])
    tc = train._with_overrides(make_config(tmp_path), args).section("train")
    assert (tc.warm_start, tc.warm_start_if_missing) == ("models:/ebbtide@champion", "scratch")
    # The fallback setting is operational: it does not change which run a configuration is.
    versions = {"gold_training_examples": 3}
    assert train.fingerprint(cfg, versions, 1) == train.fingerprint(make_config(tmp_path), versions, 1)
