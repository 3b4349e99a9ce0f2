"""``ebbtide train``: one training function, three launchers, MLflow tracking and registration.

Driver (``run``): pin one Delta snapshot of gold_training_examples and list its Parquet files per
split, read the vocabularies, open (or reopen, on resume) the MLflow run, launch ``train_fn`` with
the chosen launcher, then log the artifacts and the pyfunc and register a new model version with the
``challenger`` alias.

Workers (``train_fn(spec)``, the same function for every launcher): Gloo on CPU, NCCL on GPU; the
learning rate scaled by the world size; initial parameters broadcast from rank 0; mixed precision on
GPU; each rank reads its Petastorm shard; after each epoch rank 0 computes HR@K / NDCG@K on the
valid split (full ranking at the time of the next visit), writes a checkpoint, then logs the epoch
to MLflow; every rank takes the same early-stopping decision from the broadcast metric.

Resume: the checkpoint folder is keyed by a fingerprint of the config, the data snapshot and the
world size. A run killed at any point is started again with the same command: it reopens the same
MLflow run and continues after the last checkpointed epoch. Because the checkpoint is written
before the epoch's metrics are logged, and a resumed rank 0 first logs the checkpointed epochs that
MLflow lacks, every epoch appears exactly once in MLflow.

Warm start (``--warm-start URI`` / ``train.warm_start``): the driver resolves the parent model to one
version, refuses it unless its architecture matches and its vocabularies are a prefix of the
current ones, and writes its weights next to the checkpoints; each worker copies them into its
fresh network before the first step (``ebbtide.model.warm_start``). The run trains
``train.warm_start_epochs`` epochs without lr warm-up, and records its parent (run param and tag
``warm_start_from``, version tag ``parent_version``, the predictor's lineage, the fingerprint).
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Optional

from ebbtide.log import get_logger, step

if TYPE_CHECKING:
    from ebbtide.cli import Context
    from ebbtide.config import Config
    from ebbtide.mlflow_uris import MlflowUris

log = get_logger("model.train")

ITEM_VOCAB_TABLE = "gold_item_vocab"
EVENT_VOCAB_TABLE = "gold_event_type_vocab"
LAST_CKPT = "last.pt"
BEST_WEIGHTS = "best.pt"
STATE_FILE = "state.json"
# Test hook: "EPOCH:STEP" makes rank 0 exit hard at that step of that epoch (1-based epoch,
# 0-based step), the way a lost executor or an OOM kill ends a run.
FAULT_ENV = "EBBTIDE_TRAIN_FAULT_AT"
FAULT_EXIT_CODE = 17


@dataclass
class TrainSpec:
    """Everything a training process needs; picklable, no Spark or MLflow objects."""

    model: dict
    train: dict
    n_items: int
    n_event_types: int
    train_files: list
    valid_files: list
    train_rows: int
    checkpoint_dir: str  # a local folder or a storage URL (ebbtide.storage) that every rank reaches
    mlflow: "MlflowUris"
    mlflow_run_id: str
    backend: str = "local"  # local | horovod | ddp
    item_counts: Optional[list] = None
    # sessionize.gap_minutes in seconds: the return-time head is fitted to gaps at least this long.
    session_gap_s: float = 0.0
    fault_at: str = ""
    # The driver's Hadoop S3 settings (storage.options_from_spark): workers reach the same store.
    storage_options: dict = field(default_factory=dict)
    # Warm start: the parent's state dict (written by the driver next to the checkpoints), copied
    # into the fresh network before the first step (ebbtide.model.warm_start); "" = none.
    warm_start_weights: str = ""
    extra: dict = field(default_factory=dict)


# ============================================================================================
# Process group: one small interface over no distribution, Horovod and torch.distributed
# ============================================================================================


class _Single:
    rank, size, local_rank, local_size = 0, 1, 0, 1

    def wrap(self, model, optimizer):
        return model, optimizer

    def broadcast_object(self, obj):
        return obj

    def allgather_object(self, obj):
        return [obj]

    def allreduce_sum(self, values: list[float]) -> list[float]:
        return list(values)

    def barrier(self):
        pass

    def sync_grads(self, optimizer):
        pass

    def step(self, optimizer, scaler=None):
        (scaler.step(optimizer) if scaler else optimizer.step())

    def unwrap(self, model):
        return model

    def shutdown(self):
        pass


class _Horovod(_Single):
    def __init__(self):
        import horovod.torch as hvd

        hvd.init()
        self.hvd = hvd
        self.rank, self.size = hvd.rank(), hvd.size()
        self.local_rank, self.local_size = hvd.local_rank(), hvd.local_size()

    def wrap(self, model, optimizer):
        hvd = self.hvd
        hvd.broadcast_parameters(model.state_dict(), root_rank=0)
        optimizer = hvd.DistributedOptimizer(optimizer, named_parameters=model.named_parameters())
        return model, optimizer

    def broadcast_object(self, obj):
        return self.hvd.broadcast_object(obj, root_rank=0)

    def allgather_object(self, obj):
        return self.hvd.allgather_object(obj)

    def allreduce_sum(self, values):
        import torch

        t = self.hvd.allreduce(torch.tensor(values, dtype=torch.float64), op=self.hvd.Sum)
        return t.tolist()

    def barrier(self):
        self.hvd.barrier()

    def sync_grads(self, optimizer):
        # Gradients must be averaged before they are unscaled or clipped.
        optimizer.synchronize()

    def step(self, optimizer, scaler=None):
        with optimizer.skip_synchronize():
            (scaler.step(optimizer) if scaler else optimizer.step())

    def shutdown(self):
        self.hvd.shutdown()


class _DDP(_Single):
    def __init__(self, device_type: str):
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
        self.dist = dist
        self.rank, self.size = dist.get_rank(), dist.get_world_size()
        self.local_rank = int(os.environ.get("LOCAL_RANK", self.rank))
        self.local_size = int(os.environ.get("LOCAL_WORLD_SIZE", self.size))

    def wrap(self, model, optimizer):
        from torch.nn.parallel import DistributedDataParallel as DDP

        dev = next(model.parameters()).device
        # Construction broadcasts rank 0's parameters and buffers.
        ddp = DDP(model, device_ids=[dev.index] if dev.type == "cuda" else None)
        return ddp, optimizer

    def broadcast_object(self, obj):
        box = [obj]
        self.dist.broadcast_object_list(box, src=0)
        return box[0]

    def allgather_object(self, obj):
        out = [None] * self.size
        self.dist.all_gather_object(out, obj)
        return out

    def allreduce_sum(self, values):
        import torch

        t = torch.tensor(values, dtype=torch.float64)
        if self.dist.get_backend() == "nccl":
            t = t.cuda()
        self.dist.all_reduce(t)
        return t.cpu().tolist()

    def barrier(self):
        self.dist.barrier()

    def unwrap(self, model):
        return model.module

    def shutdown(self):
        self.dist.destroy_process_group()


# ============================================================================================
# The training function
# ============================================================================================


def _conf(cls, d: dict):
    known = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in d.items() if k in known})


def param_checksum(model) -> str:
    """sha256 over every parameter's bytes, in name order: equal iff the weights are bit-identical."""
    h = hashlib.sha256()
    for name, p in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(p.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def set_objective(net, tc) -> None:
    """The network's training-only switches (the predictor never reads them), from train.*: one
    place for the trainer and the validation search (bench/tune.py)."""
    net.every_position = tc.objective == "every_position"
    net.label_positions = int(tc.label_positions)
    net.label_smoothing = float(tc.label_smoothing)
    share = float(getattr(tc, "query_time_uniform_share", 0.0))
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"train.query_time_uniform_share must be within [0, 1], got {share}")
    net.query_time_uniform_share = share


def lr_factor(tc, steps_per_epoch: int, plan: Optional[dict] = None):
    """The learning-rate multiplier per optimizer step (torch's LambdaLR): 1 for `constant`; for
    `cosine` a linear warm-up over warmup_share of the run's steps, then a half cosine down to
    min_lr_share at the last step of the last epoch. Early stopping may end the run sooner, on a
    higher rate; the best epoch is what gets registered either way. ``plan["epochs"]``, when given,
    is read at every step: a time budget (``train.max_seconds``) shortens the run after it started,
    and the cosine then ends on the new last epoch."""
    plan = plan if plan is not None else {"epochs": tc.epochs}

    def factor(step: int) -> float:
        if tc.lr_schedule == "constant":
            return 1.0
        total = max(1, steps_per_epoch * plan["epochs"])
        warm = int(tc.warmup_share * total)
        if step < warm:
            return (step + 1) / warm
        done = min(1.0, (step - warm) / max(1, total - warm))
        return tc.min_lr_share + (1.0 - tc.min_lr_share) * 0.5 * (1.0 + math.cos(math.pi * done))

    return factor


def plan_epochs(max_seconds: float, wall_s: float, epochs_done: int, planned: int) -> int:
    """The epochs a run with a time budget plans after ``epochs_done`` epochs took ``wall_s`` wall
    seconds in all (training and validation): those done plus as many more as the mean epoch time
    leaves room for, never more than planned before (the plan only shrinks, so the schedule's end
    never moves away) and never fewer than those done."""
    if max_seconds <= 0 or epochs_done <= 0:
        return planned
    per_epoch = wall_s / epochs_done
    more = int(max(0.0, max_seconds - wall_s) // per_epoch) if per_epoch > 0 else planned
    return max(epochs_done, min(planned, epochs_done + more))


def _metric_is_better(name: str, new: float, best: Optional[float]) -> bool:
    if new is None or not math.isfinite(new):
        return False
    if best is None:
        return True
    return new < best if "loss" in name else new > best


def evaluate(net, files: list, *, k: int, batch_size: int, device, autocast_ctx, max_rows: int = 0, workers: int = 2,
             storage_options: Optional[dict] = None) -> dict:
    """Full-ranking HR@K / NDCG@K (targets >= 2, scored at the time of the next visit) and mean loss.

    A target tied with other items counts as ranked below them (no credit for ties).
    """
    import torch

    from ebbtide.model import feed

    net.eval()
    hits = ndcg = n_ranked = 0.0
    loss_sum = rows = 0.0
    with torch.no_grad(), feed.open_loader(files, batch_size=batch_size, shuffle=False, loop=False, workers=workers,
                                           storage_options=storage_options) as it:
        for raw in it:
            b = feed.to_model_batch(raw, device)
            n = int(b["length"].shape[0])
            with autocast_ctx():
                total, _ = net.loss(b)
                scores = net.item_scores(b, b["time_to_next_s"]).float()
            loss_sum += float(total) * n
            rows += n
            target = b["target_item"]
            ok = target >= 2
            if ok.any():
                s, t = scores[ok], target[ok]
                ts = s.gather(1, t.view(-1, 1))
                rank = (s >= ts).sum(1) - 1  # 0-based; ties count against the target
                hit = rank < k
                hits += float(hit.sum())
                ndcg += float((hit.float() / torch.log2(rank.float() + 2.0)).sum())
                n_ranked += float(ok.sum())
            if max_rows and rows >= max_rows:
                break
    net.train()
    return {
        f"val_hr_at_{k}": hits / n_ranked if n_ranked else float("nan"),
        f"val_ndcg_at_{k}": ndcg / n_ranked if n_ranked else float("nan"),
        "val_loss": loss_sum / rows if rows else float("nan"),
        "val_rows": rows,
    }


def weight_average(net, decay: float):
    """torch's AveragedModel of ``net``: an exponential moving average of its parameters with this
    decay per update (the first update copies them); None for decay 0. Buffers are not averaged:
    the network's are constants (the sampler's proposal, the pad mask)."""
    if not decay:
        return None
    if not 0.0 < decay < 1.0:
        raise ValueError(f"train.ema_decay must be in [0, 1), got {decay}")
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    return AveragedModel(net, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=False)


def train_fn(spec: TrainSpec) -> dict:
    """Train on this process's shard; rank 0 evaluates, checkpoints and logs. Returns this rank's summary.

    Every launcher calls exactly this function (one process: directly; Horovod: in each Spark task
    or horovodrun slot; TorchDistributor: in each torchrun child).
    """
    import contextlib
    import random

    import numpy as np
    import torch

    from ebbtide import storage
    from ebbtide.log import setup_logging
    from ebbtide.model import feed, registry
    from ebbtide.model.config import ModelConf, TrainConf
    from ebbtide.model.network import EbbtideNet

    setup_logging(os.environ.get("EBBTIDE_LOG_LEVEL", "INFO"))
    tc: TrainConf = _conf(TrainConf, spec.train)
    mc: ModelConf = _conf(ModelConf, spec.model)
    use_cuda = tc.device == "cuda" or (tc.device == "auto" and torch.cuda.is_available())
    if tc.device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device=cuda but this process sees no CUDA device; use train.device=auto or cpu")
    pg = {"local": _Single, "horovod": _Horovod}.get(spec.backend)
    pg = pg() if pg else _DDP("cuda" if use_cuda else "cpu")
    rank, world = pg.rank, pg.size
    if use_cuda:
        torch.cuda.set_device(pg.local_rank)
        device = torch.device("cuda", pg.local_rank)
    else:
        device = torch.device("cpu")
        torch.set_num_threads(tc.threads_per_proc or max(1, (os.cpu_count() or 1) // max(1, pg.local_size)))

    # Mixed precision on GPU: bf16 where the card has it (no loss scaling needed), else fp16 + GradScaler.
    amp_dtype = None
    if use_cuda and tc.mixed_precision == "auto":
        amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16

    def autocast_ctx():
        return torch.autocast("cuda", dtype=amp_dtype) if amp_dtype is not None else contextlib.nullcontext()

    scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None

    torch.manual_seed(tc.seed)
    random.seed(tc.seed)
    np.random.seed(tc.seed)
    net = EbbtideNet(mc, spec.n_items, spec.n_event_types)
    net.return_min_gap_s = float(spec.session_gap_s)
    set_objective(net, tc)
    if spec.item_counts is not None and hasattr(net, "set_item_counts"):
        net.set_item_counts(torch.as_tensor(spec.item_counts))
    net.to(device)
    lr = tc.lr * world
    opt = torch.optim.Adam(net.parameters(), lr=lr, weight_decay=tc.weight_decay)

    # ---- resume: every rank loads the same checkpoint (the folder is shared storage on a cluster)
    opts = spec.storage_options
    ckpt_path = storage.join(spec.checkpoint_dir, LAST_CKPT)
    state = storage.torch_load(ckpt_path, opts, map_location=device, weights_only=False) if tc.resume else None
    if state is not None:
        if state.get("mlflow_run_id") != spec.mlflow_run_id:
            raise RuntimeError(
                f"checkpoint {ckpt_path} belongs to MLflow run {state.get('mlflow_run_id')}, not {spec.mlflow_run_id}; "
                "remove the folder or pass --no-resume"
            )
        net.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        # Each epoch reseeds from (seed, epoch) anyway; restoring keeps anything drawn before that equal too.
        torch.set_rng_state(state["rng"]["torch"].cpu())
        np.random.set_state(state["rng"]["numpy"])
        random.setstate(state["rng"]["python"])
    start_epoch = state["epoch"] + 1 if state else 1
    history: list[dict] = list(state["history"]) if state else []
    best = state.get("best") if state else None
    best_epoch = state.get("best_epoch", 0) if state else 0
    bad_epochs = state.get("bad_epochs", 0) if state else 0
    stopped = bool(state.get("stopped")) if state else False
    # Warm start: the parent's weights replace the fresh draw (a resumed run has its own checkpoint).
    warm = None
    if spec.warm_start_weights and state is None:
        from ebbtide.model import warm_start

        parent_state = storage.torch_load(spec.warm_start_weights, opts, map_location="cpu", weights_only=True)
        if parent_state is None:
            raise FileNotFoundError(f"warm start: the parent's weights {spec.warm_start_weights} are gone; rerun `ebbtide train`")
        warm = warm_start.transfer(net, parent_state)
        if rank == 0:
            log.info("warm start: %d parameters copied, %s rows copied, %d new item rows freshly initialised, %s recomputed",
                     warm["copied"], warm["prefix_copied"], warm["new_item_rows"], warm["recomputed"] or "nothing")

    model, opt = pg.wrap(net, opt)
    # After wrap, which hands every rank rank 0's weights: each rank then averages the same steps.
    ema = weight_average(net, tc.ema_decay)
    if ema is not None and state is not None and state.get("ema") is not None:
        ema.load_state_dict(state["ema"])
    # What validation ranks, early stopping keeps and the predictor ships.
    kept = ema.module if ema is not None else net
    metric = tc.early_stopping_metric
    steps = feed.steps_per_epoch(spec.train_rows, tc.batch_size, world, tc.max_steps_per_epoch, tc.epoch_share)
    if tc.max_seconds < 0:
        raise ValueError(f"train.max_seconds must be >= 0 (0 = no budget), got {tc.max_seconds}")
    # The epochs this run plans: train.epochs, or fewer once a time budget shows they do not fit.
    plan = {"epochs": int(state.get("planned_epochs", tc.epochs)) if state else tc.epochs}
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor(tc, steps, plan))
    if state and state.get("scheduler"):
        sched.load_state_dict(state["scheduler"])
        # Building the scheduler set the optimizer's rate to that of step 0, and load_state_dict
        # restores the step count, not the rate: the first step after a resume ran at the step-0
        # rate, so a resumed run ended on other weights than an uninterrupted one (found by the
        # chaos bench). Put back the rate the checkpointed step had.
        for group, lr_now in zip(opt.param_groups, sched.get_last_lr()):
            group["lr"] = lr_now
    fault_epoch, fault_step = (int(x) for x in spec.fault_at.split(":")) if spec.fault_at else (-1, -1)

    if rank == 0:
        if state:
            log.info("resuming MLflow run %s after epoch %d", spec.mlflow_run_id, state["epoch"])
            # Epochs checkpointed but not logged (killed between the two) are logged now, once.
            have = set(registry.logged_epochs(spec.mlflow, spec.mlflow_run_id))
            for h in history:
                if h["epoch"] not in have:
                    registry.log_epoch(spec.mlflow, spec.mlflow_run_id, h["epoch"], _mlflow_metrics(h))
        log.info(
            "training on %s: %d process(es), %d steps/epoch of %d, lr %.4g, epochs %d..%d, backend %s%s",
            device, world, steps, tc.batch_size, lr, start_epoch, plan["epochs"], spec.backend,
            f", time budget {tc.max_seconds:.0f} s" if tc.max_seconds > 0 else "",
        )

    seq_per_s: list[float] = []
    # Wall seconds of training and validation so far, carried across a resume: "how long to the
    # best model" is a figure the results report compares between models.
    wall0 = time.perf_counter() - (history[-1].get("wall_s", 0.0) if history else 0.0)
    model.train()
    epoch = start_epoch
    for epoch in range(start_epoch, tc.epochs + 1):
        if stopped or epoch > plan["epochs"]:
            break
        t0 = time.perf_counter()
        sums = [0.0, 0.0, 0.0, 0.0]  # loss, next_item, return_time, batches
        with feed.open_loader(
            spec.train_files, batch_size=tc.batch_size, rank=rank, world_size=world, seed=tc.seed, epoch=epoch,
            workers=tc.reader_workers, shuffle_rows=tc.shuffle_rows, loop=True, storage_options=opts,
        ) as it:
            for s in range(steps):
                batch = feed.to_model_batch(next(it), device)
                if rank == 0 and epoch == fault_epoch and s == fault_step:
                    log.error("fault injected by %s=%s: exiting hard", FAULT_ENV, spec.fault_at)
                    os._exit(FAULT_EXIT_CODE)
                opt.zero_grad()
                with autocast_ctx():
                    total, parts = model(batch)
                if scaler is not None:
                    scaler.scale(total).backward()
                    pg.sync_grads(opt)
                    scaler.unscale_(opt)
                else:
                    total.backward()
                    pg.sync_grads(opt)
                if tc.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(net.parameters(), tc.grad_clip)
                pg.step(opt, scaler)
                sched.step()
                if ema is not None:
                    ema.update_parameters(net)
                if scaler is not None:
                    scaler.update()
                sums[0] += float(total.detach())
                sums[1] += float(parts["next_item"])
                sums[2] += float(parts["return_time"])
                sums[3] += 1
        train_s = time.perf_counter() - t0
        seq_per_s.append(steps * tc.batch_size * world / train_s)
        tot = pg.allreduce_sum(sums)
        row = {
            "epoch": epoch,
            "train_loss": tot[0] / tot[3],
            "train_next_item_loss": tot[1] / tot[3],
            "train_return_time_loss": tot[2] / tot[3],
            "train_seq_per_s": seq_per_s[-1],
            "epoch_seconds": train_s,
            "lr": sched.get_last_lr()[0],
        }
        if rank == 0:
            val = evaluate(
                kept, spec.valid_files, k=tc.eval_k, batch_size=tc.eval_batch_size, device=device,
                autocast_ctx=autocast_ctx, max_rows=tc.max_valid_rows, workers=tc.reader_workers,
                storage_options=opts,
            )
            row.update(val)
        row["wall_s"] = time.perf_counter() - wall0
        row = pg.broadcast_object(row)
        history.append(row)
        value = row.get(metric)
        if value is None:
            raise ValueError(f"train.early_stopping_metric={metric!r} is not computed; use one of {sorted(k for k in row if k.startswith('val_'))}")
        if _metric_is_better(metric, value, best):
            best, best_epoch, bad_epochs = value, epoch, 0
            if rank == 0:
                storage.torch_save(kept.state_dict(), storage.join(spec.checkpoint_dir, BEST_WEIGHTS), opts)
        else:
            bad_epochs += 1
        stopped = bad_epochs >= tc.early_stopping_patience
        if tc.max_seconds > 0 and not stopped:
            # wall_s is rank 0's, broadcast above, so every rank plans the same epochs.
            planned = plan_epochs(tc.max_seconds, row["wall_s"], epoch, plan["epochs"])
            if planned < plan["epochs"] and rank == 0:
                log.info("time budget %.0f s: %.0f s spent after epoch %d (%.1f s an epoch), so %d epoch(s) in all "
                         "instead of %d; the learning-rate schedule ends on the last of them",
                         tc.max_seconds, row["wall_s"], epoch, row["wall_s"] / epoch, planned, plan["epochs"])
            plan["epochs"] = planned
        if rank == 0:
            storage.torch_save(
                {
                    "epoch": epoch, "model": net.state_dict(), "optimizer": opt.state_dict(),
                    "scaler": scaler.state_dict() if scaler is not None else None,
                    "scheduler": sched.state_dict(),
                    "ema": ema.state_dict() if ema is not None else None,
                    "best": best, "best_epoch": best_epoch, "bad_epochs": bad_epochs, "stopped": stopped,
                    "planned_epochs": plan["epochs"],
                    "history": history, "mlflow_run_id": spec.mlflow_run_id,
                    "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()},
                },
                ckpt_path, opts,
            )
            registry.log_epoch(spec.mlflow, spec.mlflow_run_id, epoch, _mlflow_metrics(row))
            log.info(
                "epoch %d/%d: loss %.4f, %s %.4f (best %.4f at epoch %d), %.0f seq/s",
                epoch, plan["epochs"], row["train_loss"], metric, value, best if best is not None else float("nan"),
                best_epoch, row["train_seq_per_s"],
            )
        if stopped:
            if rank == 0:
                log.info("early stopping: %s did not improve for %d epoch(s)", metric, bad_epochs)
            break
    pg.barrier()
    checksum = param_checksum(net)
    checksums = pg.allgather_object(checksum)
    result = {
        "rank": rank,
        "world_size": world,
        "param_checksum": checksum,
        "param_checksums": checksums,
        # The rest is rank 0's view, on every rank: launchers differ in which rank's return value they hand back.
        "history": history,
        "best_metric": best,
        "best_epoch": best_epoch,
        "seconds_to_best": next((h.get("wall_s") for h in history if h["epoch"] == best_epoch), None),
        "planned_epochs": plan["epochs"],
        "max_seconds": tc.max_seconds,
        "resumed_after_epoch": state["epoch"] if state else 0,
        "epochs_this_run": max(0, len(history) - (len(state["history"]) if state else 0)),
        "seq_per_s": float(np.mean(seq_per_s)) if seq_per_s else None,
        "device": str(device),
        "checkpoint_dir": spec.checkpoint_dir,
        "warm_start": warm,
    }
    shared = pg.broadcast_object({k: v for k, v in result.items() if k not in ("rank", "param_checksum")})
    result.update(shared)
    pg.shutdown()
    return result


def _mlflow_metrics(row: dict) -> dict:
    return {k: v for k, v in row.items() if k != "epoch" and isinstance(v, (int, float))}


# ============================================================================================
# The stage: `ebbtide train`
# ============================================================================================


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--launcher", choices=["local", "horovod", "horovodrun", "torch-distributor"], help="override train.launcher")
    p.add_argument("--num-proc", type=int, help="processes for horovod / horovodrun / torch-distributor (train.num_proc)")
    p.add_argument("--epochs", type=int, help="override train.epochs")
    p.add_argument("--batch-size", type=int, help="override train.batch_size (per process)")
    p.add_argument("--max-steps-per-epoch", type=int, help="override train.max_steps_per_epoch (0 = whole split)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="override train.device")
    p.add_argument("--no-resume", action="store_true", help="start a new run even if one of this config and data exists (else an unfinished one is "
                   "resumed and a finished one re-attached, its registered version reused)")
    p.add_argument("--examples-version", type=int, help="Delta version of gold_training_examples to train on (default: latest)")
    p.add_argument("--no-register", action="store_true", help="skip logging and registering the model (metrics and artifacts only; for quick checks)")
    p.add_argument("--warm-start", metavar="URI", help="start from this model's weights instead of a fresh initialisation "
                   "(train.warm_start): models:/NAME@ALIAS (e.g. models:/ebbtide@champion), models:/NAME/N, runs:/RUN_ID, a "
                   "version number or a model folder; \"\" = none. Same encoder and dims required, and the parent's "
                   "vocabulary must be a prefix of the current one; trains train.warm_start_epochs epochs (unless --epochs) "
                   "without lr warm-up; new items start fresh. Tags the run warm_start_from, the version parent_version")
    p.add_argument("--warm-start-if-missing", choices=["fail", "scratch"],
                   help="when --warm-start names an alias that is not set yet (e.g. no champion on a new deployment): fail "
                   "(default) or train from scratch with train.epochs (train.warm_start_if_missing); a missing version or "
                   "run, or an unreachable registry, still fails")


def _with_overrides(cfg: "Config", args: argparse.Namespace) -> "Config":
    tc = cfg.section("train")
    changes = {
        k: v
        for k, v in {
            "launcher": args.launcher,
            "num_proc": args.num_proc,
            "epochs": args.epochs,
            "batch_size": args.batch_size,
            "max_steps_per_epoch": args.max_steps_per_epoch,
            "device": args.device,
            "resume": False if args.no_resume else None,
            "warm_start": getattr(args, "warm_start", None),
            "warm_start_if_missing": getattr(args, "warm_start_if_missing", None),
        }.items()
        if v is not None
    }
    if not changes:
        return cfg
    return dataclasses.replace(cfg, extra={**cfg.extra, "train": dataclasses.replace(tc, **changes)})


# train.* options whose default changes nothing: left out of the fingerprint while at it.
NEUTRAL_TRAIN_OPTIONS = {"query_time_uniform_share": 0.0, "ema_decay": 0.0}


def world_size_of(tc) -> int:
    return 1 if tc.launcher == "local" else int(tc.num_proc)


def fingerprint(cfg: "Config", versions: dict, world: int, parent: str = "") -> str:
    """What makes two invocations the same run: model + training config, data snapshot, world size,
    and for a warm start the resolved parent (models:/NAME/N or a run), so that a warm and a cold
    run, or warm starts from two versions that one alias pointed at, never share a checkpoint."""
    operational = {"launcher", "num_proc", "hosts", "resume", "reader_workers", "threads_per_proc", "start_timeout_s", "device"}
    # The URI as written (an alias moves) and warm_start_epochs (already in `epochs` of a warm
    # start's effective config) stand for nothing more: the resolved parent is what counts.
    operational |= {"warm_start", "warm_start_epochs", "warm_start_if_missing"}
    tc = {k: v for k, v in dataclasses.asdict(cfg.section("train")).items() if k not in operational}
    # Options added later count only when set, so a run's fingerprint (and its resumable
    # checkpoint) stays what it was before they existed.
    for k, default in NEUTRAL_TRAIN_OPTIONS.items():
        if tc.get(k) == default:
            tc.pop(k, None)
    m = cfg.section("mlflow")
    what = {
        "model": dataclasses.asdict(cfg.section("model")),
        "train": tc,
        "versions": versions,
        "world": world,
        "storage": cfg.path(cfg.storage.warehouse_dir),
        "mlflow": [m.experiment, m.model_name],
    }
    if parent:  # a cold run's fingerprint is what it was before warm starts existed
        what["warm_start_from"] = parent
    blob = json.dumps(what, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _read_json(path: str, options: Optional[dict] = None) -> Optional[dict]:
    from ebbtide import storage

    data = storage.read_bytes(path, options)
    try:
        return None if data is None else json.loads(data)
    except json.JSONDecodeError:
        return None


def _write_json(path: str, obj: dict, options: Optional[dict] = None) -> None:
    from ebbtide import storage

    storage.write_bytes(path, json.dumps(obj, indent=2, default=str).encode(), options)


def _read_vocabs(spark, cfg: "Config", examples_version: int):
    """Item and event-type vocabularies as pandas frames, their Delta versions, and the catalogue sizes."""
    import pandas as pd
    from pyspark.sql import functions as F

    from ebbtide import tables
    from ebbtide.model import feed

    versions = {feed.EXAMPLES_TABLE: examples_version}
    item_vocab = tables.read(spark, cfg, ITEM_VOCAB_TABLE)
    versions[ITEM_VOCAB_TABLE] = tables.version(spark, cfg, ITEM_VOCAB_TABLE)
    cols = ["item_id", "item_index"] + (["category"] if "category" in item_vocab.columns else [])
    items = item_vocab.select(*cols).toPandas()
    ex = tables.read(spark, cfg, feed.EXAMPLES_TABLE, examples_version)
    agg = ex.agg(
        F.max(F.array_max("item_idx")).alias("max_item"),
        F.max("target_item").alias("max_target"),
        F.max(F.array_max("event_type_idx")).alias("max_event"),
    ).collect()[0]
    if tables.exists(spark, cfg, EVENT_VOCAB_TABLE):
        events = tables.read(spark, cfg, EVENT_VOCAB_TABLE).select("event_type", "event_type_index").toPandas()
        versions[EVENT_VOCAB_TABLE] = tables.version(spark, cfg, EVENT_VOCAB_TABLE)
    else:
        n = int(agg["max_event"] or 1)
        events = pd.DataFrame({"event_type": [f"type_{i}" for i in range(2, n + 1)], "event_type_index": list(range(2, n + 1))})
    n_items = int(max(items["item_index"].max() if len(items) else 1, 1)) + 1
    biggest = max(int(agg["max_item"] or 0), int(agg["max_target"] or 0))
    if biggest >= n_items:
        raise ValueError(
            f"{feed.EXAMPLES_TABLE} holds item index {biggest} but {ITEM_VOCAB_TABLE} ends at {n_items - 1}: "
            "the two tables come from different runs; re-run `ebbtide sequences`"
        )
    n_event_types = max(int(events["event_type_index"].max()) + 1 if len(events) else 2, int(agg["max_event"] or 1) + 1, 2)
    return items, events, versions, n_items, n_event_types


def _item_counts(spark, cfg: "Config", version: int, n_items: int) -> list:
    """Training-target frequency per item index (for a popularity proposal in the sampled softmax)."""
    from pyspark.sql import functions as F

    from ebbtide import tables
    from ebbtide.model import feed

    rows = (
        tables.read(spark, cfg, feed.EXAMPLES_TABLE, version)
        .where((F.col("split") == "train") & (F.col("target_item") >= 2))
        .groupBy("target_item").count().collect()
    )
    counts = [0] * n_items
    for r in rows:
        counts[int(r["target_item"])] = int(r["count"])
    return counts


def fit_churn_calibration(spark, cfg: "Config", version: int, predictor_dir: str) -> Optional[dict]:
    """Fit ebbtide.model.calibration on the users as of T1 - the longest churn horizon, with their
    returns observed until T1 (the same train-period snapshot the churn baselines are fitted on),
    scored by the freshly trained predictor."""
    from ebbtide import tables
    from ebbtide.evaluation import protocols as P
    from ebbtide.model import calibration, feed
    from ebbtide.evaluation.run import cutoffs_of
    from ebbtide.model.predictor import Predictor

    ex = tables.read(spark, cfg, feed.EXAMPLES_TABLE, version)
    t1 = cutoffs_of(spark, cfg, ex)["valid_start"]
    horizons = tuple(int(d) for d in cfg.section("evaluate").churn_horizons_days)
    cols = [*P.ARRAY_FEATURES, "length", "last_ts", "user_id", "elapsed_s", "returned", "return_after_s"]
    snap = P.churn_snapshot(ex, t1 - max(horizons) * P.DAY_S, observe_until_s=t1).select(*cols).orderBy("user_id").toPandas()
    if snap.empty:
        return None
    batch, elapsed = P.to_batch(snap), snap["elapsed_s"].to_numpy()
    pred = Predictor.load(predictor_dir)
    pred.meta.pop("churn_calibration", None)  # the head's own figures
    head = pred.churn(batch, elapsed)
    labels = {d: P.churn_labels(snap["returned"].to_numpy(), snap["return_after_s"].to_numpy(), d) for d in horizons}
    return calibration.fit(head, batch, elapsed, labels)


def _choose_on_validation(what: str, module, spark, cfg, version: int, pdir: str, missing: str, val) -> Optional[dict]:
    """``module.fit`` (``ebbtide.model.prior`` or ``neighbours``) on a saved predictor folder and the
    validation views ``val`` (``prior.validation``): the choice per view goes into its predictor.json
    under ``module.META_KEY``, and into the log."""
    from ebbtide.model import predictor

    with step(log, f"choosing the {what} on the validation split"):
        chosen = module.fit(spark, cfg, version, pdir, val) if val is not None else None
        predictor.set_meta(pdir, module.META_KEY, chosen)
        if chosen is None:
            log.warning("no %s: %s", what, missing)
        for view, c in (chosen or {}).items():
            log.info("%s for the %s ranking: %s (validation NDCG@10 on %s %.4f; %.4f without)", what, view,
                     f"half-life {c['half_life_days']:g} days x weight {c['weight']:g}" if c["weight"] else "none",
                     " and ".join(f"{v} ({n} rows)" for v, n in c["rows"].items()), c["valid_ndcg_at_10"],
                     c["valid_ndcg_at_10_without"])
    return chosen


def run(ctx: "Context", args: argparse.Namespace) -> dict:
    import tempfile

    import yaml

    from ebbtide import mlflow_uris, storage
    from ebbtide.model import feed, launchers, neighbours, predictor, prior, registry, warm_start

    cfg = _with_overrides(ctx.cfg, args)
    parent_uri = cfg.section("train").warm_start.strip()
    scratch_because = None
    if parent_uri:
        warm_start.check_reference(parent_uri)
        if cfg.section("train").warm_start_if_missing == "scratch":
            scratch_because = warm_start.unset_alias(cfg, parent_uri)
            if scratch_because:
                log.warning("no warm start: %s; training from scratch (train.warm_start_if_missing=scratch)",
                            scratch_because)
                parent_uri = ""
    if parent_uri:
        # warm_start_epochs instead of epochs (an explicit --epochs wins) and no lr warm-up.
        tc_warm = warm_start.effective_train_conf(cfg.section("train"), getattr(args, "epochs", None))
        cfg = dataclasses.replace(cfg, extra={**cfg.extra, "train": tc_warm})
    tc, mc, mlc = cfg.section("train"), cfg.section("model"), cfg.section("mlflow")
    spark = ctx.spark
    world = world_size_of(tc)
    opts = storage.options_from_spark(spark)

    with step(log, "pinning the training snapshot"):
        version, split_files = feed.snapshot_files(spark, cfg, args.examples_version)
        for s in ("train", "valid"):
            if not split_files.get(s):
                raise ValueError(f"{feed.EXAMPLES_TABLE} version {version} has no {s!r} rows; check sequences.split in the config")
        feed.check_shardable(split_files["train"], world, storage_options=opts)
        items, events, versions, n_items, n_event_types = _read_vocabs(spark, cfg, version)
        train_rows = feed.count_rows(split_files["train"], opts)
        log.info(
            "%s v%d: %d train rows in %d files, %d valid files; %d items, %d event types",
            feed.EXAMPLES_TABLE, version, train_rows, len(split_files["train"]), len(split_files["valid"]), n_items, n_event_types,
        )
    parent = None
    if parent_uri:
        with step(log, f"checking the warm-start parent {parent_uri}"):
            parent = warm_start.resolve_parent(cfg, parent_uri)
            warm_start.check_model_config(parent.meta.get("model", {}), dataclasses.asdict(mc))
            parent_items, parent_events = warm_start.parent_vocabularies(parent)
            warm_start.check_vocab_prefix(parent_items, items, "item_id", "item_index", ITEM_VOCAB_TABLE)
            warm_start.check_vocab_prefix(parent_events, events, "event_type", "event_type_index", EVENT_VOCAB_TABLE)
            if int(parent.meta.get("n_items", 0)) > n_items:
                raise warm_start.WarmStartError(
                    f"cannot warm-start: the parent knows {parent.meta['n_items']} item indices, {ITEM_VOCAB_TABLE} "
                    f"only {n_items}; the catalogue may only grow")
            log.info("warm start from %s (%s): %d of %d items known to it, %d epochs without lr warm-up",
                     parent.ref, parent.requested, int(parent.meta.get("n_items", 0)), n_items, tc.epochs)
    counts = _item_counts(spark, cfg, version, n_items) if getattr(mc, "sampled_proposal", "") == "popularity" and n_items > mc.full_softmax_max_items else None

    fp = fingerprint(cfg, versions, world, parent.ref if parent else "")
    ckpt_dir = storage.join(cfg.path(tc.checkpoint_dir), fp)
    state_path = storage.join(ckpt_dir, STATE_FILE)
    state = _read_json(state_path, opts)
    tags = {
        **{f"{registry.DELTA_TAG}{t}": v for t, v in versions.items()},
        "ebbtide.launcher": tc.launcher,
        "ebbtide.world_size": world,
        "ebbtide.fingerprint": fp,
        "ebbtide.pipeline_run_id": ctx.run_id,
    }
    parent_tags = {}
    if parent is not None:
        # Lineage: the run and its registered version name what they were trained from.
        parent_tags = {"warm_start_from": parent.ref, "ebbtide.parent_run_id": parent.run_id or ""}
        if parent.model_version is not None:
            parent_tags["parent_version"] = parent.model_version
        tags.update(parent_tags)
    # A finished run of this fingerprint trained this very model (same config, data snapshot and world
    # size): a rerun re-attaches to it and its registered version instead of training and registering
    # a duplicate (the chaos bench reran train after a kill that came just after it finished).
    finished = bool(state) and state.get("status") == "finished" and storage.exists(storage.join(ckpt_dir, LAST_CKPT), opts)
    if tc.resume and state and (state.get("status") == "running" or finished):
        run_id = state["mlflow_run_id"]
        registry.reopen_run(cfg, run_id, {"ebbtide.resumed_by": ctx.run_id})
        if finished:
            log.info("run %s already trained this configuration on this data: re-attaching to it "
                     "(--no-resume trains a new one)", run_id)
        else:
            log.info("resuming unfinished run %s from %s", run_id, ckpt_dir)
    else:
        storage.remove_tree(ckpt_dir, opts)
        params = registry.flatten(cfg.as_dict())
        if parent is not None:
            params["warm_start_from"] = parent.ref
        run_id = registry.start_run(cfg, run_name=f"train-{ctx.run_id}", params=params, tags=tags)
        _write_json(state_path, {"status": "running", "mlflow_run_id": run_id, "fingerprint": fp}, opts)
    parent_weights = ""
    if parent is not None:
        # Next to the checkpoints: shared storage that every rank reaches (also on a resume that
        # comes before the first checkpoint).
        parent_weights = storage.join(ckpt_dir, warm_start.PARENT_WEIGHTS)
        storage.torch_save(warm_start.parent_state_dict(parent), parent_weights, opts)

    spec = TrainSpec(
        model=dataclasses.asdict(mc),
        train=dataclasses.asdict(tc),
        n_items=n_items,
        n_event_types=n_event_types,
        train_files=split_files["train"],
        valid_files=split_files["valid"],
        train_rows=train_rows,
        checkpoint_dir=ckpt_dir,
        mlflow=mlflow_uris.from_config(cfg),
        mlflow_run_id=run_id,
        item_counts=counts,
        session_gap_s=cfg.sessionize.gap_minutes * 60.0,
        fault_at=os.environ.get(FAULT_ENV, ""),
        storage_options=opts,
        warm_start_weights=parent_weights,
    )
    try:
        with step(log, f"training with launcher {tc.launcher} ({world} process(es))"):
            results = launchers.launch(spec, tc, spark)
    except BaseException:
        registry.end_run(cfg, run_id, "FAILED")
        raise
    r0 = results[0]

    with step(log, "logging artifacts and the model"), tempfile.TemporaryDirectory(prefix="ebbtide-train-") as tmp:
        conf_path = os.path.join(tmp, "config.yaml")
        with open(conf_path, "w") as f:
            yaml.safe_dump(cfg.as_dict(), f, sort_keys=False)
        vocab_dir = os.path.join(tmp, "vocab")
        os.makedirs(vocab_dir)
        items.to_parquet(os.path.join(vocab_dir, f"{ITEM_VOCAB_TABLE}.parquet"), index=False)
        events.to_parquet(os.path.join(vocab_dir, f"{EVENT_VOCAB_TABLE}.parquet"), index=False)
        png = registry.curves_png(r0["history"], os.path.join(tmp, "curves.png"), [f"val_hr_at_{tc.eval_k}", f"val_ndcg_at_{tc.eval_k}"])
        registry.log_artifact_files(cfg, run_id, [conf_path, png])
        registry.log_artifact_files(cfg, run_id, [vocab_dir])

        best_weights = storage.torch_load(storage.join(ckpt_dir, BEST_WEIGHTS), opts, map_location="cpu", weights_only=True)
        pdir = predictor.save(
            os.path.join(tmp, "predictor"),
            best_weights,
            dataclasses.asdict(mc),
            n_items,
            n_event_types,
            cfg.sequences.max_len,
            items,
            events,
            session_gap_s=cfg.sessionize.gap_minutes * 60.0,
            lineage={"mlflow_run_id": run_id, "best_epoch": r0["best_epoch"], "tables": versions,
                     **({"warm_start_from": parent.lineage()} if parent is not None else {})},
        )
        if tc.churn_calibration:
            with step(log, "churn calibration on a train-period snapshot"):
                calib = fit_churn_calibration(spark, cfg, version, pdir)
                predictor.set_meta(pdir, "churn_calibration", calib)
                if calib:
                    log.info("churn calibration: %s", ", ".join(
                        f"{d}d on {c['rows']} users ({c['positives']} returned)" for d, c in calib["horizons"].items()))
                else:
                    log.warning("churn calibration skipped: too few users in the train-period snapshot; "
                                "the return-time head is served as it is")
        # The ranking's terms beside the network, each chosen on the validation split in turn (the
        # neighbour term on top of the popularity prior chosen first).
        chosen_prior = chosen_nb = None
        if tc.popularity_prior or tc.item_neighbours:
            with step(log, "collecting the validation views"):  # once for both choices
                val = prior.validation(spark, cfg, version)
        if tc.popularity_prior:
            chosen_prior = _choose_on_validation("popularity prior", prior, spark, cfg, version, pdir,
                                                 "the validation split has no rows to choose it on", val)
        if tc.item_neighbours:
            chosen_nb = _choose_on_validation("item-neighbour term", neighbours, spark, cfg, version, pdir,
                                              "the validation split has no rows or the train split no item pairs", val)
        model = {}
        if not args.no_register:
            version_tags = {"mlflow_run_id": run_id, tc.early_stopping_metric: r0["best_metric"], **tags}
            # A resumed run may have registered its model before it was killed: registering again
            # would add a second version of the same model (found by the chaos bench).
            model = registry.registered_version_of_run(cfg, run_id, version_tags) or registry.log_and_register_model(
                cfg, run_id, pdir, version_tags
            )
    registry.set_tags(cfg, run_id, {"ebbtide.best_epoch": r0["best_epoch"], "ebbtide.model_version": model.get("model_version", "")})
    registry.end_run(cfg, run_id, "FINISHED")
    _write_json(state_path, {"status": "finished", "mlflow_run_id": run_id, "fingerprint": fp}, opts)
    return {
        "mlflow_run_id": run_id,
        "experiment": mlc.experiment,
        "model_name": mlc.model_name,
        "model_version": model.get("model_version"),
        "model_uri": model.get("model_uri"),
        "launcher": tc.launcher,
        "world_size": r0["world_size"],
        "device": r0["device"],
        "best_metric_name": tc.early_stopping_metric,
        "best_metric": r0["best_metric"],
        "best_epoch": r0["best_epoch"],
        "seconds_to_best": r0.get("seconds_to_best"),
        "epochs_completed": len(r0["history"]),
        "planned_epochs": r0.get("planned_epochs"),
        "max_seconds": tc.max_seconds,
        "train_wall_s": r0["history"][-1].get("wall_s") if r0["history"] else None,
        "resumed_after_epoch": r0["resumed_after_epoch"],
        "seq_per_s": r0["seq_per_s"],
        "param_checksums": r0["param_checksums"],
        "tables": versions,
        "warm_start_from": parent.ref if parent is not None else None,
        "parent_model_version": parent.model_version if parent is not None else None,
        "warm_start": r0.get("warm_start"),
        "warm_start_skipped": scratch_because,
        "popularity_prior": chosen_prior and {view: {k: v for k, v in c.items() if k != "grid"}
                                              for view, c in chosen_prior.items()},
        "item_neighbours": chosen_nb and {view: {k: v for k, v in c.items() if k != "grid"}
                                          for view, c in chosen_nb.items()},
    }
