"""One logging setup for every entry point: timestamped lines on stderr, quiet Spark/py4j."""
from __future__ import annotations

import logging
import sys
import time
from contextlib import contextmanager

_FMT = "%(asctime)s %(levelname)-5s %(name)s: %(message)s"


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time of the record, not the one of the first
    setup: a test's capture or a notebook swaps it, and the old one may be closed by then."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property  # type: ignore[override]
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


def setup_logging(level: str = "INFO") -> None:
    root = logging.getLogger()
    if not any(getattr(h, "_ebbtide", False) for h in root.handlers):
        h = _StderrHandler()
        h.setFormatter(logging.Formatter(_FMT, "%H:%M:%S"))
        h._ebbtide = True  # type: ignore[attr-defined]
        root.addHandler(h)
    root.setLevel(level.upper())
    for noisy in ("py4j", "urllib3", "matplotlib", "alembic", "petastorm", "git"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def get_logger(name: str) -> logging.Logger:
    return logging.getLogger(name if name.startswith("ebbtide") else f"ebbtide.{name}")


@contextmanager
def step(log: logging.Logger, what: str):
    """Log the start and the duration of a unit of work, so long runs show progress."""
    t0 = time.perf_counter()
    log.info("%s ...", what)
    try:
        yield
    except Exception:
        log.error("%s failed after %.1f s", what, time.perf_counter() - t0)
        raise
    log.info("%s done in %.1f s", what, time.perf_counter() - t0)
