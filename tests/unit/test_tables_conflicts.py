"""tables.write against a writer that commits first: two `score` runs for the same date at once made
Delta fail the second with ConcurrentAppendException (found by the chaos bench); every mode but a
plain append (one without txn) is written again on the new snapshot instead."""
from __future__ import annotations

import pytest

from ebbtide import tables


class ConcurrentAppendException(Exception):
    """Named like Delta's: the writer recognises its concurrency errors by name."""


@pytest.fixture
def cfg(tmp_path):
    from ebbtide.config import load_config

    return load_config(env="local", overrides=[f"storage.root={tmp_path}"])


@pytest.fixture
def attempts(monkeypatch):
    """_write_once replaced: the first `fail` calls lose the commit race, then it succeeds."""
    calls = {"n": 0, "fail": 1, "error": ConcurrentAppendException}

    def write_once(df, cfg, name, mode, *rest):
        calls["n"] += 1
        if calls["n"] <= calls["fail"]:
            raise calls["error"]("Files were added to partition [score_date=2025-03-03] by a concurrent update")

    monkeypatch.setattr(tables, "_write_once", write_once)
    monkeypatch.setattr(tables.time, "sleep", lambda s: None)
    return calls


@pytest.mark.parametrize("mode, kw", [
    ("replace_where", {"replace_where": "score_date = '2025-03-03'"}),
    ("overwrite", {}),
    ("merge", {"keys": ["k"]}),
])
def test_a_write_that_lost_the_commit_race_is_written_again(cfg, attempts, caplog, mode, kw):
    tables.write(object(), cfg, "gold_recommendations", mode, **kw)
    assert attempts["n"] == 2
    assert any("another writer committed first (ConcurrentAppendException)" in r.getMessage() for r in caplog.records)


def test_append_and_other_errors_are_not_retried(cfg, attempts):
    with pytest.raises(ConcurrentAppendException):
        tables.write(object(), cfg, "ops_sessionize_log", "append")  # a second append would double the row
    assert attempts["n"] == 1
    attempts.update(n=0, error=RuntimeError)
    with pytest.raises(RuntimeError):
        tables.write(object(), cfg, "gold_recommendations", "overwrite")
    assert attempts["n"] == 1


def test_an_idempotent_append_is_written_again(cfg, attempts):
    # With txn, the winner's commit makes the second try commit nothing if it was the same append.
    tables.write(object(), cfg, "silver_events", "append", txn=("app", 3))
    assert attempts["n"] == 2


def test_it_gives_up_after_the_last_attempt(cfg, attempts):
    attempts["fail"] = tables.CONFLICT_ATTEMPTS
    with pytest.raises(ConcurrentAppendException):
        tables.write(object(), cfg, "gold_recommendations", "overwrite")
    assert attempts["n"] == tables.CONFLICT_ATTEMPTS


def test_delta_conflicts_are_recognised_by_name():
    assert tables.is_concurrent_write_error(Exception(
        "[DELTA_CONCURRENT_APPEND] io.delta.exceptions.ConcurrentAppendException: Files were added ..."))
    assert tables.is_concurrent_write_error(type("ConcurrentDeleteReadException", (Exception,), {})("x"))
    assert not tables.is_concurrent_write_error(ValueError("a bad predicate"))
