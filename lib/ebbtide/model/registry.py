"""Training's MLflow calls: experiment, runs, per-epoch metrics, artifacts, the pyfunc, the registry.

One experiment (``mlflow.experiment``) holds every training run. A run gets the full resolved config
as flattened params, the Delta versions of its input tables as tags, one metric point per epoch
(step = epoch, 1-based), the vocabulary snapshot, the config YAML and the loss / metric curves as
artifacts, and the model as a pyfunc registered as a new version with the ``mlflow.alias`` alias.

Runs are driven through ``MlflowClient`` with explicit run ids rather than the fluent active-run
state, because the process that creates a run (the driver) is not the one that logs its epochs
(rank 0, possibly in a Spark task or a torchrun child), and a resumed run must reopen the same id.
The URIs and the client come from :mod:`ebbtide.mlflow_uris`.
"""
from __future__ import annotations

import json
import math
import os
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Optional

from ebbtide import mlflow_uris
from ebbtide.log import get_logger
from ebbtide.mlflow_uris import MlflowUris

if TYPE_CHECKING:
    from ebbtide.config import Config

log = get_logger("model.registry")

PYFUNC_NAME = "model"
# Tag keys: ebbtide.delta.<table> holds the Delta version a run read.
DELTA_TAG = "ebbtide.delta."


# --------------------------------------------------------------------------------------------
# Runs, params, metrics
# --------------------------------------------------------------------------------------------


def _client(cfg: "Config"):
    return mlflow_uris.client(mlflow_uris.from_config(cfg))


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """{'a': {'b': 1}} -> {'a.b': '1'}; empty mappings and lists are kept as their JSON text."""
    out: dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            out.update(flatten(v, key + "."))
        elif isinstance(v, (list, tuple, Mapping)):
            out[key] = json.dumps(v, default=str)
        else:
            out[key] = str(v)
    return out


def start_run(cfg: "Config", run_name: str, params: Mapping[str, str], tags: Mapping[str, str]) -> str:
    """Create a run in the experiment, log params (in the store's batch limits) and tags; return its id."""
    from mlflow.entities import Param

    uris = mlflow_uris.from_config(cfg)
    c = mlflow_uris.client(uris)
    exp_id = mlflow_uris.ensure_experiment(c, cfg)
    run = c.create_run(exp_id, run_name=run_name, tags={k: str(v) for k, v in tags.items()})
    items = [Param(k, v[:6000]) for k, v in sorted(params.items())]
    for i in range(0, len(items), 100):
        c.log_batch(run.info.run_id, params=items[i : i + 100])
    log.info("MLflow run %s in experiment %s (%s)", run.info.run_id, cfg.section("mlflow").experiment, uris.tracking)
    return run.info.run_id


def reopen_run(cfg: "Config", run_id: str, tags: Mapping[str, str] = {}) -> None:
    """Mark a run RUNNING again (a resumed training) and update tags."""
    c = _client(cfg)
    c.get_run(run_id)  # fails clearly when the run is gone
    c.update_run(run_id, status="RUNNING")
    for k, v in tags.items():
        c.set_tag(run_id, k, str(v))


def end_run(cfg: "Config", run_id: str, status: str = "FINISHED") -> None:
    _client(cfg).set_terminated(run_id, status=status)


def set_tags(cfg: "Config", run_id: str, tags: Mapping[str, Any]) -> None:
    c = _client(cfg)
    for k, v in tags.items():
        c.set_tag(run_id, k, str(v))


def log_epoch(uris: MlflowUris, run_id: str, epoch: int, metrics: Mapping[str, float]) -> None:
    """One point per metric at step = epoch (called by rank 0 only)."""
    import time

    from mlflow.entities import Metric

    ts = int(time.time() * 1000)
    ms = [Metric(k, float(v), ts, int(epoch)) for k, v in metrics.items() if v is not None and math.isfinite(float(v))]
    if ms:
        mlflow_uris.client(uris).log_batch(run_id, metrics=ms)


def logged_epochs(uris: MlflowUris, run_id: str, key: str = "train_loss") -> list[int]:
    """Epochs (steps) that already have a point of `key` in the run."""
    return sorted(m.step for m in mlflow_uris.client(uris).get_metric_history(run_id, key))


def metric_history(cfg: "Config", run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in _client(cfg).get_metric_history(run_id, key))


# --------------------------------------------------------------------------------------------
# Artifacts
# --------------------------------------------------------------------------------------------


def log_artifact_files(cfg: "Config", run_id: str, files: Iterable[str], artifact_path: Optional[str] = None) -> None:
    c = _client(cfg)
    for f in files:
        c.log_artifact(run_id, f, artifact_path)


def curves_png(history: list[dict], path: str, metric_keys: Iterable[str]) -> str:
    """Loss and validation-metric curves per epoch, one PNG (matplotlib Agg: no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    loss_keys = ("train_loss", "val_loss", "train_next_item_loss", "train_return_time_loss")
    for ax, keys, ylabel in ((ax1, loss_keys, "loss"), (ax2, metric_keys, "validation metric")):
        for key in keys:
            ys = [h.get(key) for h in history]
            if any(y is not None for y in ys):
                ax.plot(epochs, ys, marker="o", label=key)
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------------------------
# The pyfunc and the registry
# --------------------------------------------------------------------------------------------


def log_and_register_model(cfg: "Config", run_id: str, predictor_dir: str, tags: Mapping[str, Any]) -> dict:
    """Log the predictor folder as a pyfunc in the run, register it as a new version, set the alias.

    Returns {model_name, model_version, model_uri, alias}.
    """
    import mlflow

    import ebbtide
    from ebbtide.model.predictor import Predictor

    m = cfg.section("mlflow")
    mlflow_uris.configure(mlflow_uris.from_config(cfg))
    pred = Predictor.load(predictor_dir)
    example = pred.input_example()
    params = {"k": int(m.top_k)}
    output = pred.predict_frame(example, k=int(m.top_k))
    signature = mlflow.models.infer_signature(example, output, params=params)
    pkg_dir = os.path.dirname(os.path.abspath(ebbtide.__file__))
    with mlflow.start_run(run_id=run_id):
        info = mlflow.pyfunc.log_model(
            name=PYFUNC_NAME,
            python_model=os.path.join(os.path.dirname(os.path.abspath(__file__)), "pyfunc_model.py"),
            artifacts={"predictor": predictor_dir},
            signature=signature,
            input_example=example,
            # The package travels with the model, so a serving host needs only the pip requirements.
            code_paths=[pkg_dir],
            pip_requirements=_pip_requirements(),
        )
    version = mlflow.register_model(info.model_uri, m.model_name)
    c = _client(cfg)
    c.set_registered_model_alias(m.model_name, m.alias, version.version)
    for k, v in tags.items():
        c.set_model_version_tag(m.model_name, version.version, k, str(v))
    uri = f"models:/{m.model_name}@{m.alias}"
    log.info("registered %s version %s with alias %s", m.model_name, version.version, m.alias)
    return {"model_name": m.model_name, "model_version": int(version.version), "model_uri": uri, "alias": m.alias}


def registered_version_of_run(cfg: "Config", run_id: str, tags: Mapping[str, Any] = {}) -> Optional[dict]:
    """The model version a training run already registered, with the alias and tags set (again):
    a run killed after registering but before it was marked finished resumes here instead of
    registering the same model a second time. None when the run registered nothing yet."""
    m = cfg.section("mlflow")
    c = _client(cfg)
    versions = [mv for mv in c.search_model_versions(f"run_id = '{run_id}'") if mv.name == m.model_name]
    if not versions:
        return None
    mv = min(versions, key=lambda v: int(v.version))
    c.set_registered_model_alias(m.model_name, m.alias, mv.version)
    for k, v in tags.items():
        c.set_model_version_tag(m.model_name, mv.version, k, str(v))
    log.info("run %s already registered %s version %s: alias %s set, nothing registered again",
             run_id, m.model_name, mv.version, m.alias)
    return {"model_name": m.model_name, "model_version": int(mv.version),
            "model_uri": f"models:/{m.model_name}@{m.alias}", "alias": m.alias}


def _pip_requirements() -> list[str]:
    from importlib.metadata import PackageNotFoundError, version

    reqs = []
    for pkg in ("mlflow", "torch", "numpy", "pandas", "pyarrow", "pyyaml"):
        try:
            reqs.append(f"{pkg}=={version(pkg)}")
        except PackageNotFoundError:
            reqs.append(pkg)
    return reqs


def model_version_of(cfg: "Config", name: str, alias: str) -> Optional[int]:
    from mlflow.exceptions import MlflowException

    try:
        return int(_client(cfg).get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None
