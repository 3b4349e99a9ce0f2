"""Config sections of the model package: `model` (the network), `train` (the loop and launchers), `mlflow`.

Kept free of torch imports so that loading the config stays instant.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ebbtide.config import register_section


@register_section("model")
@dataclass(frozen=True)
class ModelConf:
    # lstm | gru: plain recurrent baselines for ablation; time_lstm: the time-aware LSTM; time_gru:
    # the same read-out on a GRU; attention: causal self-attention with time-decayed scores
    # (TiSASRec-like) and the same read-out.
    encoder: Literal["lstm", "gru", "time_lstm", "time_gru", "attention"] = "time_lstm"
    # attention encoder only.
    attention_layers: int = 2
    attention_heads: int = 2
    item_dim: int = 64
    hidden_dim: int = 128
    event_type_dim: int = 8
    time_dim: int = 16
    dropout: float = 0.3
    # Add the last item's embedding (linearly mapped) to the user vector: a direct "what follows X" path.
    last_item_skip: bool = True
    # Item-to-item transitions: a free vector per item, T[j] = "what tends to follow j" in the item
    # space (rank item_dim, yet it can hold any successor map, which a linear map of the item's own
    # embedding cannot). none | last: T of the last item | decayed: T of every event in the window,
    # weighted by the decayed read-out (time_lstm / attention; the others use the last item), so an
    # older event's successors fade with its age at the user's own rate. Zero-initialised.
    transitions: Literal["none", "last", "decayed"] = "none"
    # Zero-initialised gates on the side inputs, the decayed read-out and the elapsed time: the
    # network starts as a plain item sequence model and learns how much time is worth.
    time_gates: bool = True
    # time_lstm: the read-out's decay rates are the user's own (global rates x a learned per-user factor).
    user_decay: bool = True
    # False: gaps, hour, session starts and elapsed time all read as zero (the no-time ablation).
    use_time: bool = True
    # Which time side inputs the recurrence reads (added to the item embedding with the event type):
    # all: gaps, hour of week and session starts | gaps: no hour of week | none: none of the three.
    # The read-out's event ages and the elapsed time stay real in every mode (time then enters only
    # through the decayed read-out and the elapsed-time term); the event type is always read.
    # use_time: false still zeroes everything.
    time_inputs: Literal["all", "gaps", "none"] = "all"
    # Full softmax up to this many items; sampled softmax with log-Q correction above it.
    full_softmax_max_items: int = 50000
    sampled_negatives: int = 1024
    # uniform | popularity: the sampled softmax's proposal; popularity needs EbbtideNet.set_item_counts.
    sampled_proposal: Literal["uniform", "popularity"] = "uniform"
    # Weight of the return-time (hazard) loss next to the next-item loss.
    hazard_weight: float = 0.5
    # time_lstm read-out: attention heads, each with a learned decay rate; their initial half-lives
    # are spread log-evenly between these two values.
    decay_heads: int = 4
    decay_half_life_min_days: float = 0.05
    decay_half_life_max_days: float = 60.0
    # expected_days_to_return is the mean return time given a return within this many days.
    return_horizon_days: float = 365.0


@register_section("train")
@dataclass(frozen=True)
class TrainConf:
    # local: one process; horovod: horovod.spark.run on the Spark session; horovodrun: plain hosts;
    # torch-distributor: DDP through pyspark's TorchDistributor.
    launcher: Literal["local", "horovod", "horovodrun", "torch-distributor"] = "local"
    # Processes for horovod / horovodrun / torch-distributor (local is always one).
    num_proc: int = 2
    # horovodrun -H, e.g. "host1:4,host2:4"; empty = localhost:num_proc.
    hosts: str = ""
    # auto: CUDA when available (NCCL, one GPU per process), else CPU (Gloo).
    device: Literal["auto", "cpu", "cuda"] = "auto"
    epochs: int = 15
    # A wall-clock budget for training and validation, in seconds (0 = none): after each epoch the
    # run plans as many more epochs as its mean epoch time leaves room for (never more than
    # `epochs`), and the cosine schedule ends on the last planned one, so a retrain that must fit a
    # nightly window still anneals instead of being cut mid-schedule.
    max_seconds: float = 0.0
    # every_position: a next-item label at every position of each window (up to max_len labels per
    # recurrence); last: only the window's target. `last` with every window each epoch is the default:
    # ahead on validation on MovieLens-100k and the generated logs once the feed read uniform
    # batches (docs/training.md, "Objective").
    objective: Literal["every_position", "last"] = "last"
    # Share of the train split's windows read per epoch (each epoch a different shuffled share).
    # With every_position, consecutive windows of a user overlap in all but one label, so a small
    # share (0.2) already shows each label about max_len x share times.
    epoch_share: float = 1.0
    # every_position: label only the last this many positions of each window (0 = all). Consecutive
    # windows overlap, so each label is still seen about label_positions x epoch_share times per
    # epoch, while the full-catalogue softmax runs on that many rows per window instead of max_len:
    # what makes every_position affordable for a catalogue of tens of thousands of items.
    label_positions: int = 0
    # After training, stack the return-time head's probabilities with recency and frequency in a
    # logistic fit on a train-period churn snapshot (ebbtide.model.calibration).
    churn_calibration: bool = True
    # After training, choose the ranking's recent-popularity priors (ebbtide.model.prior) on the
    # validation split, one for the nightly ranking (the mean NDCG@10 of the nightly and request-time
    # views) and one for the request-time ranking (that view alone): each a half-life and a weight
    # from these grids, or none (weight 0) when no blend ranks better than the network alone.
    popularity_prior: bool = True
    prior_half_lives_days: list[float] = field(default_factory=lambda: [3.0, 14.0, 60.0])
    prior_weights: list[float] = field(default_factory=lambda: [0.25, 0.5, 1.0, 2.0])
    # After the popularity prior, choose the ranking's item-neighbour term (ebbtide.model.neighbours)
    # on the validation split the same way, one per view: a half-life of the window's weights and a
    # weight from these grids, or none (weight 0). The similarity keeps each item's top_k neighbours.
    item_neighbours: bool = True
    neighbour_half_lives_days: list[float] = field(default_factory=lambda: [30.0])
    neighbour_weights: list[float] = field(default_factory=lambda: [0.5, 1.0, 2.0, 4.0, 8.0])
    neighbour_top_k: int = 200
    # constant, or cosine: linear warm-up over warmup_share of all steps, then cosine decay to
    # min_lr_share x lr at the last epoch.
    lr_schedule: Literal["constant", "cosine"] = "cosine"
    warmup_share: float = 0.05
    min_lr_share: float = 0.05
    label_smoothing: float = 0.0
    # Share of the training positions whose item ranking is queried at a uniform random time
    # u x t_next (u ~ U(0, 1)) between the event and the next one, instead of at the next event's
    # time. A nightly table queries at midnight, hours to days after the last event, without
    # knowing when the next one comes, while the next-event time is mostly seconds inside a visit:
    # a uniform query time teaches "what comes next, given no event for e seconds" over the elapsed
    # times serving asks about. 0 = always the next event's time; 1 = always uniform. Training
    # batches only: validation and the return-time loss keep the true gap.
    query_time_uniform_share: float = 0.0
    batch_size: int = 256
    # Base learning rate for one process; scaled by the world size.
    lr: float = 0.002
    weight_decay: float = 0.0
    # > 0: keep an exponential moving average of the weights (this decay per optimizer step) and
    # validate, keep as the best epoch and ship the average instead of the raw weights; 0 = off.
    # An average over the last ~1 / (1 - decay) steps is a smoother model than the last step's, so
    # the epoch early stopping keeps depends less on where the last batches happened to leave it.
    ema_decay: float = 0.0
    grad_clip: float = 5.0
    seed: int = 42
    early_stopping_patience: int = 3
    # MLflow metric names allow no '@': val_ndcg_at_10, val_hr_at_10 or val_loss (lower is better).
    early_stopping_metric: str = "val_ndcg_at_10"
    # Cut-off K of the validation metrics HR@K / NDCG@K (full ranking over the catalogue).
    eval_k: int = 10
    eval_batch_size: int = 1024
    # 0 = the whole valid split every epoch.
    max_valid_rows: int = 0
    # auto: bf16/fp16 autocast on GPU, fp32 on CPU.
    mixed_precision: Literal["auto", "off"] = "auto"
    checkpoint_dir: str = "{root}/checkpoints/train"
    # Continue an unfinished run of the same config and data from its last epoch checkpoint.
    resume: bool = True
    # Start from this model's weights (models:/NAME@ALIAS, models:/NAME/N, runs:/RUN_ID, a version
    # number or a model folder; empty = a fresh initialisation): ebbtide.model.warm_start.
    warm_start: str = ""
    # Epochs of a warm-started run, instead of `epochs`; a warm start also skips the lr warm-up.
    warm_start_epochs: int = 3
    # When warm_start names an alias (models:/NAME@ALIAS) that is not set yet (or a model not yet
    # registered): fail (the default) or scratch, a fresh start with `epochs` (the weekly
    # workflow's first run on a new deployment, before any champion exists).
    warm_start_if_missing: Literal["fail", "scratch"] = "fail"
    # Petastorm reader threads per process; 1 makes the row order (and so the weights) reproducible.
    reader_workers: int = 2
    # Rows in each process's shuffling buffer (0 = row-group order only).
    shuffle_rows: int = 10000
    # 0 = the whole split each epoch.
    max_steps_per_epoch: int = 0
    # torch threads per process; 0 = the machine's cores divided by the local processes.
    threads_per_proc: int = 0
    # Seconds for all Horovod / DDP processes to start before the launch fails.
    start_timeout_s: int = 300


@register_section("mlflow")
@dataclass(frozen=True)
class MlflowConf:
    # Read by ebbtide.mlflow_uris: store URIs (databricks, http://...) as written, a bare path as a folder.
    tracking_uri: str = "sqlite:///{root}/mlflow.db"
    # Empty: the tracking URI also holds the model registry; databricks-uc: Unity Catalog.
    registry_uri: str = ""
    artifact_root: str = "{root}/mlartifacts"
    experiment: str = "ebbtide"
    model_name: str = "ebbtide"
    # Alias every newly registered version gets; evaluation promotes it to champion through a gate.
    alias: str = "challenger"
    # Items the pyfunc returns per user unless the caller passes params={"k": ...}.
    top_k: int = 10
