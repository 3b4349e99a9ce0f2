"""Where MLflow lives: the tracking and registry URIs from config, the client on them, model download.

Every stage that talks to MLflow (train, evaluate and its gate, score, the scoring workers) gets
its URIs and its client here, so the registry URI is honoured everywhere. The two differ on
Databricks with Unity Catalog: runs go to the workspace (``databricks``), model versions and
aliases to Unity Catalog (``databricks-uc``), where a model is named ``catalog.schema.model``.

A URI is taken as written when MLflow reads it as a store: ``databricks``, ``databricks-uc``,
``databricks://PROFILE``, ``http(s)://...``, ``sqlite:///...``, ``file:...`` and any other
``scheme:``; only ``{root}`` inside it is replaced by the local storage root. A bare path (an
MLflow file store) is a storage path, resolved like every other one (``Config.path``).

Nothing here imports the rest of ``ebbtide.model``: the predictor downloads its model through
this module, and the registry helpers (which load the predictor) build on it.
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

from ebbtide.config import ConfigError
from ebbtide.storage import local_path, scheme

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

    from ebbtide.config import Config

# Store names MLflow takes without a colon: the Databricks workspace (tracking server and its
# workspace registry) and the Databricks Unity Catalog registry.
BARE_STORES = frozenset({"databricks", "databricks-uc"})


@dataclass(frozen=True)
class MlflowUris:
    """A tracking store and a model registry. Plain strings: the driver pickles it to workers."""

    tracking: str
    registry: str


def resolve(cfg: "Config", template: str, key: str = "mlflow.tracking_uri") -> str:
    """One configured tracking or registry URI (see the module doc); a SQLite file's folder is made."""
    t = template.strip()
    if t in BARE_STORES:
        return t
    if not scheme(t):
        return cfg.path(t)
    uri = t
    if "{root}" in t:
        root = local_path(cfg.path("{root}"))
        if root is None:
            raise ConfigError(
                f"{key}={template!r} puts a store under storage.root={cfg.storage.root!r}, which is not a local "
                "path: set it to a tracking server (http://...), databricks, or a path on this machine"
            )
        uri = t.replace("{root}", root)
    if uri.startswith("sqlite:///"):
        os.makedirs(os.path.dirname(uri[len("sqlite:///"):]) or ".", exist_ok=True)
    return uri


def from_config(cfg: "Config") -> MlflowUris:
    m = cfg.section("mlflow")
    tracking = resolve(cfg, m.tracking_uri)
    registry = resolve(cfg, m.registry_uri, "mlflow.registry_uri") if m.registry_uri.strip() else tracking
    return MlflowUris(tracking, registry)


# Hadoop's names for S3 (a storage root Spark reads as s3a://...): MLflow's S3 artifact store
# registers only s3://, and the bucket and key are the same.
HADOOP_S3_SCHEMES = ("s3a", "s3n")


def artifact_root(cfg: "Config") -> str:
    """Where new experiments put their artifacts: a local folder or a URL (s3://, dbfs:/Volumes/...,
    mlflow-artifacts:/ for a tracking server that serves them). ``s3a://`` and ``s3n://`` (an
    ``{root}`` that Spark reads through Hadoop) become ``s3://``, the name MLflow knows."""
    root = cfg.path(cfg.section("mlflow").artifact_root)
    s = scheme(root)
    return "s3" + root[len(s):] if s in HADOOP_S3_SCHEMES else root


def client(uris: MlflowUris) -> "MlflowClient":
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uris.tracking, registry_uri=uris.registry)


def configure(uris: MlflowUris) -> None:
    """Point this process's MLflow (the fluent API: log_model, register_model, models:/ downloads) at them."""
    import mlflow

    mlflow.set_tracking_uri(uris.tracking)
    mlflow.set_registry_uri(uris.registry)


def download_model(model_uri: str, uris: Optional[MlflowUris] = None, dst: Optional[str] = None) -> str:
    """A models:/ or runs:/ URI -> a local folder holding the logged pyfunc (MLmodel, artifacts/...).

    Without ``uris`` the process's own settings apply (MLFLOW_TRACKING_URI, MLFLOW_REGISTRY_URI).
    With them, they are also set process-wide: MLflow resolves a plain registry's models:/ URI
    through the process's registry URI whatever it is passed (3.x, ModelsArtifactRepository),
    and a scoring worker or an evaluation loads its models from one place only. ``dst``: the folder to
    download into (default: a new temporary folder, kept: the loaded model reads from it)."""
    import mlflow

    kwargs = {}
    if uris is not None:
        configure(uris)
        kwargs = {"tracking_uri": uris.tracking, "registry_uri": uris.registry}
    dst = dst or tempfile.mkdtemp(prefix="ebbtide-model-")
    return mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=dst, **kwargs)


def ensure_experiment(c: "MlflowClient", cfg: "Config") -> str:
    """The configured experiment's id, created with its artifacts under ``mlflow.artifact_root``."""
    name = cfg.section("mlflow").experiment
    exp = c.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    root = artifact_root(cfg)
    if scheme(root):
        location = f"{root.rstrip('/')}/{name.strip('/')}"
    else:
        # One artifact folder per experiment under the configured root (not ./mlruns of the cwd).
        location = os.path.join(root, name.strip("/"))
        os.makedirs(location, exist_ok=True)
    return c.create_experiment(name, artifact_location=location)
