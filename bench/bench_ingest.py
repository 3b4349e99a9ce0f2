"""Ingest benchmark: `ebbtide ingest` against a plain Spark CSV -> Delta append of the same files.

Events are generated once per size with numpy and written as CSV files, one file per UTC day in
time order, as a daily export would leave them (cached under the work folder, outside the timing):
`user_id,item_id,event_type,ts,value,category` with epoch-second timestamps and an empty value
now and then. Each file but the first starts with a copy of the last `--dup-fraction` of the
previous day's rows (an export that overlaps the one before it), and `--bad-fraction` of the rows
break the contract (no user, an unparsable timestamp). The files arrive as `--batches`
micro-batches (`ingest.max_files_per_trigger` = files / batches). Then, in one process and one
Spark session (`local[2]`):

(a) ebbtide: `ebbtide ingest --source <files>` (`ingest.run`, a fresh warehouse and checkpoint):
    text lines, the contract, quarantine, dedupe on event_id against bronze, MERGEs into
    bronze_events, quarantine_events and ops_ingest_log;
(b) plain: a Structured Streaming CSV source with the same schema (every column typed as the
    bronze columns it feeds, `ts` as epoch seconds), the same files per micro-batch, appending to
    a Delta table partitioned by `event_date` with `source_file` (no dedupe, no quarantine).

ratio = plain_s / ebbtide_s (1.0: ingest costs what a bare append costs; target >= 0.6 at 5 M rows).
Both run once on the first file beforehand (JIT warm-up, Spark start-up), untimed. One line per
micro-batch on stderr; the last stdout line is one JSON object:
{"bench": "ingest", "rows": N, "ebbtide_s": a, "plain_s": b, "ratio": b/a, ...}.

    .venv/bin/python bench/bench_ingest.py                 # 5 M rows, 40 files, 8 micro-batches
    .venv/bin/python bench/bench_ingest.py --rows 400000   # the quick look
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "lib"))
sys.path.insert(0, str(ROOT / "bench"))

from bench_sessionize import _jvm_cpu_s  # noqa: E402  (one way to read the Spark JVM's CPU seconds)

START_S = 1_735_689_600  # 2025-01-01T00:00:00Z
DAY_S = 86_400
COLUMNS = ("user_id", "item_id", "event_type", "ts", "value", "category")
EVENT_TYPES = np.array(["view", "click", "cart", "purchase"])
# The plain reader's schema: the CSV's columns typed as the bronze columns they feed.
PLAIN_SCHEMA = "user_id string, item_id string, event_type string, ts long, value double, category string"


def _text(prefix: str, x: np.ndarray) -> pa.Array:
    return pc.binary_join_element_wise(prefix, pc.cast(pa.array(x), pa.string()), "")


def _day(rng: np.random.Generator, day: int, n: int, n_users: int) -> pa.Table:
    """One day of ``n`` well-formed events, in time order, every column as text."""
    ts = np.sort(START_S + day * DAY_S + rng.integers(0, DAY_S, n))
    item = rng.zipf(1.3, n) % 50_000
    value = np.round(rng.random(n) * 5, 1).astype(str)
    value[rng.random(n) < 0.3] = ""  # absent: null in both readers
    return pa.table({
        "user_id": _text("u", rng.integers(0, n_users, n)),
        "item_id": _text("i", item),
        "event_type": pa.array(EVENT_TYPES[rng.choice(4, n, p=[0.7, 0.2, 0.07, 0.03])]),
        "ts": pc.cast(pa.array(ts), pa.string()),
        "value": pa.array(value),
        "category": _text("c", item % 200),
    })


def _break(rng: np.random.Generator, t: pa.Table, fraction: float) -> tuple[pa.Table, int]:
    """Make ``fraction`` of the rows break the contract: half lose their user, half their timestamp."""
    n = t.num_rows
    bad = rng.random(n) < fraction
    half = rng.random(n) < 0.5
    no_user, bad_ts = bad & half, bad & ~half
    user = pc.if_else(pa.array(no_user), pa.scalar("", pa.string()), t["user_id"])
    ts = pc.if_else(pa.array(bad_ts), pa.scalar("soon", pa.string()), t["ts"])
    t = t.set_column(0, "user_id", user).set_column(3, "ts", ts)
    return t, int(bad.sum())


def generate(folder: Path, rows: int, files: int, dup_fraction: float, bad_fraction: float, seed: int) -> dict:
    """Write ``files`` daily CSV files holding ``rows`` data lines in all; returns what they hold."""
    rng = np.random.default_rng(seed)
    per_file = np.full(files, rows // files)
    per_file[: rows % files] += 1
    n_users = max(1, rows // 50)
    folder.mkdir(parents=True, exist_ok=True)
    opts = pacsv.WriteOptions(include_header=False, quoting_style="none")
    truth = {"rows": rows, "files": files, "duplicates": 0, "bad": 0}
    prev = None
    for d in range(files):
        n_dup = 0 if prev is None else min(int(per_file[d] * dup_fraction), prev.num_rows)
        day, bad = _break(rng, _day(rng, d, int(per_file[d]) - n_dup, n_users), bad_fraction)
        # The overlap repeats the previous day's last rows verbatim (bad ones included).
        t = day if n_dup == 0 else pa.concat_tables([prev.slice(prev.num_rows - n_dup), day])
        with open(folder / f"events-{d:04d}.csv", "wb") as f:
            f.write((",".join(COLUMNS) + "\n").encode())
            pacsv.write_csv(t, f, opts)
        overlap = prev.slice(prev.num_rows - n_dup) if n_dup else None
        truth["bad"] += bad + (0 if overlap is None else _bad_count(overlap))
        truth["duplicates"] += 0 if overlap is None else n_dup - _bad_count(overlap)
        prev = day
    (folder / "_truth.json").write_text(json.dumps(truth))
    return truth


def _bad_count(t: pa.Table) -> int:
    return int(pc.sum(pc.or_(pc.equal(t["user_id"], ""), pc.equal(t["ts"], "soon"))).as_py() or 0)


def run_ebbtide(spark, base_cfg, src: Path, root: Path, files_per_batch: int, glob: str = "*.csv") -> dict:
    import dataclasses

    from ebbtide import ingest
    from ebbtide.cli import Context
    from ebbtide.config import load_config

    shutil.rmtree(root, ignore_errors=True)
    cfg = load_config(env="local", overrides=[f"storage.root={root}", *base_cfg])
    cfg = dataclasses.replace(cfg, ingest=dataclasses.replace(cfg.ingest, max_files_per_trigger=files_per_batch))
    ctx = Context(cfg, _spark=spark)
    p = argparse.ArgumentParser()
    ingest.add_arguments(p)
    t0, c0 = time.perf_counter(), _jvm_cpu_s()
    s = ingest.run(ctx, p.parse_args(["--source", str(src), "--glob", glob]))
    s["seconds"], s["cpu_s"] = time.perf_counter() - t0, _jvm_cpu_s() - c0
    return s


def run_plain(spark, src: Path, root: Path, files_per_batch: int, glob: str = "*.csv") -> dict:
    from pyspark.sql import functions as F

    shutil.rmtree(root, ignore_errors=True)
    t0, c0 = time.perf_counter(), _jvm_cpu_s()
    df = (spark.readStream.schema(PLAIN_SCHEMA).option("header", True).option("maxFilesPerTrigger", files_per_batch)
          .csv(f"{src}/{glob}"))
    ts = F.timestamp_seconds("ts")
    out = df.select("user_id", "item_id", "event_type", ts.alias("ts"), F.to_date(ts).alias("event_date"),
                    "value", "category", F.col("_metadata.file_path").alias("source_file"),
                    F.current_timestamp().alias("ingested_at"))
    q = (out.writeStream.format("delta").partitionBy("event_date").outputMode("append")
         .option("checkpointLocation", str(root / "checkpoint")).trigger(availableNow=True)
         .start(str(root / "events")))
    q.awaitTermination()
    seconds, cpu = time.perf_counter() - t0, _jvm_cpu_s() - c0
    progress = [p for p in q.recentProgress if p["numInputRows"] > 0]
    rows = spark.read.format("delta").load(str(root / "events")).count()
    return {"seconds": seconds, "cpu_s": cpu, "rows": rows,
            "batch_seconds": [round(p["durationMs"]["triggerExecution"] / 1000, 2) for p in progress]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                epilog="Last stdout line: {\"bench\": \"ingest\", \"rows\", \"ebbtide_s\", \"plain_s\", "
                                       "\"ratio\", ...}; target ratio >= 0.6 at 5 M rows.")
    p.add_argument("--rows", type=int, default=5_000_000, help="data lines in all (default 5,000,000)")
    p.add_argument("--files", type=int, default=40, help="CSV files, one per UTC day (default 40)")
    p.add_argument("--batches", type=int, default=8, help="micro-batches the files arrive in (default 8)")
    p.add_argument("--dup-fraction", type=float, default=0.01,
                   help="share of each file that repeats the end of the previous day's file (default 0.01)")
    p.add_argument("--bad-fraction", type=float, default=0.001, help="share of rows that break the contract")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--repeat", type=int, default=1, help="timed runs of each side, taking turns; the best counts")
    p.add_argument("--no-warmup", dest="warmup", action="store_false", help="skip the untimed run on the first file")
    p.add_argument("--workdir", default=str(ROOT / ".ebbtide" / "bench" / "ingest"),
                   help="inputs (kept, reused) and runs (emptied) go here (default .ebbtide/bench/ingest)")
    p.add_argument("--keep", action="store_true", help="keep the tables of the last runs")
    p.add_argument("--lib", metavar="DIR", help="import ebbtide from DIR instead of lib/ (e.g. a checkout before a change)")
    p.add_argument("--set", action="append", default=[], dest="overrides", metavar="KEY=VALUE",
                   help="ebbtide config override, e.g. spark.shuffle_partitions=4 (also used for the session)")
    a = p.parse_args(argv)
    if a.lib:
        sys.path.insert(0, str(Path(a.lib).resolve()))
        os.environ.setdefault("EBBTIDE_CONF_DIR", str(ROOT / "conf"))  # this checkout's config
    if a.files % a.batches:
        p.error("--files must be a multiple of --batches (each micro-batch takes files / batches files)")
    per_batch = a.files // a.batches
    work = Path(a.workdir)
    src = work / f"data-{a.rows}-{a.files}-d{a.dup_fraction}-b{a.bad_fraction}-s{a.seed}"
    if not (src / "_truth.json").exists():
        shutil.rmtree(src, ignore_errors=True)
        t0 = time.perf_counter()
        generate(src, a.rows, a.files, a.dup_fraction, a.bad_fraction, a.seed)
        print(f"# generated {a.rows} rows in {a.files} files in {time.perf_counter() - t0:.1f} s -> {src}",
              file=sys.stderr)
    truth = json.loads((src / "_truth.json").read_text())

    import logging

    from ebbtide.config import load_config
    from ebbtide.log import setup_logging
    from ebbtide.spark import get_spark

    base = ["spark.master=local[2]", "spark.shuffle_partitions=4", "log_level=WARNING", *a.overrides]
    runs = work / "runs"
    shutil.rmtree(runs, ignore_errors=True)
    setup_logging("WARNING")
    logging.getLogger("ebbtide.ingest").setLevel(logging.INFO)  # its one line per micro-batch, with seconds
    t0 = time.perf_counter()
    spark = get_spark(load_config(env="local", overrides=[f"storage.root={runs / 'session'}", *base]))
    spark.range(1).count()
    startup = time.perf_counter() - t0
    try:
        if a.warmup:
            t0 = time.perf_counter()
            first = sorted(src.glob("*.csv"))[0].name
            one = f"{first[:-1]}[{first[-1]}]"  # a glob, as a file stream source needs, matching only that file
            run_ebbtide(spark, base, src, runs / "warmup-ebbtide", 1, one)
            run_plain(spark, src, runs / "warmup-plain", 1, one)
            print(f"# warm-up on {first}: {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        eb, pl = [], []
        for r in range(a.repeat):
            e = run_ebbtide(spark, base, src, runs / "ebbtide", per_batch)
            pp = run_plain(spark, src, runs / "plain", per_batch)
            eb.append(e)
            pl.append(pp)
            print(f"# run {r + 1}: ebbtide {e['seconds']:.1f} s ({e['cpu_s']:.1f} JVM cpu-s), "
                  f"plain {pp['seconds']:.1f} s ({pp['cpu_s']:.1f} JVM cpu-s)", file=sys.stderr)
            for i, (es, ps) in enumerate(zip(e.get("batch_seconds", []), pp["batch_seconds"])):
                print(f"#   batch {i}: ebbtide {es:.2f} s, plain {ps:.2f} s", file=sys.stderr)
        e = min(eb, key=lambda x: x["seconds"])
        pp = min(pl, key=lambda x: x["seconds"])
        expect_bronze = truth["rows"] - truth["bad"] - truth["duplicates"]
        ok = (e["rows_read"], e["bronze_new"], e["quarantined"], e["duplicates"]) == (
            truth["rows"], expect_bronze, truth["bad"], truth["duplicates"]) and pp["rows"] == truth["rows"]
        line = {
            "bench": "ingest", "rows": a.rows, "ebbtide_s": round(e["seconds"], 2), "plain_s": round(pp["seconds"], 2),
            "ratio": round(pp["seconds"] / e["seconds"], 3),
            "files": a.files, "batches": e["batches"], "bronze_new": e["bronze_new"],
            "quarantined": e["quarantined"], "duplicates": e["duplicates"], "plain_rows": pp["rows"],
            "counts_ok": ok, "ebbtide_batch_s": e.get("batch_seconds"), "plain_batch_s": pp["batch_seconds"],
            "ebbtide_cpu_s": round(e["cpu_s"], 1), "plain_cpu_s": round(pp["cpu_s"], 1),
            "cpu_ratio": round(pp["cpu_s"] / max(e["cpu_s"], 1e-9), 3),
            "runs_ebbtide_s": [round(x["seconds"], 2) for x in eb], "runs_plain_s": [round(x["seconds"], 2) for x in pl],
            "spark_startup_s": round(startup, 2), "load_avg_1m": round(os.getloadavg()[0], 2),
        }
        print(json.dumps(line), flush=True)
        spark.stop()
    finally:
        if not a.keep:
            shutil.rmtree(runs, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
