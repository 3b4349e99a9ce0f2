"""bronze_events -> silver_events + silver_sessions: gap-based sessions per user.

A user's events, ordered by ``(ts, event_id)``, form one session until the gap to the
previous event is *strictly greater* than ``gap_minutes``; a gap exactly equal to the
threshold stays in the same session (a 30-minute timeout means "30 minutes of silence is
still the same visit"). Timestamps are UTC instants, so local offsets and DST changes of
the source cannot move a boundary.

Incremental runs: which bronze rows are new is found from the bronze Delta snapshots (the
data files present now but not at the last processed version, and those gone since, for
deletions); the users they name are split in two, as DataFrames (joins, never a list of
users on the driver):

- *appending* users, whose new rows all come strictly after their last silver_events row in
  ``(ts, event_id)`` order (or who have none yet) and who lost no row. Every silver_events
  column of a row depends only on the user's earlier rows, so their existing rows stay as
  they are: only the new rows are sessionized, seeded with the last row
  (:func:`continue_sessions`), and appended to silver_events in one commit that adds files
  only, made idempotent by Delta's ``txnAppId``/``txnVersion`` (the bronze version). Their
  sessions from the last one before the new rows on are summarized again from silver_events
  and MERGEd into silver_sessions (updated or inserted on ``session_id``);
- *rewriting* users (late or out-of-order events, deletions, rows a bronze rewrite or
  compaction added again): re-sessionized from their whole history, and their rows replaced
  in both silver tables (one Delta MERGE per table, scoped by those users: ``replace_scope``).

The processed bronze version is recorded in ``ops_sessionize_log`` after both silver tables
are written, so a crash before that point makes the next run redo the same bronze version
with the same result: users whose new rows a crashed run already appended find them in
silver_events and are rewritten whole, and the same append again commits nothing.
"""
from __future__ import annotations

import argparse
import datetime as dt
from dataclasses import dataclass
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
# Which users need re-sessionizing, and how
# --------------------------------------------------------------------------------------


def _file_names(df: "DataFrame") -> set[str]:
    return {f.rstrip("/").rsplit("/", 1)[-1] for f in df.inputFiles()}


@dataclass(frozen=True)
class BronzeChange:
    """What changed in bronze_events between two versions, as the data files that changed.

    ``added``: every bronze row of the data files present now but not then (bronze-shaped);
    ``removed_users``: one ``user_id`` column, the users of the rows of the files gone since
    (deletions, rewrites, compactions), not distinct.
    """

    added: "DataFrame"
    removed_users: "DataFrame"
    files_added: int
    files_removed: int

    def users(self) -> "DataFrame":
        """Every user with an added or removed row (one column, distinct)."""
        return self.added.select("user_id").unionByName(self.removed_users).distinct()


def bronze_changes(
    spark: "SparkSession", cfg: "Config", since_version: int, now_version: int
) -> Optional[BronzeChange]:
    """The bronze rows added and the users of the rows removed between two bronze versions.

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
    # An empty isin() is a false predicate: no rows, and Spark prunes the scan.
    return BronzeChange(
        added=now.where(F.col("_metadata.file_name").isin(added)),
        removed_users=old.where(F.col("_metadata.file_name").isin(removed)).select("user_id"),
        files_added=len(added),
        files_removed=len(removed),
    )


def affected_users(
    spark: "SparkSession", cfg: "Config", since_version: int, now_version: int
) -> Optional["DataFrame"]:
    """Users with bronze rows added or removed between two bronze versions (one column, distinct);
    None when the old snapshot is no longer readable. See :func:`bronze_changes`."""
    change = bronze_changes(spark, cfg, since_version, now_version)
    return None if change is None else change.users()


# The state a user's next event continues from: their last silver_events row.
LAST_STATE = ("ts", "event_id", "session_index", "event_seq")


def plan_users(added: "DataFrame", removed_users: "DataFrame", silver_events: "DataFrame") -> "DataFrame":
    """One row per affected user: ``user_id``, ``appending`` and ``last`` (their last silver_events row,
    a struct of :data:`LAST_STATE`; null when they have none).

    A user is *appending* when every added row of theirs comes strictly after their last
    silver_events row in ``(ts, event_id)`` order (any row does for a user new to silver) and none
    of their rows was removed. Every silver_events column of a row depends only on the user's
    earlier rows, so an appending user's silver rows stay as they are and the added rows continue
    from ``last`` (:func:`continue_sessions`). Every other user (a late or out-of-order event, a
    deletion, rows a bronze compaction wrote again, rows silver_events already holds) is
    re-sessionized from their whole history. Joins and aggregates only: nothing reaches the driver.
    """
    from pyspark.sql import functions as F

    first_new = added.groupBy("user_id").agg(F.min(F.struct("ts", "event_id")).alias("_first"))
    # A struct compares field by field: the max of (ts, event_id, ...) is the user's last row.
    last = (
        silver_events.join(first_new.select("user_id"), "user_id", "left_semi")
        .groupBy("user_id").agg(F.max(F.struct(*LAST_STATE)).alias("last"))
    )
    gone = removed_users.select("user_id").distinct().withColumn("_removed", F.lit(True))
    f, lst = F.col("_first"), F.col("last")
    after_last = (f["ts"] > lst["ts"]) | ((f["ts"] == lst["ts"]) & (f["event_id"] > lst["event_id"]))
    appending = f.isNotNull() & F.col("_removed").isNull() & (lst.isNull() | F.coalesce(after_last, F.lit(False)))
    return (
        first_new.join(last, "user_id", "left")
        .join(gone, "user_id", "full")
        .select("user_id", appending.alias("appending"), "last")
    )


def continue_sessions(new_events: "DataFrame", last_state: "DataFrame", gap_minutes: float) -> "DataFrame":
    """Sessionize users' new events from where their history left off; silver_events without ``processed_at``.

    ``last_state``: one row per user with the :data:`LAST_STATE` columns of their last silver_events
    row; a user without one starts from nothing. Every event of ``new_events`` must come strictly
    after its user's last row in ``(ts, event_id)`` order (:func:`plan_users` checks it). The rows
    are then exactly those :func:`sessionize_events` gives over the user's whole history: the last
    row joins the new ones as a seed, so the gap rule and the ordering are sessionize_events's own;
    the seed's session_index and event_seq are added to the window's numbers, and the seed goes.
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    seeds = last_state.select(
        "user_id", "ts", "event_id",
        F.col("session_index").alias("_seed_session_index"),
        F.col("event_seq").alias("_seed_event_seq"),
        F.lit(True).alias("_seed"),
    )
    both = new_events.unionByName(seeds, allowMissingColumns=True)
    df = sessionize_events(by_user(both), gap_minutes)
    # The seed is each seeded user's first row: the same window (no new shuffle or sort) carries its numbers.
    w = Window.partitionBy("user_id").orderBy("ts", "event_id")
    base_index = F.coalesce(F.first("_seed_session_index", ignorenulls=True).over(w), F.lit(0))
    base_seq = F.coalesce(F.first("_seed_event_seq", ignorenulls=True).over(w), F.lit(0))
    df = (
        df.withColumn("_base_index", base_index)
        .withColumn("_base_seq", base_seq)
        .where(F.col("_seed").isNull())
    )
    session_index = (F.col("session_index") + F.col("_base_index")).cast("int")
    cols = [c for c in new_events.columns if c not in _DROPPED]
    return df.select(
        *cols,
        F.concat(F.col("user_id"), F.lit("#"), session_index.cast("string")).alias("session_id"),
        session_index.alias("session_index"),
        (F.col("event_seq") + F.col("_base_seq")).cast("int").alias("event_seq"),
        "gap_s",
        "is_session_start",
    )


def touched_sessions(silver_events: "DataFrame", appending: "DataFrame") -> "DataFrame":
    """The silver_events rows of the sessions that appending users' new rows touched: from their
    last session before the new rows on (``appending``: a :func:`plan_users` slice), all of a new
    user's. Summarized, they are the silver_sessions rows that changed or are new."""
    from pyspark.sql import functions as F

    since = appending.select("user_id", F.coalesce(F.col("last.session_index"), F.lit(0)).alias("_from_index"))
    return (
        silver_events.join(since, "user_id")
        .where(F.col("session_index") >= F.col("_from_index"))
        .drop("_from_index")
    )


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


# The idempotent append's application id (Delta txnAppId), followed by bronze_events' table id: its
# version numbers the appends, and they start over when bronze_events is created again.
APPEND_APP_ID = "ebbtide.sessionize.silver_events.append"


def append_txn(spark: "SparkSession", cfg: "Config", bronze_version: int) -> tuple[str, int]:
    """``(txnAppId, txnVersion)`` of the silver_events append that sessionizes ``bronze_version``."""
    return f"{APPEND_APP_ID}:{tables.table_id(spark, cfg, BRONZE)}", int(bronze_version)


def run(ctx, args) -> dict[str, Any]:
    from pyspark.sql import functions as F

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
        "appended_users": 0, "rewritten_users": 0, "events_written": 0, "sessions_written": 0,
    }

    last = None if full else _last_state(spark, cfg)
    silver_exists = tables.exists(spark, cfg, SILVER_EVENTS) and tables.exists(spark, cfg, SILVER_SESSIONS)
    plan = change = None
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
                change = bronze_changes(spark, cfg, int(last["bronze_version"]), bronze_version)
                if change is None:
                    reason = "old bronze snapshot unreadable"
                else:
                    # Materialized once, before any write: every write below reads the same users,
                    # split against silver_events as it stood, and the file listing is not redone.
                    plan = plan_users(change.added, change.removed_users, tables.read(spark, cfg, SILVER_EVENTS))
                    plan = plan.localCheckpoint(eager=True)
                    counts = plan.agg(F.count(F.lit(1)), F.sum(F.col("appending").cast("int"))).first()
                    n_users, n_append = int(counts[0]), int(counts[1] or 0)
                    n_rewrite = n_users - n_append
                    if not n_users:
                        log.info("no bronze rows changed since v%d; nothing to do", last["bronze_version"])
                        return {"mode": "noop", **summary}

    events_before = _version_or_none(spark, cfg, SILVER_EVENTS)
    sessions_before = _version_or_none(spark, cfg, SILVER_SESSIONS)
    if plan is None:
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
        log.info(
            "%d affected users (gap %.4g min, bronze v%d): %d append their new rows, %d are re-sessionized "
            "from their whole history (late or out-of-order rows, deletions, rewritten bronze files)",
            n_users, gap, bronze_version, n_append, n_rewrite,
        )
        rewriting = plan.where(~F.col("appending")).select("user_id")
        appending = plan.where(F.col("appending"))
        # silver_events first, then silver_sessions (summarized from it), then the ops row: a crash
        # anywhere before the ops row makes the next run redo this bronze version. The users whose
        # new rows a crashed run already appended then find them in silver_events and are rewritten
        # whole, and a run that does append again commits nothing (the append's txn).
        if n_rewrite:
            mine = bronze.join(rewriting, "user_id", "left_semi")
            events = with_processed_at(sessionize_events(mine, gap), processed_at)
            with step(log, f"merging silver_events rows of {n_rewrite} re-sessionized users"):
                tables.write(EVENTS_SPEC.with_comments(events), cfg, SILVER_EVENTS, "merge", keys=EVENTS_SPEC.keys,
                             replace_scope=rewriting, comment=EVENTS_SPEC.comment)
        if n_append:
            new_rows = change.added.join(appending.select("user_id"), "user_id", "left_semi")
            seeds = appending.where(F.col("last").isNotNull()).select("user_id", "last.*")
            events = with_processed_at(continue_sessions(new_rows, seeds, gap), processed_at)
            txn = append_txn(spark, cfg, bronze_version)
            with step(log, f"appending the new silver_events rows of {n_append} users"):
                before = tables.version(spark, cfg, SILVER_EVENTS)
                tables.write(EVENTS_SPEC.with_comments(events), cfg, SILVER_EVENTS, "append", txn=txn)
                if tables.version(spark, cfg, SILVER_EVENTS) == before:
                    log.warning("silver_events already holds the append %s v%d (a run of the same bronze version "
                                "committed it): nothing appended", *txn)
        if n_rewrite:
            silver = tables.read(spark, cfg, SILVER_EVENTS).join(rewriting, "user_id", "left_semi")
            sessions = with_processed_at(summarize_sessions(silver), processed_at)
            with step(log, f"merging silver_sessions rows of {n_rewrite} re-sessionized users"):
                tables.write(SESSIONS_SPEC.with_comments(sessions), cfg, SILVER_SESSIONS, "merge",
                             keys=SESSIONS_SPEC.keys, replace_scope=rewriting, comment=SESSIONS_SPEC.comment)
        if n_append:
            # Recomputed from silver_events as it now stands, so a rerun after a crash gives the same rows.
            touched = touched_sessions(tables.read(spark, cfg, SILVER_EVENTS), appending)
            sessions = with_processed_at(summarize_sessions(touched), processed_at)
            with step(log, f"merging the extended and new silver_sessions rows of {n_append} appending users"):
                tables.write(SESSIONS_SPEC.with_comments(sessions), cfg, SILVER_SESSIONS, "merge",
                             keys=SESSIONS_SPEC.keys, update_matched=True, comment=SESSIONS_SPEC.comment)
        summary["mode"] = "incremental"
        summary.update(affected_users=n_users, appended_users=n_append, rewritten_users=n_rewrite)

    summary["events_written"] = _rows_written(spark, cfg, SILVER_EVENTS, events_before)
    summary["sessions_written"] = _rows_written(spark, cfg, SILVER_SESSIONS, sessions_before)
    # Recorded last: a crash before this line makes the next run redo the same users.
    tables.write(_log_row(spark, ctx.run_id, summary, processed_at), cfg, OPS_LOG, "append",
                 comment=OPS_LOG_SPEC.comment)
    log.info(
        "sessionized %s: %d users (%d appended, %d re-sessionized whole), %d events, %d sessions written (bronze v%d)",
        summary["mode"], summary["affected_users"], summary["appended_users"], summary["rewritten_users"],
        summary["events_written"], summary["sessions_written"], bronze_version,
    )
    return summary


def _version_or_none(spark: "SparkSession", cfg: "Config", name: str) -> Optional[int]:
    return tables.version(spark, cfg, name) if tables.exists(spark, cfg, name) else None


def _rows_written(spark: "SparkSession", cfg: "Config", name: str, since: Optional[int]) -> int:
    """Rows the commits after version ``since`` wrote (None: all), from Delta's operation metrics (no rescan).

    A MERGE's output also holds the unchanged rows it copied out of rewritten files: only its inserts
    and updates count. A table's creation is a metadata-only commit and counts nothing.
    """
    from delta.tables import DeltaTable

    since = -1 if since is None else since
    now = tables.version(spark, cfg, name)
    if now <= since:
        return 0
    n = 0
    for h in DeltaTable.forPath(spark, tables.table_path(cfg, name)).history(now - since).collect():
        if h["version"] <= since:
            continue
        m = h["operationMetrics"] or {}
        if "numTargetRowsInserted" in m:
            n += int(m["numTargetRowsInserted"]) + int(m.get("numTargetRowsUpdated", 0))
        elif "numOutputRows" in m:
            n += int(m["numOutputRows"])
    return n
