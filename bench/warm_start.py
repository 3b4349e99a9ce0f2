"""Warm-start retraining against training from scratch, increment by increment (docs/training.md, Warm start).

    .venv/bin/python bench/warm_start.py --root .ebbtide/results/ml-latest-small
    .venv/bin/python bench/warm_start.py --synthetic 3000 --epochs 2 --warm-epochs 1    # no Spark: a smoke run

`--root` (a dataset root that `make results` built) exports one snapshot's train and valid windows
with their times once (Spark; cached in `--cache`, default .tune/warm-<name>.npz); the rest needs
only torch and numpy. `--synthetic N` uses N generated rows (bench/example_tables.py) instead.

The train split's observed rows are ordered by target time and cut into a base (`--base-share` of
them) and `--increments` equal increments; censored rows (cut at T1) join the last increment. At
each cut-off the catalogue is what the rows up to it index (item indices are numbered in
first-seen order and only append, so it is a prefix of the final one), and both models train on
every row up to the cut-off:

- scratch: a fresh network, `train.epochs` epochs with the trainer's warm-up and cosine schedule;
- warm: the previous increment's warm model (the base, at the first), its weights carried over by
  `ebbtide.model.warm_start.transfer` (new items fresh), `train.warm_start_epochs` epochs, no warm-up.

Both stop early on validation NDCG@10 (bench/tune.py's `fit`: each valid example's next item at
the time of the next event, window items excluded), and the best epoch is what the next increment
starts from, as the registry would hold it. Valid items unknown at a cut-off read as OOV; a valid
target unknown there counts as a miss, for both. One JSON line per increment, then
`{"bench": "warm_start", ...}`.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "lib"))
sys.path.insert(0, str(HERE))

import tune  # noqa: E402  (bench/tune.py: the in-memory loop and the export helpers)

TIMES = ("target_ts", "last_ts")


def synthetic(n_rows: int, n_items: int, seed: int) -> dict:
    """Generated rows: the planted next item is the successor of the last (bench/example_tables.py)."""
    spec = importlib.util.spec_from_file_location("example_tables", HERE / "example_tables.py")
    ex = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ex)
    cols = ex.examples(n_rows, max_len=20, n_items=n_items, n_event_types=4, seed=seed)
    out = {"n_items": n_items, "n_event_types": 4, "session_gap_s": 1800.0}
    for split in ("train", "valid"):
        keep = cols["split"] == split
        for c in tune.ARRAYS:
            out[f"{split}/{c}"] = np.asarray(cols[c])[keep]
        for c in TIMES:
            ts = np.asarray(cols[c])[keep]
            out[f"{split}/{c}"] = ts.astype("datetime64[s]").astype(np.int64) if ts.dtype.kind == "M" else ts.astype(np.int64)
    return out


def stages(z: dict, base_share: float, increments: int) -> list[dict]:
    """Row masks of the train split and catalogue sizes, base first."""
    censored = np.asarray(z["train/censored"]) == 1
    ts = np.asarray(z["train/target_ts"])
    obs_ts = np.sort(ts[~censored])
    shares = [base_share + (1.0 - base_share) * k / increments for k in range(increments + 1)]
    out = []
    for k, share in enumerate(shares):
        last = k == increments
        cut = obs_ts[min(len(obs_ts) - 1, max(0, int(share * len(obs_ts)) - 1))]
        rows = (~censored & (ts <= cut)) | (censored & last)
        if last:
            rows = np.ones_like(rows)
        items = np.asarray(z["train/item_idx"])[rows]
        n_items = int(max(items.max(initial=1), np.asarray(z["train/target_item"])[rows].max(initial=1))) + 1
        out.append({"stage": k, "cut_ts": int(cut), "rows": rows, "n_items": max(n_items, 3)})
    return out


def valid_for(z: dict, n_items: int, dev):
    """The valid split as one cut-off's model sees it: unknown items read as OOV; rows whose target
    is unknown are kept out of the ranking and counted as misses (returned share of rankable rows)."""
    import torch

    arrays = {c: np.asarray(z[f"valid/{c}"]) for c in tune.ARRAYS}
    arrays["item_idx"] = np.where(arrays["item_idx"] >= n_items, 1, arrays["item_idx"])
    target = arrays["target_item"]
    ranked = target >= 2
    rankable = ranked & (target < n_items)
    arrays["target_item"] = np.where(target >= n_items, 0, target)
    va = tune.to_tensors(arrays, dev)
    rows = torch.as_tensor(np.nonzero(rankable)[0]).to(dev)
    return va, rows, float(rankable.sum()) / max(1, int(ranked.sum()))


def train_one(mc, tc, z, stage, va, va_rows, share, dev, eval_batch: int, parent_state=None) -> dict:
    import torch

    from ebbtide.model import warm_start
    from ebbtide.model.network import EbbtideNet
    from ebbtide.model.train import set_objective

    tr = tune.to_tensors({c: np.asarray(z[f"train/{c}"])[stage["rows"]] for c in tune.ARRAYS}, dev)
    t0 = time.perf_counter()
    torch.manual_seed(tc.seed)
    net = EbbtideNet(mc, stage["n_items"], int(z["n_event_types"])).to(dev)
    net.return_min_gap_s = float(z["session_gap_s"])
    set_objective(net, tc)
    if parent_state is not None:
        warm_start.transfer(net, parent_state)
    r = tune.fit(net, tc, tr, va, va_rows, dev, eval_batch, keep_best=True)
    ndcg = r["best"] * share  # unknown targets are misses
    return {"val_ndcg@10": round(ndcg, 5), "best_epoch": r["best_epoch"], "epochs_run": len(r["curve"]),
            "seconds": round(time.perf_counter() - t0, 2), "train_s": round(r["train_s"], 2), "curve": r["curve"],
            "_state": r["best_state"]}


def _public(d: dict) -> dict:
    return {k: v for k, v in d.items() if not k.startswith("_")}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--root", help="storage.root of a dataset built by `make results`")
    src.add_argument("--data", help="an .npz this script exported before")
    src.add_argument("--synthetic", type=int, metavar="ROWS", help="generated rows instead of a dataset (no Spark)")
    p.add_argument("--cache", help="where --root's export goes (default .tune/warm-<name>.npz)")
    p.add_argument("--synthetic-items", type=int, default=200)
    p.add_argument("--base-share", type=float, default=0.6)
    p.add_argument("--increments", type=int, default=4)
    p.add_argument("--epochs", type=int, help="train.epochs of the scratch runs (default: TrainConf's)")
    p.add_argument("--warm-epochs", type=int, help="train.warm_start_epochs (default: TrainConf's)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="model.X=... / train.Y=... (YAML values), e.g. --set model.hidden_dim=64")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--eval-batch", type=int, default=1024)
    args = p.parse_args()

    import torch
    import yaml

    from ebbtide.model import warm_start
    from ebbtide.model.config import ModelConf, TrainConf

    if args.synthetic:
        z, name = synthetic(args.synthetic, args.synthetic_items, seed=0), f"synthetic-{args.synthetic}"
    else:
        if args.root:
            name = Path(args.root).name
            cache = args.cache or f".tune/warm-{name}.npz"
            if not Path(cache).exists():
                tune.export_snapshot(args.root, cache, tune.ARRAYS + TIMES)
        else:
            cache, name = args.data, Path(args.data).stem
        z = dict(np.load(cache))
    dev = torch.device(args.device)
    if dev.type == "cpu":
        torch.set_num_threads(args.threads)
    sets = dict(s.split("=", 1) for s in args.set)
    mc = dataclasses.replace(ModelConf(), **{k[6:]: yaml.safe_load(v) for k, v in sets.items() if k.startswith("model.")})
    tc = dataclasses.replace(TrainConf(), **{k[6:]: yaml.safe_load(v) for k, v in sets.items() if k.startswith("train.")})
    if args.epochs is not None:
        tc = dataclasses.replace(tc, epochs=args.epochs)
    if args.warm_epochs is not None:
        tc = dataclasses.replace(tc, warm_start_epochs=args.warm_epochs)
    tc_warm = warm_start.effective_train_conf(tc)

    plan = stages(z, args.base_share, args.increments)
    base = plan[0]
    va, va_rows, share = valid_for(z, base["n_items"], dev)
    b = train_one(mc, tc, z, base, va, va_rows, share, dev, args.eval_batch)
    print(json.dumps({"increment": 0, "data": name, "cut_ts": base["cut_ts"], "train_rows": int(base["rows"].sum()),
                      "n_items": base["n_items"], "base": _public(b)}), flush=True)
    warm_state, prev_items = b["_state"], base["n_items"]
    lines = []
    for stage in plan[1:]:
        va, va_rows, share = valid_for(z, stage["n_items"], dev)
        scratch = train_one(mc, tc, z, stage, va, va_rows, share, dev, args.eval_batch)
        warm = train_one(mc, tc_warm, z, stage, va, va_rows, share, dev, args.eval_batch, parent_state=warm_state)
        warm_state = warm["_state"]
        line = {"increment": stage["stage"], "data": name, "cut_ts": stage["cut_ts"], "train_rows": int(stage["rows"].sum()),
                "n_items": stage["n_items"], "new_items": stage["n_items"] - prev_items, "rankable_valid_share": round(share, 4),
                "scratch": _public(scratch), "warm": _public(warm),
                "warm_minus_scratch_ndcg": round(warm["val_ndcg@10"] - scratch["val_ndcg@10"], 5),
                "speedup": round(scratch["seconds"] / max(warm["seconds"], 1e-9), 2)}
        prev_items = stage["n_items"]
        lines.append(line)
        print(json.dumps(line), flush=True)
    s_scratch = sum(x["scratch"]["seconds"] for x in lines)
    s_warm = sum(x["warm"]["seconds"] for x in lines)
    print(json.dumps({
        "bench": "warm_start", "data": name, "device": str(dev), "increments": len(lines),
        "epochs": tc.epochs, "warm_start_epochs": tc_warm.epochs,
        "scratch_ndcg_mean": round(float(np.mean([x["scratch"]["val_ndcg@10"] for x in lines])), 5),
        "warm_ndcg_mean": round(float(np.mean([x["warm"]["val_ndcg@10"] for x in lines])), 5),
        "warm_ndcg_last": lines[-1]["warm"]["val_ndcg@10"], "scratch_ndcg_last": lines[-1]["scratch"]["val_ndcg@10"],
        "scratch_s_total": round(s_scratch, 1), "warm_s_total": round(s_warm, 1),
        "speedup": round(s_scratch / max(s_warm, 1e-9), 2),
    }), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
