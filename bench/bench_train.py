"""`make bench-train`: the Petastorm-fed training loop against the bare model step, in one run.

Both sides run the same training step (EbbtideNet's loss, backward, Adam; bf16 autocast on GPU) on
batches of the same shape:

- pipeline: Parquet files of gold_training_examples' schema -> ``petastorm.make_batch_reader``
  (this process's shard, shuffled row groups, ``train.reader_workers`` threads) ->
  ``BatchedDataLoader`` with a shuffling buffer -> ``feed.to_model_batch`` -> the step: exactly the
  code path of ``train_fn``;
- model only: the same step cycling over batches already in memory (on the device).

The two take turns for ``--rounds`` rounds of ``--steps`` timed steps, so a load that drifts on a
shared machine hits both alike; each figure is the median round. A round of the pipeline opens a
fresh reader, as each epoch does; the reader start-up and the shuffling buffer's first fill are
timed separately (``reader_open_s``), since over a real epoch they are paid once.

The table (``--rows`` examples, L = ``--max-len``) is generated once and cached under ``--data-dir``.
Runs with torch, numpy, pyarrow and petastorm only (no Spark), so bench/gpu_check.sh uses it too.

    python bench/bench_train.py [--rows 50000 --max-len 50 --items 3700 --batch 256 --device auto]

Last line: {"bench": "train", "device": ..., "seq_per_s_pipeline": ..., "seq_per_s_model_only": ...,
"ratio": pipeline / model_only, ...}.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "lib"))
sys.path.insert(0, str(HERE))

from bench_model import model_conf  # noqa: E402  (one fallback for torch-only GPU hosts)


def ensure_table(folder: Path, rows: int, max_len: int, items: int, event_types: int) -> dict[str, list[str]]:
    """Write the split-partitioned Parquet folder once; reuse it while its parameters match."""
    import example_tables as E

    stamp = folder / "_params.json"
    params = {"rows": rows, "max_len": max_len, "items": items, "event_types": event_types, "v": 1}
    if stamp.exists() and json.loads(stamp.read_text()) == params:
        out: dict[str, list[str]] = {}
        for s in ("train", "valid", "test"):
            fs = sorted((folder / f"split={s}").glob("*.parquet"))
            if fs:
                out[s] = ["file://" + str(f) for f in fs]
        return out
    import shutil

    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    t0 = time.perf_counter()
    cols = E.examples(rows, max_len=max_len, n_items=items, n_event_types=event_types, seed=1)
    out = E.write_parquet_dataset(cols, str(folder), files_per_split=4, row_group_rows=8192)
    stamp.write_text(json.dumps(params))
    print(f"wrote {rows} examples (L={max_len}) to {folder} in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=50_000, help="examples in the generated table")
    p.add_argument("--max-len", type=int, default=50)
    p.add_argument("--items", type=int, default=3700, help="catalogue size (pad and OOV included)")
    p.add_argument("--encoder", default="time_lstm", help="lstm | gru | time_lstm")
    p.add_argument("--device", default="auto", help="auto (cuda when available) | cpu | cuda")
    p.add_argument("--batch", type=int, default=0, help="batch size (default 1024 on GPU, 256 on CPU)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=0, help="timed steps per round and side (default 40 on GPU, 25 on CPU)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps per side before the rounds")
    p.add_argument("--workers", type=int, default=2, help="Petastorm reader threads (train.reader_workers)")
    p.add_argument("--shuffle-rows", type=int, default=10000, help="shuffling buffer rows (train.shuffle_rows)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    p.add_argument("--data-dir", default=str(HERE.parent / ".ebbtide" / "bench" / "train_examples"))
    a = p.parse_args(argv)

    import contextlib
    import statistics

    import torch

    from ebbtide.model import feed
    from ebbtide.model.network import EbbtideNet

    device = torch.device("cuda" if (a.device == "cuda" or (a.device == "auto" and torch.cuda.is_available())) else "cpu")
    cuda = device.type == "cuda"
    if a.threads:
        torch.set_num_threads(a.threads)
    batch = a.batch or (1024 if cuda else 256)
    steps = a.steps or (40 if cuda else 25)
    n_event_types = 6
    files = ensure_table(Path(a.data_dir), a.rows, a.max_len, a.items, n_event_types)
    train_files = files["train"]
    train_rows = feed.count_rows(train_files)

    torch.manual_seed(0)
    net = EbbtideNet(model_conf(encoder=a.encoder), a.items, n_event_types).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else contextlib.nullcontext()

    def step(b):
        opt.zero_grad()
        with amp:
            total, _ = net(b)
        total.backward()
        opt.step()

    def sync():
        if cuda:
            torch.cuda.synchronize()

    mem = [{k: v.to(device) for k, v in b.items()} for b in feed.in_memory_batches(train_files, batch, 8)]

    def model_round(n):
        sync()
        t0, c0 = time.perf_counter(), time.process_time()
        for i in range(n):
            step(mem[i % len(mem)])
        sync()
        return time.perf_counter() - t0, time.process_time() - c0

    epoch = [0]

    def pipeline_round(n, warm):
        epoch[0] += 1
        t0 = time.perf_counter()
        with feed.open_loader(
            train_files, batch_size=batch, seed=42, epoch=epoch[0], workers=a.workers, shuffle_rows=a.shuffle_rows, loop=True,
        ) as it:
            b = feed.to_model_batch(next(it), device)  # reader start-up + the buffer's first fill
            sync()
            open_s = time.perf_counter() - t0
            for _ in range(warm):
                step(b)
                b = feed.to_model_batch(next(it), device)
            sync()
            t1, c1 = time.perf_counter(), time.process_time()
            for i in range(n):
                step(b)
                if i + 1 < n:
                    b = feed.to_model_batch(next(it), device)
            sync()
            # process_time counts every thread of this process: the reader threads' work included.
            return time.perf_counter() - t1, time.process_time() - c1, open_s

    for _ in range(a.warmup):
        step(mem[0])
    pipeline_round(a.warmup, 0)

    model_s, pipe_s, open_s, model_cpu, pipe_cpu = [], [], [], [], []
    for r in range(a.rounds):
        ms, mc = model_round(steps)
        ps, pc, os_ = pipeline_round(steps, 1)
        model_s.append(ms)
        model_cpu.append(mc)
        pipe_s.append(ps)
        pipe_cpu.append(pc)
        open_s.append(os_)
        print(json.dumps({"round": r, "model_only_s": round(ms, 3), "pipeline_s": round(ps, 3), "model_only_cpu_s": round(mc, 3),
                          "pipeline_cpu_s": round(pc, 3), "reader_open_s": round(os_, 3)}), file=sys.stderr)

    seq_model = steps * batch / statistics.median(model_s)
    seq_pipe = steps * batch / statistics.median(pipe_s)
    name = torch.cuda.get_device_name(device) if cuda else f"cpu ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads)"
    result = {
        "bench": "train",
        "device": name,
        "seq_per_s_pipeline": round(seq_pipe, 1),
        "seq_per_s_model_only": round(seq_model, 1),
        "ratio": round(seq_pipe / seq_model, 3),
        "reader_open_s": round(statistics.median(open_s), 3),
        # CPU seconds of this process per round (all threads): on a shared CPU, where wall time also
        # measures the neighbours, model_only / pipeline of these is the work-based ratio.
        "cpu_s_pipeline": round(statistics.median(pipe_cpu), 3),
        "cpu_s_model_only": round(statistics.median(model_cpu), 3),
        "ratio_cpu_time": round(statistics.median(model_cpu) / statistics.median(pipe_cpu), 3),
        "rows": a.rows,
        "train_rows": train_rows,
        "max_len": a.max_len,
        "items": a.items,
        "encoder": a.encoder,
        "batch": batch,
        "steps_per_round": steps,
        "rounds": a.rounds,
        "reader_workers": a.workers,
        "shuffle_rows": a.shuffle_rows,
        "torch": torch.__version__,
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
