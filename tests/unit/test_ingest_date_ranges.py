"""The days a micro-batch's events fall on, as the few date ranges that bound what ingest reads of
bronze (no Spark)."""
from __future__ import annotations

from datetime import date, timedelta

from ebbtide import ingest


def d(n: int) -> date:
    return date(2025, 3, 1) + timedelta(days=n)


def test_consecutive_days_are_one_range_and_gaps_split_them():
    assert ingest.date_ranges([d(2), d(0), d(1), d(1), d(5)]) == [(d(0), d(2)), (d(5), d(5))]
    assert ingest.date_ranges([]) == []


def test_too_many_ranges_are_joined_across_the_narrowest_gaps():
    days = [d(0), d(2), d(3), d(10), d(11), d(40), d(42)]  # runs 0 | 2-3 | 10-11 | 40 | 42
    got = ingest.date_ranges(days, max_ranges=3)
    assert got == [(d(0), d(3)), (d(10), d(11)), (d(40), d(42))]  # the two widest gaps stay open
    # Whatever the cap, every day stays covered and the ranges stay apart and in order.
    many = [d(3 * i + (i % 2)) for i in range(500)]
    for cap in (1, 2, 16):
        ranges = ingest.date_ranges(many, max_ranges=cap)
        assert len(ranges) == min(cap, len(ingest.date_ranges(many, max_ranges=10_000)))
        assert all(any(lo <= x <= hi for lo, hi in ranges) for x in many)
        assert all(a[1] < b[0] for a, b in zip(ranges, ranges[1:]))


def test_the_predicate_names_each_range():
    assert ingest.date_predicate("t.event_date", [(d(0), d(2)), (d(5), d(5))]) == (
        "t.event_date BETWEEN DATE'2025-03-01' AND DATE'2025-03-03' OR t.event_date = DATE'2025-03-06'")
