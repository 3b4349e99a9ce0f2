"""Validation-only search over model and training settings, on arrays exported from gold_training_examples.

    .venv/bin/python bench/tune.py export --root .ebbtide/results/ml-100k --out .tune/ml-100k.npz
    python bench/tune.py search --data .tune/ml-100k.npz --grid GRID.json [--device cuda]

`export` (here, with Spark) writes one snapshot's train and valid windows as compressed numpy arrays.
`search` needs only torch, numpy and PyYAML, so it also runs on a GPU machine without Spark: each
trial builds EbbtideNet from ModelConf / TrainConf overrides, trains it with the network's own loss,
the trainer's learning-rate schedule (`train.lr_factor`) and early stopping on validation NDCG@10
(request-time view: each valid example's next item, ranked at the time of the next event, items
already in the window excluded, as `make results` ranks MovieLens). The test split is not exported,
so a search cannot read it. One JSON line per trial; the chosen setting then runs through
`make results` like any other.

It ranks the request-time view only. The headline is the nightly view, which needs each user's
valid days and their item sets (a setting that won here lost the nightly view there:
docs/training.md, `time_inputs`). So before a setting becomes a default, `trial` runs it the way
`make results` does, on the validation split:

    .venv/bin/python bench/tune.py trial --root .ebbtide/results/ml-100k --grid GRID.json \
        --seeds 42,43 --out .tune/ml-100k-trials.jsonl

trains each trial with the train stage (Petastorm feed, the popularity prior and the item-neighbour
term chosen on validation, the model registered in the root's MLflow) and evaluates the version with
`ebbtide evaluate --split valid --models-only`: nightly and request-time NDCG@10 / Recall@10 / MRR@10
and churn ROC-AUC, one JSON line per (trial, seed), resumable.
"""
from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lib"))

ARRAYS = ("item_idx", "event_type_idx", "gap_s", "hour_of_week", "session_start", "length",
          "target_item", "time_to_next_s", "censored")
SMALL = {"item_idx": np.int32, "event_type_idx": np.int8, "hour_of_week": np.int16, "session_start": np.int8,
         "length": np.int16, "target_item": np.int32, "censored": np.int8, "gap_s": np.float32, "time_to_next_s": np.float32}


def export(args) -> None:
    out, version = export_snapshot(args.root, args.out, ARRAYS)
    print(json.dumps({"exported": args.out, "examples_version": version, "n_items": out["n_items"],
                      "train": int(len(out["train/length"])), "valid": int(len(out["valid/length"]))}))


def export_snapshot(root: str, path: str, columns) -> tuple[dict, int]:
    """One snapshot's train and valid `columns` of gold_training_examples under `root`, with the
    catalogue sizes, saved to `path` (.npz). Returns the arrays and the examples' Delta version."""
    from ebbtide.cli import Context
    from ebbtide.config import load_config
    from ebbtide.model import feed, train

    cfg = load_config(env="local", overrides=[f"storage.root={root}"])
    ctx = Context(cfg)
    version, files = feed.snapshot_files(ctx.spark, cfg)
    _, _, _, n_items, n_event_types = train._read_vocabs(ctx.spark, cfg, version)
    out = {"n_items": n_items, "n_event_types": n_event_types, "session_gap_s": cfg.sessionize.gap_minutes * 60.0}
    for split in ("train", "valid"):
        for c, arr in read_arrays(files[split], columns).items():
            out[f"{split}/{c}"] = arr
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **out)
    ctx.spark.stop()
    return out, version


def read_arrays(files: list, columns) -> dict:
    """Columns of gold_training_examples Parquet files (storage URLs) as numpy arrays: lists as 2-D
    arrays, ARRAYS in their SMALL dtypes, timestamps as int64 epoch seconds (-1 where null)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from ebbtide import storage

    t = pa.concat_tables([pq.read_table(path, columns=list(columns), filesystem=fs)
                          for fs, path in map(storage.filesystem_and_path, files)])
    out = {}
    for c in columns:
        col = t.column(c).combine_chunks()
        if pa.types.is_timestamp(col.type):
            secs = pc.divide(col.cast(pa.timestamp("us", tz=col.type.tz)).cast(pa.int64()), 1_000_000)
            out[c] = pc.fill_null(secs, -1).to_numpy(zero_copy_only=False).astype(np.int64)
            continue
        arr = col.flatten().to_numpy(zero_copy_only=False).reshape(len(col), -1) if str(col.type).startswith("list") \
            else col.to_numpy(zero_copy_only=False)
        out[c] = arr.astype(SMALL[c]) if c in SMALL else arr
    return out


def to_tensors(arrays: dict, dev) -> dict:
    """The ARRAYS of one split as tensors on `dev` (indices long, times float32)."""
    import torch

    return {c: torch.as_tensor(np.asarray(arrays[c]).astype(np.float32 if c in ("gap_s", "time_to_next_s") else np.int64)).to(dev)
            for c in ARRAYS}


def feed_order(n_train: int, take: int, blocks: int, buffer_rows: int, g) -> "torch.Tensor":
    """The row order one epoch of the Petastorm feed reads when the train rows lie in ``blocks``
    contiguous row groups in export order (files partitioned by user, sorted by time): the row
    groups in a random order, streamed through a shuffling buffer of ``buffer_rows`` that hands out
    a random held row for each new one (Petastorm's RandomShufflingBuffer); ``take`` rows."""
    import torch

    bounds = np.linspace(0, n_train, blocks + 1).astype(np.int64)
    order = torch.randperm(blocks, generator=g).tolist()
    stream = np.concatenate([np.arange(bounds[b], bounds[b + 1]) for b in order])
    if buffer_rows <= 0:  # no shuffling buffer: the feed hands out the stream as it comes
        return torch.as_tensor(stream[:take])
    held = list(stream[:buffer_rows])
    rng = np.random.default_rng(int(torch.randint(0, 2**31 - 1, (1,), generator=g)))
    out = []
    for nxt in stream[buffer_rows:]:
        j = int(rng.integers(len(held)))
        out.append(held[j])
        held[j] = nxt
        if len(out) == take:
            break
    while len(out) < take and held:
        out.append(held.pop(int(rng.integers(len(held)))))
    return torch.as_tensor(np.asarray(out, dtype=np.int64))


def fit(net, tc, tr: dict, va: dict, va_rows, dev, eval_batch: int, keep_best: bool = False,
        blocks: int = 0, buffer_rows: int = 0) -> dict:
    """Train `net` on the in-memory train tensors with the network's own loss, the trainer's
    learning-rate schedule (`train.lr_factor`) and early stopping on `_valid_ndcg` (tc.epochs,
    tc.epoch_share, tc.batch_size, tc.lr, tc.grad_clip, tc.early_stopping_patience, tc.seed).
    Returns best (val NDCG@10), best_epoch, curve, train_s, wall_s, and with keep_best the best
    epoch's state dict (best_state). ``blocks`` > 0: each epoch reads the rows the way the Petastorm
    feed does (:func:`feed_order`) instead of a uniform sample."""
    import torch

    from ebbtide.model.train import lr_factor

    g = torch.Generator(device="cpu").manual_seed(tc.seed)
    n_train = len(tr["length"])
    opt = torch.optim.Adam(net.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    steps = max(1, int(n_train * tc.epoch_share) // tc.batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor(tc, steps))
    best, best_epoch, bad, hist, best_state = -1.0, 0, 0, [], None
    t0 = time.perf_counter()
    train_s = 0.0
    for epoch in range(1, tc.epochs + 1):
        net.train()
        te = time.perf_counter()
        if blocks > 0:
            perm = feed_order(n_train, steps * tc.batch_size, blocks, buffer_rows, g).to(dev)
        else:
            perm = torch.randperm(n_train, generator=g)[: steps * tc.batch_size].to(dev)
        for s in range(steps):
            idx = perm[s * tc.batch_size:(s + 1) * tc.batch_size]
            batch = {k: v[idx] for k, v in tr.items()}
            opt.zero_grad()
            total, _ = net.loss(batch)
            total.backward()
            if tc.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(net.parameters(), tc.grad_clip)
            opt.step()
            sched.step()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        train_s += time.perf_counter() - te
        ndcg = _valid_ndcg(net, va, va_rows, eval_batch)
        hist.append(round(ndcg, 5))
        if ndcg > best:
            best, best_epoch, bad = ndcg, epoch, 0
            if keep_best:
                best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
        else:
            bad += 1
        if bad >= tc.early_stopping_patience:
            break
    return {"best": best, "best_epoch": best_epoch, "curve": hist, "train_s": train_s,
            "wall_s": time.perf_counter() - t0, "best_state": best_state}


def _trials(grid: dict) -> list[dict]:
    """{"base": {...}, "vary": [{...}, ...]} or {"base": ..., "product": {key: [values]}}: flat
    'model.x' / 'train.y' keys."""
    base = grid.get("base", {})
    if "product" in grid:
        keys = list(grid["product"])
        return [{**base, **dict(zip(keys, vals))} for vals in itertools.product(*grid["product"].values())]
    return [{**base, **v} for v in grid.get("vary", [{}])]


def search(args) -> None:
    import torch

    from ebbtide.model.config import ModelConf, TrainConf
    from ebbtide.model.network import EbbtideNet
    from ebbtide.model.train import set_objective

    dev = torch.device(args.device)
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    else:
        torch.set_num_threads(args.threads)
    z = np.load(args.data)
    n_items, n_event_types = int(z["n_items"]), int(z["n_event_types"])

    def load(split):
        return to_tensors({c: z[f"{split}/{c}"] for c in ARRAYS}, dev)

    tr, va = load("train"), load("valid")
    va_rows = torch.nonzero(va["target_item"] >= 2).flatten()
    grid = json.loads(Path(args.grid).read_text())
    out = open(args.out, "a") if args.out else None
    ref = {"reference": "markov", "data": Path(args.data).stem,
           "val_ndcg@10": round(_markov_ndcg(tr, va, va_rows, n_items, args.eval_batch), 5)}
    print(json.dumps(ref), flush=True)
    for i, trial in enumerate(_trials(grid)):
        model_kw = {k.split(".", 1)[1]: v for k, v in trial.items() if k.startswith("model.")}
        train_kw = {k.split(".", 1)[1]: v for k, v in trial.items() if k.startswith("train.")}
        mc = dataclasses.replace(ModelConf(), **model_kw)
        tc = dataclasses.replace(TrainConf(), **train_kw)
        torch.manual_seed(tc.seed)
        net = EbbtideNet(mc, n_items, n_event_types).to(dev)
        net.return_min_gap_s = float(z["session_gap_s"])
        set_objective(net, tc)
        r = fit(net, tc, tr, va, va_rows, dev, args.eval_batch, blocks=args.feed_blocks,
                buffer_rows=tc.shuffle_rows)
        rec = {"trial": i, "data": Path(args.data).stem, **trial, "val_ndcg@10": round(r["best"], 5),
               "best_epoch": r["best_epoch"], "epochs_run": len(r["curve"]), "train_s": round(r["train_s"], 1),
               "wall_s": round(r["wall_s"], 1), "device": str(dev), "feed_blocks": args.feed_blocks, "curve": r["curve"]}
        print(json.dumps(rec), flush=True)
        if out:
            out.write(json.dumps(rec) + "\n")
            out.flush()


def _override(key: str, value) -> str:
    """A grid entry as a config override: strings as they are, anything else as JSON (YAML reads it)."""
    return f"{key}={value if isinstance(value, str) else json.dumps(value)}"


def trial(args, spark=None) -> None:
    """Each trial of the grid (x seed) through the real train stage on ``--root`` and then
    ``ebbtide evaluate --split valid --models-only`` on the version it registered: both views with
    the prior and neighbour terms training chose, and churn. One JSON line per (trial, seed), appended
    to ``--out`` as it finishes; a rerun skips the pairs already there. The first evaluation also
    ranks the baselines once, as {"reference": MODEL} lines."""
    from ebbtide.cli import Context, run_stage
    from ebbtide.config import load_config
    from ebbtide.evaluation.report import figures_by_model
    from ebbtide.log import setup_logging

    setup_logging("INFO")
    out = Path(args.out)
    done, have_reference = set(), False
    if out.exists():
        for line in out.read_text().splitlines():
            rec = json.loads(line)
            have_reference |= "reference" in rec
            if "trial_key" in rec:
                done.add((rec["trial_key"], rec["seed"]))
    seeds = [int(x) for x in str(args.seeds).split(",") if x.strip()]
    base = [f"storage.root={Path(args.root).resolve()}",
            f"evaluate.exclude_history={'false' if args.keep_history else 'true'}", *args.sets]
    for i, settings in enumerate(_trials(json.loads(Path(args.grid).read_text()))):
        key = json.dumps(settings, sort_keys=True)
        for seed in seeds:
            if (key, seed) in done:
                print(json.dumps({"skipped": i, "seed": seed, "trial_key": key}), flush=True)
                continue
            overrides = [*base, *(_override(k, v) for k, v in settings.items()), f"train.seed={seed}"]
            ctx = Context(load_config(env="local", overrides=overrides), _spark=spark)
            t0 = time.perf_counter()
            # A (trial, seed) killed after its training re-attaches to the finished run here.
            tr = run_stage("train", ["--launcher", "local", "--no-resume"], ctx)
            train_s = time.perf_counter() - t0
            spark = ctx.spark
            ev = run_stage("evaluate", ["--model-uri", tr["model_uri"], "--split", "valid", "--no-champion",
                                        "--no-promote", *([] if not have_reference else ["--models-only"])], ctx)
            figures = figures_by_model(ev)
            rec = {"trial": i, "seed": seed, **settings, **figures.pop("ebbtide"),
                   "best_epoch": tr.get("best_epoch"), "train_s": round(train_s, 1),
                   "best_s": tr.get("seconds_to_best"), "popularity_prior": tr.get("popularity_prior"),
                   "item_neighbours": tr.get("item_neighbours"), "trial_key": key}
            lines = [] if have_reference else [{"reference": m, "split": "valid", **f} for m, f in figures.items()]
            have_reference = True
            with out.open("a") as f:
                for r in [*lines, rec]:
                    print(json.dumps(r), flush=True)
                    f.write(json.dumps(r) + "\n")


def _markov_ndcg(tr, va, rows, n_items: int, batch_size: int) -> float:
    """The bar on the same rows and metric: a first-order Markov chain (counts of item -> next item
    over the train windows, the target included; popularity breaks ties and ranks unseen rows)."""
    import torch

    nxt = torch.cat([tr["item_idx"][:, 1:], tr["target_item"].view(-1, 1)], dim=1)
    cur = tr["item_idx"]
    ok = (cur >= 2) & (nxt >= 2)
    counts = torch.zeros(n_items, n_items)
    counts.index_put_((cur[ok].cpu(), nxt[ok].cpu()), torch.ones(int(ok.sum())), accumulate=True)
    pop = counts.sum(0)
    pop = pop / pop.sum().clamp_min(1)

    class _Markov:
        def item_scores(self, b, _elapsed):
            s = counts[b["item_idx"][:, -1].cpu()] + pop
            s[:, :2] = float("-inf")
            return s.to(b["item_idx"].device)

        def eval(self):
            pass

        def train(self):
            pass

    return _valid_ndcg(_Markov(), va, rows, batch_size)


def _valid_ndcg(net, va, rows, batch_size: int, k: int = 10) -> float:
    """NDCG@10 of each valid example's next item at the time of the next event, window items excluded.
    Ties are credited to the target here (`evaluate` counts them against it): compare trials with
    each other, not with `make results` figures."""
    import torch

    net.eval()
    total = 0.0
    with torch.no_grad():
        for s in range(0, len(rows), batch_size):
            idx = rows[s:s + batch_size]
            b = {c: v[idx] for c, v in va.items()}
            scores = net.item_scores(b, b["time_to_next_s"]).float()
            target = b["target_item"]
            t_score = scores.gather(1, target.view(-1, 1))
            scores.scatter_(1, b["item_idx"], float("-inf"))  # window items (and pad) are not ranked
            rank = (scores > t_score).sum(1)
            total += float(torch.where(rank < k, 1.0 / torch.log2(rank.float() + 2.0), torch.zeros_like(t_score[:, 0])).sum())
    net.train()
    return total / max(1, len(rows))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("export", help="one snapshot's train and valid windows -> .npz (needs Spark)")
    e.add_argument("--root", required=True, help="storage.root of the dataset")
    e.add_argument("--out", required=True)
    s = sub.add_parser("search", help="train each trial of a grid, report its best validation NDCG@10")
    s.add_argument("--data", required=True)
    s.add_argument("--grid", required=True, help='JSON: {"base": {...}, "vary": [{...}]} or {"base", "product"}')
    s.add_argument("--device", default="cpu")
    s.add_argument("--threads", type=int, default=2)
    s.add_argument("--eval-batch", type=int, default=1024)
    s.add_argument("--out", help="append each trial's JSON line here too")
    s.add_argument("--feed-blocks", type=int, default=0,
                   help="> 0: read each epoch as the Petastorm feed does from this many row groups (train.shuffle_rows buffer); 0: uniform sample")
    t = sub.add_parser("trial", help="train each trial of a grid with the train stage and evaluate it on the valid "
                       "split: both views and churn (needs Spark and a root whose tables are built)")
    t.add_argument("--root", required=True, help="storage.root of the dataset (e.g. a make results lane's root)")
    t.add_argument("--grid", required=True, help="as for search; keys are config keys (model.x, train.y, ...)")
    t.add_argument("--seeds", default="42", help="comma-separated training seeds (default 42)")
    t.add_argument("--out", required=True, help="JSON lines, appended; (trial, seed) pairs already there are skipped")
    t.add_argument("--keep-history", action="store_true", help="rank the window's items too (as results.py's flag)")
    t.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override for every trial, e.g. the generated data's ebbtide.synth.MODEL_SETTINGS (repeatable)")
    args = p.parse_args()
    {"export": export, "search": search, "trial": trial}[args.cmd](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
