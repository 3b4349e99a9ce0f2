"""Generated days replayed one by one through the nightly workflow: the pieces that
scripts/loop_demo.py (`make loop-demo`) and bench/bench_scale.py (`make bench-scale`) share.

- :func:`generate_days`: an ``ebbtide.synth`` window written as one Parquet file per UTC day (the
  raw contract), optionally without its first days (a warm-up) and with at most a given number of
  events a day;
- :func:`land`: one day's file put into the source folder that ``ebbtide ingest`` reads;
- :class:`State`: the steps done so far, in a JSON file, so that a rerun resumes after the last one;
- :func:`serving_model`: the ``score`` arguments that pick the model to serve (the champion, or
  the challenger before the first promotion).
"""
from __future__ import annotations

import datetime as dt
import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

if TYPE_CHECKING:
    import pyarrow as pa

    from ebbtide.config import Config, SynthConf

DAY_MS = 86_400_000
EPOCH = dt.date(1970, 1, 1)


# ------------------------------------------------------------------------------------------
# State: the steps done so far, so that a rerun resumes instead of repeating them
# ------------------------------------------------------------------------------------------


class State:
    """Steps recorded by key with their summaries, in ``path``. ``identity`` is what the state
    was made with: a state file made with another one is refused (``prog`` names the command)."""

    def __init__(self, path: Path, identity: dict, prog: str):
        self.path = path
        data = json.loads(self.path.read_text()) if self.path.exists() else {}
        if data and data.get("identity") != identity:
            raise SystemExit(
                f"{prog}: {self.path} was made with {data.get('identity')}, not {identity}; "
                "rerun with --fresh (or another --root)")
        self.data = {"identity": identity, "steps": data.get("steps", {})}

    def done(self, key: str) -> Optional[dict]:
        return self.data["steps"].get(key)

    def record(self, key: str, summary: dict) -> None:
        self.data["steps"][key] = summary
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1, default=str))
        tmp.replace(self.path)  # atomic: a kill leaves the old or the new state, never half of one

    def once(self, key: str, fn: Callable[[], dict]) -> dict:
        """The recorded summary of ``key``; if there is none, run ``fn`` and record what it returns."""
        got = self.done(key)
        if got is None:
            got = fn()
            self.record(key, got)
        return got

    def forget(self, prefix: str) -> None:
        for k in [k for k in self.data["steps"] if k.startswith(prefix)]:
            del self.data["steps"][k]


# ------------------------------------------------------------------------------------------
# The generated days
# ------------------------------------------------------------------------------------------


def day_file(days_dir: Path, day: dt.date) -> Path:
    return days_dir / f"events-{day.isoformat()}.parquet"


def day_slices(events: "pa.Table") -> list[tuple[dt.date, int, int]]:
    """(UTC day, first row, rows) of each day that has events; ``events`` sorted by ts (epoch ms)."""
    import numpy as np

    ts = events.column("ts").to_numpy()
    if len(ts) == 0:
        return []
    day_no = ts // DAY_MS
    bounds = np.concatenate([[0], np.flatnonzero(np.diff(day_no)) + 1, [len(ts)]])
    return [(EPOCH + dt.timedelta(days=int(day_no[lo])), int(lo), int(hi - lo))
            for lo, hi in zip(bounds[:-1], bounds[1:])]


def generate_days(conf: "SynthConf", days_dir: Path, *, skip_days: int = 0, per_day: Optional[int] = None) -> dict:
    """The window of ``ebbtide.synth`` with ``conf``, one Parquet file per UTC day (the raw contract).

    The first ``skip_days`` days of the window are not written (a warm-up, so that the population
    of users is no longer only arriving). With ``per_day``, a day with more events keeps a random
    ``per_day`` of them (seeded by ``conf.seed``, in time order); a day with fewer keeps them all.
    Returns the events written, the files, the first written day (``start``) and the events of each
    written day (``day_events``).
    """
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ebbtide import synth

    result = synth.generate(conf)
    start = dt.date.fromisoformat(result.meta["start"][:10]) + dt.timedelta(days=skip_days)
    rng = np.random.default_rng(conf.seed)
    days_dir.mkdir(parents=True, exist_ok=True)
    counts = []
    for day, lo, n in day_slices(result.events):
        if day < start:
            continue
        part = result.events.slice(lo, n)
        if per_day is not None and n > per_day:
            part = part.take(pa.array(np.sort(rng.choice(n, per_day, replace=False))))
        pq.write_table(part, day_file(days_dir, day))
        counts.append(part.num_rows)
    return {"events": int(sum(counts)), "files": len(counts), "start": start.isoformat(), "day_events": counts}


def land(days_dir: Path, raw: Path, day: dt.date) -> int:
    """Put one day's file into the source folder (a day without events has none)."""
    src = day_file(days_dir, day)
    if not src.exists():
        return 0
    raw.mkdir(parents=True, exist_ok=True)
    dst = raw / src.name
    if not dst.exists():
        shutil.copyfile(src, dst.with_suffix(".part"))
        dst.with_suffix(".part").replace(dst)  # ingest never sees a half-written file
    return 1


# ------------------------------------------------------------------------------------------
# The model to serve
# ------------------------------------------------------------------------------------------


def serving_model(cfg: "Config", say: Callable[[str], Any]) -> list[str]:
    """``score`` arguments: none for the champion; before the first promotion (no champion, or a
    gate that refused), the challenger, said so."""
    from ebbtide.model import warm_start

    name = cfg.section("mlflow").model_name
    why = warm_start.unset_alias(cfg, f"models:/{name}@champion")
    if why:
        say(f"  no champion yet ({why}): scoring the challenger instead")
        return ["--model-uri", f"models:/{name}@challenger"]
    return []
