"""`make cluster-test` through its Python API: a standalone master and two workers, moto's S3 server
(s3a), an MLflow tracking server with a separate registry, and the chain through spark-submit.

Minutes on 2 cores, so not part of `make test`: run it with `pytest -m cluster` (or `make
cluster-test`, the same harness as a command).
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


def _harness():
    spec = importlib.util.spec_from_file_location("ebbtide_cluster_harness", ROOT / "scripts" / "cluster.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # its dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def test_the_chain_on_a_standalone_cluster_with_s3a(tmp_path):
    harness = _harness()
    result = harness.run(tmp_path / "cluster", keep_state=True)
    failed = {k: v for k, v in result["stages"].items() if v != "ok"}
    assert not failed, f"{failed}\nlogs: {tmp_path / 'cluster' / 'logs'}"
    assert result["workers"] == 2 and result["storage"] == "s3a"
    assert {"ingest", "sessionize", "sequences", "train_horovod", "train_torch_distributor", "evaluate", "score",
            "monitor", "sql", "registry", "object_store", "local_disk"} <= set(result["stages"])
    # Every process it started is gone.
    import json

    import psutil

    started = json.loads((tmp_path / "cluster" / "pids.json").read_text())
    assert {"moto", "mlflow", "spark-master", "spark-worker-0", "spark-worker-1"} <= {r["name"] for r in started}
    for r in started:
        assert not r["running"], r
        assert not psutil.pid_exists(r["pid"]) or psutil.Process(r["pid"]).status() == psutil.STATUS_ZOMBIE, r
