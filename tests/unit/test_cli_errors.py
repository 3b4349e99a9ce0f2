"""Every failure of the `ebbtide` command ends in one line naming the fix, with exit status 2 for
a usage or configuration error; --debug adds the traceback. These fail before Spark starts."""
from __future__ import annotations

import re
import subprocess
import sys

import pytest

from ebbtide.cli import describe_failure


def ebbtide(*argv: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ebbtide.cli", *argv], capture_output=True, text=True,
                          cwd=cwd, timeout=120)


def last_line(proc: subprocess.CompletedProcess) -> str:
    lines = proc.stderr.rstrip("\n").split("\n")
    return lines[-1]


CASES = {
    "bad config key": (["ingest", "--set", "ingest.source.delimitr=;", "--source", "x"],
                       r"ebbtide ingest: configuration error: unknown config key 'ingest.source.delimitr'; "
                       r"known keys here: .*csv_delimiter"),
    "bad config value": (["ingest", "--set", "ingest.source.format=xml"],
                         r"configuration error: config key 'ingest.source.format' must be one of 'csv'"),
    "empty delimiter": (["ingest", "--source", "x", "--delimiter", ""],
                        r"configuration error: the delimiter is empty; set --delimiter .* '::'"),
    "bad delimiter escape": (["ingest", "--source", "x", "--set", "ingest.source.csv_delimiter=\\q"],
                             r"configuration error: delimiter '\\\\q' holds an unknown escape"),
    "bad flag": (["ingest", "--format", "xml"], r"ebbtide ingest: error: argument --format: invalid choice.*--help"),
    "unknown command": (["ingets"], r"ebbtide ingets: error: unknown command 'ingets'; choose from synth, ingest"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_usage_and_configuration_errors_are_one_line_and_exit_2(case, tmp_path):
    argv, expected = CASES[case]
    proc = ebbtide(*argv, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stdout == ""
    line = last_line(proc)
    assert line.startswith("ebbtide "), proc.stderr
    assert re.search(expected, line), line
    # One error line: anything above it is a timestamped progress line, never a usage block.
    assert [x for x in proc.stderr.splitlines() if not re.match(r"\d\d:\d\d:\d\d ", x)] == [line]


def test_debug_adds_the_traceback_above_the_same_line(tmp_path):
    argv = ["ingest", "--source", "x", "--delimiter", ""]
    plain = ebbtide(*argv, cwd=tmp_path)
    for debug in (["--debug", *argv], [*argv, "--debug"]):
        proc = ebbtide(*debug, cwd=tmp_path)
        assert proc.returncode == 2
        assert "Traceback (most recent call last)" in proc.stderr
        assert last_line(proc) == last_line(plain)


def test_runtime_failures_are_one_line_and_exit_1():
    line, status = describe_failure("ingest", FileNotFoundError("source /x does not exist; pass --source PATH"))
    assert (line, status) == ("error: source /x does not exist; pass --source PATH", 1)
    line, status = describe_failure("train", RuntimeError("CUDA out of memory.\nTried to allocate 2 GiB"))
    assert status == 1 and "\n" not in line
    assert line == "error: RuntimeError: CUDA out of memory. Tried to allocate 2 GiB; rerun with --debug for the traceback"
    assert describe_failure("sql", KeyboardInterrupt())[1] == 130
