"""The numpy window kernel of ebbtide.sequences, without Spark."""
from __future__ import annotations

from datetime import datetime, timezone

import numpy as np

from ebbtide.sequences import example_rows, group_starts, hour_of_week, window_arrays

US = 1_000_000


def us(iso: str) -> int:
    d = datetime.fromisoformat(iso).replace(tzinfo=timezone.utc)
    return int(d.timestamp()) * US


def test_hour_of_week_monday_midnight_is_zero_and_sunday_night_is_167():
    ts = np.array(
        [
            us("1970-01-05T00:00:00"),  # Monday
            us("2025-01-01T13:30:00"),  # Wednesday 13h
            us("2025-01-05T23:59:59"),  # Sunday 23h
            us("1969-12-29T00:30:00"),  # Monday before the epoch (negative ts)
            us("1969-12-28T23:00:00"),  # Sunday before the epoch
        ]
    )
    assert hour_of_week(ts).tolist() == [0, 2 * 24 + 13, 167, 0, 167]


def test_group_starts_points_each_event_at_its_users_first_event():
    assert group_starts(np.array([5, 5, 5, 2, 9, 9])).tolist() == [0, 0, 0, 3, 4, 4]
    assert group_starts(np.array([], dtype=np.int64)).tolist() == []


def test_window_left_pads_and_zeroes_the_first_gap_of_a_truncated_window():
    ts = np.array([0, 10, 30, 60, 100], dtype=np.int64) * US + us("2025-01-06T00:00:00")
    item = np.array([2, 3, 4, 5, 6])
    etype = np.array([2, 2, 3, 2, 2])
    sess = np.array([1, 0, 0, 1, 0])
    # One user (start 0): a short window (first 2 events) and a truncated one (events 1..3 of 0..3).
    w = window_arrays(np.array([2, 4]), np.array([0, 0]), 3, ts, item, etype, sess)
    assert w["length"].tolist() == [2, 3]
    assert w["item_idx"].tolist() == [[0, 2, 3], [3, 4, 5]]
    assert w["event_type_idx"].tolist() == [[0, 2, 2], [2, 3, 2]]
    assert w["session_start"].tolist() == [[0, 1, 0], [0, 0, 1]]
    assert w["gap_s"].tolist() == [[0.0, 0.0, 10.0], [0.0, 20.0, 30.0]]
    assert w["hour_of_week"].tolist() == [[0, 0, 0], [0, 0, 0]]
    assert w["last_ts_us"].tolist() == [ts[1], ts[3]]
    assert w["gap_s"].dtype == np.float32 and w["item_idx"].dtype == np.int32


def test_window_never_reaches_into_the_previous_user():
    ts = np.arange(5, dtype=np.int64) * US
    item = np.array([2, 3, 4, 5, 6])
    # Users: [0, 1] and [2, 3, 4]; window ending before event 3 starts at event 2.
    w = window_arrays(np.array([3]), np.array([2]), 4, ts, item, item, item)
    assert w["item_idx"].tolist() == [[0, 0, 0, 4]]
    assert w["length"].tolist() == [1]


def test_example_rows_split_and_censoring():
    t1, t2, end = 100 * US, 200 * US, 300 * US
    # user 0: events at 10, 50, 150, 250; user 1: one event at 120; user 2: 300 (end of data).
    codes = np.array([0, 0, 0, 0, 1, 2])
    ts = np.array([10, 50, 150, 250, 120, 300], dtype=np.int64) * US
    ex = example_rows(codes, ts, t1, t2, end)
    obs = ex["censored"] == 0
    assert ex["target"][obs].tolist() == [1, 2, 3]
    assert ex["split"][obs].tolist() == [0, 1, 2]
    assert ex["end"][obs].tolist() == [1, 2, 3]
    assert ex["start"][obs].tolist() == [0, 0, 0]
    cens = {(int(s), int(st)): (int(e), int(c)) for s, st, e, c in zip(
        ex["split"][~obs], ex["start"][~obs], ex["end"][~obs], ex["cutoff_us"][~obs])}
    assert cens == {
        (0, 0): (2, t1),  # user 0 before T1: events 0, 1
        (1, 0): (3, t2),
        (1, 4): (5, t2),  # user 1 joins at 120: at risk at T2 only
        (2, 0): (4, end),
        (2, 4): (5, end),
        (2, 5): (6, end),  # user 2's only event is the last one: censored at 0 s
    }


def test_example_rows_keep_the_most_recent_targets_per_user_and_split():
    codes = np.array([0] * 6 + [1] * 3)
    ts = np.array([1, 2, 3, 4, 150, 160, 1, 2, 3], dtype=np.int64) * US
    ex = example_rows(codes, ts, 100 * US, 200 * US, 300 * US, max_examples_per_user=2)
    obs = ex["censored"] == 0
    assert ex["target"][obs].tolist() == [2, 3, 4, 5, 7, 8]
    assert ex["split"][obs].tolist() == [0, 0, 1, 1, 0, 0]
    # Censored rows stay: user 0 in every split, user 1 in every split.
    assert int((~obs).sum()) == 6
