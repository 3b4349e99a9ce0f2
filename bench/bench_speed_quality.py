"""`make bench-speed-quality`: does ebbtide reach GRU4Rec's test NDCG@10 in a tenth of its training time?

Both on the same cores in the same run, on the same split, rows and candidate items as `make
results` (scripts/results.py: its ETL, its RecBole export and its peer runner):

1. ETL of the dataset (MovieLens-100k by default) into --root, as `make results` builds it;
2. RecBole's GRU4Rec trained to convergence (early stopping on RecBole's hold-out, patience
   --patience, at most --recbole-epochs epochs) with --threads torch threads; its fit seconds are
   the reference time, its test NDCG@10 (nightly view) the reference quality;
3. ebbtide with the settings for a short budget (--conf, default conf/profiles/quick.yaml: its
   schedule and learning rate were chosen on ML-100k's validation split for a budget of this size)
   and a time budget, ``train.max_seconds`` = --share x GRU4Rec's fit seconds (training and
   validation; the run plans the epochs that fit and its learning-rate schedule ends on the last
   of them), the same threads; then `ebbtide evaluate` on the test split once. Nothing is chosen on
   the test split: the budget follows from the reference's time alone.

ebbtide's seconds are its training loop's wall seconds (training and validation, the span RecBole's
fit covers); the whole `train` stage (reading the tables, calibration, registering) is reported
beside them. The last line is one JSON object:
{"bench": "speed_quality", "dataset", "share", "gru4rec_s", "gru4rec_ndcg@10", "budget_s",
 "ebbtide_s", "ebbtide_stage_s", "ebbtide_epochs", "ebbtide_ndcg@10", "time_ratio", "quality_ratio",
 "request_time": {...}, "met", "load_avg"}
met: ebbtide_ndcg@10 >= gru4rec_ndcg@10 and ebbtide_s <= share x gru4rec_s. Exit status 1 on a miss
unless --no-check. Timings count only from an otherwise idle machine: load_avg gives the 1/5/15-minute
load averages at the start, after GRU4Rec and at the end.

Resumable: each finished part is saved in <root>/speed_quality.json with the commit it ran on; a
rerun on the same commit skips what is saved (--fresh starts over). Logs go to stderr.

    .venv/bin/python bench/bench_speed_quality.py                 # ML-100k, a tenth of GRU4Rec's time
    .venv/bin/python bench/bench_speed_quality.py --share 0.2 --threads 1
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "lib"))
STATE_FILE = "speed_quality.json"


def _results_module():
    """scripts/results.py, whose ETL, RecBole export and peer runner this bench reuses."""
    spec = importlib.util.spec_from_file_location("ebbtide_results", ROOT / "scripts" / "results.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="The last line printed is one JSON object; see the module docstring.")
    p.add_argument("--dataset", default="ml-100k", choices=["ml-100k", "ml-latest-small"],
                   help="dataset (default ml-100k)")
    p.add_argument("--share", type=float, default=0.1,
                   help="ebbtide's time budget as a share of GRU4Rec's fit seconds (default 0.1)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                   help="torch threads for both models (default: all cores)")
    p.add_argument("--seed", type=int, default=42, help="seed of both models (default 42)")
    p.add_argument("--recbole-epochs", type=int, default=30, help="cap on GRU4Rec's epochs (default 30)")
    p.add_argument("--patience", type=int, default=3, help="GRU4Rec's early stopping patience (default 3)")
    p.add_argument("--root", default=str(ROOT / ".ebbtide" / "bench" / "speed_quality"),
                   help="storage root (default .ebbtide/bench/speed_quality)")
    p.add_argument("--fresh", action="store_true", help="delete the root and start over")
    p.add_argument("--no-check", action="store_true", help="exit 0 even when the target is missed")
    p.add_argument("--conf", dest="confs", action="append", default=None, metavar="FILE",
                   help="ebbtide's YAML overlay (repeatable; default conf/profiles/quick.yaml)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="extra ebbtide config override (repeatable)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from ebbtide.config import conf_file

    R = _results_module()
    args.confs = [str(conf_file(f)) for f in (args.confs if args.confs is not None else [R.QUICK_PROFILE])]
    if not 0 < args.share <= 1:
        raise SystemExit(f"--share must be in (0, 1], got {args.share}")
    from ebbtide.cli import Context, run_stage
    from ebbtide.config import load_config
    from ebbtide.log import get_logger, setup_logging
    from ebbtide.sequences import read_cutoffs

    setup_logging("INFO")
    log = get_logger("bench.speed_quality")
    root = Path(args.root)
    if args.fresh and root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True, exist_ok=True)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    key = {"commit": commit, "dataset": args.dataset, "share": args.share, "threads": args.threads,
           "seed": args.seed, "recbole_epochs": args.recbole_epochs, "patience": args.patience, "sets": args.sets,
           "confs": R.conf_digests(args.confs)}
    state_path = root / STATE_FILE
    state = json.loads(state_path.read_text()) if state_path.exists() else {}
    if state.get("key") != key:
        state = {"key": key}

    def save():
        state_path.write_text(json.dumps(state, indent=1, default=str))

    load_start = _load()
    log.info("speed to quality on %s: GRU4Rec to convergence, then ebbtide with %.0f %% of its seconds; "
             "%d torch thread(s); load %s", args.dataset, 100 * args.share, args.threads, load_start)
    ds_root = root / args.dataset
    threads = [f"train.threads_per_proc={args.threads}"]
    base = [f"storage.root={ds_root}", "evaluate.exclude_history=true", f"train.seed={args.seed}", *threads, *args.sets]
    ctx = Context(load_config(env="local", files=args.confs, overrides=base))
    recbole_py = R._recbole_python(log)
    # Every run builds the tables (idempotent: a built root is left as it is); only its sizes are kept.
    state["etl"] = R.run_etl(args.dataset, ds_root, ctx, recbole_py, log)
    save()

    if "gru4rec" not in state:
        cut = read_cutoffs(ctx.spark, ctx.cfg)
        peer_dir = ds_root / "recbole" / f"{args.dataset}-peer"
        R.export_for_recbole(ctx.spark, ctx.cfg, peer_dir, cut["valid_start"].replace(tzinfo=None))
        peer_args = argparse.Namespace(recbole_epochs=args.recbole_epochs, recbole_patience=args.patience,
                                       threads=args.threads, keep_history=False)
        rec = R.run_peer(recbole_py, peer_dir, "GRU4Rec", args.seed, peer_args, log)
        if rec is None:
            raise SystemExit("GRU4Rec failed; its error is logged above")
        state["gru4rec"] = {**rec, "load_after": _load()}
        save()
    g = state["gru4rec"]
    budget = round(args.share * g["train_s"], 1)

    if "ebbtide" not in state:
        log.info("ebbtide with train.max_seconds=%.1f (%.0f %% of GRU4Rec's %.0f s)", budget, 100 * args.share, g["train_s"])
        t0 = time.perf_counter()
        tr = run_stage("train", ["--launcher", "local", "--no-resume"],
                       Context(load_config(env="local", files=args.confs, overrides=[*base, f"train.max_seconds={budget}"]),
                               _spark=ctx.spark))
        stage_s = time.perf_counter() - t0
        ev = run_stage("evaluate", ["--model-uri", tr["model_uri"], "--no-champion", "--no-promote"], ctx)
        state["ebbtide"] = {
            "train_s": round(tr["train_wall_s"], 1), "stage_s": round(stage_s, 1), "epochs": tr["epochs_completed"],
            "best_epoch": tr["best_epoch"], "ndcg@10": ev["ndcg@10"]["ebbtide"],
            "request_time_ndcg@10": ev["request_time"]["ndcg@10"]["ebbtide"], "model_uri": tr["model_uri"],
        }
        save()
    e = state["ebbtide"]
    time_ratio = e["train_s"] / g["train_s"]
    quality_ratio = e["ndcg@10"] / g["ndcg@10"] if g["ndcg@10"] else float("nan")
    met = e["ndcg@10"] >= g["ndcg@10"] and time_ratio <= args.share
    out = {
        "bench": "speed_quality", "dataset": args.dataset, "share": args.share, "threads": args.threads,
        "gru4rec_s": g["train_s"], "gru4rec_epochs": g["epochs_run"], "gru4rec_best_epoch": g["best_epoch"],
        "gru4rec_ndcg@10": round(g["ndcg@10"], 4), "budget_s": budget,
        "ebbtide_s": e["train_s"], "ebbtide_stage_s": e["stage_s"], "ebbtide_epochs": e["epochs"],
        "ebbtide_best_epoch": e["best_epoch"], "ebbtide_ndcg@10": round(e["ndcg@10"], 4),
        "time_ratio": round(time_ratio, 3), "quality_ratio": round(quality_ratio, 3),
        "request_time": {"gru4rec_ndcg@10": round(g["request_time_ndcg@10"], 4),
                         "ebbtide_ndcg@10": round(e["request_time_ndcg@10"], 4)},
        "conf": [R._rel(f) for f in args.confs],
        "met": bool(met),
        "load_avg": {"start": load_start, "gru4rec_start": g.get("load_1m"), "after_gru4rec": g.get("load_after"),
                     "end": _load()},
    }
    print(json.dumps(out))
    if not met and not args.no_check:
        log.error("target missed: ebbtide NDCG@10 %.4f in %.0f s against GRU4Rec's %.4f in %.0f s (budget share %.2f)",
                  e["ndcg@10"], e["train_s"], g["ndcg@10"], g["train_s"], args.share)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
