"""Config sections of the model package: `model` (the network), `train` (the loop and launchers), `mlflow`.

Kept free of torch imports so that loading the config stays instant.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ebbtide.config import register_section


@register_section("model")
@dataclass(frozen=True)
class ModelConf:
    # lstm | gru: plain recurrent baselines for ablation; time_lstm: the time-aware encoder.
    encoder: Literal["lstm", "gru", "time_lstm"] = "time_lstm"
    item_dim: int = 64
    hidden_dim: int = 128
    event_type_dim: int = 8
    time_dim: int = 16
    dropout: float = 0.1
    # Full softmax up to this many items; sampled softmax with log-Q correction above it.
    full_softmax_max_items: int = 50000
    sampled_negatives: int = 1024
    # Weight of the return-time (hazard) loss next to the next-item loss.
    hazard_weight: float = 0.5


@register_section("train")
@dataclass(frozen=True)
class TrainConf:
    launcher: Literal["local", "horovod", "torch-distributor"] = "local"
    num_proc: int = 2
    epochs: int = 10
    batch_size: int = 256
    # Base learning rate for one process; scaled by the world size.
    lr: float = 0.002
    weight_decay: float = 0.0
    seed: int = 42
    early_stopping_patience: int = 3
    early_stopping_metric: str = "val_ndcg@10"
    # auto: bf16/fp16 autocast on GPU, fp32 on CPU.
    mixed_precision: Literal["auto", "off"] = "auto"
    checkpoint_dir: str = "{root}/checkpoints/train"
    reader_workers: int = 2
    shuffle_rows: int = 10000
    # 0 = the whole split each epoch.
    max_steps_per_epoch: int = 0


@register_section("mlflow")
@dataclass(frozen=True)
class MlflowConf:
    tracking_uri: str = "sqlite:///{root}/mlflow.db"
    artifact_root: str = "{root}/mlartifacts"
    experiment: str = "ebbtide"
    model_name: str = "ebbtide"
