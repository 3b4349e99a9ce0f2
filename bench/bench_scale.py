"""`make bench-scale`: does the nightly workflow cost the same on the 30th night as on the first?

Days of generated logs arrive one at a time and the nightly workflow runs after each, in one process
and one Spark session on the embedded default (local Spark, Delta folders, MLflow on SQLite), the
way `make loop-demo` replays them (scripts/loop_demo.py; both use ebbtide.replay):

- generate: `ebbtide.synth` logs over --warmup-days + --history-days + --days days, users arriving
  through the whole window (synth.arrival_fraction 1), one Parquet file per UTC day. The warm-up
  days are not written (without them the first days hold only the first arrivals); every written
  day keeps a seeded random --events-per-day of its events, so each night gets the same amount of
  new data. Unless --users is given, the users are sized from a pilot run of the same settings so
  that the day with the fewest events still has --events-per-day (plus 10 %);
- bootstrap (not timed): the history's files land in the source folder; ingest, sessionize,
  sequences, a cheap training from scratch (--epochs, train.max_steps_per_epoch 50: a model to
  score with, not a good one), score the first replay day with the challenger (there is no
  champion: no evaluate runs);
- each replay day d: d's file lands in the source folder, then the nightly workflow of the
  morning after, as deploy/spark-submit/nightly.sh runs it: ingest (reads only the new file),
  sessionize, sequences --nightly, score --score-date d+1 (monitor aside).
  Each stage is timed (wall seconds and the Spark JVM's CPU seconds); the night is the sum of its
  four stages. One line per day.

The last line is one JSON object:
{"bench": "scale", "days", "events", "first_day_s", "last_day_s", "growth", "files",
"first_day_cpu_s", "last_day_cpu_s", "cpu_growth", "stage_growth", "load_avg"}:
events = new events of the replayed days; first_day_s / last_day_s = the nights of replay days 1
and N; growth = last / first (cpu_growth the same in JVM CPU seconds, stage_growth per stage);
files = data files in the current snapshot of each table (Delta's numFiles); load_avg = 1/5/15-minute
load at the start, then at the end. Target: growth <= 1.5 (exit status 1 naming the miss, unless
--no-check).

Rerunnable: every stage and every finished night is recorded in <root>/scale_state.json with its
timings; a rerun resumes after the last one (a night cut short resumes at its next stage, in a
fresh JVM) and prints the recorded nights again; --fresh deletes the root first. Logs go to stderr.

    .venv/bin/python bench/bench_scale.py                               # 30 days x 300 k events
    .venv/bin/python bench/bench_scale.py --days 3 --events-per-day 20000 --warmup-days 10 --fresh
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Optional

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "lib"))
sys.path.insert(0, str(ROOT / "bench"))

from bench_sessionize import _jvm_cpu_s  # noqa: E402  (one way to read the Spark JVM's CPU seconds)

STATE_FILE = "scale_state.json"
# What a root's state was made with: a rerun with other values must start --fresh.
IDENTITY = ("days", "events_per_day", "users", "items", "warmup_days", "history_days", "seed", "epochs")
NIGHT = ("ingest", "sessionize", "sequences", "score")
TABLES = ("bronze_events", "silver_events", "silver_sessions", "gold_item_vocab", "gold_event_type_vocab",
          "gold_user_sequences", "gold_training_examples", "gold_recommendations", "gold_churn_decay")
TARGET_GROWTH = 1.5
# Users are independent in ebbtide.synth, so a day's events scale with the users: a pilot of this
# many users with the same settings gives the events a user adds to the quietest kept day.
PILOT_USERS = 5000
USERS_MARGIN = 1.1
# The bootstrap's training from scratch: a model to score with, cheaply (evaluate does not run).
BOOTSTRAP_TRAIN = ("train.max_steps_per_epoch=50", "train.max_valid_rows=10000")


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench_scale.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--days", type=int, default=30,
                   help="days replayed one by one, each followed by a night (default 30)")
    p.add_argument("--events-per-day", type=int, default=300_000,
                   help="events of each written day (default 300,000; a seeded sample of the generated day)")
    p.add_argument("--users", type=int, default=None,
                   help="generated users (default: sized by a pilot so the quietest day has --events-per-day)")
    p.add_argument("--items", type=int, default=None, help="generated items (default: synth.items, 500)")
    p.add_argument("--warmup-days", type=int, default=60,
                   help="generated days before the history that are not written (default 60: the users active "
                        "in a day then grow by about 15 %% over 30 days; without a warm-up they more than triple)")
    p.add_argument("--history-days", type=int, default=1,
                   help="days ingested by the bootstrap, before the first timed night (default 1)")
    p.add_argument("--seed", type=int, default=7, help="generator seed (default 7)")
    p.add_argument("--epochs", type=int, default=1, help="epochs of the bootstrap's training (default 1)")
    p.add_argument("--root", default=str(ROOT / ".ebbtide" / "bench" / "scale"),
                   help="storage root: tables, checkpoints, MLflow, the generated days (default .ebbtide/bench/scale)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                   help="extra config override for every stage (repeatable), e.g. --set spark.shuffle_partitions=4")
    p.add_argument("--fresh", action="store_true", help="delete the storage root first")
    p.add_argument("--no-check", action="store_true", help="print the JSON line but do not exit 1 on a missed target")
    args = p.parse_args(argv)
    for name in ("days", "events_per_day", "history_days", "epochs"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.warmup_days < 0:
        p.error("--warmup-days must be >= 0")
    if args.users is not None and args.users < 1:
        p.error("--users must be >= 1")
    return args


def load_avg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def size_users(conf, skip_days: int, keep_days: int, per_day: int) -> int:
    """Users for which the quietest of the kept days has ``per_day`` events (plus USERS_MARGIN)."""
    from ebbtide import replay, synth

    pilot = synth.generate(dataclasses.replace(conf, users=PILOT_USERS))
    first = dt.date.fromisoformat(pilot.meta["start"][:10]) + dt.timedelta(days=skip_days)
    counts = {day: n for day, _, n in replay.day_slices(pilot.events)}
    fewest = min(counts.get(first + dt.timedelta(days=i), 0) for i in range(keep_days))
    if fewest == 0:
        raise SystemExit("bench_scale.py: a pilot day has no events; set --users or lengthen --warmup-days")
    return math.ceil(per_day * PILOT_USERS / fewest * USERS_MARGIN)


def night_line(i: int, n_days: int, night: dict, recorded: bool) -> str:
    stages = ", ".join(f"{s} {night['stages'][s]:.1f} s" for s in NIGHT)
    # Nights recorded before the append path have no split.
    paths = (f": {night['appended_users']:,} appended, {night['rewritten_users']:,} rewritten whole"
             if "appended_users" in night else "")
    return (f"day {i}/{n_days} {night['date']}: {night['events']:,} new events, {night['affected_users']:,} users "
            f"re-sessionized ({night['sessionize_mode']}{paths}), {night['active_users']:,} users scored; {stages}; "
            f"night {night['seconds']:.1f} s ({night['cpu_s']:.1f} JVM cpu-s); "
            f"{sum(night['files'].values()):,} data files" + (" (recorded)" if recorded else ""))


def _ratio(a: float, b: float) -> Optional[float]:
    return round(b / a, 3) if a > 0 else None


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    load0 = load_avg()
    root = Path(args.root).resolve()
    if args.fresh and root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True, exist_ok=True)

    from ebbtide import replay, tables
    from ebbtide.cli import Context, run_stage
    from ebbtide.config import load_config
    from ebbtide.log import get_logger, setup_logging
    from ebbtide.synth import MODEL_SETTINGS

    overrides = [f"storage.root={root}", *MODEL_SETTINGS, *BOOTSTRAP_TRAIN, f"train.epochs={args.epochs}",
                 *args.overrides]
    cfg = load_config(env="local", overrides=overrides)
    setup_logging(cfg.log_level)
    log = get_logger("bench.scale")
    ctx = Context(cfg)
    state = replay.State(root / STATE_FILE, {k: getattr(args, k) for k in IDENTITY}, "bench_scale.py")
    days_dir, raw = root / "days", root / "raw"
    source = ["--source", str(raw), "--format", "parquet"]

    def say(text: str) -> None:
        print(text, flush=True)

    def stage(key: str, cmd: str, argv: list[str]) -> dict:
        """Run one stage unless the state says it is done; record its summary and timings."""
        def run() -> dict:
            log.info("%s: ebbtide %s %s", key, cmd, " ".join(argv))
            t0, c0 = time.perf_counter(), _jvm_cpu_s()
            s = run_stage(cmd, argv, ctx)
            return {**s, "wall_s": round(time.perf_counter() - t0, 2), "cpu_s": round(_jvm_cpu_s() - c0, 2)}

        return state.once(key, run)

    def files() -> dict[str, int]:
        return {t: tables.num_files(ctx.spark, cfg, t) for t in TABLES if tables.exists(ctx.spark, cfg, t)}

    say("load average: " + ", ".join(f"{x:.2f}" for x in load0))

    # 1. The generated logs, one file per day.
    gen = state.done("generate")
    if gen is None or not days_dir.exists():
        conf = dataclasses.replace(cfg.synth, days=args.warmup_days + args.history_days + args.days, seed=args.seed,
                                   arrival_fraction=1.0, bad_rows=0.0, **({"items": args.items} if args.items else {}))
        users = args.users or size_users(conf, args.warmup_days, args.history_days + args.days, args.events_per_day)
        say(f"generating {users:,} users over {args.warmup_days} + {args.history_days} + {args.days} days "
            f"(seed {args.seed}), {args.events_per_day:,} events a day")
        gen = {**replay.generate_days(dataclasses.replace(conf, users=users), days_dir, skip_days=args.warmup_days,
                                      per_day=args.events_per_day), "users": users}
        state.record("generate", gen)
    start = dt.date.fromisoformat(gen["start"])
    history = [start + dt.timedelta(days=i) for i in range(args.history_days)]
    days = [start + dt.timedelta(days=args.history_days + i) for i in range(args.days)]
    say(f"{gen['events']:,} events of {gen['users']:,} users in {gen['files']} daily files (fewest in a day "
        f"{min(gen['day_events']):,}); history {history[0]} .. {history[-1]}, replay {days[0]} .. {days[-1]}")

    # 2. Bootstrap (not timed): the history, a model, the first score.
    t0 = time.perf_counter()
    if state.done("bootstrap.score") is None:
        for d in history:
            replay.land(days_dir, raw, d)
    ing = stage("bootstrap.ingest", "ingest", source)
    stage("bootstrap.sessionize", "sessionize", [])
    stage("bootstrap.sequences", "sequences", [])
    tr = stage("bootstrap.train", "train", ["--launcher", "local"])
    model = replay.serving_model(cfg, say) if state.done(f"day{args.days:02d}") is None else []
    stage("bootstrap.score", "score", ["--score-date", days[0].isoformat(), *model])
    say(f"bootstrap: {ing.get('bronze_new', 0):,} events ingested, model v{tr.get('model_version')} "
        f"({tr.get('epochs_completed')} epochs); {time.perf_counter() - t0:.0f} s")

    # 3. The nights.
    for i, day in enumerate(days, 1):
        key = f"day{i:02d}"
        recorded = state.done(key) is not None
        if not recorded:
            replay.land(days_dir, raw, day)
            night_after = (day + dt.timedelta(days=1)).isoformat()
            argv = {"ingest": source, "sessionize": [], "sequences": ["--nightly"],
                    "score": ["--score-date", night_after, *model]}
            got = {cmd: stage(f"{key}.{cmd}", cmd, argv[cmd]) for cmd in NIGHT}
            state.record(key, {
                "date": day.isoformat(),
                "events": int(got["ingest"].get("bronze_new", 0)),
                "stages": {cmd: got[cmd]["wall_s"] for cmd in NIGHT},
                "stages_cpu_s": {cmd: got[cmd]["cpu_s"] for cmd in NIGHT},
                "seconds": round(sum(got[cmd]["wall_s"] for cmd in NIGHT), 2),
                "cpu_s": round(sum(got[cmd]["cpu_s"] for cmd in NIGHT), 2),
                "affected_users": int(got["sessionize"].get("affected_users") or 0),
                "sessionize_mode": got["sessionize"].get("mode"),
                "appended_users": int(got["sessionize"].get("appended_users") or 0),
                "rewritten_users": int(got["sessionize"].get("rewritten_users") or 0),
                "active_users": int(got["score"].get("active_users") or 0),
                "files": files(),  # after the night, outside its timing
                "load_avg": load_avg(),
            })
        say(night_line(i, args.days, state.done(key), recorded))

    # 4. The line.
    nights = [state.done(f"day{i:02d}") for i in range(1, args.days + 1)]
    first, last = nights[0], nights[-1]
    load1 = load_avg()
    say("load average: " + ", ".join(f"{x:.2f}" for x in load1))
    out: dict[str, Any] = {
        "bench": "scale",
        "days": len(nights),
        "events": sum(n["events"] for n in nights),
        "first_day_s": first["seconds"],
        "last_day_s": last["seconds"],
        "growth": _ratio(first["seconds"], last["seconds"]),
        "files": files(),
        "first_day_cpu_s": first["cpu_s"],
        "last_day_cpu_s": last["cpu_s"],
        "cpu_growth": _ratio(first["cpu_s"], last["cpu_s"]),
        "stage_growth": {s: _ratio(first["stages"][s], last["stages"][s]) for s in NIGHT},
        "load_avg": load0 + load1,
    }
    say(json.dumps(out))
    if out["growth"] is None or out["growth"] > TARGET_GROWTH:
        print(f"bench_scale.py: target missed: growth {out['growth']} > {TARGET_GROWTH} (night of day 1 "
              f"{first['seconds']} s, of day {args.days} {last['seconds']} s)", file=sys.stderr)
        return 0 if args.no_check else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
