"""Bad-input bench: every kind of broken or awkward input in tests/data/bad_input through `ebbtide ingest`.

Each kind (a folder of raw files, see tests/data/bad_input/make_corpus.py) is ingested by the
command line entry point with its own flags from ``expected.tsv``, all kinds into one throwaway
warehouse. Per kind it compares what ingest reports (the JSON summary, checked against the kind's
``ops_ingest_log`` rows) and what it wrote (the quarantine reasons and the new bronze rows of the
run) with the table, prints one line per kind, and last one JSON line:

    {"bench": "bad_input", "kinds": K, "rows_in": N, "bronze": B, "quarantined": Q,
     "duplicates": D, "lost": N-B-Q-D, "tracebacks": T, ...}

``rows_in`` comes from the corpus (counted from the bytes by make_corpus.py), the rest from
ingest, so ``lost`` counts rows that vanished without a trace. A traceback is the text
"Traceback" anywhere in what the command printed (stdout or stderr). Target: K >= 25, lost = 0,
tracebacks = 0, no mismatch; the exit status is 1 otherwise.

How the command runs: by default in this process (``ebbtide.cli.main(argv)``, one Spark session
for all kinds, file descriptors 1 and 2 redirected around each call, so the JVM's output is
captured with Python's); ``--subprocess`` starts ``python -m ebbtide.cli`` per kind instead, as a
user would (about 30-50 s more per kind for a JVM each).

    .venv/bin/python bench/bad_input.py                         # the whole corpus
    .venv/bin/python bench/bad_input.py --kinds crlf,gzip -v    # some kinds, with their output
    .venv/bin/python bench/bad_input.py --subprocess --keep /tmp/bad-input
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT / "tests" / "data" / "bad_input"
EXPECTED = CORPUS / "expected.tsv"
MIN_KINDS = 25
DATABASE = "bad_input"

# (argv) -> (exit status, stdout, stderr)
Invoke = Callable[[list], "tuple[int, str, str]"]


@dataclass(frozen=True)
class Expected:
    kind: str
    args: tuple[str, ...]
    rows_in: int
    bronze: int
    quarantined: int
    duplicates: int
    reasons: str
    checks: str
    note: str


def load_expected(path: Path = EXPECTED) -> list[Expected]:
    text = path.read_text(encoding="utf-8").splitlines()
    header = text[0].split("\t")
    out = []
    for line in text[1:]:
        row = dict(zip(header, line.split("\t")))
        out.append(Expected(
            kind=row["kind"], args=tuple(shlex.split(row["args"])), rows_in=int(row["rows_in"]),
            bronze=int(row["bronze"]), quarantined=int(row["quarantined"]),
            duplicates=int(row["duplicates"]), reasons=row["reasons"], checks=row["checks"], note=row["note"],
        ))
    return out


def overrides(root: Path) -> list[str]:
    """The throwaway warehouse, and a Spark that fits a small shared machine."""
    sets = [f"storage.root={root}", f"storage.database={DATABASE}", "spark.master=local[2]",
            "spark.shuffle_partitions=2"]
    return [a for s in sets for a in ("--set", s)]


def ingest_argv(exp: Expected, root: Path, corpus: Path = CORPUS) -> list[str]:
    return ["ingest", "--source", str(corpus / exp.kind), *exp.args, *overrides(root)]


# --------------------------------------------------------------------------------------
# Running the command
# --------------------------------------------------------------------------------------


def invoke_subprocess(argv: list[str]) -> tuple[int, str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT / "lib"), env.get("PYTHONPATH")) if p)
    proc = subprocess.run([sys.executable, "-m", "ebbtide.cli", *argv], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=900)
    return proc.returncode, proc.stdout, proc.stderr


@contextlib.contextmanager
def _captured_fds():
    """Redirect file descriptors 1 and 2 to temporary files (Python's and the JVM's writes alike)."""
    files = {fd: tempfile.TemporaryFile(mode="w+b") for fd in (1, 2)}
    saved = {fd: os.dup(fd) for fd in files}
    out: dict[str, str] = {}
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        for fd, f in files.items():
            os.dup2(f.fileno(), fd)
        yield out
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        for fd in files:
            os.dup2(saved[fd], fd)
            os.close(saved[fd])
        for fd, f in files.items():
            f.seek(0)
            out["stdout" if fd == 1 else "stderr"] = f.read().decode("utf-8", "replace")
            f.close()


def invoke_in_process(argv: list[str]) -> tuple[int, str, str]:
    """``ebbtide.cli.main(argv)`` here; the first call starts Spark, the others reuse it."""
    from ebbtide import cli

    with _captured_fds() as out:
        try:
            status = cli.main(list(argv))
        except SystemExit as e:  # argparse's --help / version exits
            status = e.code if isinstance(e.code, int) else 1
    return int(status), out["stdout"], out["stderr"]


# --------------------------------------------------------------------------------------
# What ingest reported and wrote, against the table
# --------------------------------------------------------------------------------------


@dataclass
class Outcome:
    exp: Expected
    status: int
    stdout: str
    stderr: str
    seconds: float
    summary: Optional[dict] = None
    # From the tables, for the run: quarantine reason -> count, the new bronze rows, ops log sums.
    reasons: dict[str, int] = field(default_factory=dict)
    bronze_rows: list[dict] = field(default_factory=list)
    ops: Optional[dict[str, int]] = None
    problems: list[str] = field(default_factory=list)

    @property
    def traceback(self) -> bool:
        return "Traceback" in self.stdout or "Traceback" in self.stderr

    def got(self, key: str) -> int:
        return int((self.summary or {}).get(key, 0))

    @property
    def error_line(self) -> str:
        lines = [x for x in self.stderr.splitlines() if x.strip()]
        return lines[-1] if lines else ""


def _summary(stdout: str) -> Optional[dict]:
    for line in reversed(stdout.strip().splitlines()):
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if isinstance(obj, dict) and obj.get("stage") == "ingest":
            return obj
    return None


def observe(spark, cfg, run_id: str) -> tuple[dict[str, int], list[dict], dict[str, int]]:
    """(quarantine reason -> count, the run's new bronze rows, its ops_ingest_log sums)."""
    from pyspark.sql import functions as F

    from ebbtide import ingest, tables

    def rows(name: str, *cols: str) -> list[dict]:
        if not tables.exists(spark, cfg, name):
            return []
        df = tables.read(spark, cfg, name).where(F.col("ingest_run_id") == run_id).select(*cols)
        return [r.asDict(recursive=True) for r in df.collect()]

    reasons: dict[str, int] = {}
    for r in rows(ingest.QUARANTINE, "reason"):
        reasons[r["reason"]] = reasons.get(r["reason"], 0) + 1
    bronze = rows(ingest.BRONZE, "user_id", "ts", "extra")
    keys = ("rows_read", "rows_bronze_new", "rows_quarantined", "rows_duplicate")
    ops = {k: 0 for k in keys}
    for r in rows(ingest.OPS_LOG, *keys):
        for k in keys:
            ops[k] += int(r[k])
    return reasons, bronze, ops


def reasons_text(reasons: dict[str, int]) -> str:
    return ";".join(f"{r}:{n}" for r, n in sorted(reasons.items()))


def _iso(ts) -> str:
    return ts.isoformat() if ts is not None else "null"


def check_rows(checks: str, bronze: list[dict]) -> list[str]:
    """The ``checks`` column against the run's new bronze rows (see make_corpus.py)."""
    problems = []
    for item in filter(None, checks.split(";")):
        name, _, want = item.partition("=")
        values = want.split("|")
        if name == "users":
            got = sorted({r["user_id"] for r in bronze})
            if got != sorted(set(values)):
                problems.append(f"users: expected {sorted(set(values))}, got {got}")
        elif name == "ts":
            got = sorted({_iso(r["ts"]) for r in bronze})
            if got != sorted(set(values)):
                problems.append(f"ts: expected {sorted(set(values))}, got {got}")
        elif name == "user_len":
            got_len = max((len(r["user_id"]) for r in bronze), default=0)
            if got_len != int(want):
                problems.append(f"longest user_id: expected {want} characters, got {got_len}")
        elif name == "extra":
            keys = set().union(*[set((r["extra"] or {}).keys()) for r in bronze]) if bronze else set()
            missing = sorted(set(values) - keys)
            if missing:
                problems.append(f"extra: expected keys {missing} in some row, got {sorted(keys)}")
        else:
            problems.append(f"unknown check {name!r} in expected.tsv")
    return problems


def judge(o: Outcome) -> list[str]:
    e, problems = o.exp, []
    if o.status != 0:
        problems.append(f"exit status {o.status}: {o.error_line[:300]}")
    elif o.summary is None:
        problems.append("no JSON summary on stdout")
    if o.traceback:
        problems.append("a traceback reached the user")
    for label, want, key in (("rows read", e.rows_in, "rows_read"), ("bronze", e.bronze, "bronze_new"),
                             ("quarantined", e.quarantined, "quarantined"), ("duplicates", e.duplicates, "duplicates")):
        if o.got(key) != want:
            problems.append(f"{label}: expected {want}, got {o.got(key)}")
    if o.summary is not None and o.ops is not None:
        ops = (o.ops["rows_read"], o.ops["rows_bronze_new"], o.ops["rows_quarantined"], o.ops["rows_duplicate"])
        said = (o.got("rows_read"), o.got("bronze_new"), o.got("quarantined"), o.got("duplicates"))
        if ops != said:
            problems.append(f"ops_ingest_log {ops} != summary {said}")
    if reasons_text(o.reasons) != e.reasons:
        problems.append(f"reasons: expected {e.reasons or '-'}, got {reasons_text(o.reasons) or '-'}")
    if o.status == 0:
        if len(o.bronze_rows) != o.got("bronze_new"):
            problems.append(f"bronze rows of the run: {len(o.bronze_rows)}, summary says {o.got('bronze_new')}")
        problems += check_rows(e.checks, o.bronze_rows)
    return problems


def run_kind(exp: Expected, root: Path, invoke: Invoke, corpus: Path = CORPUS) -> Outcome:
    """Ingest one kind through the command line; ``observe`` and ``judge`` come after."""
    t0 = time.perf_counter()
    status, out, err = invoke(ingest_argv(exp, root, corpus))
    return Outcome(exp, status, out, err, time.perf_counter() - t0, summary=_summary(out))


def settle(o: Outcome, spark, cfg) -> Outcome:
    """Read what the run wrote and judge the kind."""
    if o.summary is not None and o.summary.get("run_id"):
        o.reasons, o.bronze_rows, o.ops = observe(spark, cfg, o.summary["run_id"])
    o.problems = judge(o)
    return o


def totals(outcomes: list[Outcome]) -> dict[str, Any]:
    n = sum(o.exp.rows_in for o in outcomes)
    b = sum(o.got("bronze_new") for o in outcomes)
    q = sum(o.got("quarantined") for o in outcomes)
    d = sum(o.got("duplicates") for o in outcomes)
    return {"bench": "bad_input", "kinds": len(outcomes), "rows_in": n, "bronze": b, "quarantined": q,
            "duplicates": d, "lost": n - b - q - d, "tracebacks": sum(o.traceback for o in outcomes),
            "mismatches": sum(bool(o.problems) for o in outcomes)}


def config_for(root: Path):
    from ebbtide.config import load_config

    return load_config(env="local", overrides=[a for a in overrides(root) if a != "--set"])


# --------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------


def _cell(want: int, got: int) -> str:
    return f"{want}" if want == got else f"{want}/{got}"


def print_table(outcomes: list[Outcome]) -> None:
    print(f"{'kind':<26} {'rows':>4} {'bronze':>7} {'quar':>6} {'dup':>5} {'exit':>4} {'sec':>6}  result"
          "   (a/b: expected a, got b)")
    for o in outcomes:
        e = o.exp
        print(f"{e.kind:<26} {e.rows_in:>4} {_cell(e.bronze, o.got('bronze_new')):>7} "
              f"{_cell(e.quarantined, o.got('quarantined')):>6} {_cell(e.duplicates, o.got('duplicates')):>5} "
              f"{o.status:>4} {o.seconds:>6.1f}  {'MISMATCH' if o.problems else 'ok'}")
    bad = [o for o in outcomes if o.problems]
    if bad:
        print()
        for o in bad:
            for p in o.problems:
                print(f"{o.exp.kind}: {p}")


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--corpus", type=Path, default=CORPUS, help="the corpus folder (holds expected.tsv)")
    p.add_argument("--kinds", help="comma-separated kinds to run (default: all)")
    p.add_argument("--subprocess", action="store_true", help="one `python -m ebbtide.cli` per kind")
    p.add_argument("--keep", type=Path, metavar="DIR",
                   help="use DIR as the storage root and keep it (default: a temporary folder, removed)")
    p.add_argument("-v", "--verbose", action="store_true", help="print each run's stdout and stderr")
    args = p.parse_args(argv)

    sys.path.insert(0, str(ROOT / "lib"))
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    expected = load_expected(args.corpus / "expected.tsv")
    if args.kinds:
        wanted = [k.strip() for k in args.kinds.split(",") if k.strip()]
        unknown = sorted(set(wanted) - {e.kind for e in expected})
        if unknown:
            p.error(f"unknown kind(s) {unknown}")
        expected = [e for e in expected if e.kind in wanted]

    tmp = None
    if args.keep:
        root = args.keep.resolve()
        root.mkdir(parents=True, exist_ok=True)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="ebbtide-bad-input-")
        root = Path(tmp.name)
    invoke = invoke_subprocess if args.subprocess else invoke_in_process
    mode = "subprocess" if args.subprocess else "in-process"
    t0 = time.perf_counter()
    try:
        outcomes = []
        for i, exp in enumerate(expected, 1):
            o = run_kind(exp, root, invoke, args.corpus)
            print(f"[{i}/{len(expected)}] {exp.kind}: exit {o.status} in {o.seconds:.1f} s", file=sys.stderr)
            if args.verbose:
                sys.stderr.write(o.stderr)
                sys.stderr.write(o.stdout)
            outcomes.append(o)

        from ebbtide.spark import get_spark

        cfg = config_for(root)
        spark = get_spark(cfg)
        for o in outcomes:
            settle(o, spark, cfg)
        result = totals(outcomes)
        result.update(mode=mode, seconds=round(time.perf_counter() - t0, 1))
        print_table(outcomes)
        print(json.dumps(result))
        full = not args.kinds
        ok = (result["mismatches"] == 0 and result["lost"] == 0 and result["tracebacks"] == 0
              and (not full or result["kinds"] >= MIN_KINDS))
        return 0 if ok else 1
    finally:
        if tmp is not None:
            tmp.cleanup()


if __name__ == "__main__":
    sys.exit(main())
