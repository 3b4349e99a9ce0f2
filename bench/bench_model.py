"""Training-step speed of EbbtideNet's encoders against a plain cuDNN nn.LSTM of the same shape.

One step = zero_grad, forward, backward, Adam; bf16 autocast on GPU. Shape: item embedding 64,
hidden 128, L = 50, batch 1024 on GPU / 256 on CPU, catalogues of 3.7 k and 100 k items. The plain
baseline is embedding -> nn.LSTM -> last state -> Linear(128, 64) -> tied full softmax.

At 100 k items EbbtideNet's default head is the sampled softmax (above model.full_softmax_max_items),
so the 100 k rows are reported twice: with the full softmax forced (same work as the baseline, the
fair ratio) and with the sampled softmax (what training actually runs).

Runs from the repository root with nothing but torch installed (the GPU machine has no pyspark, no
yaml, no ebbtide install):  python bench/bench_model.py [--device cuda] [--steps 30]
Prints one JSON line per measurement and a last line
{"bench": "model", "device": ..., "seq_per_s": {...}, "ratio_vs_plain_lstm": {...}}.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lib"))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from ebbtide.model.network import EbbtideNet  # noqa: E402

N_EVENT_TYPES = 6
EMBED, HIDDEN, SEQ_LEN = 64, 128, 50


def model_conf(**kw):
    """ModelConf when the config stack imports (it needs yaml); the same fields otherwise."""
    try:
        import dataclasses

        from ebbtide.model.config import ModelConf

        return dataclasses.replace(ModelConf(), **kw)
    except ImportError:
        base = dict(
            encoder="time_lstm", item_dim=64, hidden_dim=128, event_type_dim=8, time_dim=16, dropout=0.1,
            full_softmax_max_items=50000, sampled_negatives=1024, sampled_proposal="uniform", hazard_weight=0.5,
            decay_heads=4, decay_half_life_min_days=0.05, decay_half_life_max_days=60.0, return_horizon_days=365.0,
        )
        base.update(kw)
        return SimpleNamespace(**base)


class PlainLSTM(nn.Module):
    """The reference: what a cuDNN LSTM next-item model of this shape costs, and nothing more."""

    def __init__(self, n_items: int):
        super().__init__()
        self.emb = nn.Embedding(n_items, EMBED, padding_idx=0)
        self.rnn = nn.LSTM(EMBED, HIDDEN, batch_first=True)
        self.proj = nn.Linear(HIDDEN, EMBED)
        self.bias = nn.Parameter(torch.zeros(n_items))

    def loss(self, batch):
        out, _ = self.rnn(self.emb(batch["item_idx"]))
        logits = self.proj(out[:, -1]) @ self.emb.weight.t() + self.bias
        return F.cross_entropy(logits.float(), batch["target_item"]), {}


def make_batch(b: int, n_items: int, device, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    length = torch.clamp(torch.randint(SEQ_LEN // 2, SEQ_LEN * 2, (b,), generator=g), max=SEQ_LEN)
    real = torch.arange(SEQ_LEN).unsqueeze(0) >= (SEQ_LEN - length).unsqueeze(1)
    # Session-like gaps: mostly minutes, sometimes days.
    gaps = torch.where(torch.rand(b, SEQ_LEN, generator=g) < 0.8, 60.0, 86400.0) * torch.empty(b, SEQ_LEN).exponential_(generator=g)
    batch = {
        "item_idx": torch.randint(2, n_items, (b, SEQ_LEN), generator=g) * real,
        "event_type_idx": torch.randint(2, N_EVENT_TYPES, (b, SEQ_LEN), generator=g) * real,
        "gap_s": gaps * real,
        "hour_of_week": torch.randint(0, 168, (b, SEQ_LEN), generator=g) * real,
        "session_start": (gaps > 1800).long() * real,
        "length": length,
        "target_item": torch.randint(2, n_items, (b,), generator=g),
        "time_to_next_s": 86400.0 * torch.empty(b).exponential_(generator=g),
        "censored": (torch.rand(b, generator=g) < 0.1).long(),
    }
    batch["target_item"] = batch["target_item"] * (1 - batch["censored"])
    return {k: v.to(device) for k, v in batch.items()}


def make_stepper(model: nn.Module, batch, device):
    """A closure running one training step: zero_grad, forward (bf16 autocast on GPU), backward, Adam."""
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)

    def step():
        opt.zero_grad(set_to_none=True)
        with autocast:
            total, _ = model.loss(batch)
        total.backward()
        opt.step()

    return step


def time_rounds(steppers: dict, device, rounds: int, steps: int, warmup: int) -> dict[str, tuple[float, float]]:
    """Median (wall, process CPU) seconds per step of each model. Models take turns, `steps` timed
    steps each per round, so a load that drifts during the run (a shared machine) hits every model
    alike; on a CPU the process time also shows the work done regardless of other processes."""
    cuda = device.type == "cuda"
    for step in steppers.values():
        for _ in range(warmup):
            step()
    times = {k: [] for k in steppers}
    cpu_times = {k: [] for k in steppers}
    for _ in range(rounds):
        for key, step in steppers.items():
            for _ in range(steps):
                if cuda:
                    torch.cuda.synchronize()
                t0, c0 = time.perf_counter(), time.process_time()
                step()
                if cuda:
                    torch.cuda.synchronize()
                times[key].append(time.perf_counter() - t0)
                cpu_times[key].append(time.process_time() - c0)
    med = lambda v: sorted(v)[len(v) // 2]  # noqa: E731
    return {k: (med(times[k]), med(cpu_times[k])) for k in steppers}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto", help="auto (cuda when available) | cpu | cuda")
    p.add_argument("--batch", type=int, default=0, help="batch size (default 1024 on GPU, 256 on CPU)")
    p.add_argument("--items", default="3700,100000", help="catalogue sizes, comma-separated")
    p.add_argument("--encoders", default="lstm,gru,time_lstm")
    p.add_argument("--rounds", type=int, default=3, help="rounds; in each, every model runs --steps timed steps")
    p.add_argument("--steps", type=int, default=0, help="timed steps per model and round (default 10 on GPU, 2 on CPU)")
    p.add_argument("--warmup", type=int, default=0, help="untimed steps first (default 5 on GPU, 2 on CPU)")
    p.add_argument("--threads", type=int, default=0, help="CPU intra-op threads (0 = torch's default)")
    args = p.parse_args(argv)

    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else (args.device if args.device != "auto" else "cpu"))
    cuda = device.type == "cuda"
    if args.threads:
        torch.set_num_threads(args.threads)
    if cuda:
        torch.backends.cudnn.benchmark = True
    batch_size = args.batch or (1024 if cuda else 256)
    steps = args.steps or (10 if cuda else 2)
    rounds = args.rounds
    warmup = args.warmup or (5 if cuda else 2)
    device_name = torch.cuda.get_device_name(device) if cuda else f"cpu ({torch.get_num_threads()} threads)"

    seq_per_s, ratio, ratio_cpu = {}, {}, {}
    for n_items in [int(x) for x in args.items.split(",")]:
        batch = make_batch(batch_size, n_items, device)
        runs = {f"plain_lstm@{n_items}": ("plain_lstm", "full", None)}
        for enc in args.encoders.split(","):
            runs[f"{enc}@{n_items}"] = (enc, "full", dict(encoder=enc, full_softmax_max_items=max(n_items, 50000)))
        if n_items > 50000 and "time_lstm" in args.encoders:
            runs[f"time_lstm@{n_items}_sampled"] = ("time_lstm", "sampled", dict(encoder="time_lstm"))
        steppers = {}
        for key, (_, _, conf) in runs.items():
            torch.manual_seed(0)
            model = PlainLSTM(n_items) if conf is None else EbbtideNet(model_conf(**conf), n_items, N_EVENT_TYPES)
            steppers[key] = make_stepper(model.to(device), batch, device)
        secs = time_rounds(steppers, device, rounds, steps, warmup)
        plain_wall, plain_cpu = secs[f"plain_lstm@{n_items}"]
        for key, (name, head, conf) in runs.items():
            wall, cpu = secs[key]
            seq_per_s[key] = round(batch_size / wall, 1)
            if conf is not None:
                ratio[key] = round(plain_wall / wall, 3)
                ratio_cpu[key] = round(plain_cpu / cpu, 3)
            print(json.dumps({
                "bench": "model_step", "device": device_name, "model": name, "softmax": head, "n_items": n_items,
                "batch": batch_size, "seq_len": SEQ_LEN, "ms_per_step": round(1000 * wall, 2),
                "cpu_ms_per_step": round(1000 * cpu, 2), "seq_per_s": seq_per_s[key], "bf16": cuda,
                "timed_steps": rounds * steps,
            }), flush=True)
        del steppers
        if cuda:
            torch.cuda.empty_cache()
    result = {"bench": "model", "device": device_name, "seq_per_s": seq_per_s, "ratio_vs_plain_lstm": ratio}
    if not cuda:
        # Wall-clock ratios on a busy CPU swing with the neighbours' load; process time does not.
        result["ratio_vs_plain_lstm_cpu_time"] = ratio_cpu
    print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    main()
