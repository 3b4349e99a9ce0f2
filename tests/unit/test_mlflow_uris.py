"""MLflow URIs from config, and the registry URI reaching every client and every model download.

The stores are real: a SQLite tracking store and, as the model registry, another SQLite file, the
way Databricks splits runs (``databricks``) from Unity Catalog models (``databricks-uc``). A client
or a download that took the tracking store for the registry would find no model there.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pandas as pd
import pytest

from ebbtide import mlflow_uris
from ebbtide.config import ConfigError, load_config
from ebbtide.mlflow_uris import MlflowUris

N_ITEMS = 12


def _cfg(tmp_path, *overrides):
    from conftest import make_config

    return make_config(tmp_path, *overrides)


# ------------------------------------------------------------------------------------------
# URIs from config
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("tracking, registry", [
    ("databricks", "databricks-uc"),
    ("databricks://prod", "databricks-uc://prod"),
    ("https://mlflow.example.com", "http://registry.internal:5000"),
    ("file:/shared/mlruns", "databricks"),
])
def test_store_uris_pass_through_config_untouched(tmp_path, tracking, registry):
    cfg = _cfg(tmp_path, f"mlflow.tracking_uri={tracking}", f"mlflow.registry_uri={registry}")
    assert mlflow_uris.from_config(cfg) == MlflowUris(tracking, registry)


def test_databricks_overlay_keeps_workspace_runs_and_unity_catalog_models():
    cfg = load_config(env="databricks")
    assert mlflow_uris.from_config(cfg) == MlflowUris("databricks", "databricks-uc")
    assert cfg.section("mlflow").model_name.count(".") == 2  # catalog.schema.model


def test_an_empty_registry_is_the_tracking_store_and_sqlite_gets_its_folder(tmp_path):
    root = tmp_path / "root"
    cfg = _cfg(root)
    uris = mlflow_uris.from_config(cfg)
    assert uris.tracking == f"sqlite:///{root.resolve()}/mlflow.db" == uris.registry
    assert root.is_dir()


def test_a_bare_path_is_a_storage_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = _cfg(tmp_path / "root", "mlflow.tracking_uri={root}/mlruns", "mlflow.registry_uri=registry")
    uris = mlflow_uris.from_config(cfg)
    assert uris.tracking == str((tmp_path / "root" / "mlruns").resolve())
    assert uris.registry == str((tmp_path / "registry").resolve())


def test_a_store_file_under_an_object_store_root_asks_for_a_server(tmp_path):
    cfg = _cfg(tmp_path, "storage.root=s3://bucket/ebbtide")
    with pytest.raises(ConfigError, match="tracking server"):
        mlflow_uris.from_config(cfg)
    cfg = _cfg(tmp_path, "storage.root=s3://bucket/ebbtide", "mlflow.tracking_uri=http://mlflow:5000")
    assert mlflow_uris.from_config(cfg) == MlflowUris("http://mlflow:5000", "http://mlflow:5000")
    assert mlflow_uris.artifact_root(cfg) == "s3://bucket/ebbtide/mlartifacts"


@pytest.mark.parametrize("root", ["s3a://bucket/ebbtide", "s3n://bucket/ebbtide"])
def test_an_s3a_root_gives_mlflow_an_s3_artifact_root(tmp_path, root):
    """Spark's s3a:// root would reach MLflow as is, and MLflow has no artifact store for s3a."""
    cfg = _cfg(tmp_path, f"storage.root={root}", "mlflow.tracking_uri=http://mlflow:5000")
    assert mlflow_uris.artifact_root(cfg) == "s3://bucket/ebbtide/mlartifacts"
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    assert type(get_artifact_repository(mlflow_uris.artifact_root(cfg))).__name__ == "S3ArtifactRepository"
    cfg = _cfg(tmp_path, f"storage.root={root}", "mlflow.artifact_root=mlflow-artifacts:/ebbtide")
    assert mlflow_uris.artifact_root(cfg) == "mlflow-artifacts:/ebbtide"


# ------------------------------------------------------------------------------------------
# A registry that is not the tracking store
# ------------------------------------------------------------------------------------------


def _predictor_folder(folder) -> str:
    import torch

    from ebbtide.model import predictor as P
    from ebbtide.model.config import ModelConf
    from ebbtide.model.network import EbbtideNet

    torch.manual_seed(0)
    mc = dataclasses.replace(ModelConf(), item_dim=4, hidden_dim=8, time_dim=2, event_type_dim=2, decay_heads=1)
    net = EbbtideNet(mc, N_ITEMS, 3)
    items = pd.DataFrame({"item_id": [f"i{i}" for i in range(2, N_ITEMS)], "item_index": range(2, N_ITEMS)})
    events = pd.DataFrame({"event_type": ["view"], "event_type_index": [2]})
    return P.save(str(folder), net.state_dict(), dataclasses.asdict(mc), N_ITEMS, 3, 5, items, events, session_gap_s=1800.0)


@pytest.fixture
def split_stores(tmp_path, monkeypatch):
    """Model `tiny` version 1 (alias challenger): its run in tracking.db, the version in registry.db."""
    import mlflow

    # Downloads set the process's MLflow URIs (and MLflow mirrors them into the environment).
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    cfg = _cfg(tmp_path, f"mlflow.tracking_uri=sqlite:///{tmp_path}/tracking.db",
               f"mlflow.registry_uri=sqlite:///{tmp_path}/registry.db", "mlflow.model_name=tiny")
    uris = mlflow_uris.from_config(cfg)
    assert uris.tracking != uris.registry
    c = mlflow_uris.client(uris)
    run = c.create_run(mlflow_uris.ensure_experiment(c, cfg))
    c.log_artifacts(run.info.run_id, _predictor_folder(tmp_path / "predictor"), "model/artifacts/predictor")
    c.set_terminated(run.info.run_id)
    c.create_registered_model("tiny")
    mv = c.create_model_version("tiny", f"{run.info.artifact_uri}/model", run_id=run.info.run_id)
    c.set_registered_model_alias("tiny", "challenger", mv.version)
    yield cfg, uris, str(mv.version), run.info.run_id
    mlflow.set_tracking_uri(None)
    mlflow.set_registry_uri(None)


def test_experiment_artifacts_go_under_the_artifact_root(split_stores, tmp_path):
    cfg, uris, _, run_id = split_stores
    run = mlflow_uris.client(uris).get_run(run_id)
    assert run.info.artifact_uri.replace("file://", "").startswith(str(tmp_path.resolve() / "mlartifacts" / "ebbtide"))


def test_gate_and_evaluation_client_reads_the_registry(split_stores):
    from ebbtide.evaluation import gate

    cfg, uris, version, run_id = split_stores
    client = mlflow_uris.client(mlflow_uris.from_config(cfg))  # what `ebbtide evaluate` builds
    assert gate.resolve_registered(client, "models:/tiny@challenger") == {"name": "tiny", "version": version, "run_id": run_id}
    assert gate.alias_version(client, "tiny", "challenger") == version
    tracking_only = mlflow_uris.client(MlflowUris(uris.tracking, uris.tracking))
    with pytest.raises(ValueError, match="not in the registry"):
        gate.resolve_registered(tracking_only, "models:/tiny@challenger")


def test_training_finds_its_version_in_the_registry(split_stores):
    from ebbtide.model import registry

    cfg, _, version, run_id = split_stores
    assert registry.registered_version_of_run(cfg, run_id)["model_version"] == int(version)
    assert registry.model_version_of(cfg, "tiny", "challenger") == int(version)


def test_scoring_workers_and_evaluation_download_from_the_registry(split_stores):
    from mlflow.exceptions import MlflowException

    from ebbtide.evaluation.run import _load_predictor
    from ebbtide.scoring import inference
    from ebbtide.scoring.run import resolve_model

    cfg, uris, version, run_id = split_stores
    ref = resolve_model(cfg, "models:/tiny@challenger")
    assert ref.uri == f"models:/tiny/{version}" and ref.uris == uris
    assert ref.identity.startswith(f"{run_id}|")  # the workers' cache key (below)
    # What each scoring worker runs with the driver's ModelRef, and what evaluate loads.
    assert inference.load_predictor(ref.uri, ref.uris).n_items == N_ITEMS
    assert _load_predictor(ref.uri, uris).n_items == N_ITEMS
    folder = mlflow_uris.download_model(f"models:/tiny/{version}", uris)
    assert list(Path(folder).rglob("predictor.json"))
    with pytest.raises(MlflowException, match="tiny"):
        mlflow_uris.download_model(f"models:/tiny/{version}", MlflowUris(uris.tracking, uris.tracking))


def test_a_worker_never_serves_one_registrys_version_for_another_registrys():
    """Spark reuses a Python worker for every later job of the session: `models:/ebbtide/1` of a
    second registry (or of one made again at the same path) must not get the first one's model."""
    from ebbtide.scoring.inference import _MODELS, cached_model

    loads = []

    def loader(uri, uris):
        loads.append((uri, uris))
        return object()

    a = MlflowUris("sqlite:////a/mlflow.db", "sqlite:////a/registry.db")
    b = MlflowUris("sqlite:////b/mlflow.db", "sqlite:////b/registry.db")
    try:
        first = cached_model("models:/ebbtide/1", loader, a, "run-1|src-1")
        assert cached_model("models:/ebbtide/1", loader, a, "run-1|src-1") is first  # loaded once
        other_store = cached_model("models:/ebbtide/1", loader, b, "run-7|src-7")
        store_made_again = cached_model("models:/ebbtide/1", loader, a, "run-2|src-2")
        assert len({id(first), id(other_store), id(store_made_again)}) == 3
        assert loads == [("models:/ebbtide/1", a), ("models:/ebbtide/1", b), ("models:/ebbtide/1", a)]
    finally:
        _MODELS.clear()
