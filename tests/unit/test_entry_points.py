"""Every entry point a user runs by hand answers --help: the jobs spark-submit runs, the scripts
behind make targets and the benchmarks."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# Modules imported by other benchmarks, not run on their own.
NOT_ENTRY_POINTS = {"bench/example_tables.py"}
ENTRY_POINTS = sorted(
    str(p.relative_to(ROOT)) for d in ("jobs", "scripts", "bench") for p in (ROOT / d).glob("*.py")
    if str(p.relative_to(ROOT)) not in NOT_ENTRY_POINTS
)


def test_the_entry_points_are_found():
    assert {"jobs/train.py", "scripts/results.py", "bench/bench_speed_quality.py"} <= set(ENTRY_POINTS)


@pytest.mark.parametrize("path", ENTRY_POINTS)
def test_entry_point_answers_help(path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "lib"), os.environ.get("PYTHONPATH", "")]))
    r = subprocess.run([sys.executable, str(ROOT / path), "--help"], capture_output=True, text=True, env=env,
                       cwd=ROOT, timeout=120)
    assert r.returncode == 0, f"{path} --help exited {r.returncode}: {r.stderr[-1500:]}"
    assert "usage" in r.stdout.lower(), f"{path} --help printed no usage: {r.stdout[:500]}"
