"""``ebbtide <stage> ...``: the one entry point behind the console script and jobs/*.py.

Each stage module exposes ``add_arguments(parser)`` and ``run(ctx, args) -> dict``. Stage
modules are imported only when their command runs, so ``--help`` is instant. Logs go to
stderr; the stage's summary goes to stdout as one JSON line, for scripts and tests.
"""
from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Optional

from ebbtide.config import Config, ConfigError, load_config
from ebbtide.log import get_logger, setup_logging

# command -> (module, one-line help). Order is pipeline order.
STAGES: dict[str, tuple[str, str]] = {
    "synth": ("ebbtide.synth", "generate raw behaviour logs with planted decay and churn truth"),
    "ingest": ("ebbtide.ingest", "raw logs -> bronze_events + quarantine_events (incremental, idempotent)"),
    "sessionize": ("ebbtide.sessionize", "bronze_events -> silver_events + silver_sessions"),
    "sequences": ("ebbtide.sequences", "silver_events -> gold_item_vocab, gold_user_sequences, gold_training_examples"),
    "train": ("ebbtide.model.train", "train the time-aware LSTM (local, horovod or torch-distributor) and register it"),
    "evaluate": ("ebbtide.evaluation.run", "score the challenger against baselines and the champion; gate promotion"),
    "score": ("ebbtide.scoring.run", "nightly scoring -> gold_recommendations + gold_churn_decay"),
    "sql": ("ebbtide.sql", "run SQL against ebbtide's tables (the catalog holds every table by name)"),
}

log = get_logger("cli")


@dataclass
class Context:
    """What a stage gets: the validated config, a lazily started Spark session, a run id."""

    cfg: Config
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    _spark: Any = None

    @property
    def spark(self):
        if self._spark is None:
            from ebbtide.spark import get_spark

            self._spark = get_spark(self.cfg)
        return self._spark


def _common(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("configuration")
    g.add_argument("--env", help="config overlay conf/<env>.yaml (default: local, or $EBBTIDE_ENV)")
    g.add_argument("--conf", action="append", default=[], metavar="FILE", help="extra YAML overlay (repeatable)")
    g.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
        help="override one key, e.g. --set sessionize.gap_minutes=45 (repeatable, applied last)",
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ebbtide",
        description="ebbtide: learn how each user's interest fades, and act on it every night.",
        epilog="Run `ebbtide <command> --help` for a command's options. Config: conf/base.yaml, then "
        "conf/<env>.yaml, then --conf files, then --set overrides.",
    )
    sub = p.add_subparsers(dest="command", metavar="<command>")
    for name, (module, help_) in STAGES.items():
        sp = sub.add_parser(name, help=help_, description=help_)
        _common(sp)
        sp.set_defaults(_module=module)
        # Arguments are added lazily (see main) so that `ebbtide --help` imports nothing heavy.
    return p


def _stage_parser(cmd: str, module) -> argparse.ArgumentParser:
    sp = argparse.ArgumentParser(prog=f"ebbtide {cmd}", description=STAGES[cmd][1])
    _common(sp)
    module.add_arguments(sp)
    return sp


def run_stage(cmd: str, argv: list[str], ctx: Optional[Context] = None) -> dict:
    """Run one stage in this process and return its summary (the demo chains stages this way,
    sharing one Spark session). Raises ConfigError on a bad configuration."""
    module = importlib.import_module(STAGES[cmd][0])
    args = _stage_parser(cmd, module).parse_args(argv)
    if ctx is None:
        cfg = load_config(env=args.env, files=args.conf, overrides=args.overrides)
        setup_logging(cfg.log_level)
        ctx = Context(cfg)
    t0 = time.perf_counter()
    log.info("%s: run %s, env %s", cmd, ctx.run_id, ctx.cfg.env)
    summary = module.run(ctx, args) or {}
    return {"stage": cmd, "run_id": ctx.run_id, "seconds": round(time.perf_counter() - t0, 1), **summary}


def main(argv: Optional[list[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if not argv or argv[0] in ("-h", "--help"):
        parser.print_help()
        return 0
    cmd = argv[0]
    if cmd not in STAGES:
        parser.error(f"unknown command {cmd!r}; choose from {', '.join(STAGES)}")
    try:
        summary = run_stage(cmd, argv[1:])
    except ConfigError as e:
        print(f"ebbtide {cmd}: configuration error: {e}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError) as e:
        log.debug("traceback", exc_info=True)
        print(f"ebbtide {cmd}: {e}", file=sys.stderr)
        return 1
    print(json.dumps(summary, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
