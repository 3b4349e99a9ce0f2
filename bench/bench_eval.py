"""Full-catalogue ranking speed: users x items scored by one matrix product per chunk, then the
target's rank, every HR/NDCG/MRR at 10/20/50 and top-50 coverage (ebbtide.evaluation.metrics).

    python bench/bench_eval.py [--users 100000 --items 10000 --dim 64 --threads 2 --chunk 1024]

Prints one JSON line last: {"bench": "eval", "users", "items", "seconds", "users_per_s", ...}.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lib"))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--users", type=int, default=100_000)
    p.add_argument("--items", type=int, default=10_000)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--chunk", type=int, default=1024)
    a = p.parse_args()

    import torch

    from ebbtide.evaluation.metrics import rank_factors

    torch.set_num_threads(a.threads)
    g = torch.Generator().manual_seed(0)
    u = torch.randn(a.users, a.dim, generator=g)
    v = torch.randn(a.items, a.dim, generator=g)
    t = torch.randint(2, a.items, (a.users,), generator=g)
    t0 = time.perf_counter()
    r = rank_factors(u, v, t, chunk_size=a.chunk)
    s = time.perf_counter() - t0
    print(json.dumps({"bench": "eval", "users": a.users, "items": a.items, "dim": a.dim, "threads": a.threads,
                      "chunk": a.chunk, "seconds": round(s, 2), "users_per_s": round(a.users / s),
                      "ndcg@10": round(r["ndcg@10"], 6), "target_s": 60.0, "passed": s < 60.0}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
