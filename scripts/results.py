"""`make results`: ebbtide against every baseline and RecBole's GRU4Rec and SASRec on real data.

For each dataset (MovieLens latest-small from ../shared/data, MovieLens-100k from the recbole
wheel) it runs ingest -> sessionize -> sequences (global temporal split), then for each seed
trains ebbtide and runs `ebbtide evaluate` on the test split (full ranking; the baselines are
fitted in the same run), exports the very same train split to a RecBole atomic file, trains
GRU4Rec and SASRec in RecBole's own environment (scripts/setup_recbole.sh) and ranks the very
same nightly rows and test examples, on the same candidate items, with them through ebbtide's
metric code (scripts/recbole_peer.py). The headline figures are the nightly view (each user's test
day ranked from the window before midnight against the set of items of the day); the request-time
view (each test event's item) is reported beside them.
Writes docs/results.md; the last line printed is one JSON object:
{"bench": "results", "ndcg@10": {DATASET: {MODEL: mean}}, "recall@10": {...},
 "request_time_ndcg@10": {...}, "churn_auc": {...}}
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "lib"))
# The nightly view's metrics (request_time_{metric} the other view's) and the churn ROC-AUCs.
from ebbtide.evaluation.report import CHURN_FIGURES as CHURN_KEYS  # noqa: E402
from ebbtide.evaluation.report import FIGURE_METRICS as METRICS  # noqa: E402
from ebbtide.evaluation.report import figures_by_model  # noqa: E402

# --quick trains every ebbtide model on this profile: a few minutes each (conf/profiles/quick.yaml).
QUICK_PROFILE = ROOT / "conf" / "profiles" / "quick.yaml"
ML_SMALL = ROOT.parent / "shared" / "data" / "ml-latest-small"
PEERS = ("GRU4Rec", "SASRec")
# The peers' saved figures, committed beside the report: dataset -> "MODEL#SEED" -> {inputs, result}.
# A fresh clone reuses each one whose inputs digest (_peer_inputs) matches its own export, instead of
# the hours of CPU a RecBole fit costs here; a changed split, row set or peer script runs it again.
PEER_STORE = ROOT / "docs" / "results-peers.json"


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
    time as the position in ebbtide's (ts, event_id) order; and, as numpy (``examples.npz``), the
    very rows and candidates `ebbtide evaluate` ranks: the request-time test examples (windows,
    targets), the nightly rows (windows before each midnight, target sets padded with -1) and the
    candidate catalogue (bool per item index: the items seen in the train split)."""
    from pyspark.sql import functions as F

    from ebbtide import tables
    from ebbtide.evaluation import protocols as P
    from ebbtide.evaluation.metrics import candidate_mask, pad_targets

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
    gold = tables.read(spark, cfg, "gold_training_examples")
    rows = P.evaluation_rows(gold, "test")
    ex = rows.select("example_id", "item_idx", "target_item").orderBy("example_id").toPandas()
    night = P.nightly_examples(rows).select("example_id", "item_idx", "target_items").orderBy("example_id").toPandas()
    cand = candidate_mask(P.candidate_items(gold).toPandas()["item"].to_numpy(), n_items)

    def windows(pdf):
        width = len(ex["item_idx"].iloc[0]) if len(ex) else 0
        return np.stack([np.asarray(v, np.int64) for v in pdf["item_idx"]]) if len(pdf) else np.zeros((0, width), np.int64)

    np.savez(out_dir / "examples.npz", item_idx=windows(ex), targets=ex["target_item"].to_numpy().astype(np.int64),
             nightly_item_idx=windows(night), nightly_targets=pad_targets(night["target_items"]),
             candidates=cand, n_items=n_items)
    return inter, len(ev)


def _agg(values: list[float]) -> tuple[float, float]:
    a = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=float)
    if not len(a):
        return float("nan"), float("nan")
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0


DATASETS = ("ml-100k", "ml-latest-small", "generated")


def _signature(ds: str, args) -> dict:
    """What makes saved results reusable: the code and every setting that changes a figure."""
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "lib", "conf", "scripts"], cwd=ROOT,
                           capture_output=True, text=True).stdout.strip()
    sets = [kv for kv in args.sets if not kv.startswith("train.threads_per_proc=")]  # speed, not figures
    return {"dataset": ds, "commit": commit, "dirty": bool(dirty), "sets": sets, "confs": conf_digests(args.confs),
            "keep_history": args.keep_history, "recbole_epochs": args.recbole_epochs}


def conf_digests(confs) -> list[list[str]]:
    """Each --conf file with a digest of its contents: the same name with other settings is another
    run (results' signature, the speed bench's key)."""
    return [[str(f), hashlib.sha256(Path(f).read_bytes()).hexdigest()[:16]] for f in confs]


def _peer_inputs(peer_dir: Path, args) -> str:
    """A digest of everything a RecBole peer's figures depend on: the exported split and rows
    (array contents, not the .npz container, whose zip headers carry timestamps), its script and
    its settings."""
    h = hashlib.sha256()
    h.update((peer_dir / f"{peer_dir.name}.inter").read_bytes())
    with np.load(peer_dir / "examples.npz") as z:
        for name in sorted(z.files):
            h.update(name.encode())
            h.update(np.ascontiguousarray(z[name]).tobytes())
    h.update((ROOT / "scripts" / "recbole_peer.py").read_bytes())
    h.update(json.dumps([args.recbole_epochs, args.recbole_patience, args.keep_history]).encode())
    return h.hexdigest()


def _runs_of(saved: dict) -> dict[str, dict[str, list[float]]]:
    """Saved per-(model, seed) runs -> model -> metric -> [one value per seed, in seed order]."""
    out: dict[str, dict[str, list[float]]] = {}
    for key in sorted(saved, key=lambda k: (k.rsplit("#", 1)[0], int(k.rsplit("#", 1)[1]))):
        model = key.rsplit("#", 1)[0]
        for metric, v in saved[key].items():
            out.setdefault(model, {}).setdefault(metric, []).append(v)
    return out


def _prior_choice(tr: dict) -> dict:
    """The (half-life, weight) a training run chose per view for its popularity prior
    (``ebbtide.model.prior``; a model from before the per-view choice holds one pair for both) and
    for its item-neighbour term (``ebbtide.model.neighbours``)."""
    out = {}
    for choice, prefix in (("popularity_prior", "prior"), ("item_neighbours", "nb")):
        pp = tr.get(choice) or {}
        for view, key in (("nightly", prefix), ("request_time", f"rt_{prefix}")):
            c = pp if "weight" in pp else (pp.get(view) or {})
            out[f"{key}_half_life_days"], out[f"{key}_weight"] = c.get("half_life_days"), c.get("weight")
    return out


def _etl_plan(ds: str, root: Path, recbole_py, log) -> list[tuple[str, list[str]]]:
    if ds == "ml-latest-small":
        return [("ingest", ["--source", str(ML_SMALL / "ratings.csv"), "--adapter", "movielens"])]
    if ds == "ml-100k":
        return [("ingest", ["--source", str(_ml100k_inter(recbole_py or _recbole_python(log))), "--adapter", "recbole_inter"])]
    if ds == "generated":
        # The demo's generated data (conf/base.yaml synth: 1,000 users, 500 items, planted half-lives).
        raw = root / "synth"
        return [("synth", ["--out", str(raw)]), ("ingest", ["--source", str(raw / "raw"), "--format", "parquet"])]
    raise SystemExit(f"unknown dataset {ds!r}; choose from {', '.join(DATASETS)}")


def run_etl(ds: str, root: Path, ctx, recbole_py, log) -> dict:
    """Ingest -> sessionize -> sequences of one dataset into ctx's storage root (each stage is
    idempotent: a rerun on a built root changes nothing). Returns the split's sizes and cut dates
    and the ETL's seconds."""
    from ebbtide.cli import run_stage

    info: dict = {}
    t0 = time.perf_counter()
    for stage, argv in (*_etl_plan(ds, root, recbole_py, log), ("sessionize", []), ("sequences", [])):
        s = run_stage(stage, argv, ctx)
        if stage == "sequences":
            info.update({k: s.get(k) for k in ("events", "users", "item_vocab_size", "valid_start", "test_start", "end", "examples")})
    info["etl_s"] = round(time.perf_counter() - t0, 1)
    return info


def run_peer(recbole_py: str, peer_dir: Path, model: str, seed: int, args, log) -> Optional[dict]:
    """One RecBole peer trained on the exported split (early stopping on RecBole's own hold-out) and
    ranked on ebbtide's rows: its metrics in both views, its fit seconds and the load around them;
    None (logged) when RecBole fails."""
    cmd = [recbole_py, str(ROOT / "scripts" / "recbole_peer.py"), "--data", str(peer_dir),
           "--model", model, "--seed", str(seed), "--epochs", str(args.recbole_epochs),
           "--stopping-step", str(args.recbole_patience),
           "--threads", str(args.threads), *([] if args.keep_history else ["--exclude-history"])]
    log.info("RecBole %s seed %d on %s (at most %d epochs, patience %d)", model, seed, peer_dir.name,
             args.recbole_epochs, args.recbole_patience)
    load = round(os.getloadavg()[0], 2)  # train_s counts as a timing only from an idle machine
    env = dict(os.environ, TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD="1")
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if r.returncode != 0:
        log.error("RecBole %s failed:\n%s", model, r.stderr[-3000:])
        return None
    m = json.loads(r.stdout.strip().splitlines()[-1])
    log.info("RecBole %s seed %d on %s: NDCG@10 %.4f, %d epochs (best %d), %.0f s", model, seed, peer_dir.name,
             m["ndcg@10"], m["epochs_run"], m["best_epoch"], m["fit_s"])
    rec = {metric: m[metric] for metric in METRICS}
    rec.update({f"request_time_{metric}": m["request_time"][metric] for metric in METRICS})
    # RecBole reports the fit's total seconds; its best epoch's share of them is pro rata.
    rec.update({"train_s": m["fit_s"], "best_s": m["fit_s"] * m["best_epoch"] / max(1, m["epochs_run"]),
                "epochs_run": m["epochs_run"], "best_epoch": m["best_epoch"],
                "stopped_early": float(m["stopped_early"]), "load_1m": load,
                "load_1m_end": round(os.getloadavg()[0], 2)})
    return rec


def run_dataset(ds: str, args, log, spark=None):
    """ETL, ebbtide and ebbtide_no_time x seeds (+ the baselines in each evaluate), RecBole peers, for
    one dataset. Each (model, seed) is saved as it finishes; a rerun with the same code and settings
    skips what is saved (--fresh starts over). Returns (results, info, spark); results is
    model -> metric -> [one value per seed]."""
    from ebbtide.cli import Context, run_stage
    from ebbtide.config import load_config
    from ebbtide.synth import MODEL_SETTINGS

    root = Path(args.root) / ds
    tuned = list(MODEL_SETTINGS) if ds == "generated" else []  # chosen on the generated data's validation split
    base = [f"storage.root={root}", f"evaluate.exclude_history={'false' if args.keep_history else 'true'}", *tuned, *args.sets]
    cfg = load_config(env="local", files=args.confs, overrides=base)
    ctx = Context(cfg, _spark=spark)
    recbole_py = None if args.skip_recbole or ds == "generated" else _recbole_python(log)
    sig = _signature(ds, args)
    prev = json.loads((root / "results.json").read_text()) if (root / "results.json").exists() else {}
    resumable = not args.fresh and prev.get("signature") == sig and not sig["dirty"]
    runs: dict[str, dict[str, float]] = prev.get("runs", {}) if resumable else {}
    info: dict = prev.get("info", {}) if resumable else {}
    if runs:
        log.info("%s: resuming; %d saved (model, seed) runs are kept: %s", ds, len(runs), ", ".join(sorted(runs)))

    def save():
        root.mkdir(parents=True, exist_ok=True)
        (root / "results.json").write_text(json.dumps({"signature": sig, "runs": runs, "info": info}, default=str, indent=1))

    save()  # a report mid-run must not show an older run's figures
    info.update(run_etl(ds, root, ctx, recbole_py, log))
    spark = ctx.spark

    variants = [("ebbtide", [])] + ([] if args.no_ablation else [("ebbtide_no_time", ["model.use_time=false"])])
    for seed in [42 + i for i in range(args.seeds)]:
        for name, extra in variants:
            if f"{name}#{seed}" in runs:
                continue
            sctx = Context(load_config(env="local", files=args.confs, overrides=[*base, f"train.seed={seed}", *extra]),
                           _spark=spark)
            t0 = time.perf_counter()
            tr = run_stage("train", ["--launcher", "local", "--no-resume"], sctx)
            train_s = time.perf_counter() - t0
            # The baselines do not depend on the model's settings: the first variant's evaluation fits
            # and ranks them, the others rank their model alone (on ml-latest-small the baselines'
            # fit is minutes).
            ev = run_stage("evaluate", ["--model-uri", tr["model_uri"], "--no-champion", "--no-promote",
                                        *([] if name == "ebbtide" else ["--models-only"])], sctx)
            scored = figures_by_model(ev)
            # The model is called "ebbtide" inside evaluate whatever the variant.
            runs[f"{name}#{seed}"] = {**scored.pop("ebbtide"), "train_s": round(train_s, 1),
                                      "best_s": tr.get("seconds_to_best"), "best_epoch": tr.get("best_epoch"),
                                      # the popularity priors training chose on validation (ebbtide.model.prior)
                                      **_prior_choice(tr)}
            if name == "ebbtide":
                for model, metrics in scored.items():
                    runs[f"{model}#{seed}"] = metrics
            info["examples_evaluated"] = ev["examples_by_view"]["request_time"]
            info["nightly_rows"] = ev["examples_by_view"].get("nightly", 0)
            save()

    if recbole_py:
        from ebbtide.sequences import read_cutoffs

        cut = read_cutoffs(spark, cfg)
        peer_dir = root / "recbole" / f"{ds}-peer"
        _, info["recbole_train_events"] = export_for_recbole(spark, cfg, peer_dir, cut["valid_start"].replace(tzinfo=None))
        peer_cache = root / "recbole" / "peers.json"
        cached = json.loads(peer_cache.read_text()) if peer_cache.exists() and not args.fresh else {}
        committed = {} if args.fresh else _read_json(PEER_STORE).get(ds, {})
        peer_key = _peer_inputs(peer_dir, args)
        for model in args.peers.split(","):
            for seed in [42 + i for i in range(args.recbole_seeds)]:
                key = f"{model}#{seed}"
                store, hit = saved_peer(key, peer_key, (peer_cache, cached), (PEER_STORE, committed))
                if hit:
                    # A peer's figures depend only on the exported split and its own script: a commit
                    # that changes neither keeps them (hours of CPU on this machine).
                    runs[key] = hit["result"]
                    cached[key] = hit
                    peer_cache.write_text(json.dumps(cached, indent=1))
                    log.info("RecBole %s seed %d on %s: kept from %s (same inputs)", model, seed, ds, _rel(store))
                    save()
                    continue
                if f"{model}#{seed}" in runs:
                    continue
                rec = run_peer(recbole_py, peer_dir, model, seed, args, log)
                if rec is None:
                    continue
                runs[f"{model}#{seed}"] = rec
                save()
                cached[f"{model}#{seed}"] = {"inputs": peer_key, "result": rec}
                peer_cache.write_text(json.dumps(cached, indent=1))
    return _runs_of(runs), info, spark


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def saved_peer(key: str, inputs: str, *stores: tuple[Path, dict]) -> tuple[Optional[Path], dict]:
    """The first store (path, its "MODEL#SEED" -> {inputs, result}) holding ``key`` saved from the
    same inputs digest: (path, entry), or (None, {})."""
    for path, entries in stores:
        hit = entries.get(key, {})
        if hit.get("inputs") == inputs:
            return path, hit
    return None, {}


def store_peers(root: Path, datasets: list[str], store: Path = PEER_STORE) -> dict:
    """Copy each dataset's saved peer figures (root/DATASET/recbole/peers.json) into the committed
    store, keeping the store's other datasets and models. Returns the store."""
    out = _read_json(store)
    for ds in datasets:
        saved = _read_json(root / ds / "recbole" / "peers.json")
        if saved:
            out[ds] = {**out.get(ds, {}), **saved}
    if out:
        store.parent.mkdir(parents=True, exist_ok=True)
        store.write_text(json.dumps(out, indent=1, sort_keys=True) + "\n")
    return out


def _load_saved(root: Path, datasets: list[str], commit: str = ""):
    """The datasets whose lane has saved results so far (only those of `commit` when given):
    (results, info) keyed by dataset."""
    res, info = {}, {}
    for ds in datasets:
        f = root / ds / "results.json"
        if f.exists():
            d = json.loads(f.read_text())
            if commit and (d.get("signature", {}).get("commit") != commit or d.get("signature", {}).get("dirty")):
                continue
            res[ds], info[ds] = _runs_of(d.get("runs", {})), d.get("info", {})
    return res, info


def _lanes(args, datasets: list[str], log, report) -> None:
    """One child process per dataset, at most --jobs at a time, each with one torch thread: on a small
    machine two single-thread lanes finish sooner than one two-thread lane, since much of the work is
    single-threaded."""
    waiting, procs = list(datasets), []
    while waiting or any(p.poll() is None for _, _, p in procs):
        while waiting and sum(p.poll() is None for _, _, p in procs) < args.jobs:
            ds = waiting.pop(0)
            logf = Path(args.root) / f"{ds}.log"
            logf.parent.mkdir(parents=True, exist_ok=True)
            argv = [sys.executable, str(Path(__file__).resolve()), "--datasets", ds, "--jobs", "1", "--no-report",
                    "--seeds", str(args.seeds), "--epochs", str(args.epochs), "--recbole-epochs", str(args.recbole_epochs),
                    "--recbole-seeds", str(args.recbole_seeds), "--recbole-patience", str(args.recbole_patience),
                    "--threads", "1", "--root", args.root, "--peers", args.peers,
                    *(["--skip-recbole"] if args.skip_recbole else []), *(["--keep-history"] if args.keep_history else []),
                    *(["--fresh"] if args.fresh else []), *(["--no-ablation"] if args.no_ablation else []),
                    *[a for f in args.confs for a in ("--conf", f)], *[a for kv in args.sets for a in ("--set", kv)]]
            log.info("lane %s started; its log: %s", ds, logf)
            with open(logf, "w") as out:  # the child keeps its own copy of the descriptor
                procs.append((ds, logf, subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)))
        time.sleep(30)
        for ds, logf, p in procs:
            lines = [ln for ln in logf.read_text(errors="replace").splitlines() if " INFO " in ln]
            state = "running" if p.poll() is None else f"exited {p.returncode}"
            log.info("lane %s %s: %s", ds, state, (lines[-1].split(" INFO ", 1)[-1] if lines else "starting")[:160])
        report()
    failed = [ds for ds, _, p in procs if p.returncode != 0]
    if failed:
        raise SystemExit(f"results lane(s) {', '.join(failed)} failed; see {Path(args.root)}/<dataset>.log")


def _with_committed_peers(res: dict, path: Path) -> dict:
    """--quick: the RecBole peers' figures from the committed full run, marked as such."""
    if not path.exists():
        return res
    full = json.loads(path.read_text()).get("datasets", {})
    for ds, models in res.items():
        for peer in PEERS:
            if peer in full.get(ds, {}).get("models", {}):
                models[f"{peer} (docs/results.json)"] = full[ds]["models"][peer]
    return res


def summary_line(res: dict) -> dict:
    """The last line printed: nightly metrics per dataset and model, churn, training seconds, and the
    request-time view."""
    def table(metric):
        return {ds: {m: round(_agg(v[metric])[0], 4) for m, v in models.items() if v.get(metric)}
                for ds, models in res.items()}

    out = {"bench": "results", "protocol": "nightly"}
    for metric in ("ndcg@10", "recall@10", "churn_auc", "churn_auc_30d", "churn_auc_recent"):
        out[metric] = table(metric)
    out["train_s"] = {ds: {m: round(_agg(v["train_s"])[0], 1) for m, v in models.items() if v.get("train_s")}
                      for ds, models in res.items()}
    out["best_s"] = {ds: {m: round(_agg(v["best_s"])[0], 1) for m, v in models.items() if v.get("best_s")}
                     for ds, models in res.items()}
    out["request_time"] = {"ndcg@10": table("request_time_ndcg@10")}
    # A metric that cannot be computed (no user active in the last week before the cut) is null:
    # the line must stay strict JSON for whatever parses it.
    return _nan_to_none(out)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", default=",".join(DATASETS), help=f"comma-separated (default {','.join(DATASETS)})")
    p.add_argument("--seeds", type=int, default=3, help="ebbtide seeds per dataset (default 3)")
    p.add_argument("--epochs", type=int, default=0, help="cap on ebbtide's epochs (default 0: train.epochs; early "
                   "stopping on validation applies)")
    p.add_argument("--no-ablation", action="store_true", help="skip ebbtide_no_time (the same network with every "
                   "time input zeroed)")
    p.add_argument("--recbole-seeds", type=int, default=1, help="seeds per RecBole model (default 1: each costs "
                   "minutes per epoch on a CPU)")
    p.add_argument("--recbole-epochs", type=int, default=30, help="cap on RecBole epochs (default 30)")
    p.add_argument("--recbole-patience", type=int, default=3, help="RecBole early stopping: epochs without "
                   "improvement on its validation (default 3)")
    p.add_argument("--skip-recbole", action="store_true", help="ebbtide and baselines only")
    p.add_argument("--peers", default=",".join(PEERS), help=f"RecBole models to run (default {','.join(PEERS)})")
    p.add_argument("--quick", action="store_true", help="1 seed, no RecBole runs (their figures are read from "
                   "the committed docs/results.json), ebbtide trained on the time budget of "
                   "conf/profiles/quick.yaml, report to .ebbtide/results-quick.md")
    p.add_argument("--conf", dest="confs", action="append", default=[], metavar="FILE",
                   help="YAML overlay, or a profile name from conf/profiles, for every ebbtide stage: after "
                   "conf/local.yaml, before --set (repeatable)")
    p.add_argument("--fresh", action="store_true", help="ignore saved (model, seed) results and run everything")
    p.add_argument("--jobs", type=int, default=2, help="2 or more: datasets in lanes, this many side by side, one "
                   "torch thread each; 1: one after another in this process (default 2)")
    p.add_argument("--threads", type=int, default=0, help="torch threads for ebbtide and RecBole (0 = all cores)")
    p.add_argument("--root", default=str(ROOT / ".ebbtide" / "results"), help="storage root per dataset under it")
    p.add_argument("--out", default=None, help="report path (default docs/results.md; --quick: "
                   ".ebbtide/results-quick.md); a .json beside it holds every figure")
    p.add_argument("--no-report", action="store_true", help="only the per-dataset results.json (used by --jobs)")
    p.add_argument("--keep-history", action="store_true",
                   help="rank the items already in the window too (MovieLens has no repeat ratings, so by "
                        "default every model's ranking excludes them, as RecBole's own full ranking does)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="config override for every ebbtide stage, e.g. train.threads_per_proc=1 (repeatable)")
    args = p.parse_args()
    if args.quick:
        args.seeds, args.skip_recbole = 1, True
        args.confs = [str(QUICK_PROFILE), *args.confs]
    args.out = args.out or str(ROOT / (".ebbtide/results-quick.md" if args.quick else "docs/results.md"))
    from ebbtide.config import ConfigError, conf_file, load_config
    from ebbtide.log import get_logger, setup_logging

    try:  # a profile's name or a path; lanes and the run's signature get the file
        args.confs = [str(conf_file(f)) for f in args.confs]
    except ConfigError as e:
        raise SystemExit(str(e)) from None
    if args.epochs:
        args.sets.append(f"train.epochs={args.epochs}")
    args.epochs = load_config(env="local", files=args.confs, overrides=args.sets).section("train").epochs

    setup_logging("INFO")
    log = get_logger("results")
    t_start = time.perf_counter()
    datasets = [d.strip() for d in args.datasets.split(",") if d.strip()]
    res, info = {}, {}

    def finish(res):
        return _with_committed_peers(res, ROOT / "docs" / "results.json") if args.quick else res

    if args.jobs > 1 and len(datasets) > 1:
        def report():
            saved = _load_saved(Path(args.root), datasets)
            if saved[0] and not args.no_report:
                write_markdown(Path(args.out), finish(saved[0]), saved[1], args, time.perf_counter() - t_start)

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
                write_markdown(Path(args.out), finish(dict(res)), info, args, time.perf_counter() - t_start)
    if args.no_report:
        return 0
    # The report covers every dataset saved by this code, not only this invocation's: a run that adds
    # one peer to one dataset rewrites the whole report.
    commit = _signature("", args)["commit"]
    others = [d for d in DATASETS if d not in res]
    saved_res, saved_info = _load_saved(Path(args.root), others, commit)
    res, info = {**res, **saved_res}, {**info, **saved_info}
    res = finish(res)
    write_markdown(Path(args.out), res, info, args, time.perf_counter() - t_start)
    if not args.quick and not args.skip_recbole and Path(args.out).resolve() == (ROOT / "docs" / "results.md").resolve():
        store_peers(Path(args.root), [d for d in DATASETS if d in res])
    print(json.dumps(summary_line(res), allow_nan=False))
    return 0


def write_markdown(path: Path, res, info, args, seconds: float) -> None:
    ranking = "window items ranked too" if args.keep_history else "items already in the input window excluded from every ranking"
    confs = getattr(args, "confs", None) or []
    overlay = f"ebbtide's settings overlaid with {', '.join(_rel(f) for f in confs)}; " if confs else ""
    lines = [
        "# Results: ebbtide against baselines and RecBole",
        "",
        "Produced by `make results` (scripts/results.py); do not edit by hand. Temporal split "
        "(train before T1, test after T2, cut-offs from `sequences.split` quantiles). Headline: the "
        "nightly view, each (user, test day) ranked from the window before that midnight UTC against "
        "the set of items of the user's day (NDCG@10 over the set, Recall@10 = share of the set in the "
        "top 10); beside it the request-time view, each test event's item ranked as of that event. "
        "Every model ranks the same candidates (the items seen in the train split; a target outside "
        "them is a miss for all) on the same rows and is scored by ebbtide's metric code "
        f"(ties averaged; {ranking}). Mean ± standard deviation over n seeds (42, 43, ...); "
        "the baselines are deterministic. ebbtide and the time-aware baselines get the view's elapsed "
        "time (to midnight, or to the event; docs/architecture.md), an input the peers do not take.",
        "",
        f"Settings: ebbtide and ebbtide_no_time (the same network and seeds, every time input zeroed) "
        f"{args.seeds} seed(s) x at most {args.epochs} epochs (early stopping on validation); RecBole "
        f"{args.recbole_seeds} seed(s) x at most {args.recbole_epochs} epochs (early stopping after "
        f"{args.recbole_patience} epochs without improvement on RecBole's own hold-out of the train split; "
        "a peer whose inputs (split, rows, script, settings) match a saved fit keeps that fit's figures and "
        "seconds: docs/results-peers.json); "
        f"{overlay}"
        f"{os.cpu_count()} CPU cores ({platform.machine()}), {args.jobs} dataset lane(s); total {seconds / 60:.1f} min. "
        "`train s`: training wall seconds; `best s`: seconds until the epoch that was kept (RecBole: pro rata "
        "of its fit). A model name ending in (docs/results.json) was not run here: its figures are the "
        "committed full run's.",
    ]
    for ds, models in res.items():
        lines += ["", f"## {ds}", ""]
        i = info.get(ds, {})
        lines.append(
            f"{i.get('events')} events, {i.get('users')} users, {i.get('item_vocab_size')} items; "
            f"valid from {i.get('valid_start')}, test from {i.get('test_start')} to {i.get('end')}; "
            f"{i.get('examples_evaluated')} test examples"
            + (f", {i['nightly_rows']} nightly (user, day) rows." if "nightly_rows" in i else ".")
        )
        lines += ["", "| model | n | NDCG@10 | Recall@10 | MRR@10 | request-time NDCG@10 | churn ROC-AUC 7 d "
                  "| 30 d | 7 d, active last week | 30 d, active last week | train s | best s |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]

        def mean(m, metric="ndcg@10"):
            return _agg(models[m].get(metric, []))[0]

        order = sorted(models, key=lambda m: -mean(m) if models[m].get("ndcg@10") else 1)
        for m in order:
            v = models[m]
            cells = [str(len(v.get("ndcg@10", v.get("churn_auc", []))))]
            for metric in (*METRICS, "request_time_ndcg@10", *CHURN_KEYS, "train_s", "best_s"):
                if not v.get(metric) or v[metric][0] is None:
                    cells.append("-")
                    continue
                mu, sd = _agg(v[metric])
                if math.isnan(mu):  # e.g. no user active in the week before the cut: no ROC-AUC
                    cells.append("undefined")
                    continue
                cells.append(f"{mu:.1f}" if metric.endswith("_s") else f"{mu:.4f} ± {sd:.4f}" if len(v[metric]) > 1 else f"{mu:.4f}")
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
        for m in ("ebbtide", "ebbtide_no_time"):
            v = models.get(m, {})
            for what, prefix, form in (("popularity prior", "prior", "log p_recent"),
                                       ("item-neighbour term", "nb", "log(neighbour affinity + 0.1)")):
                for view, key in (("nightly", prefix), ("request-time", f"rt_{prefix}")):
                    if any(x is not None for x in v.get(f"{key}_weight") or []):
                        chosen = [f"{w:g} x {form} ({h:g}-day half-life)" if w else "none"
                                  for h, w in zip(v.get(f"{key}_half_life_days", []), v[f"{key}_weight"])]
                        lines.append(f"\n{m}'s {what} for the {view} ranking, chosen on validation, per seed: "
                                     f"{'; '.join(chosen)}.")
        for m in PEERS:
            v = models.get(m, {})
            if v.get("epochs_run"):
                capped = [not s for s in v.get("stopped_early", [])]
                lines.append(f"\n{m}: {', '.join(str(int(x)) for x in v['epochs_run'])} epoch(s) run, best "
                             f"{', '.join(str(int(x)) for x in v['best_epoch'])}"
                             + ("; ended by the epoch cap, not by early stopping" if any(capped) else "; stopped early") + ".")
    lines += ["", "Churn ROC-AUC: P(return within 7 or 30 days) as of the test cut date, one row per user; "
              "the 'active last week' columns only over users whose last event is within 7 days before the "
              "cut, where recency alone separates less. RecBole models have no return-time head."]
    # On a fresh clone the quick report's folder (.ebbtide) does not exist until something writes there.
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    path.with_suffix(".json").write_text(json.dumps(_nan_to_none(
        {"settings": {k: v for k, v in vars(args).items() if k not in ("out", "root")}, "minutes": round(seconds / 60, 1),
         "datasets": {ds: {"info": info.get(ds, {}), "models": models} for ds, models in res.items()}}),
        indent=1, default=str, allow_nan=False) + "\n")


def _rel(path) -> str:
    """A path as the report names it: relative to the repository when inside it."""
    p = Path(path).resolve()
    return str(p.relative_to(ROOT)) if p.is_relative_to(ROOT) else str(path)


def _nan_to_none(obj):
    """NaN (a metric that could not be computed, e.g. a churn horizon past the end of the data) is
    not JSON: it becomes null."""
    if isinstance(obj, float):
        return None if obj != obj else obj
    if isinstance(obj, dict):
        return {k: _nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_nan_to_none(v) for v in obj]
    return obj


if __name__ == "__main__":
    sys.exit(main())
