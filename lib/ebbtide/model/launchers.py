"""Three ways to run the one training function (``ebbtide.model.train.train_fn``).

- ``local``: one process, this one.
- ``horovod``: ``horovod.spark.run(train_fn, args=(spec,), num_proc=N)`` on the active Spark session:
  N Spark tasks each run one Horovod (Gloo) process. On Databricks runtimes that still ship it,
  ``HorovodRunner(np=N).run(train_fn, spec=spec)`` is the same call.
- ``horovodrun``: plain hosts, no Spark needed for the workers: the spec is pickled next to the
  checkpoints (shared storage) and ``horovodrun -np N -H HOSTS python -m ebbtide.model.launchers
  SPEC RESULT`` runs ``train_fn`` in every slot; rank 0 writes RESULT.
- ``torch-distributor``: ``TorchDistributor(num_processes=N, local_mode=..., use_gpu=...)`` starts
  N torchrun processes that join a DDP process group (Gloo on CPU, NCCL on GPU).

Each returns a list of per-rank summaries, rank 0 first (TorchDistributor only hands back rank 0's,
which carries every rank's parameter checksum).
"""
from __future__ import annotations

import contextlib
import logging
import os
import pickle
import sys
from typing import TYPE_CHECKING, Any

from ebbtide.log import get_logger

if TYPE_CHECKING:
    from ebbtide.model.config import TrainConf
    from ebbtide.model.train import TrainSpec

log = get_logger("model.launchers")


def _cuda_wanted(tc: "TrainConf") -> bool:
    if tc.device == "cpu":
        return False
    import torch

    return tc.device == "cuda" or torch.cuda.is_available()


def launch(spec: "TrainSpec", tc: "TrainConf", spark: Any = None) -> list[dict]:
    import dataclasses

    from ebbtide.model.train import train_fn

    if tc.launcher == "local":
        return [train_fn(dataclasses.replace(spec, backend="local"))]
    if tc.launcher == "horovod":
        return _horovod(dataclasses.replace(spec, backend="horovod"), tc, spark)
    if tc.launcher == "torch-distributor":
        return _torch_distributor(dataclasses.replace(spec, backend="ddp"), tc, spark)
    if tc.launcher == "horovodrun":
        return _horovodrun(dataclasses.replace(spec, backend="horovod"), tc)
    raise ValueError(f"unknown train.launcher {tc.launcher!r}; use local, horovod, horovodrun or torch-distributor")


def _horovod(spec: "TrainSpec", tc: "TrainConf", spark: Any) -> list[dict]:
    try:
        import horovod.spark
    except ImportError as e:
        raise RuntimeError(
            f"the horovod launcher needs Horovod with PyTorch and Gloo ({e}); run `make setup`, "
            "or use --launcher torch-distributor"
        ) from None
    from ebbtide.model.train import train_fn

    if spark is None:
        raise RuntimeError("the horovod launcher runs on a Spark session; none was given")
    slots = spark.sparkContext.defaultParallelism
    if slots < tc.num_proc:
        raise RuntimeError(
            f"horovod.spark.run needs {tc.num_proc} concurrent Spark tasks but the session has {slots} slots; "
            f"lower train.num_proc or give Spark more cores (spark.master=local[{tc.num_proc}])"
        )
    env = dict(os.environ)
    env.setdefault("EBBTIDE_LOG_LEVEL", "INFO")
    with _quiet_root_logger():
        results = horovod.spark.run(
            train_fn, args=(spec,), num_proc=tc.num_proc, start_timeout=tc.start_timeout_s, use_gloo=True, env=env, verbose=1,
        )
    return sorted(results, key=lambda r: r["rank"])


@contextlib.contextmanager
def _quiet_root_logger():
    # Horovod's rendezvous server logs every key exchange at INFO on the root logger.
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        root.setLevel(level)


def _torch_distributor(spec: "TrainSpec", tc: "TrainConf", spark: Any) -> list[dict]:
    from pyspark.ml.torch.distributor import TorchDistributor

    from ebbtide.model.train import train_fn

    use_gpu = _cuda_wanted(tc)
    local_mode = True
    if spark is not None:
        master = spark.sparkContext.master
        local_mode = master.startswith("local")
    dist = TorchDistributor(num_processes=tc.num_proc, local_mode=local_mode, use_gpu=use_gpu)
    out = dist.run(train_fn, spec)
    return [out]


def _horovodrun(spec: "TrainSpec", tc: "TrainConf") -> list[dict]:
    import shutil
    import subprocess

    exe = shutil.which("horovodrun") or os.path.join(os.path.dirname(sys.executable), "horovodrun")
    if not os.path.exists(exe):
        raise RuntimeError("horovodrun not found: install Horovod (`make setup`) or use --launcher torch-distributor")
    from ebbtide import storage

    # Under the checkpoint folder, which every host reaches (a shared mount or a storage URL).
    spec_path = storage.join(spec.checkpoint_dir, "spec.pkl")
    result_path = storage.join(spec.checkpoint_dir, "result.pkl")
    opts = spec.storage_options
    storage.write_bytes(spec_path, pickle.dumps(spec), opts)
    storage.remove_file(result_path, opts)
    hosts = tc.hosts or f"localhost:{tc.num_proc}"
    cmd = [exe, "-np", str(tc.num_proc), "-H", hosts, "--gloo", "--start-timeout", str(tc.start_timeout_s),
           sys.executable, "-m", "ebbtide.model.launchers", spec_path, result_path]
    log.info("running %s", " ".join(cmd))
    rc = subprocess.call(cmd)
    result = storage.read_bytes(result_path, opts)
    if rc != 0 or result is None:
        raise RuntimeError(f"horovodrun exited with status {rc}; see the ranks' output above")
    return [pickle.loads(result)]


def main(argv: list[str] | None = None) -> int:
    """python -m ebbtide.model.launchers SPEC.pkl [RESULT.pkl]: run train_fn from a pickled spec.

    What each slot of `horovodrun -np N -H HOSTS ...` runs for `--launcher horovodrun`; `ebbtide train`
    writes SPEC (and reads RESULT, written by rank 0) under the run's checkpoint folder.
    """
    import dataclasses

    from ebbtide import storage
    from ebbtide.model.train import train_fn

    argv = list(sys.argv[1:] if argv is None else argv)
    if not 1 <= len(argv) <= 2 or argv[0] in ("-h", "--help"):
        print(main.__doc__)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    data = storage.read_bytes(argv[0])
    if data is None:
        raise FileNotFoundError(f"no training spec at {argv[0]}")
    spec = pickle.loads(data)
    result = train_fn(dataclasses.replace(spec, backend="horovod"))
    if result["rank"] == 0 and len(argv) == 2:
        storage.write_bytes(argv[1], pickle.dumps(result), spec.storage_options)
    return 0


if __name__ == "__main__":
    sys.exit(main())
