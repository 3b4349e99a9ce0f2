"""`make chaos`: kill -9 each job of the chain at seeded random moments, rerun, compare with an uninterrupted run.

For each job (ingest, sessionize, sequences, train, evaluate, score) and each trial:

1. the storage root (warehouse, checkpoints, MLflow store and artifacts: everything the config
   puts under ``storage.root``) is restored to the reference snapshot taken before the job;
2. the job starts as its own process group (``start_new_session``): ``ebbtide.cli.main`` in a fresh
   Python with its own Spark JVM (and, for train, its training processes). At a seeded uniform
   fraction of the job's duration (the median of its reference run and of earlier trial runs that
   ended before their kill) the whole group gets SIGKILL; processes that left the
   group (pyspark's daemon makes its own) are found by an environment token and killed too, and the
   trial checks that none of them survives;
3. the job is run again (the recovery) in a new process, then, for the first trial of each job (every
   trial with ``CHAOS_FULL=1``), the rest of the chain in the same process, the way `make demo`
   chains stages in one session;
4. every table is compared with the reference after the same job: a content hash per row over the
   business columns (run ids, timestamps and Delta version numbers aside, see ``EXCLUDED``), as a
   multiset, plus the schema and the ``ebbtide.*`` table properties, plus the MLflow store (finished
   runs with their metrics, registered versions with their aliases and gate tags).

A trial *converged* when every run after the kill exited 0 and every table equals the reference;
*stuck* when a rerun failed or hung; ``lost_rows`` counts reference rows missing, ``doubled_rows``
rows beyond the reference (a changed row counts in both). A scenario follows: two ``score`` runs
for the same (next) date at once while a reader polls the ``latest_*`` views; each poll must show
one whole day (the previous or the new one, with the reference row count, the same day in both
views) and the tables afterwards must equal the reference.

Process starts are the bulk of the cost (a Spark JVM per run), so each run's Python and JVM start
while the previous trial's recovery runs, then wait for a go file; the kill moment is measured from
the go, over the job's own duration. JVMs run with C1 only and map a class-data archive that a first
ingest dumps; Spark runs without UI and code generation (``SETS``): a fraction of the CPU for short
runs on tiny tables, no change in what is committed. Each job is about one core of serial work, so
trials run in two lanes side by side (``CHAOS_LANES``), each lane on its own storage root with its own
reference run and snapshots (a snapshot holds absolute paths, so it restores only into its own root);
a trial is compared with its lane's reference, and the two references with each other.
Knobs: ``CHAOS_TRIALS`` (trials per job, default 5), ``CHAOS_SEED`` (default 0), ``CHAOS_FULL=1``,
``CHAOS_LANES`` (default 2); ``--help`` for the rest. Results are saved to
``<work>/results.json`` after every trial; the last line printed is
``{"bench": "chaos", "trials": N, "converged": C, "stuck": S, "lost_rows": L, "doubled_rows": D, ...}``.
Exit status 1 when C < N or S, L or D is not 0.
"""
from __future__ import annotations

import argparse
import collections
import datetime as dt
import json
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Optional

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable
JOBS = ("ingest", "sessionize", "sequences", "train", "evaluate", "score")
PYTHON_WORKER_JOBS = ("sequences", "score")

# Tiny data and a tiny model: each job takes seconds once its JVM is up.
SYNTH = ["--users", "150", "--items", "100", "--events-per-user", "20", "--days", "60", "--files", "3", "--seed", "11"]
SETS = (
    "spark.master=local[2]",
    "spark.shuffle_partitions=2",
    "spark.driver_memory=1g",
    # No UI, and expressions interpreted rather than compiled: on tables of a few thousand rows,
    # generating and compiling code is most of a query's CPU. Commits and results are the same.
    'spark.conf={"spark.ui.enabled": "false", "spark.sql.codegen.wholeStage": "false", '
    '"spark.sql.codegen.factoryMode": "NO_CODEGEN"}',
    "sequences.max_len=20",
    "model.item_dim=16",
    "model.hidden_dim=32",
    "model.time_dim=8",
    "model.event_type_dim=4",
    # Two epochs: a kill can land between the two, after the first checkpoint.
    "train.epochs=2",
    "train.launcher=local",
    "train.device=cpu",
    "train.batch_size=32",
    "train.eval_batch_size=256",
    "train.shuffle_rows=200",
    # One torch thread and one Petastorm reader thread: training is bit-for-bit reproducible.
    "train.threads_per_proc=1",
    "train.reader_workers=1",
    # The gate promotes whatever wins against no champion, so score runs on the champion alias.
    "evaluate.require_beat_baselines=false",
    "score.batch_users=64",
    "score.torch_threads=1",
)
# C1 only and the serial collector: a short-lived JVM spends most of its CPU compiling with C2.
JAVA_OPTS = "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC"
# Class data sharing: a first ingest (in a scratch root) dumps the classes it loaded, every later
# JVM maps them (a third less CPU to start). A missing or unusable archive only means a slower start.
CDS_ARCHIVE = "spark-classes.jsa"
TOKEN_ENV = "EBBTIDE_CHAOS_TOKEN"

# Columns left out of a row's content hash: lineage that differs between two runs of the same input.
# Any column named run_id / *_run_id / *_at is lineage everywhere; the rest per table:
EXCLUDED = {
    # Delta version numbers: a killed run may have committed a version that the rerun then
    # supersedes, so the same rows can sit at a later version.
    "ops_sessionize_log": {"bronze_version"},
    "ops_evaluations": {"examples_version", "model_version"},
    # The registry version scored: the MLflow check below compares the registry itself.
    "gold_recommendations": {"model_version"},
    "gold_churn_decay": {"model_version"},
}
_LINEAGE = re.compile(r"^(run_id|.*_run_id|.*_at)$")
# Business keys, for the distinct-key counts in the report.
KEYS = {
    "bronze_events": ["event_id"],
    "quarantine_events": ["quarantine_id"],
    "ops_ingest_log": ["stream_id", "batch_id"],
    "silver_events": ["event_id"],
    "silver_sessions": ["session_id"],
    "gold_item_vocab": ["item_id"],
    "gold_event_type_vocab": ["event_type"],
    "gold_training_examples": ["example_id", "split"],
    "gold_user_sequences": ["user_id"],
    "ops_evaluations": ["model_name", "split", "protocol", "metric", "k"],
    "gold_recommendations": ["score_date", "user_id", "rank"],
    "gold_churn_decay": ["score_date", "user_id"],
}
# MLflow metrics that measure time, not results.
_TIMING_METRIC = re.compile(r"(seconds|_per_s|wall_s|_s$)")


def excluded(table: str, column: str) -> bool:
    return bool(_LINEAGE.match(column)) or column in EXCLUDED.get(table, ())


# ============================================================================================
# Worker: one process (group) that runs stages through ebbtide.cli.main, then hashes the tables
# ============================================================================================


def _prestart(cfg, jobs: list[str]) -> Any:
    """Start this process's Spark session the way get_spark does, minus the catalog work
    (ensure_database, register_all, the views): that runs for real inside the first stage, after
    the go, on the root as the trial left it. Also import the stages' modules (torch, MLflow) and
    start pyspark's Python worker daemon: what every run does first, done before the clock starts."""
    import importlib

    from ebbtide import cli, spark as espark, tables
    from ebbtide.scoring import views

    saved = (tables.ensure_database, tables.register_all, views.create_views)
    tables.ensure_database = lambda *a, **k: None
    tables.register_all = lambda *a, **k: []
    views.create_views = lambda *a, **k: []
    try:
        spark = espark.get_spark(cfg)
    finally:
        tables.ensure_database, tables.register_all, views.create_views = saved
    for job in jobs:
        importlib.import_module(cli.STAGES[job][0])
    if any(j in ("train", "evaluate", "score") for j in jobs):
        import mlflow  # noqa: F401
        import torch  # noqa: F401
    # Python workers only for the jobs that run Python on the executors (the sequence kernels,
    # scoring); starting them for the others would only take CPU from the run beside this one.
    if "score" in jobs:
        def warm(batches):  # scoring's Python workers import torch and the inference module first
            import ebbtide.scoring.inference  # noqa: F401
            import torch  # noqa: F401
            yield from batches
    else:
        def warm(batches):
            yield from batches
    if any(j in PYTHON_WORKER_JOBS for j in jobs):
        spark.range(0, 2, 1, 2).mapInArrow(warm, "id long").count()
    return spark


def delta_files(path: str) -> tuple[dict, list[dict]]:
    """(metaData action, add actions) of a Delta table's latest snapshot, read from its log with
    pyarrow alone: the last classic checkpoint, then the JSON commits after it. Deletion vectors and
    v2 checkpoints are refused (ebbtide's tables use neither)."""
    import pyarrow.parquet as pq

    log_dir = Path(path) / "_delta_log"
    names = os.listdir(log_dir)
    commits = sorted(int(n.split(".")[0]) for n in names if re.fullmatch(r"\d+\.json", n))
    checkpoints: dict[int, list[str]] = collections.defaultdict(list)
    for n in names:
        m = re.fullmatch(r"(\d+)\.checkpoint(\.\d+\.\d+)?\.parquet", n)
        if m:
            checkpoints[int(m.group(1))].append(n)
        elif ".checkpoint." in n:
            raise RuntimeError(f"{path}: checkpoint {n} is not a classic one; this reader does not follow it")
    latest = max(commits + list(checkpoints)) if (commits or checkpoints) else -1
    base = max((v for v in checkpoints if v <= latest), default=-1)
    meta: dict = {}
    files: dict[str, dict] = {}

    def apply(action: dict) -> None:
        nonlocal meta
        if action.get("metaData"):
            meta = action["metaData"]
        elif action.get("add"):
            files[action["add"]["path"]] = action["add"]
        elif action.get("remove"):
            files.pop(action["remove"]["path"], None)

    for n in sorted(checkpoints.get(base, [])):
        t = pq.read_table(str(log_dir / n), columns=["add", "remove", "metaData"])
        for row in t.to_pylist():
            if row.get("metaData") and isinstance(row["metaData"].get("configuration"), list):
                row["metaData"]["configuration"] = dict(row["metaData"]["configuration"])
            if row.get("add") and isinstance(row["add"].get("partitionValues"), list):
                row["add"]["partitionValues"] = dict(row["add"]["partitionValues"])
            apply(row)
    for v in commits:
        if v > base:
            with open(log_dir / f"{v:020d}.json") as f:
                for line in f:
                    if line.strip():
                        apply(json.loads(line))
    for a in files.values():
        if a.get("deletionVector"):
            raise RuntimeError(f"{path}: deletion vectors are not supported by this reader")
    return meta, list(files.values())


def table_state(path: str, name: str) -> dict:
    """Rows of a Delta table as a multiset of content hashes (lineage columns left out), the
    distinct business keys, and the table's schema, partitioning, comment and ebbtide.* properties."""
    import hashlib
    import urllib.parse

    import pyarrow.parquet as pq

    meta, adds = delta_files(path)
    schema = json.loads(meta.get("schemaString") or '{"fields": []}')["fields"]
    columns = [f["name"] for f in schema]
    keep = sorted(c for c in columns if not excluded(name, c))
    keys = [k for k in KEYS.get(name, []) if k in columns]
    rows: collections.Counter = collections.Counter()
    key_set, by_date = set(), collections.Counter()
    for a in sorted(adds, key=lambda a: a["path"]):
        t = pq.read_table(os.path.join(path, urllib.parse.unquote(a["path"])))
        part = a.get("partitionValues") or {}
        for r in t.to_pylist():
            r.update(part)  # partition values as the log's text: the same reading on both sides
            text = json.dumps([[c, r.get(c)] for c in keep], default=str)
            rows[hashlib.sha256(text.encode()).hexdigest()[:16]] += 1
            if keys:
                key_set.add(json.dumps([r.get(k) for k in keys], default=str))
            if "score_date" in r:
                by_date[str(r["score_date"])] += 1
    # Lineage properties (e.g. ebbtide.source.processed_at, a wall-clock watermark) differ between
    # runs like the lineage columns do.
    props = {k: v for k, v in (meta.get("configuration") or {}).items()
             if k.startswith("ebbtide.") and not _LINEAGE.match(k.rsplit(".", 1)[-1])}
    out = {
        "n": sum(rows.values()),
        "keys": len(key_set) if keys else None,
        "rows": dict(rows),
        "meta": {"columns": [[f["name"], json.dumps(f["type"], sort_keys=True)] for f in schema],
                 "partitions": list(meta.get("partitionColumns") or []), "props": props,
                 "comment": meta.get("description")},
    }
    if "score_date" in columns:
        out["by_date"] = dict(by_date)
    return out


def mlflow_state(cfg) -> dict:
    """The MLflow store: finished runs (kind + result metrics) and registered versions (status,
    aliases, gate tags). Versions count one by one (a second version of the same model is a doubled
    row); runs count as distinct contents, since rerunning a stage records its run again, as an
    uninterrupted second run would. Runs a kill left unfinished (MLflow keeps them RUNNING) are
    listed apart."""
    import hashlib

    from ebbtide import mlflow_uris

    uris = mlflow_uris.from_config(cfg)
    uri = uris.tracking
    db = uri[len("sqlite:///"):] if uri.startswith("sqlite:///") else None
    if db and not os.path.exists(db):
        return {"runs": {}, "versions": {}, "unfinished": [], "n": 0}
    from mlflow.entities import ViewType

    c = mlflow_uris.client(uris)
    runs: list[str] = []
    versions: list[str] = []
    unfinished: list[str] = []
    for exp in c.search_experiments(view_type=ViewType.ALL):
        for run in c.search_runs([exp.experiment_id], run_view_type=ViewType.ALL, max_results=10000):
            kind = (run.info.run_name or "").rsplit("-", 1)[0]
            if run.info.status != "FINISHED":
                unfinished.append(f"{kind}:{run.info.status}")
                continue
            metrics = {k: v for k, v in sorted(run.data.metrics.items()) if not _TIMING_METRIC.search(k)}
            runs.append(json.dumps({"run": kind, "metrics": metrics}, sort_keys=True))
    for rm in c.search_registered_models():
        for found in c.search_model_versions(f"name='{rm.name}'"):
            mv = c.get_model_version(found.name, found.version)  # search results carry no aliases
            versions.append(json.dumps({"model": mv.name, "status": mv.status, "aliases": sorted(mv.aliases or []),
                                        "gate": mv.tags.get("gate.decision"), "gate_value": mv.tags.get("gate.value")},
                                       sort_keys=True))

    def digest(rows: list[str]) -> dict:
        return dict(collections.Counter(hashlib.sha256(r.encode()).hexdigest()[:16] for r in rows))

    return {"runs": digest(sorted(set(runs))), "versions": digest(versions), "n": len(runs) + len(versions),
            "unfinished": sorted(unfinished), "examples": sorted(set(runs))[:20] + sorted(versions)}


def capture_state(cfg) -> dict:
    from ebbtide import tables

    db_dir = Path(cfg.path(cfg.storage.warehouse_dir)) / f"{cfg.storage.database}.db"
    state: dict[str, Any] = {"tables": {}, "blocked": [], "orphaned": []}
    if db_dir.is_dir():
        for name in sorted(os.listdir(db_dir)):
            p = db_dir / name
            if ".orphaned-" in name:
                state["orphaned"].append(name)
            elif (p / "_delta_log").is_dir():
                if tables.has_commit(str(p)):
                    state["tables"][name] = table_state(str(p), name)
                else:
                    state["blocked"].append(name)
    state["mlflow"] = mlflow_state(cfg)
    return state


def _write_json(path: str, obj: Any) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f, default=str)
    os.replace(tmp, path)


def worker(spec_path: str) -> int:
    """Run a spec: prestart Spark, READY, wait for the go file, run the steps, hash after each."""
    with open(spec_path) as f:
        spec = json.load(f)
    marker = open(spec["marker"], "a", buffering=1)

    def mark(what: str) -> None:
        marker.write(f"{what} {time.time():.3f}\n")
        marker.flush()

    from ebbtide.config import load_config
    from ebbtide.log import setup_logging

    cfg = load_config(env="local", overrides=spec["sets"])
    setup_logging(cfg.log_level)
    _prestart(cfg, [job for job, _ in spec["steps"]])
    mark("READY")
    if spec.get("go"):
        while not os.path.exists(spec["go"]):
            time.sleep(0.02)
    mark("GO")
    from ebbtide import cli

    sets = [a for kv in spec["sets"] for a in ("--set", kv)]
    result: dict[str, Any] = {"steps": []}
    for i, (job, argv) in enumerate(spec["steps"]):
        t0 = time.perf_counter()
        rc = cli.main([job, *argv, *sets])
        entry: dict[str, Any] = {"job": job, "rc": rc, "seconds": round(time.perf_counter() - t0, 2)}
        mark(f"STEP {i} {job} {rc}")
        if spec.get("hash") and rc == 0:
            t1 = time.perf_counter()
            entry["state"] = capture_state(cfg)
            entry["hash_seconds"] = round(time.perf_counter() - t1, 2)
        result["steps"].append(entry)
        _write_json(spec["result"], result)
        if rc != 0:
            break
    _write_json(spec["result"], result)
    mark("DONE")
    return 0


def poller(spec_path: str) -> int:
    """A reader of the latest_* views: poll until the stop file appears, record what each poll saw."""
    with open(spec_path) as f:
        spec = json.load(f)
    from ebbtide.config import load_config
    from ebbtide.log import setup_logging
    from ebbtide.spark import get_spark

    cfg = load_config(env="local", overrides=spec["sets"])
    setup_logging("WARNING")
    spark = get_spark(cfg)  # registers the tables and creates the views, as `ebbtide sql` would
    db = cfg.storage.database
    q = (f"SELECT 'latest_recommendations' AS v, CAST(score_date AS STRING) AS d, count(*) AS n "
         f"FROM {db}.latest_recommendations GROUP BY score_date "
         f"UNION ALL SELECT 'latest_churn_decay', CAST(score_date AS STRING), count(*) "
         f"FROM {db}.latest_churn_decay GROUP BY score_date")
    with open(spec["marker"], "a") as m:
        m.write(f"READY {time.time():.3f}\n")
    polls = []
    while not os.path.exists(spec["stop"]):
        t = time.time()
        try:
            seen = [[r["v"], r["d"], int(r["n"])] for r in spark.sql(q).collect()]
            polls.append({"t": round(t, 3), "seen": seen})
        except Exception as e:  # noqa: BLE001 - a failed read is a finding too
            polls.append({"t": round(t, 3), "error": f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"})
        time.sleep(spec.get("interval", 0.2))
    _write_json(spec["result"], {"polls": polls})
    with open(spec["marker"], "a") as m:
        m.write(f"DONE {time.time():.3f}\n")
    return 0


# ============================================================================================
# Harness
# ============================================================================================


class Proc:
    """A worker process in its own session (process group), with its marker file and token."""

    def __init__(self, work: Path, tag: str, mode: str, spec: dict, java_opts: str = JAVA_OPTS,
                 lib: Path = REPO / "lib", cwd: Optional[Path] = None):
        self.tag = tag
        self.token = uuid.uuid4().hex
        d = work / "runs" / tag
        if d.exists():
            shutil.rmtree(d)
        d.mkdir(parents=True)
        self.marker = d / "marker"
        self.go = d / "go"
        self.result = d / "result.json"
        self.stop = d / "stop"
        self.spec = dict(spec, marker=str(self.marker), result=str(self.result), go=str(self.go), stop=str(self.stop))
        (d / "spec.json").write_text(json.dumps(self.spec, indent=1))
        env = dict(os.environ)
        env.update({
            TOKEN_ENV: self.token,
            "PYTHONPATH": f"{lib}" + (f":{env['PYTHONPATH']}" if env.get("PYTHONPATH") else ""),
            # The config files of the package's own checkout (this one's when it has none).
            "EBBTIDE_CONF_DIR": str(lib.parent / "conf" if (lib.parent / "conf" / "base.yaml").exists() else REPO / "conf"),
            "PYSPARK_PYTHON": PY, "PYSPARK_DRIVER_PYTHON": PY,
            "JAVA_TOOL_OPTIONS": java_opts,
            "SPARK_LOCAL_DIRS": str(work / "tmp" / "spark"),
            "TMPDIR": str(work / "tmp"),
            "PYTHONUNBUFFERED": "1",
        })
        self.log = open(d / "output.log", "w")
        self.p = subprocess.Popen([PY, str(Path(__file__).resolve()), mode, str(d / "spec.json")],
                                  cwd=str(cwd or work / "cwd"), env=env, stdout=self.log, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL, start_new_session=True)

    def marks(self) -> list[tuple[str, float]]:
        try:
            lines = self.marker.read_text().splitlines()
        except FileNotFoundError:
            return []
        out = []
        for ln in lines:
            what, _, t = ln.rpartition(" ")
            out.append((what, float(t)))
        return out

    def has(self, prefix: str) -> Optional[float]:
        for what, t in self.marks():
            if what.startswith(prefix):
                return t
        return None

    def wait_for(self, prefix: str, timeout: float) -> Optional[float]:
        deadline = time.time() + timeout
        while time.time() < deadline:
            t = self.has(prefix)
            if t is not None:
                return t
            if self.p.poll() is not None:
                return self.has(prefix)
            time.sleep(0.05)
        return None

    def start(self) -> float:
        self.go.write_text("go")
        return time.time()

    def read_result(self) -> dict:
        try:
            return json.loads(self.result.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {}

    def kill(self, grace: float = 0.0) -> dict:
        """SIGKILL the process group, then every process that carries the token; check none survives.
        With grace, first give them that long to end by themselves (a JVM writing its class archive)."""
        deadline = time.time() + grace
        while grace and time.time() < deadline and _token_processes(self.token):
            time.sleep(0.2)
        in_group = _token_processes(self.token, self.p.pid)
        # Only a group that still holds one of this run's processes: once they are all gone, the
        # number may already name another process group (process ids are reused).
        if in_group:
            try:
                os.killpg(self.p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            self.p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
        escaped = 0
        deadline = time.time() + 20
        survivors: list[str] = []
        while True:
            left = _token_processes(self.token)
            if not left:
                survivors = []
                break
            for p in left:
                escaped += 1 if p.pid not in in_group else 0
                try:
                    p.kill()
                except Exception:  # noqa: BLE001 - gone meanwhile
                    pass
            survivors = [f"{p.pid}:{_name(p)}" for p in left]
            if time.time() > deadline:
                break
            time.sleep(0.2)
        self.log.close()
        return {"escaped_group": escaped, "survivors": survivors}


def _name(p) -> str:
    try:
        return " ".join(p.cmdline()[:3])[:80]
    except Exception:  # noqa: BLE001
        return "?"


def _token_processes(token: str, pgid: Optional[int] = None) -> Any:
    """Live (non-zombie) processes whose environment carries the token; with pgid, their pids in that group."""
    import psutil

    found = []
    for p in psutil.process_iter():
        try:
            if p.status() == psutil.STATUS_ZOMBIE:
                continue
            if p.environ().get(TOKEN_ENV) == token:
                found.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    if pgid is None:
        return found
    out = set()
    for p in found:
        try:
            if os.getpgid(p.pid) == pgid:
                out.add(p.pid)
        except ProcessLookupError:
            pass
    return out


def restore(snapshot: Path, root: Path) -> None:
    """Make root a copy of snapshot (same absolute path every time: the MLflow store, the training
    fingerprint and the stream checkpoints hold absolute paths)."""
    for attempt in range(5):
        try:
            if root.exists():
                shutil.rmtree(root)
            if snapshot.exists():
                shutil.copytree(snapshot, root, symlinks=True)
            else:
                root.mkdir(parents=True)
            return
        except OSError:  # a starting worker may create the warehouse folder meanwhile
            if attempt == 4:
                raise
            time.sleep(0.5)


def snapshot(root: Path, dest: Path) -> None:
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(root, dest, symlinks=True)


def compare(ref: dict, got: dict) -> dict:
    """Differences between two captured states: per table lost / doubled rows and metadata."""
    diffs: dict[str, Any] = {}
    lost = doubled = 0
    rt, gt = ref.get("tables", {}), got.get("tables", {})
    for name in sorted(set(rt) | set(gt)):
        r, g = rt.get(name), gt.get(name)
        rrows, grows = (r or {}).get("rows", {}), (g or {}).get("rows", {})
        l = sum(max(0, n - grows.get(h, 0)) for h, n in rrows.items())
        d = sum(max(0, n - rrows.get(h, 0)) for h, n in grows.items())
        meta_ok = (r or {}).get("meta") == (g or {}).get("meta")
        if l or d or not meta_ok or (r is None) != (g is None):
            diffs[name] = {"lost": l, "doubled": d, "rows_ref": (r or {}).get("n"), "rows": (g or {}).get("n"),
                           "keys_ref": (r or {}).get("keys"), "keys": (g or {}).get("keys"),
                           "missing": g is None, "extra": r is None}
            if not meta_ok and r and g:
                diffs[name]["meta_ref"], diffs[name]["meta"] = r["meta"], g["meta"]
        lost += l
        doubled += d
    ml = md = 0
    for part in ("runs", "versions"):
        rm, gm = ref.get("mlflow", {}).get(part, {}), got.get("mlflow", {}).get(part, {})
        ml += sum(max(0, n - gm.get(h, 0)) for h, n in rm.items())
        md += sum(max(0, n - rm.get(h, 0)) for h, n in gm.items())
    if ml or md:
        diffs["mlflow"] = {"lost": ml, "doubled": md,
                           "ref": ref.get("mlflow", {}).get("examples"), "got": got.get("mlflow", {}).get("examples")}
    if got.get("blocked"):
        diffs["blocked_tables"] = got["blocked"]
    return {"equal": not diffs, "lost_rows": lost + ml, "doubled_rows": doubled + md, "diffs": diffs,
            "orphaned": got.get("orphaned", []), "unfinished_runs": got.get("mlflow", {}).get("unfinished", [])}


class Lane:
    """One storage root with its own reference run and snapshots. Trials of two lanes run side by
    side: a job is about one core of serial work (small Spark queries in a fresh JVM), so on two
    cores a second lane nearly halves the wall time. A snapshot only restores into the root it was
    taken from (the MLflow store, the stream checkpoints and the training fingerprint hold absolute
    paths), hence a reference per lane rather than one shared."""

    def __init__(self, work: Path, i: int):
        self.i = i
        sfx = "" if i == 0 else f"-{i}"
        self.root = work / f"root{sfx}"
        self.snap = work / f"snap{sfx}"
        self.cwd = work / f"cwd{sfx}"
        self.suffix = "" if i == 0 else f"-lane{i}"
        self.sets = [f"storage.root={self.root}", *SETS]
        self.ref_state: dict[str, dict] = {}
        self.seconds: dict[str, float] = {}

    def snap_dir(self, i: int, job: str) -> Path:
        return self.snap / ("0-start" if i == 0 else f"{i}-{job}")


class Chaos:
    def __init__(self, args):
        self.args = args
        self.work = Path(args.work).resolve()
        self.lanes = [Lane(self.work, i) for i in range(max(1, args.lanes))]
        self.root = self.lanes[0].root
        self.sets = self.lanes[0].sets
        self.t_start = time.time()
        self.results: dict[str, Any] = {"config": {k: v for k, v in vars(args).items()}, "reference": {}, "trials": []}
        self.spawned: list[Proc] = []
        self.n = 0
        self.lock = threading.Lock()
        # Durations of whole runs per job, from every lane: the kill moments' time scale.
        self.durations: dict[str, list[float]] = {}

    # ---- plumbing ----------------------------------------------------------------------
    def log(self, msg: str) -> None:
        print(f"[chaos {time.time() - self.t_start:7.1f}s] {msg}", flush=True)

    def save(self) -> None:
        with self.lock:
            _write_json(str(self.work / "results.json"), self.results)

    def spawn(self, tag: str, steps: list, *, hash_: bool = False, wait_go: bool = True, mode: str = "worker",
              extra: Optional[dict] = None, dump_classes: bool = False, lane: Optional[Lane] = None) -> Proc:
        """A worker for ``steps`` on ``lane``'s root (default: the first lane, or ``self.sets`` while
        the class archive is dumped); with wait_go it starts Python and Spark, then waits for ``start()``."""
        spec = {"sets": lane.sets if lane else self.sets, "steps": steps, "hash": hash_, **(extra or {})}
        archive = self.work / CDS_ARCHIVE
        if dump_classes:
            java = f"{JAVA_OPTS} -XX:ArchiveClassesAtExit={archive}"
        elif archive.exists():
            java = f"{JAVA_OPTS} -XX:SharedArchiveFile={archive}"
        else:
            java = JAVA_OPTS
        p = Proc(self.work, tag + (lane.suffix if lane else ""), mode, spec, java, Path(self.args.lib).resolve(),
                 cwd=lane.cwd if lane else None)
        if not wait_go:
            p.start()
        self.spawned.append(p)
        return p

    def finish(self, p: Proc, timeout: float, grace: float = 0.0) -> tuple[bool, dict]:
        """Wait for DONE (or exit); a worker still running after timeout is stuck. Always reaps the group."""
        done = p.wait_for("DONE", timeout) is not None
        # Once DONE is marked every result is on disk: the process is killed rather than left to stop
        # Spark (seconds per run), unless it has something to finish (the class archive).
        sweep = p.kill(grace if done else 0.0)
        return done, dict(p.read_result(), sweep=sweep, exit=p.p.returncode)

    def cleanup(self) -> None:
        for p in self.spawned:
            if p.p.poll() is None or _token_processes(p.token):
                p.kill()

    # ---- the chain -----------------------------------------------------------------------
    def chain(self) -> list[tuple[str, list[str]]]:
        end = json.loads((self.work / "synth" / "truth" / "meta.json").read_text())["end"]
        self.d0 = dt.datetime.fromisoformat(end).date()
        self.d1 = self.d0 + dt.timedelta(days=1)
        steps = {
            "ingest": ["--source", str(self.work / "synth" / "raw"), "--format", "parquet"],
            "sessionize": [],
            "sequences": [],
            "train": [],
            "evaluate": [],
            "score": ["--score-date", self.d0.isoformat()],
        }
        upto = JOBS.index(self.args.through) + 1
        return [(j, steps[j]) for j in JOBS[:upto]]

    def dump_classes(self, chain) -> None:
        """One ingest in a scratch root whose JVM writes the class archive at exit, so that every
        timed run after it (the reference included) starts the same way."""
        sets, self.sets = self.sets, [f"storage.root={self.work / 'cds-root'}", *SETS]
        try:
            p = self.spawn("cds-ingest", [list(chain[0])], wait_go=False, dump_classes=True)
            self.finish(p, self.args.timeout, grace=120)
        finally:
            self.sets = sets
            shutil.rmtree(self.work / "cds-root", ignore_errors=True)
        size = (self.work / CDS_ARCHIVE).stat().st_size >> 20 if (self.work / CDS_ARCHIVE).exists() else 0
        self.log(f"class archive for the JVMs: {size} MB" if size else "no class archive: JVMs start without one")

    def reference(self, chain) -> None:
        self.log(f"reference: the chain uninterrupted ({', '.join(j for j, _ in chain)}), one process per job"
                 + (f", in each of {len(self.lanes)} lanes at once" if len(self.lanes) > 1 else ""))
        self._in_lanes(lambda lane: self._reference_lane(lane, chain))
        base = self.lanes[0]
        for lane in self.lanes[1:]:
            # Two runs of the same chain on the same input: their tables should agree too. Shown,
            # not judged: a lane's trials are compared with its own reference.
            same = {job: compare(base.ref_state[job], lane.ref_state[job])["equal"] for job in base.ref_state}
            self.results.setdefault("reference_lanes_equal", {})[lane.i] = same
            self.log(f"  lane {lane.i} reference equal to lane 0's: {same}")
        self.save()

    def _in_lanes(self, fn) -> None:
        """fn(lane) for every lane, side by side; the first error is raised once all have ended."""
        errors: list[BaseException] = []

        def run(lane: Lane) -> None:
            try:
                fn(lane)
            except BaseException as e:  # noqa: BLE001 - re-raised below, in the main thread
                errors.append(e)

        threads = [threading.Thread(target=run, args=(lane,), name=f"lane{lane.i}") for lane in self.lanes]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]

    def _reference_lane(self, lane: Lane, chain) -> None:
        restore(Path("/nonexistent"), lane.root)
        snapshot(lane.root, lane.snap_dir(0, ""))
        extra = [("score-next", ["--score-date", self.d1.isoformat()])] if self.scenario_wanted() else []
        plan = chain + extra

        def spawn(i: int) -> Optional[Proc]:
            if i > len(plan):
                return None
            job, argv = plan[i - 1]
            return self.spawn(f"ref-{i}-{job}", [["score" if job == "score-next" else job, argv]], hash_=True, lane=lane)

        nxt = spawn(1)
        for i, (job, argv) in enumerate(plan, 1):
            p = nxt
            t0 = time.time()
            if not p.wait_for("READY", self.args.timeout):
                raise SystemExit(f"chaos: the reference run of {job} did not start; see {p.marker.parent}/output.log")
            p.start()
            nxt = spawn(i + 1)  # the next job's Python and JVM start while this one runs
            done, res = self.finish(p, self.args.timeout)
            step = (res.get("steps") or [{}])[0]
            if not done or step.get("rc") != 0 or "state" not in step:
                raise SystemExit(f"chaos: the reference run of {job} failed (rc {step.get('rc')}); see {p.marker.parent}/output.log")
            lane.seconds[job] = step["seconds"]
            with self.lock:
                self.durations.setdefault(job, []).append(step["seconds"])
            lane.ref_state[job] = step["state"]
            snapshot(lane.root, lane.snap_dir(i, job))
            tables = {k: v["n"] for k, v in step["state"]["tables"].items()}
            self.log(f"  {job}{lane.suffix}: {step['seconds']:.1f} s of work ({time.time() - t0:.0f} s with start-up, "
                     f"hash {step.get('hash_seconds', 0):.1f} s); tables {tables}")
            with self.lock:
                ref = self.results["reference"].setdefault(job, {})
                if lane.i == 0:
                    ref.update({"seconds": step["seconds"], "rows": tables,
                                "mlflow_rows": step["state"]["mlflow"].get("n", 0)})
                ref.setdefault("seconds_by_lane", {})[lane.i] = step["seconds"]

    def load_reference(self, chain) -> None:
        """The reference a previous run left in the work folder (kept with --keep)."""
        self.durations = {}
        extra = [("score-next", [])] if self.scenario_wanted() else []
        for lane in self.lanes:
            for i, (job, _) in enumerate(chain + extra, 1):
                res_path = self.work / "runs" / f"ref-{i}-{job}{lane.suffix}" / "result.json"
                if not res_path.exists() or not lane.snap_dir(i, job).is_dir():
                    raise SystemExit(f"chaos: --reuse-reference: the reference of {job} for lane {lane.i} is missing in "
                                     f"{self.work} (run once with --keep and the same --lanes)")
                step = json.loads(res_path.read_text())["steps"][0]
                lane.seconds[job], lane.ref_state[job] = step["seconds"], step["state"]
                self.durations.setdefault(job, []).append(step["seconds"])
                self.results["reference"].setdefault(job, {"seconds": step["seconds"], "reused": True})
        self.log(f"reference reused from {self.work} ({', '.join(self.lanes[0].seconds)})")

    def snap_before(self, job: str, lane: Lane) -> Path:
        idx = [j for j, _ in self.chain_steps].index(job)
        return lane.snap_dir(idx, self.chain_steps[idx - 1][0] if idx else "")

    # ---- trials ----------------------------------------------------------------------------
    def plan(self) -> list[dict]:
        rng = random.Random(self.args.seed)
        jobs = [j for j, _ in self.chain_steps if j in self.args.jobs]
        out = []
        for job in jobs:
            for i in range(self.args.trials):
                u = rng.uniform(0.02, 1.0)
                out.append({"job": job, "i": i, "u": round(u, 4), "continue": self.args.full or i == 0})
        return out

    def spawn_trial(self, k: int, t: dict, lane: Lane) -> tuple[Proc, Proc]:
        jobs = [j for j, _ in self.chain_steps]
        idx = jobs.index(t["job"])
        killed = self.spawn(f"t{k:03d}-{t['job']}-kill", [list(self.chain_steps[idx])], lane=lane)
        rest = self.chain_steps[idx:] if t["continue"] else self.chain_steps[idx:idx + 1]
        recover = self.spawn(f"t{k:03d}-{t['job']}-recover", [list(s) for s in rest], hash_=True, lane=lane)
        return killed, recover

    def run_trials(self) -> None:
        plan = self.plan()
        self.log(f"{len(plan)} kill trials, seed {self.args.seed}"
                 + (f", {len(self.lanes)} lanes side by side" if len(self.lanes) > 1 else ""))
        queue = collections.deque(enumerate(plan))
        self._in_lanes(lambda lane: self._trials_lane(lane, queue, len(plan)))
        self.results["trials"].sort(key=lambda t: t["k"])
        self.save()

    def _trials_lane(self, lane: Lane, queue: collections.deque, n: int) -> None:
        """Take the next trial from the shared queue until it is empty; each trial's processes start
        (Python, JVM) while the lane's previous recovery runs."""
        def take() -> Optional[tuple[int, dict, tuple[Proc, Proc]]]:
            with self.lock:
                if not queue:
                    return None
                k, t = queue.popleft()
            return k, t, self.spawn_trial(k, t, lane)

        pending = take()
        while pending is not None:
            k, t, (killed, recover) = pending
            t0 = time.time()
            ready = killed.wait_for("READY", self.args.timeout) and recover.wait_for("READY", self.args.timeout)
            if not ready:
                raise SystemExit(f"chaos: trial {k} workers did not start; see {killed.marker.parent}/output.log")
            restore(self.snap_before(t["job"], lane), lane.root)
            # The kill moment: a seeded fraction of the job's duration, estimated as the median of its
            # reference runs and of the trial runs that ended before their kill (the machine's load
            # moves it; reruns are not counted: the next trial's processes start beside them).
            with self.lock:
                t["w_est_s"] = round(statistics.median(self.durations[t["job"]]), 2)
            t["kill_at_s"] = round(t["u"] * t["w_est_s"], 2)
            t.update(k=k, lane=lane.i)
            go = killed.start()
            ended = None
            while time.time() < go + t["kill_at_s"]:
                if killed.p.poll() is not None or killed.has("DONE"):
                    ended = time.time() - go
                    break
                time.sleep(0.01)
            sweep = killed.kill()
            killed_result = killed.read_result()
            t.update({"killed_after_s": round(time.time() - go, 2) if ended is None else None,
                      "finished_before_kill": ended is not None,
                      "killed_rc": [s.get("rc") for s in killed_result.get("steps", [])],
                      "escaped_group": sweep["escaped_group"], "survivors": sweep["survivors"]})
            # The lane's next trial starts its processes (Python, JVM) while this recovery runs.
            pending = take()
            recover.start()
            budget = self.args.timeout + 5 * sum(lane.seconds[j] for j, _ in self.chain_steps)
            done, res = self.finish(recover, budget)
            self.judge(t, done, res, recover, lane)
            if t["finished_before_kill"]:  # a whole uninterrupted run, timed under today's load
                with self.lock:
                    self.durations[t["job"]].append(round(ended, 2))
            t["seconds"] = round(time.time() - t0, 1)
            with self.lock:
                self.results["trials"].append(t)
                done_n = len(self.results["trials"])
            self.save()
            self.log(f"trial {done_n}/{n} {t['job']:<10}{' lane ' + str(lane.i) if len(self.lanes) > 1 else ''} "
                     f"kill at {t['kill_at_s']:6.2f} s "
                     f"({'ran to the end first' if t['finished_before_kill'] else 'killed'}"
                     f"{', escaped ' + str(t['escaped_group']) if t['escaped_group'] else ''}"
                     f"{', SURVIVORS ' + str(t['survivors']) if t['survivors'] else ''}): "
                     f"recovered {'yes' if t['recovered'] else 'NO'}, converged {'yes' if t['converged'] else 'NO'}"
                     f"{'' if t['converged'] else ' ' + json.dumps(t['summary'], default=str)[:600]} "
                     f"({t['seconds']:.0f} s)")

    def judge(self, t: dict, done: bool, res: dict, proc: Proc, lane: Lane) -> None:
        steps = res.get("steps", [])
        want = len(proc.spec["steps"])
        rcs = [s.get("rc") for s in steps]
        t["recover_rc"] = rcs
        t["recovered"] = done and len(steps) == want and all(rc == 0 for rc in rcs)
        t["stuck"] = not t["recovered"]
        lost = doubled = 0
        equal = t["recovered"] and not t["survivors"]
        summary: dict[str, Any] = {}
        for s in steps:
            if "state" not in s:
                continue
            c = compare(lane.ref_state[s["job"]], s["state"])
            lost += c["lost_rows"]
            doubled += c["doubled_rows"]
            equal = equal and c["equal"]
            if not c["equal"]:
                summary[s["job"]] = c["diffs"]
            if c["orphaned"] or c["unfinished_runs"]:
                t.setdefault("notes", {})[s["job"]] = {"orphaned": c["orphaned"], "unfinished_runs": c["unfinished_runs"]}
        if not t["recovered"]:
            summary["recover"] = {"done": done, "rc": rcs, "log": str(proc.marker.parent / "output.log"),
                                  "tail": _tail(proc.marker.parent / "output.log")}
        t.update({"converged": bool(equal), "lost_rows": lost, "doubled_rows": doubled, "summary": summary})

    # ---- scenario: two score runs for the same date, and a reader of the views --------------
    def scenario_wanted(self) -> bool:
        return not self.args.no_scenario and self.args.through == "score"

    def scenario(self) -> dict:
        self.log(f"scenario: two `score --score-date {self.d1}` runs at once, a reader polling the latest_* views")
        lane = self.lanes[0]
        restore(lane.snap_dir(len(self.chain_steps), "score"), lane.root)
        argv = ["--score-date", self.d1.isoformat()]
        reader = self.spawn("s-reader", [], mode="poller", extra={"interval": 0.1})
        a = self.spawn("s-score-a", [["score", argv]])
        b = self.spawn("s-score-b", [["score", argv]])
        ok = all(p.wait_for("READY", self.args.timeout) for p in (reader, a, b))
        if not ok:
            raise SystemExit("chaos: scenario workers did not start")
        time.sleep(1.0)
        a.start()
        b.start()
        budget = self.args.timeout + 5 * lane.seconds["score"]
        done_a, res_a = self.finish(a, budget)
        done_b, res_b = self.finish(b, budget)
        time.sleep(0.5)
        reader.stop.write_text("stop")
        done_r, res_r = self.finish(reader, 120)
        from ebbtide.config import load_config

        state = capture_state(load_config(env="local", overrides=self.sets))
        rcs = [(res.get("steps") or [{}])[0].get("rc") for res in (res_a, res_b)]
        cmp_ = compare(lane.ref_state["score-next"], state)
        polls = self.judge_polls(res_r.get("polls", []))
        out = {"job": "score(concurrent)+reader", "score_rc": rcs, "recovered": done_a and done_b and rcs == [0, 0],
               "tables_equal": cmp_["equal"], "lost_rows": cmp_["lost_rows"], "doubled_rows": cmp_["doubled_rows"],
               "diffs": cmp_["diffs"], "reader": polls}
        out["stuck"] = not out["recovered"]
        out["converged"] = out["recovered"] and cmp_["equal"] and polls["bad"] == 0 and polls["polls"] > 0 and done_r
        if not out["recovered"]:
            out["tails"] = [_tail(p.marker.parent / "output.log") for p in (a, b)]
        self.log(f"scenario: score runs exit {rcs}, tables equal {cmp_['equal']}, reader {polls['polls']} polls, "
                 f"{polls['bad']} showing a half-published day {polls['examples'][:3]}")
        return out

    def judge_polls(self, polls: list[dict]) -> dict:
        """Each poll must show one score date per view, with the reference row count of that date,
        and the same date in both views."""
        want = {}
        for job, date in (("score", self.d0), ("score-next", self.d1)):
            for view, table in (("latest_recommendations", "gold_recommendations"), ("latest_churn_decay", "gold_churn_decay")):
                want[(view, str(date))] = self.lanes[0].ref_state[job]["tables"][table]["by_date"][str(date)]
        bad, examples, dates = 0, [], collections.Counter()
        for p in polls:
            problems = []
            if "error" in p:
                problems.append(p["error"])
            else:
                by_view = collections.defaultdict(list)
                for v, d, n in p["seen"]:
                    by_view[v].append((d, n))
                for v in ("latest_recommendations", "latest_churn_decay"):
                    got = by_view.get(v, [])
                    if len(got) != 1:
                        problems.append(f"{v}: {got}")
                    elif want.get((v, got[0][0])) != got[0][1]:
                        problems.append(f"{v}: {got[0][0]} has {got[0][1]} rows, a whole day has {want.get((v, got[0][0]))}")
                ds = {d for v in by_view for d, _ in by_view[v]}
                if len(ds) > 1:
                    problems.append(f"views disagree on the day: {sorted(ds)}")
                dates[",".join(sorted(ds))] += 1
            if problems:
                bad += 1
                if len(examples) < 5:
                    examples.append(problems)
        return {"polls": len(polls), "bad": bad, "examples": examples, "dates_seen": dict(dates)}

    # ---- main -----------------------------------------------------------------------------
    def run(self) -> int:
        import subprocess as sp

        load0 = os.getloadavg()
        reuse = self.args.reuse_reference
        if not reuse:
            if self.work.exists():
                shutil.rmtree(self.work)
            for d in ("cwd", "tmp/spark", "runs"):
                (self.work / d).mkdir(parents=True, exist_ok=True)
            for lane in self.lanes:
                lane.cwd.mkdir(parents=True, exist_ok=True)
            env = dict(os.environ, PYTHONPATH=str(Path(self.args.lib).resolve()))
            sp.run([PY, "-m", "ebbtide.cli", "synth", "--out", str(self.work / "synth"), *SYNTH],
                   check=True, env=env, cwd=str(self.work / "cwd"), capture_output=True, timeout=300)
        self.chain_steps = self.chain()
        try:
            if reuse:
                (self.work / "tmp" / "spark").mkdir(parents=True, exist_ok=True)
                self.load_reference(self.chain_steps)
            else:
                self.dump_classes(self.chain_steps)
                self.reference(self.chain_steps)
            self.run_trials()
            trials = list(self.results["trials"])
            if self.scenario_wanted():
                sc = self.scenario()
                self.results["scenario"] = sc
                trials.append(sc)
        finally:
            self.cleanup()
        n = len(trials)
        summary = {
            "bench": "chaos",
            "trials": n,
            "converged": sum(1 for t in trials if t["converged"]),
            "stuck": sum(1 for t in trials if t["stuck"]),
            "lost_rows": sum(t["lost_rows"] for t in trials),
            "doubled_rows": sum(t["doubled_rows"] for t in trials),
            "kill_trials": len(self.results["trials"]),
            "killed_mid_run": sum(1 for t in self.results["trials"] if not t["finished_before_kill"]),
            "survivors": sum(len(t["survivors"]) for t in self.results["trials"]),
            "seed": self.args.seed,
            "lanes": len(self.lanes),
            "seconds": round(time.time() - self.t_start, 1),
            "load_avg": [round(x, 2) for x in load0] + [round(x, 2) for x in os.getloadavg()],
        }
        self.results["summary"] = summary
        self.save()
        if not self.args.keep:
            for d in [self.work / "tmp", *(x for lane in self.lanes for x in (lane.snap, lane.root))]:
                shutil.rmtree(d, ignore_errors=True)
            (self.work / CDS_ARCHIVE).unlink(missing_ok=True)
        print(json.dumps(summary))
        ok = (summary["converged"] == n and not summary["stuck"] and not summary["lost_rows"]
              and not summary["doubled_rows"] and not summary["survivors"])
        return 0 if ok else 1


def _tail(path: Path, n: int = 2000) -> str:
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return ""
    lines = [ln for ln in text.splitlines() if "error" in ln.lower() or "Traceback" in ln]
    return "\n".join(lines[-8:])[-n:]


def main(argv: Optional[list[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if str(REPO / "lib") not in sys.path:
        sys.path.insert(0, str(REPO / "lib"))
    if argv[:1] == ["worker"]:
        return worker(argv[1])
    if argv[:1] == ["poller"]:
        return poller(argv[1])
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trials", type=int, default=int(os.environ.get("CHAOS_TRIALS", "5")),
                   help="kill trials per job (default $CHAOS_TRIALS or 5)")
    p.add_argument("--seed", type=int, default=int(os.environ.get("CHAOS_SEED", "0")),
                   help="seed of the kill moments (default $CHAOS_SEED or 0)")
    p.add_argument("--full", action="store_true", default=os.environ.get("CHAOS_FULL", "") not in ("", "0"),
                   help="every trial reruns the rest of the chain (default: the first trial of each job; $CHAOS_FULL=1)")
    p.add_argument("--jobs", default=",".join(JOBS), help="comma-separated jobs to kill (default: all six)")
    p.add_argument("--through", default="score", choices=JOBS, help="last job of the chain (default score)")
    p.add_argument("--no-scenario", action="store_true", help="skip the concurrent-score / reader scenario")
    p.add_argument("--lanes", type=int, default=int(os.environ.get("CHAOS_LANES", "2")),
                   help="storage roots whose trials run side by side, each with its own reference run "
                        "(default $CHAOS_LANES or 2; 1: one trial at a time)")
    p.add_argument("--work", default=str(REPO / ".ebbtide" / "chaos"), help="work folder (emptied first)")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds a process may take to start or a rerun to end")
    p.add_argument("--keep", action="store_true", help="keep snapshots and the last root for inspection")
    p.add_argument("--reuse-reference", action="store_true",
                   help="take the reference (and snapshots) a previous --keep run left in --work instead of making it")
    p.add_argument("--lib", default=str(REPO / "lib"),
                   help="the ebbtide package folder the jobs run (default: this checkout's lib/; e.g. an older "
                        "checkout's, to see a finding before its fix)")
    args = p.parse_args(argv)
    args.jobs = [j.strip() for j in args.jobs.split(",") if j.strip()]
    bad = [j for j in args.jobs if j not in JOBS]
    if bad:
        p.error(f"unknown job(s) {bad}; choose from {', '.join(JOBS)}")
    if JOBS.index(args.through) < max(JOBS.index(j) for j in args.jobs):
        p.error("--through must not end the chain before the last job in --jobs")
    chaos = Chaos(args)
    try:
        return chaos.run()
    except KeyboardInterrupt:
        chaos.cleanup()
        return 130


if __name__ == "__main__":
    sys.exit(main())
