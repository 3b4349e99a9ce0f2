"""The monitor's arithmetic on hand-made aggregates (no Spark): PSI, served HR / NDCG, Brier and
reliability bins, statuses; and its configuration errors (exit 2, one line, before Spark starts)."""
from __future__ import annotations

import argparse
import datetime as dt
import math

import pytest

from ebbtide.monitor import metrics as M


def test_psi_by_hand():
    # shares 0.5 / 0.5 -> 0.25 / 0.75: (0.25 - 0.5) ln(0.25 / 0.5) + (0.75 - 0.5) ln(0.75 / 0.5)
    #                                   = 0.25 ln 2 + 0.25 ln 1.5 = 0.173287 + 0.101366
    assert M.psi({"a": 50, "b": 50}, {"a": 25, "b": 75}) == pytest.approx(0.274653, abs=1e-6)
    # symmetric in the two sides, zero for the same shares at any volume
    assert M.psi({"a": 25, "b": 75}, {"a": 50, "b": 50}) == pytest.approx(0.274653, abs=1e-6)
    assert M.psi({0: 10, 1: 30}, {0: 100, 1: 300}) == 0.0
    # a bin empty on one side counts at the floor share: reference 1.0 / 0 -> 0.5 / 0.5
    #   (0.5 - 1) ln(0.5) + (0.5 - 0.0001) ln(0.5 / 0.0001) = 0.346574 + 4.257745
    assert M.psi({"a": 100}, {"a": 50, "b": 50}, floor=1e-4) == pytest.approx(4.604319, abs=1e-6)
    assert M.psi({}, {"a": 1}) is None and M.psi({"a": 1}, {"a": 0}) is None


def test_bin_labels_and_quantile_edges():
    assert M.bin_labels([60, 3600, 86400]) == ["< 1min", "1min-1h", "1h-1d", ">= 1d"]
    assert M.bin_labels([30]) == ["< 30s", ">= 30s"]
    assert M.quantile_edges([0.5, 0.5, 1.0, None, 0.7, 2.0]) == [0.5, 1.0, 2.0]


def test_served_ranking_by_hand():
    # 3 items in the user's day, hits at ranks 2 and 5:
    #   DCG = 1/log2(3) + 1/log2(6) = 0.630930 + 0.386853 = 1.017783
    #   IDCG = 1 + 1/log2(3) + 1/log2(4) = 2.130930
    assert M.ideal_dcg(3, 10) == pytest.approx(2.130930, abs=1e-6)
    hit, ndcg = M.served_ranking([2, 5], 3, 10)
    assert hit == 1.0 and ndcg == pytest.approx(1.017783 / 2.130930, abs=1e-6)
    # more relevant items than k: IDCG stops at k; a hit beyond k does not count
    assert M.ideal_dcg(25, 3) == pytest.approx(1 + 1 / math.log2(3) + 0.5)
    assert M.served_ranking([11], 1, 10) == (0.0, 0.0)
    assert M.served_ranking([], 2, 10) == (0.0, 0.0)
    # every relevant item on top: NDCG 1
    assert M.served_ranking([1, 2], 2, 10) == (1.0, pytest.approx(1.0))


def test_calibration_by_hand():
    # p, y: (0.15, 1), (0.15, 0) in bin 1; (0.85, 1) in bin 8; (0.95, 1) in bin 9
    bins = [
        {"bin": 8, "n": 1, "sum_p": 0.85, "sum_y": 1.0, "sum_sq": 0.0225},
        {"bin": 1, "n": 2, "sum_p": 0.30, "sum_y": 1.0, "sum_sq": 0.7225 + 0.0225},
        {"bin": 9, "n": 1, "sum_p": 0.95, "sum_y": 1.0, "sum_sq": 0.0025},
        {"bin": 5, "n": 0, "sum_p": 0.0, "sum_y": 0.0, "sum_sq": 0.0},
    ]
    c = M.calibration(bins, 10)
    assert c["n"] == 4
    assert c["brier"] == pytest.approx((0.745 + 0.0225 + 0.0025) / 4)  # 0.1925
    # ECE = 2/4 |0.15 - 0.5| + 1/4 |0.85 - 1| + 1/4 |0.95 - 1| = 0.175 + 0.0375 + 0.0125
    assert c["ece"] == pytest.approx(0.225)
    assert c["base_rate"] == pytest.approx(0.75) and c["mean_pred"] == pytest.approx(0.525)
    assert [(b["bin"], b["n"], b["lo"], b["hi"]) for b in c["bins"]] == [(1, 2, 0.1, 0.2), (8, 1, 0.8, 0.9), (9, 1, 0.9, 1.0)]
    assert c["bins"][0]["mean_pred"] == pytest.approx(0.15) and c["bins"][0]["observed"] == pytest.approx(0.5)
    assert M.calibration([], 10)["brier"] is None


def test_status_bounds_and_breach_line():
    assert M.classify(0.3, 0.1, 0.25, "upper") == M.ALERT
    assert M.classify(0.2, 0.1, 0.25, "upper") == M.WARN
    assert M.classify(0.25, 0.1, 0.25, "upper") == M.WARN  # at the threshold is not beyond it
    assert M.classify(0.05, 0.1, 0.25, "upper") == M.OK
    assert M.classify(0.0, None, 1.0, "lower") == M.ALERT
    assert M.classify(0.08, 0.1, 0.05, "lower") == M.WARN
    assert M.classify(-0.2, 0.05, 0.1, "abs") == M.ALERT
    assert M.classify(None, 0.1, 0.2, "upper") == M.OK and M.classify(float("nan"), 0.1, 0.2, "upper") == M.OK
    assert M.classify(5.0, None, None, "upper") == M.OK

    assert M.bound_of("outcomes.hit_rate@10") == ("hit_rate", "lower")
    assert M.bound_of("calibration.p_return_7d.brier") == ("brier", "upper")
    assert M.bound_of("outputs.churn_share_change.high") == ("churn_tier_change", "abs")
    assert M.bound_of("calibration.p_return_7d.bin_03") is None and M.bound_of("outputs.churn_share.high") is None

    from ebbtide.config import load_config

    th = load_config(env="local").section("monitor").thresholds
    ms = M.judge([M.Metric("drift.gap_psi", 0.4621), M.Metric("outputs.churn_share_change.low", -0.07),
                  M.Metric("outputs.score_p50", 3.0), M.Metric("inputs.events", 0.0)], th)
    assert [m.status for m in ms] == [M.ALERT, M.WARN, M.OK, M.ALERT]
    assert ms[0].breach() == "drift.gap_psi = 0.4621 > monitor.thresholds.gap_psi.alert 0.25"
    assert ms[1].breach() == "outputs.churn_share_change.low = |-0.07| > monitor.thresholds.churn_tier_change.warn 0.05"
    assert ms[3].breach() == "inputs.events = 0 < monitor.thresholds.events.alert 1"
    assert (ms[2].bound, ms[2].warn, ms[2].alert) == (None, None, None)


def test_monitor_day():
    from ebbtide.monitor.run import monitor_day

    ns = argparse.Namespace
    assert monitor_day(ns(date=dt.date(2025, 3, 10), day_before=None)) == dt.date(2025, 3, 10)
    assert monitor_day(ns(date=None, day_before=dt.date(2025, 3, 1))) == dt.date(2025, 2, 28)
    assert monitor_day(ns(date=None, day_before=None), today=dt.date(2025, 1, 1)) == dt.date(2024, 12, 31)


@pytest.mark.parametrize("override, expected", [
    ("monitor.thresholds.gap_psi.warn=0.5", r"monitor.thresholds.gap_psi: warn 0.5 is above alert 0.25"),
    ("monitor.thresholds.events.warn=0", r"monitor.thresholds.events: warn 0 is below alert 1"),
    ("monitor.calibration_horizons_days=[14]", r"calibration_horizons_days holds \[14\]"),
    ("monitor.reference_end=yesterday", r"monitor.reference_end must be an ISO-8601 time"),
    ("monitor.thresholds.brier.alert=high", r"config key 'monitor.thresholds.brier.alert' must be float or NoneType"),
])
def test_configuration_errors_are_one_line_and_exit_2(override, expected, tmp_path, capsys):
    import re

    from ebbtide.cli import main

    status = main(["monitor", "--date", "2025-03-10", "--set", f"storage.root={tmp_path}", "--set", override])
    out, err = capsys.readouterr()
    assert status == 2 and out == ""
    line = err.rstrip("\n").split("\n")[-1]
    assert line.startswith("ebbtide monitor: configuration error: ") and re.search(expected, line), line
    assert "Traceback" not in err


def test_help_lists_the_options(capsys):
    from ebbtide.cli import main

    with pytest.raises(SystemExit) as e:
        main(["monitor", "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    assert "--date" in text and "--day-before" in text and "--fail-on-alert" in text
