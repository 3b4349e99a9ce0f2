"""The one place that reads and writes ebbtide's Delta tables.

Tables live at ``{warehouse}/{database}.db/{name}`` and are registered in the catalog under
``{database}.{name}``. Every write goes through :func:`write`, whose modes are all
idempotent for the same input:

- ``overwrite``: replace the whole table (one atomic Delta commit);
- ``replace_where``: replace exactly the rows matching a predicate, e.g. one score date;
- ``merge``: insert rows whose ``keys`` are new (and optionally update matched rows, and delete
  the target rows of a slice that the new rows no longer hold: ``delete_unmatched`` for a slice
  named by a predicate, ``replace_scope`` for one named by a DataFrame of keys, e.g. users);
- ``append``: only for logs whose rows carry a run id (ops tables), or with ``txn`` for rows that
  one step of a stage writes once per input version (Delta's idempotent writes: see :func:`write`).

A new table is first created by a metadata-only commit (no Spark job, no data file), so a
crash can leave either no table or a valid empty one, never data files without a commit. A
folder that a crash still left without any committed version (Delta writes ``_delta_log``
before its first commit) is moved aside to ``<folder>.orphaned-<UTC time>`` and recreated;
see :func:`set_aside_if_orphaned`.
"""
from __future__ import annotations

import os
import random
import re
import time
from typing import TYPE_CHECKING, Iterable, Literal, Optional

from ebbtide import storage
from ebbtide.config import Config
from ebbtide.log import get_logger

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

log = get_logger("tables")

WriteMode = Literal["overwrite", "append", "merge", "replace_where"]


def full_name(cfg: Config, name: str) -> str:
    return f"{cfg.storage.database}.{name}"


def table_path(cfg: Config, name: str) -> str:
    return f"{cfg.path(cfg.storage.warehouse_dir).rstrip('/')}/{cfg.storage.database}.db/{name}"


def exists(spark: "SparkSession", cfg: Config, name: str) -> bool:
    from delta.tables import DeltaTable

    return DeltaTable.isDeltaTable(spark, table_path(cfg, name))


def read(spark: "SparkSession", cfg: Config, name: str, version: Optional[int] = None) -> "DataFrame":
    reader = spark.read.format("delta")
    if version is not None:
        reader = reader.option("versionAsOf", version)
    if not exists(spark, cfg, name):
        raise FileNotFoundError(
            f"table {full_name(cfg, name)} does not exist at {table_path(cfg, name)}; "
            "run the stage that writes it first (see `ebbtide --help`)"
        )
    return reader.load(table_path(cfg, name))


def version(spark: "SparkSession", cfg: Config, name: str) -> int:
    """The latest Delta version of a table (recorded as lineage by training and scoring)."""
    from delta.tables import DeltaTable

    return int(DeltaTable.forPath(spark, table_path(cfg, name)).history(1).collect()[0]["version"])


def num_files(spark: "SparkSession", cfg: Config, name: str) -> int:
    """Data files in the table's current snapshot (Delta's DESCRIBE DETAIL numFiles)."""
    from delta.tables import DeltaTable

    return int(DeltaTable.forPath(spark, table_path(cfg, name)).detail().first()["numFiles"])


def table_id(spark: "SparkSession", cfg: Config, name: str) -> str:
    """The table's Delta id (DESCRIBE DETAIL id): kept by every commit, new when the table is created
    again (a dropped folder, a REPLACE), so it tells a table whose versions started over."""
    from delta.tables import DeltaTable

    return str(DeltaTable.forPath(spark, table_path(cfg, name)).detail().first()["id"])


def parquet_files(spark: "SparkSession", cfg: Config, name: str, version: Optional[int] = None) -> list[str]:
    """The Parquet files of one Delta snapshot (what Petastorm reads), as URLs in the warehouse's
    scheme (file:, dbfs:, s3:, s3a:, abfss:...): open them with ebbtide.storage."""
    df = read(spark, cfg, name, version)
    return sorted(df.inputFiles())


def ensure_database(spark: "SparkSession", cfg: Config) -> None:
    spark.sql(f"CREATE DATABASE IF NOT EXISTS {cfg.storage.database}")


def register(spark: "SparkSession", cfg: Config, name: str) -> None:
    """Make a path table queryable by name; a no-op when the catalog already knows it."""
    spark.sql(
        f"CREATE TABLE IF NOT EXISTS {full_name(cfg, name)} USING DELTA LOCATION '{table_path(cfg, name)}'"
    )


# A committed Delta version: NNN.json, a checkpoint (classic, multi-part or v2), or a
# compacted log range. _staged_commits, .crc files and temp files are not commits.
_COMMITTED = re.compile(r"^\d+\.(json|checkpoint(\.[^/]+)?\.(parquet|json)|\d+\.compacted\.json)$")
# Table folders are plain identifiers; this also keeps `x.orphaned-...` folders out.
_TABLE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# A folder younger than this may be a table another process is creating right now (its
# _delta_log exists before its first commit): leave it be, and only skip registering it.
ORPHAN_GRACE_S = 60.0


def has_commit(folder: str, options: Optional[dict] = None) -> bool:
    """Whether a table folder's ``_delta_log`` holds a committed version (a local folder or a
    storage URL; ``options``: storage.options_from_spark)."""
    return any(_COMMITTED.match(name) for name, _ in storage.list_dir(storage.join(folder, "_delta_log"), options))


def _newest_mtime(folder: str) -> float:
    newest = os.path.getmtime(folder)
    for dirpath, dirnames, filenames in os.walk(folder):
        for n in dirnames + filenames:
            try:
                newest = max(newest, os.path.getmtime(os.path.join(dirpath, n)))
            except FileNotFoundError:
                pass
    return newest


def set_aside_if_orphaned(cfg: Config, name: str, grace_s: float = 0.0) -> Optional[str]:
    """Move a table folder that has a ``_delta_log`` but no committed version (a crash before
    the first commit) to ``<folder>.orphaned-<UTC time>``, with a warning; returns the new path.

    No version means the log references no file, so nothing in the folder is table data; it is
    moved, never deleted, so whatever a crashed writer left can still be inspected. A folder
    touched less than ``grace_s`` seconds ago is left alone (it may be a table being created).
    Only local warehouses are checked: on object stores creation is a single PUT of 0.json.
    """
    folder = storage.local_path(table_path(cfg, name))
    if folder is None or not os.path.isdir(os.path.join(folder, "_delta_log")) or has_commit(folder):
        return None
    if grace_s > 0 and time.time() - _newest_mtime(folder) < grace_s:
        return None
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    target, n = f"{folder}.orphaned-{stamp}", 1
    while os.path.exists(target):
        n += 1
        target = f"{folder}.orphaned-{stamp}-{n}"
    os.rename(folder, target)
    log.warning(
        "TABLE FOLDER SET ASIDE: %s has a _delta_log with no committed version (a writer crashed "
        "before the table's first commit), so it holds no table data; moved it to %s, and the stage "
        "that writes %s will create it again. Delete that folder once you have looked at it.",
        folder, target, full_name(cfg, name),
    )
    return target


def register_all(spark: "SparkSession", cfg: Config, grace_s: float = ORPHAN_GRACE_S) -> list[str]:
    """Register every Delta table found in the warehouse (the local catalog lives in memory).

    A folder without a committed version cannot be registered (Delta refuses a location with no
    transaction log), and failing here would stop every command: it is set aside instead (see
    :func:`set_aside_if_orphaned`), or skipped while it may still be in the making.
    """
    root = storage.join(cfg.path(cfg.storage.warehouse_dir), f"{cfg.storage.database}.db")
    # The warehouse may be on an object store (s3a://...): list it as Spark's files are opened.
    opts = storage.options_from_spark(spark)
    names = []
    for n, is_folder in storage.list_dir(root, opts):
        if not (is_folder and _TABLE_NAME.match(n)):
            continue
        folder = storage.join(root, n)
        log_dir = storage.join(folder, "_delta_log")
        log_entries = storage.list_dir(log_dir, opts)
        if not log_entries and not storage.exists(log_dir, opts):
            continue
        if not any(_COMMITTED.match(name) for name, _ in log_entries):
            if set_aside_if_orphaned(cfg, n, grace_s) is None:
                log.warning("not registering %s: its folder %s has no committed version yet (being "
                            "created by another process?); the stage that writes it recreates it",
                            full_name(cfg, n), folder)
            continue
        register(spark, cfg, n)
        names.append(n)
    return names


def write(
    df: "DataFrame",
    cfg: Config,
    name: str,
    mode: WriteMode,
    *,
    keys: Optional[Iterable[str]] = None,
    update_matched: bool = False,
    delete_unmatched: Optional[str] = None,
    merge_filter: Optional[str] = None,
    replace_scope: Optional["DataFrame"] = None,
    partition_by: Optional[Iterable[str]] = None,
    replace_where: Optional[str] = None,
    comment: Optional[str] = None,
    properties: Optional[dict[str, str]] = None,
    add_columns: bool = False,
    txn: Optional[tuple[str, int]] = None,
) -> None:
    """Write ``df`` to table ``name`` in one Delta commit. See the module doc for the modes.

    ``add_columns`` (replace_where / append): columns of ``df`` that the table lacks are added, at
    its end, in the same commit (Delta's mergeSchema), with the comments ``df``'s schema carries;
    rows written before read null there. Without it such a write fails, so a column is never added
    by accident. Only adding: a column the table has and ``df`` lacks still fails the write.

    ``delete_unmatched`` (merge only): a predicate on the target's columns, qualified by the
    target alias ``t`` (e.g. ``t.monitor_date = DATE'2025-03-10'``); target rows that match it and
    have no match in ``df`` are deleted in the same commit, so a rerun that writes a slice again
    with ``update_matched`` replaces that slice exactly (rows it no longer produces go).

    ``merge_filter`` (merge only): a predicate on the target's columns, qualified by ``t``, that
    every target row a source row can match satisfies (e.g. ``t.event_date BETWEEN DATE'2025-03-01'
    AND DATE'2025-03-03'`` when the source's rows all fall in those days and equal keys imply equal
    days). It is added to the match condition, so Delta reads only the files that can hold a match
    (partition pruning, min/max file skipping) instead of the whole table. A predicate that leaves
    out a row that does match would let its key be inserted twice: the caller vouches for it.
    With ``delete_unmatched`` too, a target row outside the filter matches nothing, so it is
    deleted whenever it satisfies ``delete_unmatched``: the filter must then take in every row of
    that slice that ``df`` keeps, wherever it lies.

    ``replace_scope`` (merge only): a DataFrame of scope keys (e.g. one ``user_id`` column, distinct).
    The target rows whose scope columns match one of its rows are replaced by ``df``'s: rows with
    a key in ``df`` are updated, new keys inserted, and the scope's other rows deleted, in one
    commit. The scope stays distributed (a join, not a list on the driver), so it can name
    millions of users; ``df`` must hold only rows inside the scope.

    ``properties`` (overwrite only): table properties that describe the rows, committed in the
    same commit as the rows (see :func:`_replace_with_properties`).

    ``txn`` (append only): ``(app_id, version)``, Delta's idempotent write (writer options
    ``txnAppId`` / ``txnVersion``). The commit records the pair in the table's log, and a later
    append with the same ``app_id`` and a ``version`` not above the recorded one commits nothing:
    a rerun of the same step (the same input version) after a crash, or a second run racing the
    first, cannot append the rows twice. ``version`` must grow with the input, so ``app_id`` must
    change whenever the input's versions start over (a recreated source table).
    """
    if mode not in ("overwrite", "append", "merge", "replace_where"):
        raise ValueError(f"unknown write mode {mode!r}")
    if mode == "merge" and not keys:
        raise ValueError("merge needs keys")
    if (delete_unmatched or merge_filter or replace_scope is not None) and mode != "merge":
        raise ValueError("delete_unmatched, merge_filter and replace_scope go with merge only")
    if replace_scope is not None and delete_unmatched:
        raise ValueError("replace_scope and delete_unmatched both delete a slice: give one")
    if mode == "replace_where" and not replace_where:
        raise ValueError("replace_where mode needs a predicate")
    if properties and mode != "overwrite":
        raise ValueError("properties go with overwrite only (one commit for the rows and what describes them)")
    if add_columns and mode not in ("replace_where", "append"):
        raise ValueError("add_columns goes with replace_where and append (overwrite replaces the schema anyway)")
    if txn is not None and mode != "append":
        raise ValueError("txn goes with append only")
    # Two runs writing the same slice at once (two `score` runs for one date): Delta lets the first
    # commit win and fails the other with a concurrent-modification error. Every mode but append
    # gives the same table when written again, so the loser writes again on the new snapshot
    # (last writer wins) instead of failing the run. So does an append with ``txn``: written again,
    # it commits nothing if the winner recorded the same transaction.
    for attempt in range(1, CONFLICT_ATTEMPTS + 1):
        try:
            _write_once(df, cfg, name, mode, keys, update_matched, partition_by, replace_where, comment, properties,
                        delete_unmatched, add_columns, merge_filter, replace_scope, txn)
            break
        except Exception as e:  # noqa: BLE001 - only Delta's concurrency errors are retried
            if (mode == "append" and txn is None) or attempt == CONFLICT_ATTEMPTS or not is_concurrent_write_error(e):
                raise
            log.warning("%s: another writer committed first (%s); writing again, attempt %d of %d",
                        full_name(cfg, name), _conflict_name(e), attempt + 1, CONFLICT_ATTEMPTS)
            time.sleep(random.uniform(0.2, 1.0) * attempt)
    log.info("wrote %s (%s)", full_name(cfg, name), mode)


# Delta's optimistic-concurrency failures (io.delta.exceptions / org.apache.spark.sql.delta).
_CONFLICTS = ("ConcurrentAppendException", "ConcurrentDeleteReadException", "ConcurrentDeleteDeleteException",
              "ConcurrentTransactionException", "ConcurrentWriteException", "MetadataChangedException",
              "ProtocolChangedException")
CONFLICT_ATTEMPTS = 5


def _conflict_name(e: BaseException) -> str:
    text = f"{type(e).__name__} {e}"
    return next((c for c in _CONFLICTS if c in text), type(e).__name__)


def is_concurrent_write_error(e: BaseException) -> bool:
    """Whether a write failed because another transaction committed to the table first."""
    text = f"{type(e).__name__} {str(e)[:2000]}"
    return any(c in text for c in _CONFLICTS)


def _write_once(df, cfg, name, mode, keys, update_matched, partition_by, replace_where, comment, properties,
                delete_unmatched=None, add_columns=False, merge_filter=None, replace_scope=None, txn=None) -> None:
    from delta.tables import DeltaTable

    spark = df.sparkSession
    path = table_path(cfg, name)
    parts = list(partition_by or [])
    is_new = not DeltaTable.isDeltaTable(spark, path)
    declared = _declared_properties(name)
    if is_new:
        set_aside_if_orphaned(cfg, name)
        _create(spark, path, df.schema, parts, comment, declared)
    elif declared:
        _ensure_properties(spark, path, declared)

    if mode == "merge":
        keys = list(keys or [])
        target = DeltaTable.forPath(spark, path)
        cond = " AND ".join(f"t.`{k}` <=> s.`{k}`" for k in keys)
        if merge_filter:
            cond = f"{cond} AND ({merge_filter})"
        if replace_scope is not None:
            _merge_replacing_scope(target, df, replace_scope, keys, cond)
            register(spark, cfg, name)
            return
        m = target.alias("t").merge(df.alias("s"), cond)
        if update_matched:
            m = m.whenMatchedUpdateAll()
        m = m.whenNotMatchedInsertAll()
        if delete_unmatched:
            m = m.whenNotMatchedBySourceDelete(delete_unmatched)
        m.execute()
    elif properties:
        _replace_with_properties(df, path, parts, {**declared, **properties}, comment)
    elif mode == "replace_where":
        w = _writer(df, "overwrite", parts)
        if not is_new:
            w = w.option("replaceWhere", replace_where)
        if add_columns:
            w = w.option("mergeSchema", "true")
        w.save(path)
    else:
        w = _writer(df, mode, parts)
        if mode == "overwrite":
            w = w.option("overwriteSchema", "true")
        elif add_columns:
            w = w.option("mergeSchema", "true")
        if txn is not None:
            app_id, txn_version = txn
            w = w.option("txnAppId", str(app_id)).option("txnVersion", str(int(txn_version)))
        w.save(path)

    register(spark, cfg, name)


# Marks the source rows of a scoped replace that delete their target row (never a table column).
_DELETE_FLAG = "__ebbtide_delete"


def _merge_replacing_scope(target, df: "DataFrame", scope: "DataFrame", keys: list[str], cond: str) -> None:
    """One MERGE that makes the target's rows inside ``scope`` equal to ``df`` (see :func:`write`).

    Delta's ``WHEN NOT MATCHED BY SOURCE`` condition may only name target columns, so it cannot
    say "in this scope". Instead the scope's stale rows (in the target, in the scope, key absent
    from ``df``) join the source as delete markers: every row the MERGE touches is then matched
    by exactly one source row, and the target is read by the same transaction that commits.
    """
    from pyspark.sql import functions as F

    scope_cols = list(scope.columns)
    stale = (
        target.toDF().join(scope, scope_cols, "left_semi")
        .join(df.select(*keys), keys, "left_anti")
        .select(*keys)
    )
    src = (
        df.withColumn(_DELETE_FLAG, F.lit(False))
        .unionByName(stale.withColumn(_DELETE_FLAG, F.lit(True)), allowMissingColumns=True)
    )
    values = {f"`{c}`": f"s.`{c}`" for c in df.columns}
    (
        target.alias("t").merge(src.alias("s"), cond)
        .whenMatchedDelete(condition=f"s.`{_DELETE_FLAG}`")
        .whenMatchedUpdate(set=values)
        .whenNotMatchedInsert(condition=f"NOT s.`{_DELETE_FLAG}`", values=values)
        .execute()
    )


def _declared_properties(name: str) -> dict[str, str]:
    """The table properties the catalog declares for ``name`` (none for a table it does not know)."""
    from ebbtide import catalog

    spec = catalog.TABLES.get(name)
    return spec.table_properties if spec is not None else {}


def _ensure_properties(spark: "SparkSession", path: str, wanted: dict[str, str]) -> None:
    """Give an existing table the declared properties it lacks (a table created before they were
    declared), in one metadata-only commit; nothing when it has them. Files written earlier keep
    the statistics they were written with."""
    from delta.tables import DeltaTable

    have = DeltaTable.forPath(spark, path).detail().select("properties").first()[0] or {}
    missing = {k: v for k, v in wanted.items() if have.get(k) != v}
    if missing:
        sets = ", ".join(f"{_sql_str(k)} = {_sql_str(v)}" for k, v in sorted(missing.items()))
        spark.sql(f"ALTER TABLE delta.`{path}` SET TBLPROPERTIES ({sets})")
        log.info("%s: set table properties %s", path, ", ".join(sorted(missing)))


def _create(spark: "SparkSession", path: str, schema, parts: list[str], comment: Optional[str],
            properties: Optional[dict[str, str]] = None) -> None:
    """Create an empty table in one metadata-only commit: no Spark job, no data file, so the table
    either exists (empty, with its comment and declared properties) or does not; the rows follow in
    their own commit."""
    from delta.tables import DeltaTable

    b = DeltaTable.createIfNotExists(spark).location(path).addColumns(_nullable(schema))
    if parts:
        b = b.partitionedBy(*parts)
    if comment:
        b = b.comment(comment)
    for k, v in sorted((properties or {}).items()):
        b = b.property(k, v)
    b.execute()


def _replace_with_properties(df: "DataFrame", path: str, parts: list[str], properties: dict[str, str],
                             comment: Optional[str]) -> None:
    """Overwrite the rows and set ``properties`` in ONE commit: a REPLACE TABLE AS SELECT.

    An overwrite followed by ``ALTER TABLE SET TBLPROPERTIES`` is two commits; a crash between them
    left the new rows described by the previous build's properties (gold_training_examples with
    the last run's split cut-offs). REPLACE writes the new metadata (schema, partitioning, comment,
    properties) and the rows together; history and time travel stay. Delta gives the replaced
    table a new table id and warns about it in the committing session: for a table that is
    rebuilt whole on every run that is expected, so those two warnings are held back here.
    """
    from pyspark.sql import functions as F

    w = df.writeTo(f"delta.`{path}`").using("delta")
    if parts:
        w = w.partitionedBy(*[F.col(c) for c in parts])
    for k, v in sorted(properties.items()):
        w = w.tableProperty(k, str(v))
    if comment:
        w = w.tableProperty("comment", comment)
    with _log_level(df.sparkSession, ("org.apache.spark.sql.delta.OptimisticTransaction",
                                      "org.apache.spark.sql.delta.DeltaLog"), "ERROR"):
        w.createOrReplace()
        # The session's next read of the table refreshes its snapshot, which warns the same way.
        df.sparkSession.read.format("delta").load(path).schema


class _log_level:
    """Temporarily set JVM log4j loggers to a level (local sessions; a no-op where unavailable)."""

    def __init__(self, spark: "SparkSession", names: Iterable[str], level: str):
        self.spark, self.names, self.level, self.saved = spark, list(names), level, {}

    def __enter__(self):
        try:
            jvm = self.spark.sparkContext._jvm
            lm = jvm.org.apache.logging.log4j.LogManager
            cfg = jvm.org.apache.logging.log4j.core.config.Configurator
            for n in self.names:
                self.saved[n] = lm.getLogger(n).getLevel()
                cfg.setLevel(n, jvm.org.apache.logging.log4j.Level.toLevel(self.level))
        except Exception:  # noqa: BLE001 - Spark Connect or another logging backend: leave levels alone
            self.saved = {}
        return self

    def __exit__(self, *exc):
        if self.saved:
            cfg = self.spark.sparkContext._jvm.org.apache.logging.log4j.core.config.Configurator
            for n, lvl in self.saved.items():
                cfg.setLevel(n, lvl)
        return False


def _nullable(schema):
    """The schema with every column nullable, as a DataFrame write would create it (a literal's
    non-null flag must not become a NOT NULL constraint of the table)."""
    import json

    from pyspark.sql.types import StructType

    def loosen(node):
        if isinstance(node, dict):
            return {k: (True if k in ("nullable", "containsNull", "valueContainsNull") else loosen(v))
                    for k, v in node.items()}
        if isinstance(node, list):
            return [loosen(v) for v in node]
        return node

    return StructType.fromJson(loosen(json.loads(schema.json())))


def _writer(df: "DataFrame", mode: str, parts: list[str]):
    w = df.write.format("delta").mode(mode)
    if parts:
        w = w.partitionBy(*parts)
    return w


def set_comments(
    spark: "SparkSession",
    cfg: Config,
    name: str,
    comment: Optional[str] = None,
    columns: Optional[dict[str, str]] = None,
) -> None:
    """Table and column comments, so analysts see what each column means in DESCRIBE."""
    fq = full_name(cfg, name)
    if comment:
        spark.sql(f"ALTER TABLE {fq} SET TBLPROPERTIES ('comment' = {_sql_str(comment)})")
    for col, text in (columns or {}).items():
        spark.sql(f"ALTER TABLE {fq} ALTER COLUMN `{col}` COMMENT {_sql_str(text)}")


def _sql_str(s: str) -> str:
    return "'" + s.replace("\\", "\\\\").replace("'", "\\'") + "'"
