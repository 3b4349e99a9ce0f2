"""``ebbtide <stage> ...``: the one entry point behind the console script and jobs/*.py.

Each stage module exposes ``add_arguments(parser)`` and ``run(ctx, args) -> dict``. Stage
modules are imported only when their command runs, so ``--help`` is instant. Logs go to
stderr; the stage's summary goes to stdout as one JSON line, for scripts and tests.

A failure ends with one line on stderr, ``ebbtide <command>: error: <what>; <the fix>``, and
exit status 2 for a usage or configuration error, 1 for a failure at run time; ``--debug``
prints the traceback above that line.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import sys
import time
import traceback
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
    "monitor": ("ebbtide.monitor.run", "one day's input drift, outputs and realized outcomes -> ops_monitoring + a report"),
    "sql": ("ebbtide.sql", "run SQL against ebbtide's tables (the catalog holds every table by name)"),
}

# Which stage writes each table or view, so a missing one names the command to run.
TABLE_STAGES: dict[str, str] = {
    "bronze_events": "ingest", "quarantine_events": "ingest", "ops_ingest_log": "ingest",
    "silver_events": "sessionize", "silver_sessions": "sessionize", "ops_sessionize_log": "sessionize",
    "gold_item_vocab": "sequences", "gold_event_type_vocab": "sequences",
    "gold_training_examples": "sequences", "gold_user_sequences": "sequences",
    "ops_evaluations": "evaluate",
    "gold_recommendations": "score", "gold_churn_decay": "score",
    "latest_recommendations": "score", "latest_churn_decay": "score",
    "ops_monitoring": "monitor",
}

EXIT_RUNTIME, EXIT_USAGE = 1, 2

log = get_logger("cli")


class UsageError(Exception):
    """A command line argparse refused (exit status 2)."""


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad command line raises instead of printing the usage block, so that main
    reports it as its one line like every other failure."""

    def error(self, message: str):  # type: ignore[override]
        raise UsageError(f"{message}; see `{self.prog} --help`")


@dataclass
class Context:
    """What a stage gets: the validated config, a lazily started Spark session, a run id."""

    cfg: Config
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    _spark: Any = None
    # --debug: keep every log that repeats a failure (main prints the traceback too).
    debug: bool = False

    @property
    def spark(self):
        if self._spark is None:
            from ebbtide.spark import get_spark, quiet_failure_echoes

            self._spark = get_spark(self.cfg)
            if not self.debug and not self.cfg.spark.use_platform_session:
                # A failure ends as main's one line; on a platform its logs are the platform's.
                quiet_failure_echoes(self._spark)
        return self._spark


def _common(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("configuration")
    g.add_argument("--env", help="config overlay conf/<env>.yaml (default: local, or $EBBTIDE_ENV)")
    g.add_argument("--conf", action="append", default=[], metavar="FILE",
                   help="extra YAML overlay, or a profile's name from conf/profiles, e.g. quick (repeatable)")
    g.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
        help="override one key, e.g. --set sessionize.gap_minutes=45 (repeatable, applied last)",
    )
    g.add_argument("--debug", action="store_true", help="on a failure, print the traceback too")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="ebbtide",
        description="ebbtide: learn how each user's interest fades, and act on it every night.",
        epilog="Run `ebbtide <command> --help` for a command's options. Config: conf/base.yaml, then "
        "conf/<env>.yaml, then --conf files, then --set overrides.",
    )
    p.add_argument("--debug", action="store_true", help="on a failure, print the traceback too")
    sub = p.add_subparsers(dest="command", metavar="<command>")
    for name, (module, help_) in STAGES.items():
        sp = sub.add_parser(name, help=help_, description=help_)
        _common(sp)
        sp.set_defaults(_module=module)
        # Arguments are added lazily (see main) so that `ebbtide --help` imports nothing heavy.
    return p


def _stage_parser(cmd: str, module) -> argparse.ArgumentParser:
    sp = _Parser(prog=f"ebbtide {cmd}", description=STAGES[cmd][1])
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
        ctx = Context(cfg, debug=bool(getattr(args, "debug", False)))
    t0 = time.perf_counter()
    log.info("%s: run %s, env %s", cmd, ctx.run_id, ctx.cfg.env)
    summary = module.run(ctx, args) or {}
    return {"stage": cmd, "run_id": ctx.run_id, "seconds": round(time.perf_counter() - t0, 1), **summary}


def _one_line(text: str, limit: int = 600) -> str:
    line = " ".join(part.strip() for part in str(text).splitlines() if part.strip())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _spark_condition(e: BaseException) -> Optional[str]:
    for getter in ("getCondition", "getErrorClass"):
        fn = getattr(e, getter, None)
        if fn is not None:
            try:
                return fn()
            except Exception:
                return None
    return None


def _spark_message(e: BaseException) -> str:
    """A Spark error's own sentence, without the query context and JVM stack that follow it."""
    text = str(e).strip()
    first = text.splitlines()[0] if text else type(e).__name__
    return re.sub(r"\s*SQLSTATE: \w+\.?", "", first).strip()


def _root_cause(text: str) -> Optional[str]:
    """The last ``SomeError: message`` line of a failure that crossed the JVM (a Python error
    raised inside a streaming batch comes back as the text of its traceback)."""
    found = re.findall(r"^\s*(?:[\w.]+\.)?(\w+(?:Error|Exception)): (.+)$", str(text), re.M)
    for name, msg in reversed(found):
        if "Traceback" not in msg:
            return f"{name}: {msg.strip()}"
    return None


def describe_failure(cmd: str, e: BaseException) -> tuple[str, int]:
    """``(one line naming what failed and the fix, exit status)`` for any failure of a command."""
    debug_hint = "rerun with --debug for the traceback"
    if isinstance(e, UsageError):
        return f"error: {e}", EXIT_USAGE
    if isinstance(e, ConfigError):
        return f"configuration error: {e}", EXIT_USAGE
    if isinstance(e, KeyboardInterrupt):
        return "interrupted; rerun the command (every stage is safe to rerun)", 130

    try:
        from pyspark.errors import AnalysisException, ParseException, PySparkException, StreamingQueryException
    except ImportError:  # pragma: no cover - pyspark is a dependency
        AnalysisException = PySparkException = ParseException = StreamingQueryException = ()  # type: ignore

    if isinstance(e, AnalysisException):
        cond = _spark_condition(e) or ""
        if cond.startswith("TABLE_OR_VIEW_NOT_FOUND"):
            params = getattr(e, "getMessageParameters", lambda: {})() or {}
            name = str(params.get("relationName", "")).replace("`", "") or "?"
            stage = TABLE_STAGES.get(name.split(".")[-1])
            run = f"ebbtide {stage}" if stage else "ebbtide --help lists the stages"
            return (f"error: table or view {name} not found; run the stage that writes it ({run}) or check "
                    f"the name (ebbtide sql \"SHOW TABLES\")"), EXIT_RUNTIME
        if isinstance(e, ParseException):
            return f"error: SQL syntax: {_one_line(_spark_message(e))}; fix the statement", EXIT_USAGE
        if cmd == "sql":  # the statement is the user's input
            return f"error: {_one_line(_spark_message(e))}; fix the statement", EXIT_USAGE
        return f"error: Spark refused a query: {_one_line(_spark_message(e))}; {debug_hint}", EXIT_RUNTIME
    if isinstance(e, StreamingQueryException):
        cause = re.sub(r"\s*SQLSTATE: \w+\.?", "", _root_cause(str(e)) or _spark_message(e))
        return f"error: the stream failed: {_one_line(cause)}; {debug_hint}", EXIT_RUNTIME
    if isinstance(e, PySparkException) and (_spark_condition(e) or "").startswith("JAVA_GATEWAY_EXITED"):
        return ("error: Spark could not start (its Java process exited); check that Java 17 is installed "
                "and JAVA_HOME points to it, or run `make setup`"), EXIT_RUNTIME
    if type(e).__name__ == "Py4JJavaError":
        java = getattr(e, "java_exception", None)
        text = str(java) if java is not None else str(e)
        return f"error: Spark failed: {_one_line(_root_cause(text) or text.splitlines()[0])}; {debug_hint}", EXIT_RUNTIME
    if isinstance(e, (FileNotFoundError, ValueError)):
        # Our own messages already name the fix.
        return f"error: {_one_line(e)}", EXIT_RUNTIME
    return f"error: {type(e).__name__}: {_one_line(e) or 'no message'}; {debug_hint}", EXIT_RUNTIME


def main(argv: Optional[list[str]] = None) -> int:
    """The console script: run one stage, print its JSON summary; on failure one line, see above."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("EBBTIDE_DEBUG", "") not in ("", "0")
    while argv and argv[0] == "--debug":  # the global form, before the command
        argv.pop(0)
    parser = build_parser()
    if not argv or argv[0] in ("-h", "--help"):
        parser.print_help()
        return 0
    cmd, stage_argv = argv[0], argv[1:]
    if debug and "--debug" not in stage_argv:
        stage_argv.append("--debug")
    try:
        if cmd not in STAGES:
            raise UsageError(f"unknown command {cmd!r}; choose from {', '.join(STAGES)} (see `ebbtide --help`)")
        summary = run_stage(cmd, stage_argv)
    except SystemExit:
        raise  # --help, and argparse's own exits
    except BaseException as e:  # noqa: BLE001 - every failure ends as one line
        if debug:
            traceback.print_exc()
        line, status = describe_failure(cmd, e)
        sys.stderr.flush()
        print(f"ebbtide {cmd}: {line}", file=sys.stderr)
        return status
    print(json.dumps(summary, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
