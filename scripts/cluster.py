"""`make cluster-test`: the nightly and weekly chains on a local multi-node cluster and an object store.

Everything runs on 127.0.0.1, on free ports, as separate processes this script starts, records by
pid (<state>/pids.json) and stops again (on success, failure, Ctrl-C, SIGTERM):

- an S3-compatible object store: moto in server mode (`moto_server`), bucket `ebbtide-cluster`;
- an MLflow tracking server (`mlflow server`): runs in a SQLite file of the state folder, artifacts
  proxied by the server to `s3://ebbtide-cluster/mlflow` (clients and Spark tasks need only the
  tracking URI); the model registry is another store, `sqlite:///<state>/mlflow/registry.db`, so a
  client that took the tracking URI for the registry would find no model;
- a Spark standalone master and two workers (pip pyspark's `spark-class`), each worker with 1 core,
  2 GB, its own work dir, SPARK_LOCAL_DIRS and TMPDIR; the s3a connector (hadoop-aws and the AWS
  SDK bundle that scripts/setup.sh cached) on the drivers' and executors' class path.

Then every stage goes through deploy/spark-submit/submit.sh with `--master spark://127.0.0.1:PORT`,
one spark-submit (one driver JVM) per stage, chained only through the object store and MLflow, with
`storage.root=s3a://ebbtide-cluster/ebbtide` (warehouse, streaming and training checkpoints, reports,
sampled negatives) on tiny data and a tiny model: synth (generated logs, written locally to
<state>/raw and uploaded to `s3a://ebbtide-cluster/raw`), ingest (from the bucket), sessionize,
sequences, train with Horovod on Spark (2 processes on the executors), train with TorchDistributor
(2 processes on the executors), evaluate with the gate, score, monitor, SQL over the outputs
(deploy/sql's analyst queries). Then checks: the registry holds the versions and the tracking
server's own registry none; the bucket holds every kind of output; nothing landed on the driver's
local disk (its working folder stays empty; nothing under the default local root `.ebbtide` there)
nor in the executors' work folders (only Spark's own logs and fetched jars).

The client side is configured as a cluster's would be: a spark-defaults.conf (<state>/conf, as
SPARK_CONF_DIR) with the master, the class path and the s3a settings (endpoint, path-style access,
fake credentials, no TLS), and node credentials in the environment (AWS_ACCESS_KEY_ID /
AWS_SECRET_ACCESS_KEY, as an instance profile would give them). No S3 endpoint variable is set for
Python: the files Python opens find the endpoint in the Spark session's s3a settings.

Logs: one file per process and stage under <state>/logs (this script logs to stderr). The last line
on stdout is one JSON object: {"bench": "cluster", "workers": 2, "storage": "s3a", "stages":
{STAGE: "ok" | "error text"}, "seconds": S}; the exit status is 1 when any stage failed.
"""
from __future__ import annotations

import argparse
import atexit
import datetime as dt
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

ROOT = Path(__file__).resolve().parents[1]
SUBMIT = ROOT / "deploy" / "spark-submit" / "submit.sh"
SQL_DIR = ROOT / "deploy" / "sql"
DEFAULT_STATE = ROOT / ".ebbtide" / "cluster"
BUCKET = "ebbtide-cluster"
REGION = "us-east-1"
# Fake credentials: moto takes any; Spark's s3a, pyarrow and boto3 need some.
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "ebbtide-cluster", "AWS_SECRET_ACCESS_KEY": "ebbtide-cluster-secret"}
LOCALHOST = "127.0.0.1"
# Variables of the calling shell that would configure a node behind the cluster's back: stripped
# from every process this script starts (its own settings are set explicitly).
NODE_ENV_DROP_PREFIXES = ("MLFLOW_", "EBBTIDE_", "AWS_", "SPARK_", "PYSPARK_", "HADOOP_")

# Tiny data and model (the tests' TINY settings, tests/conftest.py, and the generated logs' model
# settings): each stage takes seconds once its JVM and the executors are up.
SYNTH_ARGS = ["--users", "120", "--items", "80", "--events-per-user", "20", "--days", "60", "--files", "2",
              "--seed", "5"]
TINY = (
    "sequences.max_len=20",
    "model.item_dim=16",
    "model.hidden_dim=32",
    "model.time_dim=8",
    "model.event_type_dim=4",
    "train.batch_size=32",
    "train.eval_batch_size=256",
    "train.shuffle_rows=200",
    "train.threads_per_proc=1",
    "train.reader_workers=1",
    "train.device=cpu",
    "score.batch_users=64",
    "score.torch_threads=1",
    "spark.shuffle_partitions=2",
    # The gate asks the challenger to beat the champion, not also every baseline: two epochs of a
    # tiny model rarely beat a Markov chain, and score should run on a champion the gate promoted.
    "evaluate.require_beat_baselines=false",
)
TRAIN_ARGS = ["--num-proc", "2", "--epochs", "2", "--max-steps-per-epoch", "10", "--no-resume"]
# A stage takes 1-3 minutes on 2 idle cores; under `nice` on a machine busy with other work, many times that.
STAGE_TIMEOUT_S = 2400
# What Spark itself leaves in an executor's work folder (its logs and the jars / files it fetched).
EXECUTOR_FILES_OK = ("stdout", "stderr")
EXECUTOR_SUFFIXES_OK = (".jar", ".py", ".zip", ".egg")


def _log(msg: str, *args: Any) -> None:
    print(f"[cluster {time.strftime('%H:%M:%S')}] " + (msg % args if args else msg), file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOCALHOST, 0))
        return s.getsockname()[1]


def spark_home() -> str:
    import pyspark

    return os.path.dirname(pyspark.__file__)


def _node_env(**extra: str) -> dict[str, str]:
    """A clean environment for a cluster process: the caller's minus anything that would configure
    Spark, MLflow, AWS or ebbtide behind the cluster's back, plus node credentials and ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(NODE_ENV_DROP_PREFIXES)}
    env.update(CREDENTIALS, AWS_REGION=REGION, AWS_DEFAULT_REGION=REGION, PYTHONUNBUFFERED="1",
               # Spark's Python workers import ebbtide from this checkout (the cached venv's
               # editable install may point at another checkout).
               PYTHONPATH=str(ROOT / "lib"))
    env.update(extra)
    return env


def _http_ok(url: str, timeout: float = 2.0) -> Optional[bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 - loopback only
            return r.read() if r.status == 200 else None
    except Exception:  # noqa: BLE001 - not up yet
        return None


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen
    cmd: list[str]
    log: Path


@dataclass
class Cluster:
    """The processes of the harness; :meth:`stop` ends every one of them by its recorded pid."""

    state: Path
    workers: int = 2
    worker_cores: int = 1
    worker_memory: str = "2g"
    procs: list[Proc] = field(default_factory=list)
    finished: list[dict] = field(default_factory=list)  # stages' drivers, ended
    ports: dict[str, int] = field(default_factory=dict)
    _stopped: bool = False

    # -- paths ----------------------------------------------------------------------------
    @property
    def logs(self) -> Path:
        return self.state / "logs"

    @property
    def driver_cwd(self) -> Path:
        return self.state / "driver"

    @property
    def conf_dir(self) -> Path:
        return self.state / "conf"

    def worker_dir(self, i: int) -> Path:
        return self.state / f"worker-{i}"

    @property
    def master_url(self) -> str:
        return f"spark://{LOCALHOST}:{self.ports['master']}"

    @property
    def s3_endpoint(self) -> str:
        return f"http://{LOCALHOST}:{self.ports['moto']}"

    @property
    def tracking_uri(self) -> str:
        return f"http://{LOCALHOST}:{self.ports['mlflow']}"

    @property
    def registry_uri(self) -> str:
        return f"sqlite:///{self.state / 'mlflow' / 'registry.db'}"

    @property
    def storage_root(self) -> str:
        return f"s3a://{BUCKET}/ebbtide"

    # -- processes ------------------------------------------------------------------------
    def _spawn(self, name: str, cmd: list[str], env: dict[str, str], cwd: Optional[Path] = None,
               stdout: Optional[Path] = None) -> Proc:
        """Start a process in a session (and process group) of its own, so that stop() ends it and
        whatever it started (a worker's executors, a driver's Python) through the recorded pid.
        Its stderr (and stdout, unless ``stdout`` names a file) goes to <state>/logs/<name>.log.
        (A stage's driver logs to <name>.out: spark-submit sends the Python driver's stderr there.)"""
        log_path = self.logs / f"{name}.log"
        with open(log_path, "ab") as err, open(stdout or log_path, "ab") as out:
            p = subprocess.Popen(cmd, stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=env,
                                 cwd=str(cwd or self.state), start_new_session=True)
        proc = Proc(name, p, cmd, log_path)
        self.procs.append(proc)
        self._write_pids()
        _log("started %s (pid %d), log %s", name, p.pid, log_path)
        return proc

    def _write_pids(self) -> None:
        """<state>/pids.json: every process started so far (a stage's driver while it runs), and
        whether it still runs; a later run ends the ones a killed harness left (kill_stale)."""
        rows = self.finished + [{"name": p.name, "pid": p.popen.pid, "cmd": p.cmd, "running": p.popen.poll() is None}
                                for p in self.procs]
        (self.state / "pids.json").write_text(json.dumps(rows, indent=1))

    def _wait_for(self, what: str, check: Callable[[], bool], proc: Optional[Proc] = None, timeout: float = 600) -> None:
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if check():
                _log("%s ready after %.1f s", what, time.monotonic() - t0)
                return
            if proc is not None and proc.popen.poll() is not None:
                raise RuntimeError(f"{what} exited with status {proc.popen.returncode}; see {proc.log}")
            time.sleep(0.5)
        raise RuntimeError(f"{what} not ready after {timeout:.0f} s; see {proc.log if proc else self.logs}")

    def start(self) -> None:
        from ebbtide.spark import s3a_jars

        jars = s3a_jars()  # before anything starts: a missing jar is a setup problem
        self.state.mkdir(parents=True, exist_ok=True)
        for d in (self.logs, self.driver_cwd, self.conf_dir, self.state / "mlflow", self.state / "tmp" / "driver"):
            d.mkdir(parents=True, exist_ok=True)
        for name in ("moto", "mlflow", "master", "master_ui", *(f"worker{i}_ui" for i in range(self.workers))):
            self.ports[name] = free_port()
        bindir = Path(sys.executable).parent

        # The object store, and the bucket.
        moto = self._spawn("moto", [str(bindir / "moto_server"), "-H", LOCALHOST, "-p", str(self.ports["moto"])],
                           _node_env())
        self._wait_for("moto S3 server", lambda: _http_ok(f"{self.s3_endpoint}/") is not None, moto)
        self.s3().create_bucket(Bucket=BUCKET)
        _log("bucket s3://%s on %s", BUCKET, self.s3_endpoint)

        # MLflow: runs in SQLite, artifacts proxied to the bucket (only the server talks to S3).
        mlflow = self._spawn("mlflow", [
            str(bindir / "mlflow"), "server", "--host", LOCALHOST, "--port", str(self.ports["mlflow"]),
            "--workers", "1",
            "--backend-store-uri", f"sqlite:///{self.state / 'mlflow' / 'tracking.db'}",
            "--serve-artifacts", "--artifacts-destination", f"s3://{BUCKET}/mlflow",
        ], _node_env(MLFLOW_S3_ENDPOINT_URL=self.s3_endpoint))
        self._wait_for("MLflow tracking server", lambda: _http_ok(f"{self.tracking_uri}/health") is not None,
                       mlflow)

        # Spark: the client configuration every driver reads, then the master and the workers.
        self._write_spark_defaults(jars)
        spark_class = os.path.join(spark_home(), "bin", "spark-class")
        spark_env = dict(SPARK_HOME=spark_home(), SPARK_LOCAL_IP=LOCALHOST, SPARK_CONF_DIR=str(self.conf_dir),
                         SPARK_DAEMON_MEMORY="512m")
        master = self._spawn("spark-master", [
            spark_class, "org.apache.spark.deploy.master.Master", "--host", LOCALHOST,
            "--port", str(self.ports["master"]), "--webui-port", str(self.ports["master_ui"]),
        ], _node_env(**spark_env))
        self._wait_for("Spark master", lambda: self._master_json() is not None, master)
        for i in range(self.workers):
            wd = self.worker_dir(i)
            for sub in ("work", "local", "tmp"):
                (wd / sub).mkdir(parents=True, exist_ok=True)
            self._spawn(f"spark-worker-{i}", [
                spark_class, "org.apache.spark.deploy.worker.Worker", "--host", LOCALHOST,
                "--cores", str(self.worker_cores), "--memory", self.worker_memory,
                "--work-dir", str(wd / "work"), "--webui-port", str(self.ports[f"worker{i}_ui"]),
                self.master_url,
            ], _node_env(**spark_env, SPARK_LOCAL_DIRS=str(wd / "local"), TMPDIR=str(wd / "tmp")), cwd=wd)
        self._wait_for(f"{self.workers} Spark workers registered",
                       lambda: (self._master_json() or {}).get("aliveworkers", 0) >= self.workers, master)
        _log("cluster up: master %s (UI http://%s:%d), %d workers x %d core / %s, S3 %s, MLflow %s, registry %s",
             self.master_url, LOCALHOST, self.ports["master_ui"], self.workers, self.worker_cores,
             self.worker_memory, self.s3_endpoint, self.tracking_uri, self.registry_uri)

    def _master_json(self) -> Optional[dict]:
        body = _http_ok(f"http://{LOCALHOST}:{self.ports['master_ui']}/json/")
        try:
            return json.loads(body) if body else None
        except ValueError:
            return None

    def _write_spark_defaults(self, jars: list[str]) -> None:
        cp = ":".join(jars)
        conf = {
            "spark.master": self.master_url,
            "spark.driver.host": LOCALHOST,
            "spark.driver.bindAddress": LOCALHOST,
            "spark.driver.memory": "1g",
            "spark.executor.memory": "1g",
            "spark.executor.cores": str(self.worker_cores),
            "spark.cores.max": str(self.workers * self.worker_cores),
            # The s3a connector: installed on every node (here: the setup cache), as a platform would.
            "spark.driver.extraClassPath": cp,
            "spark.executor.extraClassPath": cp,
            "spark.executorEnv.PYTHONPATH": str(ROOT / "lib"),
            "spark.hadoop.fs.s3a.endpoint": self.s3_endpoint,
            "spark.hadoop.fs.s3a.endpoint.region": REGION,
            "spark.hadoop.fs.s3a.path.style.access": "true",
            "spark.hadoop.fs.s3a.connection.ssl.enabled": "false",
            "spark.hadoop.fs.s3a.access.key": CREDENTIALS["AWS_ACCESS_KEY_ID"],
            "spark.hadoop.fs.s3a.secret.key": CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
            "spark.hadoop.fs.s3a.aws.credentials.provider": "org.apache.hadoop.fs.s3a.SimpleAWSCredentialsProvider",
            "spark.ui.enabled": "false",
            # Tables of a few thousand rows: generating and compiling code is most of a query's CPU.
            "spark.sql.codegen.wholeStage": "false",
        }
        text = "".join(f"{k} {v}\n" for k, v in conf.items())
        (self.conf_dir / "spark-defaults.conf").write_text(text)
        # Spark's own log4j2 default logs INFO to stderr; keep the stage logs readable.
        (self.conf_dir / "log4j2.properties").write_text(
            "rootLogger.level = warn\nrootLogger.appenderRef.stderr.ref = console\n"
            "appender.console.type = Console\nappender.console.name = console\nappender.console.target = SYSTEM_ERR\n"
            "appender.console.layout.type = PatternLayout\n"
            "appender.console.layout.pattern = %d{HH:mm:ss} %p %c{1}: %m%n%ex\n"
            "logger.master.name = org.apache.spark.deploy\nlogger.master.level = info\n")

    def s3(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.s3_endpoint, region_name=REGION,
                            aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
                            aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"])

    def bucket_keys(self, prefix: str = "") -> list[str]:
        keys: list[str] = []
        for page in self.s3().get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
            keys += [o["Key"] for o in page.get("Contents", [])]
        return keys

    # -- stages ---------------------------------------------------------------------------
    def stage_sets(self) -> list[str]:
        from ebbtide.synth import MODEL_SETTINGS

        sets = [
            f"storage.root={self.storage_root}",
            f"mlflow.tracking_uri={self.tracking_uri}",
            f"mlflow.registry_uri={self.registry_uri}",
            # New experiments keep their artifacts on the tracking server, which proxies them to the bucket.
            "mlflow.artifact_root=mlflow-artifacts:/ebbtide",
            *TINY, *MODEL_SETTINGS,
        ]
        return [a for kv in sets for a in ("--set", kv)]

    def submit(self, name: str, stage: str, args: list[str], timeout: float = STAGE_TIMEOUT_S) -> dict:
        """One stage through deploy/spark-submit/submit.sh on the cluster; its JSON summary."""
        env = _node_env(EBBTIDE_MASTER=self.master_url, SPARK_CONF_DIR=str(self.conf_dir),
                        TMPDIR=str(self.state / "tmp" / "driver"), SPARK_LOCAL_IP=LOCALHOST)
        cmd = [str(SUBMIT), stage, *args, *self.stage_sets()]
        out_path = self.logs / f"{name}.out"
        t0 = time.monotonic()
        proc = self._spawn(name, cmd, env, cwd=self.driver_cwd, stdout=out_path)
        try:
            rc = proc.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"{stage} did not finish in {timeout:.0f} s; see {out_path} and {proc.log}") from None
        finally:
            self._kill(proc)
            self.procs.remove(proc)
            self.finished.append({"name": proc.name, "pid": proc.popen.pid, "cmd": proc.cmd, "running": False})
            self._write_pids()
        secs = time.monotonic() - t0
        if rc != 0:
            raise RuntimeError(f"{stage} exited {rc}: {_error_line(proc.log, out_path)} (logs {out_path}, {proc.log})")
        lines = [ln for ln in out_path.read_text().splitlines() if ln.startswith("{")]
        if not lines:
            raise RuntimeError(f"{stage} printed no JSON summary; see {out_path}")
        summary = json.loads(lines[-1])
        _log("%s done in %.0f s: %s", name, secs, json.dumps(summary, default=str)[:300])
        return summary

    # -- stopping -------------------------------------------------------------------------
    def _kill(self, proc: Proc, grace: float = 20) -> None:
        p = proc.popen
        if p.poll() is not None:
            return
        try:
            import psutil

            descendants = psutil.Process(p.pid).children(recursive=True)
        except Exception:  # noqa: BLE001 - gone meanwhile
            descendants = []
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10)):
            try:
                os.killpg(p.pid, sig)  # the group it leads: its pid (start_new_session)
            except ProcessLookupError:
                break
            try:
                p.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue
        # Children that left the group (pyspark's worker daemon makes a group of its own).
        for d in descendants:
            try:
                if d.is_running():
                    d.kill()
            except Exception:  # noqa: BLE001 - already gone
                pass

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        # A second Ctrl-C or SIGTERM must not cut the stopping short and leave servers behind.
        import threading

        ignored = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                ignored[sig] = signal.signal(sig, signal.SIG_IGN)
        try:
            for proc in reversed(self.procs):  # stages, workers, master, MLflow, moto
                if proc.popen.poll() is None:
                    _log("stopping %s (pid %d)", proc.name, proc.popen.pid)
                    try:
                        self._kill(proc)
                    except Exception as e:  # noqa: BLE001 - stop the others all the same
                        _log("could not stop %s (pid %d): %s", proc.name, proc.popen.pid, e)
        finally:
            for sig, handler in ignored.items():
                signal.signal(sig, handler)
        left = [f"{p.name} (pid {p.popen.pid})" for p in self.procs if p.popen.poll() is None]
        self._write_pids()
        if left:
            _log("still running after stop: %s", ", ".join(left))
        else:
            _log("stopped every process this harness started (%d)", len(self.procs))


def _error_line(*logs: Path) -> str:
    """The stage's one-line error (`ebbtide <stage>: error: ...`), else the last line of its logs.
    (spark-submit hands the Python driver's stderr to its own stdout: both files are read.)"""
    lines: list[str] = []
    for log_path in logs:
        try:
            lines += [ln.strip() for ln in log_path.read_text(errors="replace").splitlines() if ln.strip()]
        except OSError:
            pass
    errors = [ln for ln in lines if ": error:" in ln or ln.startswith("configuration error")]
    return (errors[-1] if errors else (lines[-1] if lines else "(empty log)"))[:400]


def kill_stale(state: Path) -> None:
    """Processes a previous harness run in this state folder recorded and left behind (it was
    killed with SIGKILL): ended by their recorded pid when their command line still matches."""
    pids_file = state / "pids.json"
    if not pids_file.exists():
        return
    import psutil

    try:
        recorded = json.loads(pids_file.read_text())
    except ValueError:
        return
    for r in recorded:
        if not r.get("running"):
            continue
        try:
            p = psutil.Process(int(r["pid"]))
            if p.cmdline()[: len(r["cmd"])] == r["cmd"]:
                _log("ending %s (pid %d) left by an earlier run", r["name"], p.pid)
                os.killpg(p.pid, signal.SIGKILL)
        except Exception:  # noqa: BLE001 - gone, or a pid reused by something else
            pass


# ------------------------------------------------------------------------------------------
# The checks after the chain
# ------------------------------------------------------------------------------------------


def check_registry(c: Cluster, model_name: str, trained_versions: list[int]) -> str:
    from mlflow.tracking import MlflowClient

    reg = MlflowClient(tracking_uri=c.tracking_uri, registry_uri=c.registry_uri)
    versions = sorted(int(v.version) for v in reg.search_model_versions(f"name = '{model_name}'"))
    if sorted(trained_versions) != versions:
        return f"the registry {c.registry_uri} holds versions {versions}, training registered {trained_versions}"
    on_server = MlflowClient(tracking_uri=c.tracking_uri, registry_uri=c.tracking_uri).search_registered_models()
    if on_server:
        return (f"the tracking server's own registry holds {[m.name for m in on_server]}: "
                "something registered with the tracking URI instead of mlflow.registry_uri")
    return "ok"


def check_object_store(c: Cluster) -> str:
    keys = c.bucket_keys()
    root = "ebbtide/"
    expected = {
        "Delta tables (warehouse)": f"{root}warehouse/",
        "ingest's streaming checkpoints": f"{root}checkpoints/ingest/",
        "training checkpoints": f"{root}checkpoints/train/",
        "evaluation report": f"{root}reports/evaluate/",
        "monitoring report": f"{root}reports/monitor/",
        "MLflow artifacts": "mlflow/",
        "raw input": "raw/",
    }
    missing = [what for what, prefix in expected.items() if not any(k.startswith(prefix) for k in keys)]
    _log("bucket s3://%s: %d objects; %s", BUCKET, len(keys),
         ", ".join(f"{p}: {sum(k.startswith(p) for k in keys)}" for p in expected.values()))
    if missing:
        return "nothing in the bucket for: " + ", ".join(missing)
    return "ok"


def _files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() or p.is_symlink()) if folder.exists() else []


def check_local_disk(c: Cluster, cwd_before: set[str]) -> str:
    """Nothing the chain stores may land on local disk: the drivers' working folder stays empty
    (and with it the default local root `.ebbtide` a relative path would resolve under), the
    checkout gains no file, and the executors' work folders hold only Spark's logs and fetched jars."""
    problems = []
    driver_files = _files_under(c.driver_cwd)
    if driver_files:
        problems.append(f"the driver's working folder got {[str(p.relative_to(c.driver_cwd)) for p in driver_files][:8]}")
    new_in_checkout = sorted(set(os.listdir(ROOT)) - cwd_before)
    if new_in_checkout:
        problems.append(f"the checkout got {new_in_checkout}")
    for i in range(c.workers):
        work = c.worker_dir(i) / "work"
        odd = [p for p in _files_under(work)
               if p.name not in EXECUTOR_FILES_OK and not p.name.endswith(EXECUTOR_SUFFIXES_OK)]
        if odd:
            problems.append(f"worker {i}'s executors wrote {[str(p.relative_to(work)) for p in odd][:8]}")
    tmp_left = sorted(p.name for p in (c.state / "tmp" / "driver").iterdir()) if (c.state / "tmp" / "driver").exists() else []
    if tmp_left:
        _log("left in the drivers' TMPDIR (temporary, not checked): %s", tmp_left[:10])
    return "ok" if not problems else "; ".join(problems)


# ------------------------------------------------------------------------------------------
# The run
# ------------------------------------------------------------------------------------------


def run(state: Path = DEFAULT_STATE, keep_state: bool = True, stop_after: Optional[str] = None) -> dict:
    """Start the cluster, run the chain and the checks, stop everything; the result dict (also the
    JSON line of the command). ``stop_after``: the last stage to run (for trying a part)."""
    t0 = time.monotonic()
    state = Path(state).resolve()
    kill_stale(state)
    if state.exists() and any(state.iterdir()):
        if not (state / "pids.json").exists():
            raise SystemExit(f"{state} is not empty and is no state folder of this harness (no pids.json): "
                             "choose another --state")
        shutil.rmtree(state)
    state.mkdir(parents=True, exist_ok=True)
    checkout_before = set(os.listdir(ROOT))
    c = Cluster(state)
    stages: dict[str, str] = {}
    atexit.register(c.stop)
    # SIGTERM and SIGHUP end the run as Ctrl-C does (KeyboardInterrupt): the cluster is stopped.
    import threading

    previous = ({s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGHUP)}
                if threading.current_thread() is threading.main_thread() else {})

    def _on_signal(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    for s in previous:
        signal.signal(s, _on_signal)
    summaries: dict[str, dict] = {}

    def stage(name: str, fn: Callable[[], Any]) -> bool:
        if stop_after is not None and stop_after in stages:
            return False
        _log("--- %s", name)
        try:
            out = fn()
            if isinstance(out, str) and out != "ok":
                stages[name] = out
            else:
                stages[name] = "ok"
                if isinstance(out, dict):
                    summaries[name] = out
        except KeyboardInterrupt:
            stages[name] = "interrupted"
            raise
        except Exception as e:  # noqa: BLE001 - a failed stage is reported, the rest may still run
            stages[name] = (str(e) or type(e).__name__).splitlines()[0][:500]
        if stages[name] != "ok":
            _log("%s FAILED: %s", name, stages[name])
        return stages[name] == "ok"

    try:
        if not stage("cluster", c.start):
            return _result(stages, t0, c.workers)
        raw = state / "raw"
        if not stage("synth", lambda: _synth_and_upload(c, raw)):
            return _result(stages, t0, c.workers)
        chain_ok = (stage("ingest", lambda: _ingest(c))
                    and stage("sessionize", lambda: c.submit("sessionize", "sessionize", []))
                    and stage("sequences", lambda: c.submit("sequences", "sequences", [])))
        trained: list[int] = []
        if chain_ok:
            for launcher in ("horovod", "torch-distributor"):
                name = f"train_{launcher.replace('-', '_')}"
                stage(name, lambda launcher=launcher, name=name: _train(c, name, launcher, trained))
        if trained:
            stage("evaluate", lambda: c.submit("evaluate", "evaluate", []))
            score_date = _score_date(raw)
            gate = (summaries.get("evaluate") or {}).get("gate") or {}
            model = [] if gate.get("champion_after") else ["--model-uri", "models:/ebbtide@challenger"]
            if stage("score", lambda: c.submit("score", "score", ["--score-date", score_date, *model])):
                day_before = (dt.date.fromisoformat(score_date) - dt.timedelta(days=1)).isoformat()
                stage("monitor", lambda: c.submit("monitor", "monitor", ["--date", day_before]))
                stage("sql", lambda: _sql(c))
            stage("registry", lambda: check_registry(c, "ebbtide", trained))
        stage("object_store", lambda: check_object_store(c))
        stage("local_disk", lambda: check_local_disk(c, checkout_before))
    except KeyboardInterrupt:
        _log("interrupted: stopping the cluster")
    finally:
        c.stop()
        atexit.unregister(c.stop)
        for s, h in previous.items():
            signal.signal(s, h)
        if not keep_state:
            shutil.rmtree(state, ignore_errors=True)
    return _result(stages, t0, c.workers)


def _result(stages: dict[str, str], t0: float, workers: int) -> dict:
    return {"bench": "cluster", "workers": workers, "storage": "s3a", "stages": stages,
            "seconds": round(time.monotonic() - t0, 1)}


def _synth_and_upload(c: Cluster, raw: Path) -> dict:
    """Generated logs, written on this machine (synth is plain Python) and uploaded to the bucket."""
    py = Path(sys.executable)
    subprocess.run([str(py), "-m", "ebbtide.cli", "synth", "--out", str(raw), *SYNTH_ARGS], check=True,
                   capture_output=True, text=True, timeout=300, env=_node_env(), cwd=str(c.state))
    s3 = c.s3()
    files = sorted((raw / "raw").glob("part-*"))
    for f in files:
        s3.upload_file(str(f), BUCKET, f"raw/{f.name}")
    _log("uploaded %d raw files to s3://%s/raw/", len(files), BUCKET)
    return {"files": len(files)}


def _ingest(c: Cluster) -> dict:
    s = c.submit("ingest", "ingest", ["--source", f"s3a://{BUCKET}/raw", "--format", "parquet"])
    if not s.get("rows_read") or s.get("bronze_new") != s.get("rows_read"):
        raise RuntimeError(f"ingest read {s.get('rows_read')} rows and added {s.get('bronze_new')}")
    return s


def _train(c: Cluster, name: str, launcher: str, trained: list[int]) -> dict:
    s = c.submit(name, "train", ["--launcher", launcher, *TRAIN_ARGS])
    if s.get("world_size") != 2:
        raise RuntimeError(f"{launcher}: world size {s.get('world_size')}, expected 2")
    if s.get("model_version") is None:
        raise RuntimeError(f"{launcher}: no model version registered")
    trained.append(int(s["model_version"]))
    return s


def _score_date(raw: Path) -> str:
    """The day after the generated log ends: every user active in its last 30 days gets scored."""
    meta = json.loads((raw / "truth" / "meta.json").read_text())
    end = dt.datetime.fromisoformat(str(meta["end"]).replace("Z", "+00:00"))
    return (end + dt.timedelta(days=1)).date().isoformat()


def _sql(c: Cluster) -> dict:
    """deploy/sql's analyst queries, in one `ebbtide sql -f` (one driver)."""
    queries = sorted(SQL_DIR.glob("q*.sql"))
    text = "\n;\n".join(q.read_text() for q in queries)
    path = c.state / "analyst_queries.sql"
    path.write_text(text)
    s = c.submit("sql", "sql", ["-f", str(path)])
    from ebbtide.sql import split_statements

    expected = len(split_statements(text))
    if s.get("statements") != expected:
        raise RuntimeError(f"ran {s.get('statements')} of {expected} statements")
    return s


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--state", default=str(DEFAULT_STATE),
                   help=f"the harness's own folder: logs, pids, SQLite stores, worker folders, local raw files "
                        f"(default {DEFAULT_STATE.relative_to(ROOT)}; emptied at start)")
    p.add_argument("--no-keep-state", action="store_true", help="delete the state folder at the end")
    p.add_argument("--stop-after", metavar="STAGE",
                   help="stop after this stage (cluster, synth, ingest, sessionize, sequences, train_horovod, ...)")
    args = p.parse_args(argv)
    result = run(Path(args.state), keep_state=not args.no_keep_state, stop_after=args.stop_after)
    print(json.dumps(result))
    return 0 if result["stages"] and all(v == "ok" for v in result["stages"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
