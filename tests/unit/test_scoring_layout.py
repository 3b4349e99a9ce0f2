"""How many partitions the nightly scoring input gets. No Spark."""
from __future__ import annotations

from ebbtide.scoring.run import scoring_partitions


def test_a_configured_count_wins():
    assert scoring_partitions(8, 10_000_000, 400, 50_000) == 8


def test_the_count_follows_the_active_users_and_the_cores():
    assert scoring_partitions(0, 77_000, 2, 50_000) == 4  # two per core on a laptop
    assert scoring_partitions(0, 400_000, 2, 50_000) == 8  # 50 k users a task
    assert scoring_partitions(0, 400_000, 64, 50_000) == 128  # a cluster: every core busy twice
    assert scoring_partitions(0, 10_000_000, 64, 50_000) == 200
    assert scoring_partitions(0, 0, 0, 50_000) == 2
