"""`make chaos`, reduced: one kill -9 trial each for ingest and sequences on the chain up to
sequences, each rerun and compared table by table with the uninterrupted run (bench/chaos.py)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def test_killed_jobs_converge_to_the_uninterrupted_run(tmp_path):
    work = tmp_path / "chaos"
    env = dict(os.environ, PYTHONPATH=str(ROOT / "lib"))
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "chaos.py"), "--jobs", "ingest,sequences", "--through", "sequences",
         "--trials", "1", "--seed", "3", "--no-scenario", "--work", str(work)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=1500,
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith('{"bench": "chaos"')]
    assert lines, f"no summary line\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    summary = json.loads(lines[-1])
    detail = json.loads((work / "results.json").read_text())
    assert summary["trials"] == 2 and summary["kill_trials"] == 2
    assert summary["converged"] == summary["trials"], json.dumps(detail["trials"], indent=1)[:6000]
    assert summary["stuck"] == summary["lost_rows"] == summary["doubled_rows"] == summary["survivors"] == 0
    assert proc.returncode == 0
    # Each trial reran its job and the rest of the chain (the first trial of a job always does).
    for t in detail["trials"]:
        assert t["continue"] and t["recover_rc"] == [0] * (3 - ["ingest", "sessionize", "sequences"].index(t["job"]))
    assert set(detail["reference"]) == {"ingest", "sessionize", "sequences"}
    assert detail["reference"]["sequences"]["rows"]["gold_training_examples"] > 0
