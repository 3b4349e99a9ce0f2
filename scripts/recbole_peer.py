"""Train one RecBole model on ebbtide's train split and rank ebbtide's evaluation rows with it,
scored by ebbtide's own metric code on ebbtide's candidate catalogue. Runs inside the RecBole
environment (scripts/setup_recbole.sh); scripts/results.py calls it. Prints one JSON line of
metrics last: the nightly view's metrics at the top level (the headline, as `ebbtide evaluate`
reports it), and both views under ``nightly`` and ``request_time``.

Inputs (written by scripts/results.py): a folder DIR holding ``DIR.inter`` (the train split's events:
user, item = ebbtide's item index, timestamp = the event's position in ebbtide's (ts, event_id)
order, so RecBole sees ties in exactly ebbtide's order) and ``examples.npz``: the request-time
windows ``item_idx`` (n, L) left-padded and ``targets`` (n,); the nightly windows
``nightly_item_idx`` (m, L) and target sets ``nightly_targets`` (m, W) padded with -1;
``candidates`` (bool per item index) and ``n_items``. RecBole takes no elapsed time, so the
windows alone define each view's rows for it.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="folder DIR with DIR.inter and examples.npz")
    p.add_argument("--model", required=True, choices=["GRU4Rec", "SASRec"])
    p.add_argument("--seed", type=int, default=2020)
    p.add_argument("--epochs", type=int, default=20, help="cap on epochs (early stopping on RecBole's hold-out applies)")
    p.add_argument("--stopping-step", type=int, default=3, help="epochs without improvement before stopping")
    p.add_argument("--max-len", type=int, default=50)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--exclude-history", action="store_true", help="do not rank the window's items (evaluate.exclude_history)")
    args = p.parse_args()

    os.environ.setdefault("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")  # RecBole reloads its checkpoint with torch.load
    sys.path.insert(0, str(ROOT / "lib"))
    import numpy as np
    import torch
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.data.interaction import Interaction
    from recbole.trainer import Trainer
    from recbole.utils import get_model, init_seed

    from ebbtide.evaluation.metrics import RankingAccumulator, SetRankingAccumulator, exclusion_mask

    torch.set_num_threads(args.threads)
    data = Path(args.data)
    conf = {
        "data_path": str(data.parent), "dataset": data.name,
        "USER_ID_FIELD": "user_id", "ITEM_ID_FIELD": "item_id", "TIME_FIELD": "timestamp",
        "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
        "MAX_ITEM_LIST_LENGTH": args.max_len,
        "loss_type": "CE", "train_neg_sample_args": None,
        # RecBole's own hold-out inside the train split serves only its early stopping.
        "eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "mode": "full", "group_by": "user"},
        "epochs": args.epochs, "stopping_step": args.stopping_step, "train_batch_size": 256, "eval_batch_size": 1024,
        "valid_metric": "NDCG@10", "metrics": ["NDCG", "Recall"], "topk": [10],
        "seed": args.seed, "reproducibility": True, "device": "cpu", "use_gpu": False,
        "checkpoint_dir": str(data / f"saved-{args.model}-{args.seed}"), "show_progress": False,
        "log_wandb": False, "state": "WARNING",
    }
    cfg = Config(model=args.model, dataset=data.name, config_dict=conf)
    init_seed(cfg["seed"], cfg["reproducibility"])
    ds = create_dataset(cfg)
    train, valid, _ = data_preparation(cfg, ds)
    model = get_model(cfg["model"])(cfg, train.dataset).to("cpu")
    trainer = Trainer(cfg, model)
    t0 = time.perf_counter()
    trainer.fit(train, valid, saved=True, show_progress=False)
    fit_s = time.perf_counter() - t0
    state = torch.load(trainer.saved_model_file, map_location="cpu", weights_only=False)
    model.load_state_dict(state["state_dict"])
    model.eval()

    z = np.load(data / "examples.npz")
    n_items, candidates = int(z["n_items"]), z["candidates"]
    # ebbtide item index -> RecBole internal id (0 = RecBole's padding / unknown to its train data)
    tok = ds.field2token_id["item_id"]
    to_rb = np.zeros(n_items, dtype=np.int64)
    for t, i in tok.items():
        if t != "[PAD]" and t.isdigit() and int(t) < n_items:
            to_rb[int(t)] = i
    rb_items = np.nonzero(to_rb)[0]  # ebbtide indices RecBole can score
    L = args.max_len

    def rank(windows, targets, acc):
        """The same exclusions as `ebbtide evaluate`'s rank_scorer: non-candidates (and the window
        with --exclude-history) are never ranked; a target outside them is a miss."""
        with torch.no_grad():
            for a in range(0, len(targets), 512):
                w = windows[a : a + 512]
                rb = to_rb[np.clip(w, 0, n_items - 1)]
                # RecBole wants the sequence left-aligned with padding at the end.
                seqs = np.zeros((len(w), L), dtype=np.int64)
                lens = np.zeros(len(w), dtype=np.int64)
                for r, row in enumerate(rb):
                    s = row[row > 0][-L:]
                    seqs[r, : len(s)] = s
                    lens[r] = max(len(s), 1)
                inter = Interaction({"item_id_list": torch.as_tensor(seqs), "item_length": torch.as_tensor(lens)})
                rs = model.full_sort_predict(inter).view(len(w), -1).numpy()
                scores = np.full((len(w), n_items), -np.inf, dtype=np.float32)
                scores[:, rb_items] = rs[:, to_rb[rb_items]]
                excl = exclusion_mask(len(w), n_items, history=w if args.exclude_history else None, candidates=candidates)
                acc.update(scores, targets[a : a + 512], excl)
        return acc.result()

    views = {
        "nightly": rank(z["nightly_item_idx"], z["nightly_targets"], SetRankingAccumulator(n_items)),
        "request_time": rank(z["item_idx"], z["targets"], RankingAccumulator(n_items)),
    }
    out = {**views["nightly"], **views}
    # Epochs run and the best one, so a report can say whether the cap, not early stopping, ended it.
    epochs_run = len(trainer.train_loss_dict)
    out.update({"model": args.model, "seed": args.seed, "fit_s": round(fit_s, 1), "epochs_run": epochs_run,
                "best_epoch": epochs_run - trainer.cur_step, "stopped_early": trainer.cur_step >= args.stopping_step})
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
