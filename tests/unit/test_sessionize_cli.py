"""Sessionize pieces that need no Spark: CLI flags."""
from __future__ import annotations

import argparse

from ebbtide import sessionize


def test_cli_flags_and_defaults():
    p = argparse.ArgumentParser()
    sessionize.add_arguments(p)
    a = p.parse_args([])
    assert a.gap_minutes is None and a.full is False
    a = p.parse_args(["--gap-minutes", "45", "--full"])
    assert a.gap_minutes == 45.0 and a.full is True
    assert "exactly equal" in p.format_help()

