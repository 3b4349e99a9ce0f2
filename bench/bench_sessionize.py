"""Sessionize benchmark: ebbtide's Spark transform against DuckDB on the same generated events.

Events are generated once per size with numpy (users with bursts of activity separated by
longer idle gaps, a few equal timestamps) and written as Parquet in bronze_events' shape,
sorted by time as a log would be. Then, in one process, for each size:

(a) ebbtide: `sessionize_events` + `summarize_sessions` on Spark `local[2]` (the session
    from `ebbtide.spark.get_spark`), reading that Parquet and writing silver_events (Parquet,
    laid out by user as the job does: `sessionize.by_user`) and silver_sessions (Parquet): the
    job's logic and output shape,
    without Delta's commit bookkeeping so that both engines write the same kind of files;
(b) DuckDB: the same logic in SQL (same window order, same gap rule), writing the same two
    outputs the same way (silver_events ordered by user_id, ts, event_id).

Both must agree on the number of events and sessions. One JSON line per size; the last line
is the largest size. Spark start-up is timed once and reported separately.

    .venv/bin/python bench/bench_sessionize.py              # 1 M, then 5 M events (5 M twice)
    .venv/bin/python bench/bench_sessionize.py --sizes 200000 --repeat 1
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "lib"))

GAP_MINUTES = 30.0
START_US = 1_735_689_600 * 1_000_000  # 2025-01-01T00:00:00Z
EVENT_TYPES = np.array(["view", "click", "cart", "purchase"])


def generate(n_events: int, seed: int = 7) -> pa.Table:
    """About ``n_events`` bronze-shaped events: ~100 per user, in sessions of ~8 events."""
    rng = np.random.default_rng(seed)
    n_users = max(1, n_events // 100)
    # Session lengths (geometric, mean 8) until the budget is used.
    n_sessions = int(n_events / 8 * 1.05) + 10
    sess_len = rng.geometric(1 / 8, n_sessions)
    csum = np.cumsum(sess_len)
    n_sessions = int(np.searchsorted(csum, n_events)) + 1
    sess_len = sess_len[:n_sessions]
    sess_len[-1] -= int(csum[n_sessions - 1] - n_events)
    sess_len = sess_len[sess_len > 0]
    n = int(sess_len.sum())
    sess_user = np.sort(rng.integers(0, n_users, len(sess_len)))  # a user's sessions are contiguous
    ev_sess = np.repeat(np.arange(len(sess_len)), sess_len)
    ev_user = sess_user[ev_sess]
    # In-session gaps: exponential, mean 90 s, whole seconds (so some events tie).
    # Between sessions: exponential, mean 1.5 days, at least 31 minutes.
    gaps = np.floor(rng.exponential(90.0, n)).astype(np.int64)
    first_in_sess = np.r_[True, ev_sess[1:] != ev_sess[:-1]]
    gaps[first_in_sess] = (31 * 60 + rng.exponential(1.5 * 86400, int(first_in_sess.sum()))).astype(np.int64)
    first_of_user = np.r_[True, ev_user[1:] != ev_user[:-1]]
    # Restart the running sum at each user: their first event lands in the first 30 days.
    offs = np.cumsum(gaps)
    base = np.maximum.accumulate(np.where(first_of_user, offs, 0))
    user_start = rng.integers(0, 30 * 86400, n_users)
    ts_s = offs - base + user_start[ev_user]
    ts_us = START_US + ts_s * 1_000_000
    order = np.argsort(ts_us, kind="stable")  # a log arrives in time order
    ts_us, ev_user = ts_us[order], ev_user[order]

    def ids(prefix: str, x: np.ndarray) -> pa.Array:
        return pc.binary_join_element_wise(prefix, pc.cast(pa.array(x), pa.string()), "")

    ts = pa.array(ts_us, pa.timestamp("us", tz="UTC"))
    item = rng.zipf(1.3, n) % 50_000
    return pa.table({
        "event_id": ids("e", rng.permutation(n).astype(np.int64)),
        "user_id": ids("u", ev_user),
        "item_id": ids("i", item),
        "event_type": pa.array(EVENT_TYPES[rng.choice(4, n, p=[0.7, 0.2, 0.07, 0.03])]),
        "ts": ts,
        "event_date": pc.cast(ts, pa.date32()),
        "value": pa.array(np.where(rng.random(n) < 0.5, np.round(rng.random(n) * 5, 1), np.nan)),
        "category": ids("c", item % 200),
        "source_session_id": pa.nulls(n, pa.string()),
        "ingest_run_id": pa.array(np.full(n, "bench")),
        "ingested_at": ts,
    })


def duckdb_sql(src: str, events_out: str, sessions_out: str) -> list[str]:
    gap_us = int(GAP_MINUTES * 60 * 1_000_000)
    return [
        f"""CREATE OR REPLACE TEMP TABLE ev AS
        WITH g AS (
            SELECT *, epoch_us(ts) - lag(epoch_us(ts)) OVER w AS gap_us,
                   (row_number() OVER w - 1)::INT AS event_seq
            FROM read_parquet('{src}/*.parquet')
            WINDOW w AS (PARTITION BY user_id ORDER BY ts, event_id)
        ), s AS (
            SELECT *, (gap_us IS NULL OR gap_us > {gap_us}) AS is_session_start FROM g
        ), t AS (
            SELECT *, (sum(is_session_start::INT) OVER (PARTITION BY user_id ORDER BY ts, event_id
                       ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) - 1)::INT AS session_index
            FROM s
        )
        SELECT event_id, user_id, item_id, event_type, ts, event_date, value, category,
               source_session_id, ingest_run_id, ingested_at,
               user_id || '#' || session_index::VARCHAR AS session_id, session_index, event_seq,
               gap_us / 1e6 AS gap_s, is_session_start, now() AS processed_at
        FROM t""",
        f"COPY (SELECT * FROM ev ORDER BY user_id, ts, event_id) TO '{events_out}' (FORMAT parquet)",
        f"""COPY (
            SELECT user_id, session_id, session_index, min(ts) AS start_ts, max(ts) AS end_ts,
                   (epoch_us(max(ts)) - epoch_us(min(ts))) / 1e6 AS duration_s,
                   count(*)::INT AS n_events, count(DISTINCT item_id)::INT AS n_items,
                   list_sort(list(DISTINCT event_type)) AS event_types, now() AS processed_at
            FROM ev GROUP BY user_id, session_id, session_index
        ) TO '{sessions_out}' (FORMAT parquet)""",
    ]


def run_duckdb(src: str, out: Path) -> tuple[float, int, int]:
    import duckdb

    con = duckdb.connect()
    con.execute("SET threads = 2")
    con.execute("SET preserve_insertion_order = false")
    out.mkdir(parents=True, exist_ok=True)
    t0, c0 = time.perf_counter(), time.process_time()
    for q in duckdb_sql(src, str(out / "events.parquet"), str(out / "sessions.parquet")):
        con.execute(q)
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    n_ev = con.execute(f"SELECT count(*) FROM read_parquet('{out}/events.parquet')").fetchone()[0]
    n_ss = con.execute(f"SELECT count(*) FROM read_parquet('{out}/sessions.parquet')").fetchone()[0]
    con.close()
    return elapsed, cpu, n_ev, n_ss


def _jvm_cpu_s() -> float:
    """CPU seconds used so far by the local Spark JVM (a child of this process)."""
    import subprocess

    total = 0.0
    for pid in subprocess.run(["pgrep", "-P", str(os.getpid()), "java"], capture_output=True, text=True).stdout.split():
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def run_spark(spark, src: str, out: Path) -> tuple[float, float, int, int]:
    import datetime as dt

    from ebbtide.sessionize import by_user, sessionize_events, summarize_sessions, with_processed_at

    now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    t0, c0 = time.perf_counter(), _jvm_cpu_s()
    bronze = spark.read.parquet(src)
    events = with_processed_at(sessionize_events(by_user(bronze), GAP_MINUTES), now)
    events.write.mode("overwrite").parquet(str(out / "events"))
    silver = by_user(spark.read.parquet(str(out / "events")))
    sessions = with_processed_at(summarize_sessions(silver), now)
    sessions.write.mode("overwrite").parquet(str(out / "sessions"))
    elapsed, cpu = time.perf_counter() - t0, _jvm_cpu_s() - c0
    n_ev = spark.read.parquet(str(out / "events")).count()
    n_ss = spark.read.parquet(str(out / "sessions")).count()
    return elapsed, cpu, n_ev, n_ss


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="1000000,5000000", help="comma-separated event counts, largest last")
    p.add_argument("--repeat", type=int, default=2, help="timed runs of the largest size (each engine)")
    p.add_argument("--workdir", default=None, help="where inputs and outputs go (default: a temp folder)")
    p.add_argument("--keep", action="store_true", help="keep the work folder")
    p.add_argument("--set", action="append", default=[], dest="overrides", metavar="KEY=VALUE",
                   help="ebbtide config override for the Spark side, e.g. spark.shuffle_partitions=4")
    a = p.parse_args(argv)
    sizes = [int(s) for s in a.sizes.split(",")]
    work = Path(a.workdir or tempfile.mkdtemp(prefix="bench-sessionize-"))
    work.mkdir(parents=True, exist_ok=True)

    from ebbtide.config import load_config
    from ebbtide.log import setup_logging
    from ebbtide.spark import get_spark

    cfg = load_config(env="local", overrides=[
        f"storage.root={work}/root", "spark.master=local[2]", "spark.shuffle_partitions=4", *a.overrides,
    ])
    setup_logging("WARNING")
    try:
        inputs = {}
        for n in sizes:
            src = work / f"events-{n}"
            if not src.exists():
                t0 = time.perf_counter()
                tbl = generate(n)
                src.mkdir()
                # Several files, as a day's ingest would leave them.
                step = -(-tbl.num_rows // 8)
                for i in range(0, tbl.num_rows, step):
                    pq.write_table(tbl.slice(i, step), src / f"part-{i // step:03d}.parquet")
                print(f"# generated {tbl.num_rows} events in {time.perf_counter() - t0:.1f} s -> {src}", file=sys.stderr)
            inputs[n] = str(src)

        t0 = time.perf_counter()
        spark = get_spark(cfg)
        spark.range(1).count()
        startup = time.perf_counter() - t0

        for i, n in enumerate(sizes):
            reps = a.repeat if i == len(sizes) - 1 else 1
            sp, dd, spc, ddc = [], [], [], []
            for r in range(reps):
                out = work / f"out-{n}"
                shutil.rmtree(out, ignore_errors=True)
                out.mkdir()
                d_s, d_c, d_ev, d_ss = run_duckdb(inputs[n], out / "duckdb")
                s_s, s_c, s_ev, s_ss = run_spark(spark, inputs[n], out / "spark")
                assert (s_ev, s_ss) == (d_ev, d_ss), f"engines disagree: spark {s_ev}/{s_ss}, duckdb {d_ev}/{d_ss}"
                print(f"# {n} events run {r + 1}: ebbtide {s_s:.2f} s ({s_c:.1f} cpu-s), duckdb {d_s:.2f} s ({d_c:.1f} cpu-s), "
                      f"{s_ev} events, {s_ss} sessions", file=sys.stderr)
                sp.append(s_s)
                dd.append(d_s)
                spc.append(s_c)
                ddc.append(d_c)
            e, d = min(sp), min(dd)
            line = {"bench": "sessionize", "events": n, "ebbtide_s": round(e, 2), "duckdb_s": round(d, 2),
                    "ratio": round(e / d, 2), "spark_startup_s": round(startup, 2), "sessions": s_ss,
                    "runs_ebbtide_s": [round(x, 2) for x in sp], "runs_duckdb_s": [round(x, 2) for x in dd],
                    "ebbtide_cpu_s": round(min(spc), 2), "duckdb_cpu_s": round(min(ddc), 2),
                    "cpu_ratio": round(min(spc) / max(min(ddc), 1e-9), 2), "load_avg_1m": round(os.getloadavg()[0], 1)}
            print(json.dumps(line), flush=True)
        spark.stop()
    finally:
        if not a.keep and not a.workdir:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
