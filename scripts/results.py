"""`make results`: ebbtide against every baseline and RecBole's GRU4Rec and SASRec on real data.

For each dataset (MovieLens latest-small from ../shared/data, MovieLens-100k from the recbole
wheel) it runs ingest -> sessionize -> sequences (global temporal split), then for each seed
trains ebbtide and runs `ebbtide evaluate` on the test split (full ranking; the baselines are
fitted in the same run), exports the very same train split to a RecBole atomic file, trains
GRU4Rec and SASRec in RecBole's own environment (scripts/setup_recbole.sh) and ranks the very
same test examples with them through ebbtide's metric code (scripts/recbole_peer.py).
Writes docs/results.md; the last line printed is one JSON object:
{"bench": "results", "ndcg@10": {DATASET: {MODEL: mean}}, "recall@10": {...}, "churn_auc": {...}}
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
ML_SMALL = ROOT.parent / "shared" / "data" / "ml-latest-small"
PEERS = ("GRU4Rec", "SASRec")


def _recbole_python(log) -> str:
    out = subprocess.run(["bash", str(ROOT / "scripts" / "setup_recbole.sh")], check=True,
                         capture_output=True, text=True)
    py = out.stdout.strip().splitlines()[-1]
    log.info("RecBole environment: %s", py)
    return py


def _ml100k_inter(recbole_py: str) -> Path:
    """MovieLens-100k as RecBole ships it inside its wheel (its licence forbids copying it here)."""
    d = subprocess.run([recbole_py, "-c", "import os, recbole; print(os.path.dirname(recbole.__file__))"],
                       check=True, capture_output=True, text=True).stdout.strip()
    return Path(d) / "dataset_example" / "ml-100k" / "ml-100k.inter"


def export_for_recbole(spark, cfg, out_dir: Path, t1) -> tuple[Path, int]:
    """The train split's events (ts < T1) as a RecBole atomic file, items as ebbtide's indices and
    time as the position in ebbtide's (ts, event_id) order; and the test examples as numpy."""
    from pyspark.sql import functions as F

    from ebbtide import tables
    from ebbtide.evaluation import protocols as P

    out_dir.mkdir(parents=True, exist_ok=True)
    vocab = tables.read(spark, cfg, "gold_item_vocab").select("item_id", "item_index")
    ev = (tables.read(spark, cfg, "silver_events").filter(F.col("ts") < F.lit(t1))
          .join(vocab, "item_id").select("user_id", "item_index", "event_seq").toPandas())
    inter = out_dir / f"{out_dir.name}.inter"
    with open(inter, "w") as f:
        f.write("user_id:token\titem_id:token\ttimestamp:float\n")
        for u, i, s in ev.sort_values(["user_id", "event_seq"]).itertuples(index=False):
            f.write(f"{u}\t{i}\t{s}\n")
    n_items = int(tables.read(spark, cfg, "gold_item_vocab").agg(F.max("item_index")).collect()[0][0]) + 1
    ex = P.evaluation_rows(tables.read(spark, cfg, "gold_training_examples"), "test") \
        .select("example_id", "item_idx", "target_item").orderBy("example_id").toPandas()
    np.savez(out_dir / "examples.npz", item_idx=np.stack([np.asarray(v, np.int64) for v in ex["item_idx"]]),
             targets=ex["target_item"].to_numpy().astype(np.int64), n_items=n_items)
    return inter, len(ev)


def _agg(values: list[float]) -> tuple[float, float]:
    a = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=float)
    if not len(a):
        return float("nan"), float("nan")
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", default="ml-latest-small,ml-100k", help="comma-separated (default both)")
    p.add_argument("--seeds", type=int, default=3, help="seeds per model (default 3)")
    p.add_argument("--epochs", type=int, default=8, help="ebbtide training epochs (early stopping applies)")
    p.add_argument("--recbole-epochs", type=int, default=20, help="RecBole epochs (early stopping applies)")
    p.add_argument("--skip-recbole", action="store_true", help="ebbtide and baselines only")
    p.add_argument("--root", default=str(ROOT / ".ebbtide" / "results"), help="storage root per dataset under it")
    p.add_argument("--out", default=str(ROOT / "docs" / "results.md"))
    p.add_argument("--keep-history", action="store_true",
                   help="rank the items already in the window too (MovieLens has no repeat ratings, so by "
                        "default every model's ranking excludes them, as RecBole's own full ranking does)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="config override for every ebbtide stage, e.g. train.threads_per_proc=1 (repeatable)")
    args = p.parse_args()

    sys.path.insert(0, str(ROOT / "lib"))
    from ebbtide.cli import Context, run_stage
    from ebbtide.config import load_config
    from ebbtide.log import get_logger, setup_logging

    setup_logging("INFO")
    log = get_logger("results")
    t_start = time.perf_counter()
    recbole_py = None if args.skip_recbole else _recbole_python(log)
    seeds = [42 + i for i in range(args.seeds)]
    # dataset -> model -> metric -> [per seed]
    res: dict[str, dict[str, dict[str, list[float]]]] = {}
    info: dict[str, dict] = {}
    spark = None
    for ds in [d.strip() for d in args.datasets.split(",") if d.strip()]:
        root = Path(args.root) / ds
        base = [f"storage.root={root}", f"evaluate.exclude_history={'false' if args.keep_history else 'true'}", *args.sets]
        cfg = load_config(env="local", overrides=base)
        ctx = Context(cfg, _spark=spark)
        if ds == "ml-latest-small":
            source = ["--source", str(ML_SMALL / "ratings.csv"), "--adapter", "movielens"]
        elif ds == "ml-100k":
            if recbole_py is None:
                recbole_py = _recbole_python(log)
            source = ["--source", str(_ml100k_inter(recbole_py)), "--adapter", "recbole_inter"]
        else:
            raise SystemExit(f"unknown dataset {ds!r}; choose ml-latest-small, ml-100k")
        t0 = time.perf_counter()
        for stage, argv in (("ingest", source), ("sessionize", []), ("sequences", [])):
            s = run_stage(stage, argv, ctx)
            if stage == "sequences":
                info[ds] = {k: s.get(k) for k in ("events", "users", "item_vocab_size", "valid_start", "test_start", "end", "examples")}
        spark = ctx.spark
        info[ds]["etl_s"] = round(time.perf_counter() - t0, 1)
        out: dict[str, dict[str, list[float]]] = {}

        def add(model, metric, v):
            out.setdefault(model, {}).setdefault(metric, []).append(v)

        for seed in seeds:
            sctx = Context(load_config(env="local", overrides=[*base, f"train.seed={seed}"]), _spark=spark)
            t0 = time.perf_counter()
            tr = run_stage("train", ["--launcher", "local", "--epochs", str(args.epochs), "--no-resume"], sctx)
            train_s = time.perf_counter() - t0
            ev = run_stage("evaluate", ["--model-uri", tr["model_uri"], "--no-champion", "--no-promote"], sctx)
            for model, v in ev["ndcg@10"].items():
                add(model, "ndcg@10", v)
                add(model, "recall@10", ev["recall@10"][model])
            for model, v in (ev.get("churn_roc_auc_7d") or {}).items():
                add(model, "churn_auc", v)
            add("ebbtide", "train_s", train_s)
            info[ds]["examples_evaluated"] = ev["examples"]
        res[ds] = out
        write_markdown(Path(args.out), res, info, args, seeds, time.perf_counter() - t_start)

        if recbole_py:
            from ebbtide.sequences import read_cutoffs

            cut = read_cutoffs(spark, cfg)
            peer_dir = root / "recbole" / f"{ds}-peer"
            inter, n_ev = export_for_recbole(spark, cfg, peer_dir, cut["valid_start"].replace(tzinfo=None))
            info[ds]["recbole_train_events"] = n_ev
            env = dict(os.environ, TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD="1")
            for model in PEERS:
                for seed in seeds:
                    cmd = [recbole_py, str(ROOT / "scripts" / "recbole_peer.py"), "--data", str(peer_dir),
                           "--model", model, "--seed", str(seed), "--epochs", str(args.recbole_epochs),
                           *([] if args.keep_history else ["--exclude-history"])]
                    log.info("RecBole %s seed %d on %s", model, seed, ds)
                    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
                    if r.returncode != 0:
                        log.error("RecBole %s failed:\n%s", model, r.stderr[-3000:])
                        continue
                    m = json.loads(r.stdout.strip().splitlines()[-1])
                    add(model, "ndcg@10", m["ndcg@10"])
                    add(model, "recall@10", m["recall@10"])
                    add(model, "train_s", m["fit_s"])
        res[ds] = out
        # After every dataset, so a long run that dies later still leaves what it measured.
        write_markdown(Path(args.out), res, info, args, seeds, time.perf_counter() - t_start)
    summary = {"bench": "results"}
    for metric, key in (("ndcg@10", "ndcg@10"), ("recall@10", "recall@10"), ("churn_auc", "churn_auc")):
        summary[key] = {ds: {m: round(_agg(v[metric])[0], 4) for m, v in models.items() if metric in v}
                        for ds, models in res.items()}
    print(json.dumps(summary))
    return 0


def write_markdown(path: Path, res, info, args, seeds, seconds: float) -> None:
    lines = [
        "# Results: ebbtide against baselines and RecBole",
        "",
        "Produced by `make results` (scripts/results.py); do not edit by hand. Temporal split "
        "(train before T1, test after T2, cut-offs from `sequences.split` quantiles), full-catalogue "
        "ranking of every test example's next item, every model scored by ebbtide's metric code "
        f"(ties averaged; {'window items ranked too' if args.keep_history else 'items already in the input window excluded from every ranking'}). "
        "Mean ± standard deviation over seeds "
        f"{', '.join(map(str, seeds))}; baselines are deterministic.",
        "",
        f"Settings: ebbtide epochs {args.epochs}, RecBole epochs {args.recbole_epochs} "
        f"(early stopping on its own hold-out of the train split), machine {platform.machine()} "
        f"with {os.cpu_count()} cores, total {seconds / 60:.1f} min.",
    ]
    for ds, models in res.items():
        lines += ["", f"## {ds}", ""]
        i = info.get(ds, {})
        lines.append(
            f"{i.get('events')} events, {i.get('users')} users, {i.get('item_vocab_size')} items; "
            f"valid from {i.get('valid_start')}, test from {i.get('test_start')} to {i.get('end')}; "
            f"{i.get('examples_evaluated')} test examples."
        )
        lines += ["", "| model | NDCG@10 | Recall@10 | churn ROC-AUC (7 d) | train s |", "|---|---|---|---|---|"]
        order = sorted(models, key=lambda m: -_agg(models[m].get("ndcg@10", []))[0] if models[m].get("ndcg@10") else 1)
        for m in order:
            v = models[m]
            cells = []
            for metric in ("ndcg@10", "recall@10", "churn_auc", "train_s"):
                if metric not in v:
                    cells.append("-")
                    continue
                mean, sd = _agg(v[metric])
                cells.append(f"{mean:.1f}" if metric == "train_s" else f"{mean:.4f} ± {sd:.4f}")
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
    lines += ["", "Churn ROC-AUC: P(return within 7 days) as of the test cut date, one row per user; "
              "RecBole models have no return-time head."]
    path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
