"""The bad-input corpus (tests/data/bad_input) and ingest's configuration errors, through the
command line entry point (`ebbtide.cli.main`, in this process, on the shared Spark session).

Every kind of broken or awkward input lands as ``expected.tsv`` says (bronze, quarantine with
its reasons, duplicates; nothing lost), and no traceback reaches the user. Every configuration
error ends in one stderr line naming the fix, exit status 2 (1 for a failure at run time).
The checks themselves live in bench/bad_input.py (`make bad-input`), shared with this test.

The command runs in-process, not as a subprocess: a JVM per kind would cost ~30-50 s each on a
small machine. pytest's ``capfd`` captures file descriptors 1 and 2, so what the JVM prints is
captured with what Python prints, as a terminal would show it.
"""
from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest

from ebbtide import cli

pytestmark = pytest.mark.spark

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("bad_input_bench", ROOT / "bench" / "bad_input.py")
bench = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = bench  # dataclasses look their module up
_spec.loader.exec_module(bench)

EXPECTED = bench.load_expected()
CLEAN = bench.CORPUS / "clean"

# The kinds the issue asks for, by corpus name.
REQUIRED_KINDS = {
    "utf8_bom", "crlf", "latin1_bytes", "quoted_delimiter", "embedded_newline", "header_repeated",
    "header_only", "empty_file", "blank_lines", "wrong_field_count", "null_markers_user",
    "whitespace_ids", "long_ids", "non_ascii_ids", "epoch_seconds", "epoch_millis", "epoch_micros",
    "epoch_float_seconds", "iso_offsets", "date_only", "negative_zero_ts", "far_ts",
    "non_numeric_values", "duplicates_one_file", "duplicates_across_files", "same_event_two_units",
    "gzip", "bz2", "json_not_object", "json_nested", "parquet_schema_drift", "csv_schema_drift",
    "truncated_last_line", "movielens_1m",
}


def invoker(capfd):
    """``argv -> (status, stdout, stderr)`` of ``ebbtide.cli.main`` in this process."""
    def invoke(argv: list[str]) -> tuple[int, str, str]:
        capfd.readouterr()
        status = cli.main(list(argv))
        out, err = capfd.readouterr()
        return status, out, err

    return invoke


@pytest.fixture(scope="module")
def warehouse(spark, tmp_path_factory):
    """One throwaway storage root for every kind (ids are distinct per kind)."""
    root = tmp_path_factory.mktemp("bad-input")
    return root, bench.config_for(root)


# ---------------------------------------------------------------------------------------------
# the corpus
# ---------------------------------------------------------------------------------------------


def test_the_corpus_is_complete_and_regenerates_byte_for_byte():
    kinds = {e.kind for e in EXPECTED}
    assert len(kinds) == len(EXPECTED) >= bench.MIN_KINDS
    assert REQUIRED_KINDS <= kinds, sorted(REQUIRED_KINDS - kinds)
    for e in EXPECTED:
        assert (bench.CORPUS / e.kind).is_dir(), e.kind
        assert e.rows_in == e.bronze + e.quarantined + e.duplicates, e
    # Someone who edits a file by hand without the generator (or the other way round) hears of it.
    spec = importlib.util.spec_from_file_location("make_corpus", bench.CORPUS / "make_corpus.py")
    gen = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = gen
    spec.loader.exec_module(gen)
    assert gen.main(["--check"]) == 0, "tests/data/bad_input differs from make_corpus.py: rerun it"


@pytest.mark.slow
@pytest.mark.parametrize("exp", EXPECTED, ids=lambda e: e.kind)
def test_each_kind_lands_as_expected_without_a_traceback(exp, warehouse, spark, capfd):
    root, cfg = warehouse
    o = bench.settle(bench.run_kind(exp, root, invoker(capfd)), spark, cfg)
    assert not o.traceback, o.stdout + o.stderr
    assert o.problems == [], "\n".join([f"{exp.kind} ({exp.note}):", *o.problems, "--- stderr:", o.stderr[-4000:]])


# ---------------------------------------------------------------------------------------------
# configuration errors: one line naming the fix, exit 2; a missing source is a runtime error (1)
# (tests/unit/test_cli_errors.py covers the ones that fail before Spark starts: --set keys and
# values, an empty delimiter or a bad escape, a bad flag, an unknown command)
# ---------------------------------------------------------------------------------------------

CONFIG_CASES = {
    "quote as delimiter": (["--source", str(CLEAN), "--delimiter", '"'], 2,
                           r"configuration error: delimiter '\"' holds a quote or a line break.*--delimiter"),
    "column without =": (["--source", str(CLEAN), "--column", "user_id"], 2,
                         r"configuration error: --column expects FIELD=SOURCE_COLUMN"),
    "unknown contract field": (["--source", str(CLEAN), "--column", "usr_id=user_id"], 2,
                               r"configuration error: .*unknown contract field\(s\) \['usr_id'\].*--column user_id="),
    "empty expression": (["--source", str(CLEAN), "--column", "ts=expr: "], 2,
                         r"configuration error: --column ts=expr:.* has an empty expression; write e\.g\."),
    "expression Spark cannot resolve": (["--source", str(CLEAN), "--column", "ts=expr:no_such_column + 1"], 2,
                                        r"configuration error: --column ts=expr:no_such_column \+ 1: Spark cannot use it"),
    "mapped column the files lack": (["--source", str(CLEAN), "--column", "user_id=visitor"], 2,
                                     r"configuration error: source columns .* lack the contract field\(s\) user_id "
                                     r"\(source column 'visitor'\); map them with --column"),
    "unknown encoding": (["--source", str(CLEAN), "--encoding", "utf-16"], 2,
                         r"error: argument --encoding: invalid choice: 'utf-16'"),
    "adapter on JSON": (["--source", str(CLEAN), "--adapter", "movielens", "--format", "json"], 2,
                        r"configuration error: adapter 'movielens' reads delimited text; set format csv"),
    "Parquet files disagreeing on a type": (
        ["--source", str(bench.CORPUS / "config_errors" / "parquet_type_conflict"), "--format", "parquet"], 2,
        r"configuration error: the Parquet files of this source disagree on a column's type .*--glob"),
    "no source": ([], 2, r"configuration error: no source to ingest: pass --source PATH"),
    "source that does not exist": (["--source", "/nonexistent/ebbtide/raw"], 1,
                                   r"error: source /nonexistent/ebbtide/raw does not exist; pass --source PATH"),
}

# Lines a failing command may print above its error line: ebbtide's and Spark's log lines.
_LOG_LINE = re.compile(r"^(\d\d:\d\d:\d\d |\d\d/\d\d/\d\d \d\d:\d\d:\d\d )")


@pytest.fixture(scope="module")
def config_root(spark, tmp_path_factory):
    return tmp_path_factory.mktemp("bad-input-config")


@pytest.mark.parametrize("case", list(CONFIG_CASES))
def test_configuration_errors_are_one_line_without_a_traceback(case, config_root, capfd):
    argv, status, expected = CONFIG_CASES[case]
    got, out, err = invoker(capfd)(["ingest", *argv, *bench.overrides(config_root)])
    assert got == status, err
    assert "Traceback" not in out + err
    assert out == ""
    line = err.rstrip("\n").split("\n")[-1]
    assert line.startswith("ebbtide ingest: "), err
    assert re.search(expected, line), line
    assert [x for x in err.splitlines() if x.strip() and not _LOG_LINE.match(x)] == [line], err


def test_debug_shows_the_traceback_above_the_same_line(config_root, capfd):
    argv = ["ingest", "--source", str(CLEAN), "--column", "usr_id=user_id", *bench.overrides(config_root)]
    invoke = invoker(capfd)
    status, _, plain = invoke(argv)
    debug_status, _, debug = invoke([*argv, "--debug"])
    assert status == debug_status == 2
    assert "Traceback (most recent call last)" in debug and "Traceback" not in plain
    assert debug.rstrip("\n").split("\n")[-1] == plain.rstrip("\n").split("\n")[-1]
