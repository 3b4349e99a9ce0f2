"""`ebbtide monitor`: one UTC day's metrics -> ops_monitoring, plus a Markdown / PNG report.

Day D is ``[D 00:00, D+1 00:00)`` UTC, a complete day. What is measured:

- inputs: silver_events of D (events, active users, shares of new users and new items);
- drift: PSI of the gap distribution (silver_events.gap_s) and of the event types of D against the
  training snapshot, the last ``monitor.reference_days`` days of gold_training_examples' train split;
- outputs: gold_recommendations of score date D (the table served during D: built from the events
  up to the end of D-1) and the churn-tier shares of gold_churn_decay for D with their change since D-1;
- realized outcomes: that served table against the events of D (hit rate, NDCG and catalogue
  coverage at ``monitor.k``), and the same hit rate and NDCG for a most-popular table served to
  the same users (``monitor.popular_baseline``: popularity before D, the scorer's exclusions);
- calibration, per horizon h (7, 30 days): the churn table of score date S = D - h + 1, whose
  ``p_return_<h>d`` is the probability of an event in ``[S, S + h days)``, which ends with D, against
  the users who had one.

Every metric gets a status (ok / warn / alert) from ``monitor.thresholds``. The rows of D are
written with one MERGE on (monitor_date, metric) that also deletes D's rows a rerun no longer
produces, so a rerun replaces its own rows. With ``--fail-on-alert`` an alert ends the command with
exit status 1 and one line naming the metric and the threshold, after the rows and the report.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import math
import os
from dataclasses import dataclass, field
from typing import Any, Optional

from ebbtide import catalog, storage, tables
from ebbtide.config import ConfigError, parse_utc
from ebbtide.log import get_logger, step
from ebbtide.monitor import metrics as M

log = get_logger("monitor")

EVENTS = "silver_events"
EXAMPLES = "gold_training_examples"
ITEM_VOCAB = "gold_item_vocab"
RECOMMENDATIONS = "gold_recommendations"
CHURN_DECAY = "gold_churn_decay"
# ops_monitoring: columns, comments and MERGE keys are in ebbtide.catalog.
OPS_SPEC = catalog.OPS_MONITORING
OPS_TABLE = OPS_SPEC.name
TIERS = ("high", "medium", "low")
HORIZON_COLUMNS = {7: "p_return_7d", 30: "p_return_30d"}

class MonitorAlert(ValueError):
    """``--fail-on-alert``: a metric crossed its alert threshold (rows and report are written)."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.epilog = (
        "Writes one row per metric of the day to ops_monitoring (a rerun replaces the day's rows) and a "
        "report (report.md, drift.png, hit_rate.png, calibration.png) to monitor.report_dir/<date>/. "
        "Keys: monitor.k, monitor.reference_days, monitor.reference_end, monitor.gap_edges_s, "
        "monitor.calibration_horizons_days, monitor.thresholds.<metric>.warn / .alert."
    )
    g = p.add_mutually_exclusive_group()
    g.add_argument("--date", type=_date, default=None, metavar="YYYY-MM-DD",
                   help="the UTC day to monitor (its events must be in silver_events); default: yesterday in UTC")
    g.add_argument("--day-before", type=_date, default=None, metavar="YYYY-MM-DD",
                   help="monitor the day before this date (for schedulers that pass the run's own date)")
    p.add_argument("--fail-on-alert", action="store_true",
                   help="exit with status 1 and one line naming the metric and its threshold when any metric "
                        "is at alert (after writing the rows and the report)")


def _date(s: str) -> dt.date:
    try:
        return dt.date.fromisoformat(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r} is not a date; write YYYY-MM-DD") from None


def monitor_day(args, today: Optional[dt.date] = None) -> dt.date:
    if getattr(args, "date", None):
        return args.date
    if getattr(args, "day_before", None):
        return args.day_before - dt.timedelta(days=1)
    return (today or dt.datetime.now(dt.timezone.utc).date()) - dt.timedelta(days=1)


def validate(mc) -> None:
    """Refuse a monitor section that cannot work (ConfigError: exit status 2)."""
    problems = []
    if mc.k < 1:
        problems.append(f"monitor.k must be >= 1, got {mc.k}")
    if mc.reference_days < 0:
        problems.append(f"monitor.reference_days must be >= 0 (0 = the whole train split), got {mc.reference_days}")
    if list(mc.gap_edges_s) != sorted(set(mc.gap_edges_s)):
        problems.append(f"monitor.gap_edges_s must be strictly increasing, got {list(mc.gap_edges_s)}")
    if mc.score_bins < 2:
        problems.append(f"monitor.score_bins must be >= 2, got {mc.score_bins}")
    if mc.calibration_bins < 1:
        problems.append(f"monitor.calibration_bins must be >= 1, got {mc.calibration_bins}")
    if not 0 < mc.psi_floor < 1:
        problems.append(f"monitor.psi_floor must be in (0, 1), got {mc.psi_floor}")
    if mc.report_days < 0:
        problems.append(f"monitor.report_days must be >= 0, got {mc.report_days}")
    bad = [h for h in mc.calibration_horizons_days if h not in HORIZON_COLUMNS]
    if bad:
        problems.append(f"monitor.calibration_horizons_days holds {bad}; gold_churn_decay has p_return_7d and "
                        "p_return_30d, so use 7 and / or 30")
    bounds = {key: bound for key, bound in M.BOUNDS.values()}
    for f in dataclasses.fields(mc.thresholds):
        band = getattr(mc.thresholds, f.name)
        why = M.check_band(f.name, band.warn, band.alert, bounds[f.name])
        if why:
            problems.append(why)
    if mc.reference_end:
        parse_utc(mc.reference_end, "monitor.reference_end")
    if problems:
        raise ConfigError("; ".join(problems))


# --------------------------------------------------------------------------------------
# Measuring (reads tables, hands DataFrames to transform, numbers to metrics)
# --------------------------------------------------------------------------------------


@dataclass
class Measured:
    metrics: list = field(default_factory=list)
    notes: list = field(default_factory=list)
    drift_panels: list = field(default_factory=list)
    calibration: dict = field(default_factory=dict)


def reference_window(spark, cfg, mc) -> Optional[tuple[Optional[dt.datetime], dt.datetime, str]]:
    """(start, end, where end came from) of the drift reference, or None without a snapshot."""
    if mc.reference_end:
        end, source = parse_utc(mc.reference_end, "monitor.reference_end"), "monitor.reference_end"
    else:
        if not tables.exists(spark, cfg, EXAMPLES):
            return None
        from ebbtide.sequences import read_cutoffs

        try:
            end = read_cutoffs(spark, cfg)["valid_start"]
        except KeyError:  # a table written before the cut-offs were properties
            return None
        source = f"{EXAMPLES} ebbtide.split.valid_start"
    start = end - dt.timedelta(days=mc.reference_days) if mc.reference_days > 0 else None
    return start, end, source


def _iso(t: Optional[dt.datetime]) -> str:
    return "start of data" if t is None else t.strftime("%Y-%m-%dT%H:%M:%SZ")


def _share(n: Optional[float], total: Optional[float]) -> Optional[float]:
    return float(n) / float(total) if total else None


def _inputs(out: Measured, day_events, earlier, day: dt.date) -> int:
    from ebbtide.monitor import transform as T

    r = T.input_counts(day_events, earlier).first()
    subject = f"{EVENTS} on {day}"
    out.metrics += [
        M.Metric("inputs.events", float(r["events"]), subject),
        M.Metric("inputs.active_users", float(r["active_users"]), subject),
        M.Metric("inputs.new_user_share", _share(r["new_users"], r["active_users"]), subject,
                 {"new_users": r["new_users"], "active_users": r["active_users"]}),
        M.Metric("inputs.new_item_share", _share(r["new_items"], r["items"]), subject,
                 {"new_items": r["new_items"], "items": r["items"]}),
    ]
    return int(r["events"])


def _drift(out: Measured, spark, cfg, mc, events, day_events, day: dt.date) -> None:
    from ebbtide.monitor import transform as T

    ref = reference_window(spark, cfg, mc)
    if ref is None:
        out.notes.append(f"drift: no training snapshot ({EXAMPLES} with its ebbtide.split.* properties; run "
                         "`ebbtide sequences`) and no monitor.reference_end")
        return
    start, end, source = ref
    ref_events = T.events_between(events, start, end)
    window = f"{_iso(start)} .. {_iso(end)} ({source})"
    labels = M.bin_labels(mc.gap_edges_s)
    ref_gaps = {int(r["bin"]): int(r["n"]) for r in T.gap_histogram(ref_events, mc.gap_edges_s).collect()}
    if not ref_gaps:
        out.notes.append(f"drift: the reference window {window} holds no events with a gap")
    else:
        cur_gaps = {int(r["bin"]): int(r["n"]) for r in T.gap_histogram(day_events, mc.gap_edges_s).collect()}
        value = M.psi(ref_gaps, cur_gaps, mc.psi_floor)
        bins = range(len(labels))
        ref_s, cur_s = M.shares(ref_gaps), M.shares(cur_gaps)
        detail = {"reference_window": window, "labels": labels,
                  "reference": [ref_s.get(b, 0.0) for b in bins], "current": [cur_s.get(b, 0.0) for b in bins],
                  "reference_n": sum(ref_gaps.values()), "n": sum(cur_gaps.values())}
        out.metrics.append(M.Metric("drift.gap_psi", value, f"{EVENTS}.gap_s on {day} vs the reference window", detail))
        out.drift_panels.append(("gap between a user's events", labels, detail["reference"], detail["current"], value))
    ref_types = {r["value"]: int(r["n"]) for r in T.value_counts(ref_events, "event_type").collect()}
    if ref_types:
        cur_types = {r["value"]: int(r["n"]) for r in T.value_counts(day_events, "event_type").collect()}
        value = M.psi(ref_types, cur_types, mc.psi_floor)
        names = sorted(set(ref_types) | set(cur_types))
        ref_s, cur_s = M.shares(ref_types), M.shares(cur_types)
        detail = {"reference_window": window, "labels": names,
                  "reference": [ref_s.get(v, 0.0) for v in names], "current": [cur_s.get(v, 0.0) for v in names],
                  "reference_n": sum(ref_types.values()), "n": sum(cur_types.values())}
        out.metrics.append(M.Metric("drift.event_type_psi", value, f"{EVENTS}.event_type on {day} vs the reference window",
                                    detail))
        out.drift_panels.append(("event types", names, detail["reference"], detail["current"], value))


def _read_date(spark, cfg, name: str, column: str, day: dt.date):
    from pyspark.sql import functions as F

    if not tables.exists(spark, cfg, name):
        return None
    return tables.read(spark, cfg, name).where(F.col(column) == F.lit(day))


def _outputs(out: Measured, spark, cfg, mc, day: dt.date):
    """Score distribution and churn tiers of score date D; returns D's recommendations (or None)."""
    from ebbtide.monitor import transform as T

    prev = day - dt.timedelta(days=1)
    recs = _read_date(spark, cfg, RECOMMENDATIONS, "score_date", day)
    subject = f"{RECOMMENDATIONS} score_date {day}"
    s = T.score_summary(recs).first() if recs is not None else None
    users = int(s["users"]) if s is not None else 0
    out.metrics.append(M.Metric("outputs.recommended_users", float(users), subject))
    if users:
        q = list(s["quantiles"] or [None, None, None])
        out.metrics += [
            M.Metric("outputs.recommendation_rows", float(s["rows"]), subject),
            M.Metric("outputs.score_mean", s["mean"], subject),
            M.Metric("outputs.score_std", s["std"], subject),
            M.Metric("outputs.score_p10", q[0], subject),
            M.Metric("outputs.score_p50", q[1], subject),
            M.Metric("outputs.score_p90", q[2], subject),
        ]
        previous = _read_date(spark, cfg, RECOMMENDATIONS, "score_date", prev)
        edges = M.quantile_edges(T.score_deciles(previous, mc.score_bins).first()["edges"] or []) if previous is not None else []
        if edges:
            ref = {int(r["bin"]): int(r["n"]) for r in T.score_histogram(previous, edges).collect()}
            cur = {int(r["bin"]): int(r["n"]) for r in T.score_histogram(recs, edges).collect()}
            versions = {d: sorted({str(r[0]) for r in df.select("model_version").distinct().collect()})
                        for d, df in ((str(prev), previous), (str(day), recs))}
            out.metrics.append(M.Metric("outputs.score_psi", M.psi(ref, cur, mc.psi_floor),
                                        f"scores of score_date {day} vs {prev}",
                                        {"edges": edges, "model_versions": versions}))
        else:
            out.notes.append(f"outputs.score_psi: no recommendations for the previous score date {prev}")
    else:
        out.notes.append(f"outputs: no {RECOMMENDATIONS} rows for score date {day} (run `ebbtide score --score-date {day}`)")

    churn = _read_date(spark, cfg, CHURN_DECAY, "score_date", day)
    now = {r["churn_risk"]: int(r["n"]) for r in T.tier_counts(churn).collect()} if churn is not None else {}
    if not now:
        out.notes.append(f"outputs: no {CHURN_DECAY} rows for score date {day}")
        return recs if users else None
    before_df = _read_date(spark, cfg, CHURN_DECAY, "score_date", prev)
    before = {r["churn_risk"]: int(r["n"]) for r in T.tier_counts(before_df).collect()} if before_df is not None else {}
    total, total_before = sum(now.values()), sum(before.values())
    subject = f"{CHURN_DECAY} score_date {day}"
    out.metrics.append(M.Metric("outputs.churn_users", float(total), subject))
    for t in TIERS:
        share = now.get(t, 0) / total
        out.metrics.append(M.Metric(f"outputs.churn_share.{t}", share, subject, {"users": now.get(t, 0)}))
        if total_before:
            was = before.get(t, 0) / total_before
            out.metrics.append(M.Metric(f"outputs.churn_share_change.{t}", share - was, f"{subject} vs {prev}",
                                        {"share": share, "previous_share": was}))
    if not total_before:
        out.notes.append(f"outputs.churn_share_change: no {CHURN_DECAY} rows for the previous score date {prev}")
    return recs if users else None


def _outcomes(out: Measured, spark, cfg, mc, recs, day_events, past_events, day: dt.date) -> None:
    from pyspark.sql import functions as F

    from ebbtide.monitor import transform as T

    k = mc.k
    if recs is None:
        out.notes.append(f"outcomes: nothing was served for {day}")
        return
    subject = f"{RECOMMENDATIONS} score_date {day} vs {EVENTS} on {day}"
    o = T.outcome_summary(T.served_outcomes(recs, day_events, k)).first()
    out.metrics += [
        M.Metric("outcomes.users", float(o["users"]), subject),
        M.Metric(f"outcomes.hit_rate@{k}", o["hit_rate"], subject, {"users": o["users"]}),
        M.Metric(f"outcomes.ndcg@{k}", o["ndcg"], subject, {"users": o["users"]}),
    ]
    if not tables.exists(spark, cfg, ITEM_VOCAB):
        out.notes.append(f"outcomes.coverage@{k}: no {ITEM_VOCAB} (run `ebbtide sequences`)")
        return
    catalogue = tables.read(spark, cfg, ITEM_VOCAB)
    if "first_seen" in catalogue.columns:  # the items that existed as of the score date
        catalogue = catalogue.where(F.col("first_seen") < F.lit(T.midnight(day)))
    c = T.catalogue_coverage(recs, catalogue, k).first()
    out.metrics.append(M.Metric(f"outcomes.coverage@{k}", _share(c["covered"], c["catalogue"]),
                                f"{RECOMMENDATIONS} score_date {day} vs {ITEM_VOCAB}",
                                {"covered": c["covered"], "catalogue": c["catalogue"]}))
    if mc.popular_baseline:
        _popular_outcomes(out, spark, cfg, k, recs, catalogue, past_events, day_events, day)


def _popular_outcomes(out: Measured, spark, cfg, k: int, recs, catalogue, past_events, day_events,
                      day: dt.date) -> None:
    """The same realized outcomes for a most-popular table served to the same users on the same
    score date: popularity = events before D, the same catalogue as coverage (items first seen
    before D), the scorer's exclusions (score.exclude_consumed, score.allow_items / deny_items and
    their sources), scored by the same served_outcomes."""
    from pyspark.sql import functions as F

    from ebbtide.monitor import transform as T
    from ebbtide.scoring.transform import item_list

    sc = cfg.section("score")
    reader = lambda n: tables.read(spark, cfg, n)  # noqa: E731
    allow = item_list(spark, sc.allow_items, sc.allow_source, reader)
    deny = item_list(spark, sc.deny_items, sc.deny_source, reader)
    if allow:
        catalogue = catalogue.where(F.col("item_id").isin(allow))
    if deny:
        catalogue = catalogue.where(~F.col("item_id").isin(deny))
    served = T.popular_served(recs.select("user_id"), past_events, catalogue, k, sc.exclude_consumed)
    o = T.outcome_summary(T.served_outcomes(served, day_events, k)).first()
    subject = f"most-popular (events before {day}) served to the users of {RECOMMENDATIONS} score_date {day} vs {EVENTS} on {day}"
    detail = {"users": o["users"], "exclude_consumed": sc.exclude_consumed}
    out.metrics += [
        M.Metric(f"outcomes.popular_hit_rate@{k}", o["hit_rate"], subject, detail),
        M.Metric(f"outcomes.popular_ndcg@{k}", o["ndcg"], subject, detail),
    ]


def _calibration(out: Measured, spark, cfg, mc, events, day: dt.date) -> None:
    from ebbtide.monitor import transform as T

    for h in mc.calibration_horizons_days:
        col = HORIZON_COLUMNS[h]
        s = day - dt.timedelta(days=h - 1)
        churn = _read_date(spark, cfg, CHURN_DECAY, "score_date", s)
        bins = []
        if churn is not None:
            window = T.events_between(events, T.midnight(s), T.midnight(day + dt.timedelta(days=1)))
            bins = [r.asDict() for r in T.calibration_bins(T.returned(churn, window, col), mc.calibration_bins).collect()]
        cal = M.calibration(bins, mc.calibration_bins)
        if not cal["n"]:
            out.notes.append(f"calibration of {col}: no {CHURN_DECAY} rows for score date {s} (the score date whose "
                             f"{h}-day horizon ends with {day})")
            continue
        prefix = f"calibration.{col}"
        subject = f"{CHURN_DECAY} score_date {s} vs {EVENTS} {s} .. {day}"
        out.metrics += [
            M.Metric(f"{prefix}.users", float(cal["n"]), subject),
            M.Metric(f"{prefix}.base_rate", cal["base_rate"], subject),
            M.Metric(f"{prefix}.mean_pred", cal["mean_pred"], subject),
            M.Metric(f"{prefix}.brier", cal["brier"], subject),
            M.Metric(f"{prefix}.ece", cal["ece"], subject, {"bins": mc.calibration_bins}),
        ]
        for b in cal["bins"]:
            out.metrics.append(M.Metric(f"{prefix}.bin_{b['bin']:02d}", b["observed"], subject,
                                        {"lo": b["lo"], "hi": b["hi"], "n": b["n"], "mean_pred": b["mean_pred"]}))
        out.calibration[f"{col} (score date {s})"] = cal


def measure(spark, cfg, mc, day: dt.date) -> Measured:
    """Every metric of the day (statuses not yet set)."""
    from pyspark import StorageLevel

    from ebbtide.monitor import transform as T

    out = Measured()
    events = tables.read(spark, cfg, EVENTS)
    start, end = T.midnight(day), T.midnight(day + dt.timedelta(days=1))
    day_events = T.events_between(events, start, end).persist(StorageLevel.MEMORY_AND_DISK)
    try:
        past_events = T.events_between(events, None, start)
        with step(log, f"inputs of {day}"):
            n = _inputs(out, day_events, past_events, day)
        log.info("%d events on %s", n, day)
        with step(log, "drift against the training snapshot"):
            _drift(out, spark, cfg, mc, events, day_events, day)
        with step(log, f"outputs of score date {day}"):
            recs = _outputs(out, spark, cfg, mc, day)
        with step(log, "realized outcomes"):
            _outcomes(out, spark, cfg, mc, recs, day_events, past_events, day)
        with step(log, "calibration"):
            _calibration(out, spark, cfg, mc, events, day)
    finally:
        day_events.unpersist()
    return out


# --------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------


def _value(v: Any) -> Optional[float]:
    return float(v) if v is not None and math.isfinite(float(v)) else None


def rows_frame(spark, day: dt.date, metrics: list, run_id: str, computed_at: dt.datetime):
    """ops_monitoring rows of the day (column comments in the schema)."""
    rows = [(day, m.name, _value(m.value), m.status, m.bound, m.warn, m.alert, m.subject,
             json.dumps(m.detail, sort_keys=True, default=str), run_id, computed_at) for m in metrics]
    return spark.createDataFrame(rows, OPS_SPEC.spark_schema())


def publish(spark, cfg, day: dt.date, metrics: list, run_id: str) -> None:
    """MERGE the day's rows on (monitor_date, metric): matched rows are updated, new ones inserted,
    and rows of the same day that this run did not produce are deleted, all in one commit."""
    computed_at = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    tables.write(rows_frame(spark, day, metrics, run_id, computed_at), cfg, OPS_TABLE, "merge",
                 keys=OPS_SPEC.keys, update_matched=True,
                 delete_unmatched=f"t.monitor_date = DATE'{day.isoformat()}'", comment=OPS_SPEC.comment)


def history(spark, cfg, day: dt.date, names: list[str], days: int) -> dict[str, list[tuple[dt.date, float]]]:
    """The last ``days`` days of some metrics from ops_monitoring, for the report's plot."""
    from pyspark.sql import functions as F

    since = day - dt.timedelta(days=days)
    df = (tables.read(spark, cfg, OPS_TABLE)
          .where((F.col("monitor_date") >= F.lit(since)) & (F.col("monitor_date") <= F.lit(day))
                 & F.col("metric").isin(names))
          .select("monitor_date", "metric", "value"))
    out: dict[str, list[tuple[dt.date, float]]] = {n: [] for n in names}
    for r in df.collect():
        out[r["metric"]].append((r["monitor_date"], r["value"]))
    return out


def write_report(spark, cfg, mc, day: dt.date, measured: Measured, run_id: str) -> str:
    from ebbtide.monitor import report

    # Written to a local folder; a report_dir on an object store gets it at the end (storage.publish_dir).
    report_url = storage.join(cfg.path(mc.report_dir), day.isoformat())
    out_dir = storage.local_dir_for(report_url)
    figures: dict[str, str] = {}
    if measured.drift_panels:
        report.drift_plot(measured.drift_panels, os.path.join(out_dir, "drift.png"))
        figures["Drift"] = "drift.png"
    names = [f"outcomes.hit_rate@{mc.k}", f"outcomes.ndcg@{mc.k}"]
    hist = history(spark, cfg, day, names, mc.report_days)
    if any(hist.values()):
        report.history_plot(hist, os.path.join(out_dir, "hit_rate.png"),
                            f"served recommendations against the day's events, last {mc.report_days} days")
        figures["Hit rate by day"] = "hit_rate.png"
    if measured.calibration:
        report.calibration_plot(measured.calibration, os.path.join(out_dir, "calibration.png"))
        figures["Calibration"] = "calibration.png"
    header = {"run": run_id, "table": f"{tables.full_name(cfg, OPS_TABLE)} (monitor_date = '{day}')",
              "served table": f"{RECOMMENDATIONS} / {CHURN_DECAY} score_date {day} (built from events before {day})"}
    path = report.write_report(out_dir, day, measured.metrics, measured.notes, figures, header, measured.calibration)
    if storage.is_local(report_url):
        return path
    storage.publish_dir(out_dir, report_url, storage.options_from_spark(spark))
    return storage.join(report_url, os.path.basename(path))


# --------------------------------------------------------------------------------------
# The stage
# --------------------------------------------------------------------------------------


def alert_message(day: dt.date, alerts: list, table: str, report_path: str) -> str:
    first = alerts[0]
    more = f" (and {len(alerts) - 1} more: {', '.join(m.name for m in alerts[1:])})" if len(alerts) > 1 else ""
    return (f"monitor alert for {day}: {first.breach()}{more}; rows in {table}, report {report_path}; "
            "look into the inputs or the model before promoting, or adjust monitor.thresholds")


def run(ctx, args) -> dict:
    cfg = ctx.cfg
    mc = cfg.section("monitor")
    validate(mc)
    day = monitor_day(args)
    spark = ctx.spark
    log.info("monitoring %s for %s (UTC day)", cfg.storage.database, day)
    measured = measure(spark, cfg, mc, day)
    metrics = M.judge(measured.metrics, mc.thresholds)
    with step(log, f"writing {len(metrics)} rows of {day} to {OPS_TABLE}"):
        publish(spark, cfg, day, metrics, ctx.run_id)
    with step(log, "writing the report"):
        report_path = write_report(spark, cfg, mc, day, measured, ctx.run_id)
    for note in measured.notes:
        log.info("not measured: %s", note)
    counts = {s: sum(m.status == s for m in metrics) for s in M.STATUSES}
    alerts = [m for m in metrics if m.status == M.ALERT]
    warns = [m for m in metrics if m.status == M.WARN]
    for m in alerts + warns:
        log.warning("%s: %s", m.status.upper(), m.breach())
    if alerts and getattr(args, "fail_on_alert", False):
        raise MonitorAlert(alert_message(day, alerts, tables.full_name(cfg, OPS_TABLE), report_path))
    return {
        "date": day.isoformat(),
        "rows": len(metrics),
        **counts,
        "alerts": [m.breach() for m in alerts],
        "warnings": [m.breach() for m in warns],
        "not_measured": measured.notes,
        "report": report_path,
    }
