"""Warm start: a training run that starts from an earlier model's weights instead of a fresh draw.

``ebbtide train --warm-start models:/ebbtide@champion`` (or ``train.warm_start``) resolves the
parent model to one version (or run), checks that it can be continued, and hands its weights to
every training process, which copies them into the freshly built network before the first step:

- every parameter whose shape is unchanged is copied as it is;
- item-indexed parameters (``ITEM_INDEXED``: the item embedding, which the scorer shares, the item
  bias and the transition vectors) and event-type-indexed ones (``EVENT_TYPE_INDEXED``) get the
  parent's rows 0 .. n_old - 1; the rows of items (event types) appended since keep the network's
  own fresh initialisation;
- ``RECOMPUTED`` buffers (the sampled softmax's proposal ``item_log_q``) are not copied: they
  describe the current catalogue and training set and are rebuilt from them.

This is only sound because vocabulary indices never move (``ebbtide.sequences``: the vocabularies
only append): item_id x at index i in the parent must still be at index i. Both that contract and
the network's shape are checked on the driver before a run is opened; a violation is refused with
one line (a ConfigError, exit status 2) that names what differs.

Nothing here imports torch at module level, so the CLI's ``--help`` stays instant.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping, Optional

from ebbtide.config import ConfigError

if TYPE_CHECKING:
    import pandas as pd

    from ebbtide.config import Config

# Parameters indexed by item index (first dim = n_items): the parent's rows are copied, new rows stay fresh.
ITEM_INDEXED = ("item_emb.weight", "item_bias", "transition.weight")
# Parameters indexed by event-type index (that vocabulary only appends too).
EVENT_TYPE_INDEXED = ("event_emb.weight",)
# Buffers that describe the current catalogue / training set: rebuilt, never copied.
RECOMPUTED = ("item_log_q",)
# Model settings that decide the network's parameters or what they mean: a parent must match them
# all. The others (dropout, hazard_weight, the softmax and sampler settings, the decay heads'
# initial half-lives, return_horizon_days) only shape training or read-out and may change.
ARCHITECTURE_KEYS = (
    "encoder", "attention_layers", "attention_heads", "item_dim", "hidden_dim", "event_type_dim", "time_dim",
    "last_item_skip", "transitions", "time_gates", "user_decay", "use_time", "time_inputs", "decay_heads",
)
# The parent's weights, written by the driver next to the run's checkpoints (shared storage that
# every rank reaches, like the checkpoints themselves).
PARENT_WEIGHTS = "parent.pt"

_MODELS_URI = re.compile(r"^models:/([^/@]+)(?:/(\d+)|@([\w-]+))$")
_RUNS_URI = re.compile(r"^runs:/([^/]+)(?:/(.*))?$")


class WarmStartError(ConfigError):
    """A parent model that cannot be continued (other architecture, moved vocabulary, not found)."""


@dataclass(frozen=True)
class Parent:
    """The resolved parent of a warm start."""

    requested: str  # what was asked for, e.g. models:/ebbtide@champion
    ref: str  # what it resolved to, pinned: models:/ebbtide/3, runs:/<id>/model, or a folder
    model_name: Optional[str]
    model_version: Optional[int]
    run_id: Optional[str]
    folder: str  # the local predictor folder (predictor.json, weights.pt, vocabularies)
    meta: dict = field(default_factory=dict, compare=False)

    def lineage(self) -> dict:
        return {"requested": self.requested, "ref": self.ref, "model_name": self.model_name,
                "model_version": self.model_version, "run_id": self.run_id}


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------


def effective_train_conf(tc, epochs_override: Optional[int] = None):
    """The train section of a warm-started run: ``warm_start_epochs`` instead of ``epochs`` (an
    explicit ``--epochs`` still wins) and no learning-rate warm-up (docs/training.md, Warm start:
    the warm-up protects a random initialisation from full-size first steps, and on a short run
    from trained weights it would spend a share of the few epochs at a near-zero rate)."""
    epochs = int(epochs_override) if epochs_override is not None else int(tc.warm_start_epochs)
    if epochs < 1:
        raise ConfigError(f"train.warm_start_epochs={tc.warm_start_epochs!r}: a warm start needs at least 1 epoch")
    return dataclasses.replace(tc, epochs=epochs, warmup_share=0.0)


def check_model_config(parent_model: Mapping[str, Any], current_model: Mapping[str, Any]) -> None:
    """Refuse (WarmStartError) when an ARCHITECTURE_KEYS setting differs, naming every such key."""
    from ebbtide.model.predictor import ADDED_LATER

    parent = {**ADDED_LATER, **dict(parent_model)}
    diff = [k for k in ARCHITECTURE_KEYS if parent.get(k) != current_model.get(k)]
    if diff:
        what = ", ".join(f"model.{k} ({parent.get(k)!r} in the parent, {current_model.get(k)!r} now)" for k in diff)
        raise WarmStartError(
            f"cannot warm-start: the model config differs from the parent's: {what}; "
            "set them back to the parent's values or train without --warm-start"
        )


def check_vocab_prefix(parent_vocab: "pd.DataFrame", current_vocab: "pd.DataFrame", key: str, index_col: str,
                       table: str) -> int:
    """Refuse (WarmStartError) unless every (key, index) of the parent's vocabulary is in the
    current one at the same index: the parent's vocabulary must be a prefix of the current one.
    Returns the parent's size in rows."""
    now = dict(zip(current_vocab[index_col].astype(int), current_vocab[key].astype(str)))
    parent = list(zip(parent_vocab[index_col].astype(int), parent_vocab[key].astype(str)))
    bad = [(i, k, now.get(i)) for i, k in parent if now.get(i) != k]
    if bad:
        i, k, cur = bad[0]
        found = f"{cur!r}" if cur is not None else "nothing"
        raise WarmStartError(
            f"cannot warm-start: {len(bad)} of the parent's {len(parent)} {table} entries are no longer at their "
            f"index (e.g. index {i}: {k!r} in the parent, {found} now); vocabulary indices must never move "
            f"(rebuilt vocabulary?), so train without --warm-start"
        )
    return len(parent)


# --------------------------------------------------------------------------------------------
# Resolving the parent (registry look-ups through ebbtide.mlflow_uris)
# --------------------------------------------------------------------------------------------


def check_reference(requested: str) -> None:
    """Refuse (WarmStartError) a reference that no form of `resolve_parent` reads, before anything
    is read or started."""
    uri = requested.strip()
    if not (uri.isdigit() or os.path.isdir(uri) or _MODELS_URI.match(uri) or _RUNS_URI.match(uri)):
        raise WarmStartError(
            f"train.warm_start={requested!r} is neither a models:/NAME@ALIAS, models:/NAME/N or runs:/RUN_ID "
            "URI, a version number, nor a model folder"
        )


# MLflow's error codes for a registered model that does not exist (file / SQL stores and Unity
# Catalog); an alias that is not set comes back as INVALID_PARAMETER_VALUE "... alias X not found".
_NOT_FOUND_CODES = ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND")


def unset_alias(cfg: "Config", requested: str) -> Optional[str]:
    """For a models:/NAME@ALIAS reference whose alias is not set (or whose model is not registered
    yet): a one-line reason; None for any other reference or an alias that resolves. The
    ``train.warm_start_if_missing: scratch`` fallback trains from scratch only then: a pinned
    version or run that is gone, or a registry that cannot be reached, still fails."""
    from ebbtide import mlflow_uris

    m = _MODELS_URI.match(requested.strip())
    if not m or not m.group(3):
        return None
    name, alias = m.group(1), m.group(3)
    uris = mlflow_uris.from_config(cfg)
    try:
        mlflow_uris.client(uris).get_model_version_by_alias(name, alias)
    except Exception as e:  # MLflow raises its own RestException / MlflowException types
        code = str(getattr(e, "error_code", "") or "")
        if code in _NOT_FOUND_CODES or "not found" in str(e).lower():
            return f"{requested.strip()} is not set in the registry at {uris.registry} ({_one_line(e)})"
        raise
    return None


def resolve_parent(cfg: "Config", requested: str) -> Parent:
    """A models:/name@alias, models:/name/N or runs:/<id>[/path] URI, a bare version number N
    (of mlflow.model_name), or a predictor folder -> the Parent, downloaded."""
    from ebbtide import mlflow_uris
    from ebbtide.model.predictor import META_FILE, _find_predictor_dir
    from ebbtide.model.registry import PYFUNC_NAME

    uri = requested.strip()
    name = version = run_id = None
    if uri.isdigit():
        uri = f"models:/{cfg.section('mlflow').model_name}/{uri}"
    if os.path.isdir(uri):
        ref = uri
    else:
        uris = mlflow_uris.from_config(cfg)
        client = mlflow_uris.client(uris)
        m, r = _MODELS_URI.match(uri), _RUNS_URI.match(uri)
        if m:
            name, ver, alias = m.group(1), m.group(2), m.group(3)
            try:
                mv = client.get_model_version(name, ver) if ver else client.get_model_version_by_alias(name, alias)
            except Exception as e:  # MLflow raises its own RestException / MlflowException types
                raise WarmStartError(
                    f"cannot warm-start: {uri} is not in the registry at {uris.registry} ({_one_line(e)}); "
                    "train once without --warm-start, or name an existing version (models:/NAME/N)"
                ) from None
            version, run_id = int(mv.version), mv.run_id
            ref = f"models:/{name}/{version}"
        elif r:
            run_id = r.group(1)
            ref = f"runs:/{run_id}/{r.group(2) or PYFUNC_NAME}"
            try:
                client.get_run(run_id)
            except Exception as e:
                raise WarmStartError(f"cannot warm-start: run {run_id} not found at {uris.tracking} ({_one_line(e)})") from None
            name = cfg.section("mlflow").model_name
            found = [mv for mv in client.search_model_versions(f"run_id = '{run_id}'") if mv.name == name]
            version = min(int(mv.version) for mv in found) if found else None
        else:
            raise WarmStartError(
                f"train.warm_start={requested!r} is neither a models:/NAME@ALIAS, models:/NAME/N or runs:/RUN_ID "
                "URI, a version number, nor a model folder"
            )
        try:
            folder = mlflow_uris.download_model(ref, uris)
        except Exception as e:
            raise WarmStartError(f"cannot warm-start: could not download {ref} ({_one_line(e)})") from None
    try:
        folder = _find_predictor_dir(ref if os.path.isdir(ref) else folder)
    except FileNotFoundError as e:
        raise WarmStartError(f"cannot warm-start from {ref}: {_one_line(e)}") from None
    with open(os.path.join(folder, META_FILE)) as f:
        meta = json.load(f)
    if run_id is None:
        run_id = (meta.get("lineage") or {}).get("mlflow_run_id")
    return Parent(requested.strip(), ref, name, version, run_id, folder, meta)


def parent_vocabularies(parent: Parent):
    """The parent's item and event-type vocabularies (pandas), as its predictor folder holds them."""
    import pandas as pd

    from ebbtide.model.predictor import EVENT_VOCAB_FILE, ITEM_VOCAB_FILE

    return (pd.read_parquet(os.path.join(parent.folder, ITEM_VOCAB_FILE)),
            pd.read_parquet(os.path.join(parent.folder, EVENT_VOCAB_FILE)))


def parent_state_dict(parent: Parent) -> dict:
    import torch

    from ebbtide.model.predictor import WEIGHTS_FILE

    return torch.load(os.path.join(parent.folder, WEIGHTS_FILE), map_location="cpu", weights_only=True)


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())[:300]


# --------------------------------------------------------------------------------------------
# The weight transfer (every training process)
# --------------------------------------------------------------------------------------------


def transfer(net, parent_state: Mapping[str, Any]) -> dict:
    """Copy a parent's state dict into ``net`` (built for the current catalogue, freshly
    initialised) in place; see the module doc for what is copied. Refuses (WarmStartError) a
    parameter the two do not share, or one whose shape changed other than by appended rows of an
    ITEM_INDEXED / EVENT_TYPE_INDEXED parameter. Returns a summary of what was done."""
    import torch

    own = net.state_dict()
    missing, extra = sorted(set(own) - set(parent_state)), sorted(set(parent_state) - set(own))
    if missing or extra:
        raise WarmStartError(
            f"cannot warm-start: the parent's parameters differ from this network's (only here: {missing or 'none'}; "
            f"only in the parent: {extra or 'none'}); train without --warm-start"
        )
    copied, prefixed, recomputed = [], {}, []
    with torch.no_grad():
        for name, t in own.items():
            p = parent_state[name]
            if name in RECOMPUTED:
                recomputed.append(name)
                continue
            if name in ITEM_INDEXED or name in EVENT_TYPE_INDEXED:
                n_old = int(p.shape[0])
                if n_old > t.shape[0] or tuple(p.shape[1:]) != tuple(t.shape[1:]):
                    raise WarmStartError(
                        f"cannot warm-start: {name} has shape {tuple(p.shape)} in the parent and {tuple(t.shape)} "
                        "now; the catalogue may only grow"
                    )
                t[:n_old].copy_(p.to(t.dtype))
                prefixed[name] = n_old
            elif tuple(p.shape) == tuple(t.shape):
                t.copy_(p.to(t.dtype))
                copied.append(name)
            else:
                raise WarmStartError(
                    f"cannot warm-start: {name} has shape {tuple(p.shape)} in the parent and {tuple(t.shape)} now; "
                    "train without --warm-start"
                )
    net.load_state_dict(own)
    n_items_old = prefixed.get("item_emb.weight", net.n_items)
    return {
        "copied": len(copied),
        "prefix_copied": prefixed,
        "recomputed": recomputed,
        "item_rows_copied": n_items_old,
        "new_item_rows": int(net.n_items) - n_items_old,
    }
