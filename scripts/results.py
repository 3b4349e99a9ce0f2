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


METRICS = ("ndcg@10", "recall@10", "mrr@10")


def run_dataset(ds: str, args, log, spark=None):
    """ETL, ebbtide x seeds (+ the baselines in each evaluate), RecBole peers, for one dataset.
    Returns (results, info, spark); results is model -> metric -> [one value per seed]."""
    from ebbtide.cli import Context, run_stage
    from ebbtide.config import load_config

    root = Path(args.root) / ds
    base = [f"storage.root={root}", f"evaluate.exclude_history={'false' if args.keep_history else 'true'}", *args.sets]
    cfg = load_config(env="local", overrides=base)
    ctx = Context(cfg, _spark=spark)
    recbole_py = None if args.skip_recbole else _recbole_python(log)
    if ds == "ml-latest-small":
        source = ["--source", str(ML_SMALL / "ratings.csv"), "--adapter", "movielens"]
    elif ds == "ml-100k":
        source = ["--source", str(_ml100k_inter(recbole_py or _recbole_python(log))), "--adapter", "recbole_inter"]
    else:
        raise SystemExit(f"unknown dataset {ds!r}; choose ml-latest-small, ml-100k")
    info: dict = {}
    (root / "results.json").unlink(missing_ok=True)  # a report mid-run must not show an older run's figures
    t0 = time.perf_counter()
    for stage, argv in (("ingest", source), ("sessionize", []), ("sequences", [])):
        s = run_stage(stage, argv, ctx)
        if stage == "sequences":
            info = {k: s.get(k) for k in ("events", "users", "item_vocab_size", "valid_start", "test_start", "end", "examples")}
    spark = ctx.spark
    info["etl_s"] = round(time.perf_counter() - t0, 1)
    out: dict[str, dict[str, list[float]]] = {}

    def add(model, metric, v):
        out.setdefault(model, {}).setdefault(metric, []).append(v)

    for seed in [42 + i for i in range(args.seeds)]:
        sctx = Context(load_config(env="local", overrides=[*base, f"train.seed={seed}"]), _spark=spark)
        t0 = time.perf_counter()
        tr = run_stage("train", ["--launcher", "local", "--epochs", str(args.epochs), "--no-resume"], sctx)
        train_s = time.perf_counter() - t0
        ev = run_stage("evaluate", ["--model-uri", tr["model_uri"], "--no-champion", "--no-promote"], sctx)
        for metric in METRICS:
            for model, v in ev[metric].items():
                add(model, metric, v)
        for model, v in (ev.get("churn_roc_auc_7d") or {}).items():
            add(model, "churn_auc", v)
        add("ebbtide", "train_s", train_s)
        info["examples_evaluated"] = ev["examples"]
    _save(root, out, info)

    if recbole_py:
        from ebbtide.sequences import read_cutoffs

        cut = read_cutoffs(spark, cfg)
        peer_dir = root / "recbole" / f"{ds}-peer"
        _, info["recbole_train_events"] = export_for_recbole(spark, cfg, peer_dir, cut["valid_start"].replace(tzinfo=None))
        env = dict(os.environ, TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD="1")
        for model in PEERS:
            for seed in [42 + i for i in range(args.recbole_seeds)]:
                cmd = [recbole_py, str(ROOT / "scripts" / "recbole_peer.py"), "--data", str(peer_dir),
                       "--model", model, "--seed", str(seed), "--epochs", str(args.recbole_epochs),
                       "--threads", str(args.threads), *([] if args.keep_history else ["--exclude-history"])]
                log.info("RecBole %s seed %d on %s (at most %d epochs)", model, seed, ds, args.recbole_epochs)
                r = subprocess.run(cmd, capture_output=True, text=True, env=env)
                if r.returncode != 0:
                    log.error("RecBole %s failed:\n%s", model, r.stderr[-3000:])
                    continue
                m = json.loads(r.stdout.strip().splitlines()[-1])
                log.info("RecBole %s seed %d on %s: NDCG@10 %.4f, %d epochs (best %d), %.0f s", model, seed, ds,
                         m["ndcg@10"], m["epochs_run"], m["best_epoch"], m["fit_s"])
                for metric in METRICS:
                    add(model, metric, m[metric])
                add(model, "train_s", m["fit_s"])
                add(model, "epochs_run", m["epochs_run"])
                add(model, "best_epoch", m["best_epoch"])
                add(model, "stopped_early", float(m["stopped_early"]))
            _save(root, out, info)
    return out, info, spark


def _save(root: Path, out, info) -> None:
    """Each dataset's raw results beside its tables: the report is rebuilt from these, so a run that
    dies later, or a lane run in another process, still contributes what it measured."""
    (root / "results.json").write_text(json.dumps({"results": out, "info": info}, default=str, indent=1))


def _load_saved(root: Path, datasets: list[str]):
    """The datasets whose lane has saved results so far: (results, info) keyed by dataset."""
    res, info = {}, {}
    for ds in datasets:
        f = root / ds / "results.json"
        if f.exists():
            d = json.loads(f.read_text())
            res[ds], info[ds] = d["results"], d["info"]
    return res, info


def _lanes(args, datasets: list[str], log, report) -> None:
    """One child process per dataset, each with one torch thread: on a small machine two single-thread
    lanes finish sooner than one two-thread lane, since much of the work is single-threaded."""
    procs = []
    for ds in datasets:
        logf = Path(args.root) / f"{ds}.log"
        logf.parent.mkdir(parents=True, exist_ok=True)
        argv = [sys.executable, str(Path(__file__).resolve()), "--datasets", ds, "--jobs", "1", "--no-report",
                "--seeds", str(args.seeds), "--epochs", str(args.epochs), "--recbole-epochs", str(args.recbole_epochs),
                "--recbole-seeds", str(args.recbole_seeds), "--threads", "1", "--root", args.root,
                *(["--skip-recbole"] if args.skip_recbole else []), *(["--keep-history"] if args.keep_history else []),
                *[a for kv in args.sets for a in ("--set", kv)]]
        log.info("lane %s started; its log: %s", ds, logf)
        with open(logf, "w") as out:  # the child keeps its own copy of the descriptor
            procs.append((ds, logf, subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)))
    while any(p.poll() is None for _, _, p in procs):
        time.sleep(60)
        for ds, logf, p in procs:
            lines = [ln for ln in logf.read_text(errors="replace").splitlines() if " INFO " in ln]
            state = "running" if p.poll() is None else f"exited {p.returncode}"
            log.info("lane %s %s: %s", ds, state, (lines[-1].split(" INFO ", 1)[-1] if lines else "starting")[:160])
        report()
    failed = [ds for ds, _, p in procs if p.returncode != 0]
    if failed:
        raise SystemExit(f"results lane(s) {', '.join(failed)} failed; see {Path(args.root)}/<dataset>.log")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", default="ml-latest-small,ml-100k", help="comma-separated (default both)")
    p.add_argument("--seeds", type=int, default=3, help="ebbtide seeds per dataset (default 3)")
    p.add_argument("--epochs", type=int, default=5, help="ebbtide training epochs (early stopping applies)")
    p.add_argument("--recbole-seeds", type=int, default=1, help="seeds per RecBole model (default 1: each costs "
                   "minutes per epoch on a CPU)")
    p.add_argument("--recbole-epochs", type=int, default=6, help="cap on RecBole epochs (early stopping applies)")
    p.add_argument("--skip-recbole", action="store_true", help="ebbtide and baselines only")
    p.add_argument("--jobs", type=int, default=2, help="2 or more: every dataset in its own lane, side by side, one torch thread each; "
                   "1: one after another in this process (default 2)")
    p.add_argument("--threads", type=int, default=0, help="torch threads for ebbtide and RecBole (0 = all cores)")
    p.add_argument("--root", default=str(ROOT / ".ebbtide" / "results"), help="storage root per dataset under it")
    p.add_argument("--out", default=str(ROOT / "docs" / "results.md"))
    p.add_argument("--no-report", action="store_true", help="only the per-dataset results.json (used by --jobs)")
    p.add_argument("--keep-history", action="store_true",
                   help="rank the items already in the window too (MovieLens has no repeat ratings, so by "
                        "default every model's ranking excludes them, as RecBole's own full ranking does)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="config override for every ebbtide stage, e.g. train.threads_per_proc=1 (repeatable)")
    args = p.parse_args()

    sys.path.insert(0, str(ROOT / "lib"))
    from ebbtide.log import get_logger, setup_logging

    setup_logging("INFO")
    log = get_logger("results")
    t_start = time.perf_counter()
    datasets = [d.strip() for d in args.datasets.split(",") if d.strip()]
    res, info = {}, {}
    if args.jobs > 1 and len(datasets) > 1:
        def report():
            saved = _load_saved(Path(args.root), datasets)
            if saved[0] and not args.no_report:
                write_markdown(Path(args.out), *saved, args, time.perf_counter() - t_start)

        _lanes(args, datasets, log, report)
        res, info = _load_saved(Path(args.root), datasets)
    else:
        args.threads = args.threads or os.cpu_count() or 1
        if not any(kv.startswith("train.threads_per_proc=") for kv in args.sets):
            args.sets.append(f"train.threads_per_proc={args.threads}")
        spark = None
        for ds in datasets:
            res[ds], info[ds], spark = run_dataset(ds, args, log, spark)
            if not args.no_report:
                write_markdown(Path(args.out), res, info, args, time.perf_counter() - t_start)
    if args.no_report:
        return 0
    write_markdown(Path(args.out), res, info, args, time.perf_counter() - t_start)
    summary = {"bench": "results"}
    for metric in ("ndcg@10", "recall@10", "churn_auc"):
        summary[metric] = {ds: {m: round(_agg(v[metric])[0], 4) for m, v in models.items() if metric in v}
                           for ds, models in res.items()}
    print(json.dumps(summary))
    return 0


def write_markdown(path: Path, res, info, args, seconds: float) -> None:
    ranking = "window items ranked too" if args.keep_history else "items already in the input window excluded from every ranking"
    lines = [
        "# Results: ebbtide against baselines and RecBole",
        "",
        "Produced by `make results` (scripts/results.py); do not edit by hand. Temporal split "
        "(train before T1, test after T2, cut-offs from `sequences.split` quantiles), full-catalogue "
        "ranking of every test example's next item, every model scored by ebbtide's metric code "
        f"(ties averaged; {ranking}). Mean ± standard deviation over n seeds (42, 43, ...); "
        "the baselines are deterministic. ebbtide ranks as of the next event's time (elapsed = "
        "`time_to_next_s`, as the evaluate job does; docs/architecture.md), an input the peers and "
        "baselines do not take.",
        "",
        f"Settings: ebbtide {args.seeds} seeds x at most {args.epochs} epochs; RecBole {args.recbole_seeds} "
        f"seed(s) x at most {args.recbole_epochs} epochs (early stopping on RecBole's own hold-out of the "
        f"train split); {os.cpu_count()} CPU cores ({platform.machine()}), {args.jobs} dataset lane(s); "
        f"total {seconds / 60:.1f} min.",
    ]
    for ds, models in res.items():
        lines += ["", f"## {ds}", ""]
        i = info.get(ds, {})
        lines.append(
            f"{i.get('events')} events, {i.get('users')} users, {i.get('item_vocab_size')} items; "
            f"valid from {i.get('valid_start')}, test from {i.get('test_start')} to {i.get('end')}; "
            f"{i.get('examples_evaluated')} test examples."
        )
        lines += ["", "| model | n | NDCG@10 | Recall@10 | MRR@10 | churn ROC-AUC (7 d) | train s |",
                  "|---|---|---|---|---|---|---|"]

        def mean(m, metric="ndcg@10"):
            return _agg(models[m].get(metric, []))[0]

        order = sorted(models, key=lambda m: -mean(m) if models[m].get("ndcg@10") else 1)
        for m in order:
            v = models[m]
            cells = [str(len(v.get("ndcg@10", v.get("churn_auc", []))))]
            for metric in (*METRICS, "churn_auc", "train_s"):
                if metric not in v:
                    cells.append("-")
                    continue
                mu, sd = _agg(v[metric])
                cells.append(f"{mu:.1f}" if metric == "train_s" else f"{mu:.4f} ± {sd:.4f}" if len(v[metric]) > 1 else f"{mu:.4f}")
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
        if "ebbtide" in models:
            lines += ["", "ebbtide's NDCG@10 against each model (relative difference of the means):"]
            e = mean("ebbtide")
            for m in order:
                if m != "ebbtide" and models[m].get("ndcg@10"):
                    o = mean(m)
                    lines.append(f"- {m}: {'+' if e >= o else ''}{100 * (e - o) / o:.1f} % ({'ahead' if e > o else 'behind'})")
            ec = mean("ebbtide", "churn_auc")
            for m in order:
                if m != "ebbtide" and models[m].get("churn_auc"):
                    lines.append(f"- churn ROC-AUC against {m}: {ec - mean(m, 'churn_auc'):+.4f}")
        for m in PEERS:
            v = models.get(m, {})
            if v.get("epochs_run"):
                capped = [not s for s in v.get("stopped_early", [])]
                lines.append(f"\n{m}: {', '.join(str(int(x)) for x in v['epochs_run'])} epoch(s) run, best "
                             f"{', '.join(str(int(x)) for x in v['best_epoch'])}"
                             + ("; ended by the epoch cap, not by early stopping" if any(capped) else "; stopped early") + ".")
    lines += ["", "Churn ROC-AUC: P(return within 7 days) as of the test cut date, one row per user; "
              "RecBole models have no return-time head."]
    path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
