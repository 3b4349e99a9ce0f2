"""`make bench-score`: the Spark scoring plumbing against the bare arithmetic it wraps.

For each catalogue size, the same user and item embeddings are scored two ways:
(a) through the scoring job's plumbing on Spark `local[2]`: users read from Parquet, the
    job's ``inference.score_fn`` over Arrow batches in ``mapInArrow`` (model cached per worker,
    batched matrix product, masking, top-k, item ids; one row per (user, rank), with the churn
    columns null: the embedding scorer has no churn read-out), the job's
    ``transform.recommendations`` and lineage, and the job's publish (``scoring.run.publish``: one
    replaceWhere commit of the score date into gold_recommendations, with the table's declared
    statistics columns), as a night after the first writes it;
(b) the bare batched matrix product plus top-k in this one process, same batch sizes.
ratio = (a) users/s / (b) users/s over the medians of --rounds timed rounds, (a) and (b)
interleaved; the target is 0.5 or more. Excluded, as the nightly job pays them once: Spark
start-up; the workers' start, their first load of torch and of the item matrix, and the table's
creation (a warm-up on two users that publishes another date); and the first full-size run, in
which the JVM compiles the plan's generated code and the Parquet and Delta write paths (at 10 k
items about 9 JVM CPU-seconds more than each later run; a night of many more users pays it once).
That first run's seconds are reported as first_spark_s.

The last line is one JSON object: {"bench": "score", "users": ..., "runs": [...]}.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "lib"))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--users", type=int, default=100_000)
    p.add_argument("--items", default="10000,100000", help="comma-separated catalogue sizes")
    p.add_argument("--dim", type=int, default=64, help="embedding size")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--batch-users", type=int, default=512)
    p.add_argument("--max-batch-mfloats", type=float, default=32.0)
    p.add_argument("--rounds", type=int, default=3,
                   help="timed rounds per catalogue size after the warm-ups, Spark and bare interleaved; "
                        "the figures are their medians (default 3)")
    p.add_argument("--workdir", default=None, help="scratch folder (default: a temporary one)")
    return p.parse_args(argv)


def bare(users: np.ndarray, items: np.ndarray, k: int, batch_users: int, max_mfloats: float) -> float:
    """Batched matrix product + top-k in one process (torch's default threads); returns seconds."""
    import torch

    rows = max(1, min(batch_users, int(max_mfloats * 1e6 // items.shape[0])))
    it = torch.from_numpy(items).t().contiguous()
    u = torch.from_numpy(users)
    t0 = time.perf_counter()
    for s in range(0, u.shape[0], rows):
        scores = u[s : s + rows] @ it
        scores[:, :2] = -float("inf")  # pad and OOV, as the job masks them
        torch.topk(scores, k, dim=1)
    return time.perf_counter() - t0


def main(argv=None) -> int:
    args = parse_args(argv)
    import pyarrow as pa
    import pyarrow.parquet as pq
    from pyspark.sql import functions as F

    from ebbtide import tables
    from ebbtide.config import load_config
    from ebbtide.log import get_logger, setup_logging
    from ebbtide.scoring import inference
    from ebbtide.scoring import transform as T
    from ebbtide.scoring.run import publish
    from ebbtide.scoring.views import RECOMMENDATIONS
    from ebbtide.spark import get_spark

    setup_logging("WARNING")
    log = get_logger("bench.score")
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-score-"))
    work.mkdir(parents=True, exist_ok=True)
    cfg = load_config(env="local", overrides=[
        f"storage.root={work}", "spark.master=local[2]", "spark.shuffle_partitions=2",
        "storage.database=bench_score",
    ])
    t0 = time.perf_counter()
    spark = get_spark(cfg)
    startup_s = time.perf_counter() - t0

    rng = np.random.default_rng(0)
    users = rng.standard_normal((args.users, args.dim), dtype=np.float32)
    # Two files -> two tasks, one per core of local[2].
    udir = work / "users"
    udir.mkdir(exist_ok=True)
    half = args.users // 2
    for i, (a, b) in enumerate([(0, half), (half, args.users)]):
        vec = pa.FixedSizeListArray.from_arrays(pa.array(users[a:b].ravel()), args.dim).cast(pa.list_(pa.float32()))
        ids = pa.array([f"u{j}" for j in range(a, b)])
        pq.write_table(pa.table({"user_id": ids, "user_vec": vec}), udir / f"part-{i}.parquet")
    user_df = spark.read.parquet(str(udir))

    def spark_path(item_path: str, df, score_date: dt.date) -> float:
        fn = inference.score_fn(
            item_path, k=args.k, churn=False, loader=inference.load_embeddings, exclude_consumed=False,
            batch_users=args.batch_users, max_batch_mfloats=args.max_batch_mfloats, torch_threads=1,
        )
        lineage = dict(score_date=score_date, model_name="bench", model_version=1, run_id="bench",
                       scored_at=dt.datetime(2025, 1, 1))
        t = time.perf_counter()
        recs = T.recommendations(df.mapInArrow(fn, inference.SCORED_DDL), lineage)
        publish(spark, cfg, recs, RECOMMENDATIONS, score_date)
        return time.perf_counter() - t

    runs = []
    day = dt.date(2025, 1, 1)
    for n_items in [int(x) for x in args.items.split(",")]:
        items = rng.standard_normal((n_items, args.dim), dtype=np.float32)
        item_path = str(work / f"items-{n_items}.npy")
        np.save(item_path, items)
        # Warm-up: both workers (one user from each file) start, import torch and load the item
        # matrix once, as the job does on its first batch.
        spark_path(item_path, user_df.where(F.col("user_id").isin("u0", f"u{half}")), day)
        day += dt.timedelta(days=1)
        first_s = spark_path(item_path, user_df, day)
        written = tables.read(spark, cfg, RECOMMENDATIONS).where(F.col("score_date") == F.lit(day)).count()
        day += dt.timedelta(days=1)
        if written != args.users * args.k:
            raise RuntimeError(f"spark path wrote {written} rows, expected {args.users * args.k}")
        spark_runs, bare_runs = [], []
        for _ in range(args.rounds):
            spark_runs.append(spark_path(item_path, user_df, day))
            day += dt.timedelta(days=1)
            bare_runs.append(bare(users, items, args.k, args.batch_users, args.max_batch_mfloats))
        spark_s, bare_s = float(np.median(spark_runs)), float(np.median(bare_runs))
        run = {
            "items": n_items,
            "users_per_s": round(args.users / spark_s, 1),
            "bare_users_per_s": round(args.users / bare_s, 1),
            "ratio": round(bare_s / spark_s, 3),
            "spark_s": round(spark_s, 2),
            "bare_s": round(bare_s, 2),
            "spark_rounds_s": [round(x, 2) for x in spark_runs],
            "bare_rounds_s": [round(x, 2) for x in bare_runs],
            "first_spark_s": round(first_s, 2),
        }
        log.warning("%s", run)
        print(json.dumps({"bench": "score", "users": args.users, **run}), flush=True)
        runs.append(run)
    print(json.dumps({
        "bench": "score", "users": args.users, "dim": args.dim, "k": args.k, "master": "local[2]",
        "spark_startup_s": round(startup_s, 1), "cpus": os.cpu_count(), "runs": runs,
    }))
    spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
