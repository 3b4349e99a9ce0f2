"""bronze_events -> silver_events + silver_sessions: gap-based sessions per user.

A user's events, ordered by ``(ts, event_id)``, form one session until the gap to the
previous event is *strictly greater* than ``gap_minutes``; a gap exactly equal to the
threshold stays in the same session (a 30-minute timeout means "30 minutes of silence is
still the same visit"). Timestamps are UTC instants, so local offsets and DST changes of
the source cannot move a boundary.

Late and out-of-order events: a user's sessions depend on all of their events, so every
user touched by new bronze data is re-sessionized from their whole history and their rows
are replaced in both silver tables (one Delta MERGE per table, keyed on the user: the affected
users stay a distributed DataFrame, never a list on the driver). Which bronze rows are new
is found from the bronze Delta snapshots: the data files present now but not at the last
processed version (and those gone since, for deletions) name the affected users. The
processed bronze version is recorded in ``ops_sessionize_log`` after both silver tables are
written, so a crash before that point simply redoes the same users on the next run.
"""
from __future__ import annotations

import argparse
import datetime as dt
from typing import TYPE_CHECKING, Any, Optional

from ebbtide import catalog, tables
from ebbtide.log import get_logger, step

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

    from ebbtide.config import Config

log = get_logger("sessionize")

# The tables: columns, comments and keys are in ebbtide.catalog.
EVENTS_SPEC, SESSIONS_SPEC, OPS_LOG_SPEC = catalog.SILVER_EVENTS, catalog.SILVER_SESSIONS, catalog.OPS_SESSIONIZE_LOG
BRONZE = catalog.BRONZE_EVENTS.name
SILVER_EVENTS, SILVER_SESSIONS, OPS_LOG = EVENTS_SPEC.name, SESSIONS_SPEC.name, OPS_LOG_SPEC.name

# Bronze columns that silver_events drops (raw lineage that sequences never read).
_DROPPED = ("extra", "source_file")
# silver_sessions less processed_at: what summarize_sessions returns.
SESSION_COLUMNS = SESSIONS_SPEC.names[:-1]


# --------------------------------------------------------------------------------------
# Pure transforms
# --------------------------------------------------------------------------------------


def sessionize_events(events_df: "DataFrame", gap_minutes: float) -> "DataFrame":
    """Assign sessions to bronze-shaped events; returns silver_events without ``processed_at``.

    All window expressions share one spec (user, then ts, event_id), so Spark shuffles and
    sorts the events once; the running sum that numbers sessions reuses that order.
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    if gap_minutes <= 0:
        raise ValueError(f"sessionize.gap_minutes must be > 0, got {gap_minutes}")
    gap_us = int(round(float(gap_minutes) * 60 * 1_000_000))
    w = Window.partitionBy("user_id").orderBy("ts", "event_id")
    cols = [c for c in events_df.columns if c not in _DROPPED]
    us = F.unix_micros("ts")
    prev_us = F.lag(us).over(w)
    df = events_df.select(
        *cols,
        (us - prev_us).alias("_gap_us"),
        (F.row_number().over(w) - 1).cast("int").alias("event_seq"),
    )
    start = F.col("_gap_us").isNull() | (F.col("_gap_us") > F.lit(gap_us))
    df = df.withColumn("is_session_start", start)
    df = df.withColumn(
        "session_index",
        (F.sum(F.col("is_session_start").cast("int")).over(w.rowsBetween(Window.unboundedPreceding, 0)) - 1).cast("int"),
    )
    return df.select(
        *cols,
        F.concat(F.col("user_id"), F.lit("#"), F.col("session_index").cast("string")).alias("session_id"),
        "session_index",
        "event_seq",
        (F.col("_gap_us") / F.lit(1_000_000.0)).alias("gap_s"),
        "is_session_start",
    )


def summarize_sessions(silver_events_df: "DataFrame") -> "DataFrame":
    """One row per session from silver_events; returns silver_sessions without ``processed_at``."""
    from pyspark.sql import functions as F

    g = silver_events_df.groupBy("user_id", "session_id", "session_index").agg(
        F.min("ts").alias("start_ts"),
        F.max("ts").alias("end_ts"),
        F.count(F.lit(1)).cast("int").alias("n_events"),
        # A distinct count plans as hash aggregates; a set of items per session would not.
        F.countDistinct("item_id").cast("int").alias("n_items"),
        F.array_sort(F.collect_set("event_type")).alias("event_types"),
    )
    return g.select(
        "user_id", "session_id", "session_index", "start_ts", "end_ts",
        ((F.unix_micros("end_ts") - F.unix_micros("start_ts")) / F.lit(1_000_000.0)).alias("duration_s"),
        "n_events", "n_items", "event_types",
    )


def by_user(df: "DataFrame") -> "DataFrame":
    """``df`` range-partitioned on ``user_id``: silver_events' file layout (see :func:`run`).

    The window of :func:`sessionize_events` and the aggregate of :func:`summarize_sessions` are
    both keyed by user, so they reuse this partitioning instead of shuffling again, and each
    output file then holds a contiguous run of users sorted by ``(user_id, ts)``.
    """
    return df.repartitionByRange("user_id")


def with_processed_at(df: "DataFrame", processed_at: dt.datetime) -> "DataFrame":
    from pyspark.sql import functions as F

    return df.withColumn("processed_at", F.lit(processed_at).cast("timestamp"))


# --------------------------------------------------------------------------------------
# Which users need re-sessionizing
# --------------------------------------------------------------------------------------


def _file_names(df: "DataFrame") -> set[str]:
    return {f.rstrip("/").rsplit("/", 1)[-1] for f in df.inputFiles()}


def affected_users(
    spark: "SparkSession", cfg: "Config", since_version: int, now_version: int
) -> Optional["DataFrame"]:
    """Users with bronze rows added or removed between two bronze versions (one column, distinct).

    Data files are immutable and uniquely named, so the files of one snapshot but not the
    other hold every changed row (plus, after a compaction, unchanged neighbours: a superset
    is safe, it only costs work). None when the old snapshot is no longer readable.
    """
    from pyspark.sql import functions as F

    now = tables.read(spark, cfg, BRONZE, version=now_version)
    try:
        old = tables.read(spark, cfg, BRONZE, version=since_version)
        old_files = _file_names(old)
    except Exception as e:  # log retention passed, table replaced...
        log.warning("bronze version %d is no longer readable (%s); recomputing every user", since_version, e)
        return None
    now_files = _file_names(now)
    added, removed = sorted(now_files - old_files), sorted(old_files - now_files)
    log.info("bronze v%d -> v%d: %d data files added, %d removed", since_version, now_version, len(added), len(removed))
    parts = []
    if added:
        parts.append(now.where(F.col("_metadata.file_name").isin(added)).select("user_id"))
    if removed:
        parts.append(old.where(F.col("_metadata.file_name").isin(removed)).select("user_id"))
    if not parts:
        return spark.createDataFrame([], "user_id string")
    users = parts[0]
    for p in parts[1:]:
        users = users.unionByName(p)
    return users.distinct()


# --------------------------------------------------------------------------------------
# Stage
# --------------------------------------------------------------------------------------


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--gap-minutes", type=float, default=None,
        help="inactivity gap that ends a session (default: sessionize.gap_minutes, 30); "
        "a gap exactly equal to it does not start a new session",
    )
    p.add_argument(
        "--full", action="store_true",
        help="recompute every user from all of bronze_events instead of only users with new events",
    )


def _last_state(spark: "SparkSession", cfg: "Config") -> Optional[dict[str, Any]]:
    if not tables.exists(spark, cfg, OPS_LOG):
        return None
    rows = (
        tables.read(spark, cfg, OPS_LOG)
        .orderBy("processed_at", ascending=False)
        .limit(1)
        .collect()
    )
    return rows[0].asDict() if rows else None


def _log_row(spark: "SparkSession", run_id: str, summary: dict[str, Any], processed_at: dt.datetime) -> "DataFrame":
    row = (
        run_id, summary["mode"], summary["bronze_version"], summary["gap_minutes"],
        summary["affected_users"], summary["events_written"], summary["sessions_written"], processed_at,
    )
    return spark.createDataFrame([row], OPS_LOG_SPEC.spark_schema())


def run(ctx, args) -> dict[str, Any]:
    cfg, spark = ctx.cfg, ctx.spark
    gap = float(args.gap_minutes if getattr(args, "gap_minutes", None) is not None else cfg.sessionize.gap_minutes)
    full = bool(getattr(args, "full", False)) or not cfg.sessionize.incremental
    processed_at = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)

    if not tables.exists(spark, cfg, BRONZE):
        raise FileNotFoundError(
            f"table {tables.full_name(cfg, BRONZE)} does not exist; run `ebbtide ingest` first"
        )
    bronze_version = tables.version(spark, cfg, BRONZE)
    bronze = tables.read(spark, cfg, BRONZE, version=bronze_version)
    summary: dict[str, Any] = {
        "bronze_version": bronze_version, "gap_minutes": gap, "affected_users": 0,
        "events_written": 0, "sessions_written": 0,
    }

    last = None if full else _last_state(spark, cfg)
    silver_exists = tables.exists(spark, cfg, SILVER_EVENTS) and tables.exists(spark, cfg, SILVER_SESSIONS)
    users_df = None
    reason = "--full" if full else ""
    if not full:
        if last is None or not silver_exists:
            reason = "first run"
        elif float(last["gap_minutes"]) != gap:
            reason = f"gap changed from {last['gap_minutes']} to {gap} minutes"
        elif int(last["bronze_version"]) > bronze_version:
            reason = f"bronze_events went back from v{last['bronze_version']} to v{bronze_version}"
        elif int(last["bronze_version"]) == bronze_version:
            log.info("bronze_events v%d already sessionized; nothing to do", bronze_version)
            return {"mode": "noop", **summary}
        else:
            with step(log, f"finding users with new bronze rows since v{last['bronze_version']}"):
                users_df = affected_users(spark, cfg, int(last["bronze_version"]), bronze_version)
                if users_df is None:
                    reason = "old bronze snapshot unreadable"
                else:
                    # Materialized once: both MERGEs and the count read the same users, and the
                    # file listing behind them is not redone per use.
                    users_df = users_df.localCheckpoint(eager=True)
                    n_users = users_df.count()
                    if not n_users:
                        log.info("no bronze rows changed since v%d; nothing to do", last["bronze_version"])
                        return {"mode": "noop", **summary}

    if users_df is None:
        log.info("sessionizing every user (%s), gap %.4g min, bronze v%d", reason, gap, bronze_version)
        # Laid out by user, not by day: readers keyed by user skip files on min/max, and the table
        # is a few files per shuffle partition instead of one per (task, day) (ml-latest-small's
        # 8,000 days of history made thousands of 20-row files under daily partitions).
        events = with_processed_at(sessionize_events(by_user(bronze), gap), processed_at)
        with step(log, "writing silver_events (all users)"):
            tables.write(EVENTS_SPEC.with_comments(events), cfg, SILVER_EVENTS, "overwrite",
                         comment=EVENTS_SPEC.comment)
        # Sessions are summarized from the table just written: cheaper than windowing twice.
        silver = by_user(tables.read(spark, cfg, SILVER_EVENTS))
        sessions = with_processed_at(summarize_sessions(silver), processed_at)
        with step(log, "writing silver_sessions (all users)"):
            tables.write(SESSIONS_SPEC.with_comments(sessions), cfg, SILVER_SESSIONS, "overwrite",
                         comment=SESSIONS_SPEC.comment)
        summary["mode"] = "full"
        summary["affected_users"] = tables.read(spark, cfg, SILVER_SESSIONS).select("user_id").distinct().count()
    else:
        log.info("re-sessionizing %d affected users, gap %.4g min, bronze v%d", n_users, gap, bronze_version)
        mine = bronze.join(users_df, "user_id", "left_semi")
        events = with_processed_at(sessionize_events(mine, gap), processed_at)
        with step(log, f"merging silver_events rows of {n_users} users"):
            tables.write(EVENTS_SPEC.with_comments(events), cfg, SILVER_EVENTS, "merge", keys=EVENTS_SPEC.keys,
                         replace_scope=users_df, comment=EVENTS_SPEC.comment)
        silver = tables.read(spark, cfg, SILVER_EVENTS).join(users_df, "user_id", "left_semi")
        sessions = with_processed_at(summarize_sessions(silver), processed_at)
        with step(log, f"merging silver_sessions rows of {n_users} users"):
            tables.write(SESSIONS_SPEC.with_comments(sessions), cfg, SILVER_SESSIONS, "merge", keys=SESSIONS_SPEC.keys,
                         replace_scope=users_df, comment=SESSIONS_SPEC.comment)
        summary["mode"] = "incremental"
        summary["affected_users"] = n_users

    summary["events_written"] = _rows_written(spark, cfg, SILVER_EVENTS)
    summary["sessions_written"] = _rows_written(spark, cfg, SILVER_SESSIONS)
    # Recorded last: a crash before this line makes the next run redo the same users.
    tables.write(_log_row(spark, ctx.run_id, summary, processed_at), cfg, OPS_LOG, "append",
                 comment=OPS_LOG_SPEC.comment)
    log.info(
        "sessionized %s: %d users, %d events, %d sessions written (bronze v%d)",
        summary["mode"], summary["affected_users"], summary["events_written"], summary["sessions_written"], bronze_version,
    )
    return summary


def _rows_written(spark: "SparkSession", cfg: "Config", name: str) -> int:
    """Rows the latest data commit wrote, from Delta's operation metrics (no rescan).

    Table comments are set in a commit of their own after a table's first write, so the
    newest commit that wrote rows is looked up among the last few. A MERGE's output also holds
    the unchanged rows it copied out of rewritten files: only its inserts and updates count.
    """
    from delta.tables import DeltaTable

    for h in DeltaTable.forPath(spark, tables.table_path(cfg, name)).history(5).collect():
        m = h["operationMetrics"] or {}
        if "numTargetRowsInserted" in m:
            return int(m["numTargetRowsInserted"]) + int(m.get("numTargetRowsUpdated", 0))
        if "numOutputRows" in m:
            return int(m["numOutputRows"])
    return 0
