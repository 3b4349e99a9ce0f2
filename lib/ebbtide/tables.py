"""The one place that reads and writes ebbtide's Delta tables.

Tables live at ``{warehouse}/{database}.db/{name}`` and are registered in the catalog under
``{database}.{name}``. Every write goes through :func:`write`, whose modes are all
idempotent for the same input:

- ``overwrite``: replace the whole table (one atomic Delta commit);
- ``replace_where``: replace exactly the rows matching a predicate, e.g. one score date;
- ``merge``: insert rows whose ``keys`` are new (and optionally update matched rows);
- ``append``: only for logs whose rows carry a run id (ops tables).
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING, Iterable, Literal, Optional

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


def parquet_files(spark: "SparkSession", cfg: Config, name: str, version: Optional[int] = None) -> list[str]:
    """The Parquet files of one Delta snapshot (what Petastorm reads), as file:// URLs."""
    df = read(spark, cfg, name, version)
    return sorted(df.inputFiles())


def ensure_database(spark: "SparkSession", cfg: Config) -> None:
    spark.sql(f"CREATE DATABASE IF NOT EXISTS {cfg.storage.database}")


def register(spark: "SparkSession", cfg: Config, name: str) -> None:
    """Make a path table queryable by name; a no-op when the catalog already knows it."""
    spark.sql(
        f"CREATE TABLE IF NOT EXISTS {full_name(cfg, name)} USING DELTA LOCATION '{table_path(cfg, name)}'"
    )


def register_all(spark: "SparkSession", cfg: Config) -> list[str]:
    """Register every Delta table found in the warehouse (the local catalog lives in memory)."""
    root = f"{cfg.path(cfg.storage.warehouse_dir)}/{cfg.storage.database}.db"
    if not os.path.isdir(root):
        return []
    names = sorted(
        d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d, "_delta_log"))
    )
    for n in names:
        register(spark, cfg, n)
    return names


def write(
    df: "DataFrame",
    cfg: Config,
    name: str,
    mode: WriteMode,
    *,
    keys: Optional[Iterable[str]] = None,
    update_matched: bool = False,
    partition_by: Optional[Iterable[str]] = None,
    replace_where: Optional[str] = None,
    comment: Optional[str] = None,
) -> None:
    """Write ``df`` to table ``name`` in one Delta commit. See the module doc for the modes."""
    from delta.tables import DeltaTable

    spark = df.sparkSession
    path = table_path(cfg, name)
    parts = list(partition_by or [])
    is_new = not DeltaTable.isDeltaTable(spark, path)

    if mode == "merge":
        keys = list(keys or [])
        if not keys:
            raise ValueError("merge needs keys")
        if is_new:
            # An empty create first, so that the MERGE below is the one commit holding rows.
            _writer(df.limit(0), "overwrite", parts).save(path)
        target = DeltaTable.forPath(spark, path)
        cond = " AND ".join(f"t.`{k}` <=> s.`{k}`" for k in keys)
        m = target.alias("t").merge(df.alias("s"), cond)
        if update_matched:
            m = m.whenMatchedUpdateAll()
        m.whenNotMatchedInsertAll().execute()
    elif mode == "replace_where":
        if not replace_where:
            raise ValueError("replace_where mode needs a predicate")
        w = _writer(df, "overwrite", parts)
        if not is_new:
            w = w.option("replaceWhere", replace_where)
        w.save(path)
    elif mode in ("overwrite", "append"):
        w = _writer(df, mode, parts)
        if mode == "overwrite":
            w = w.option("overwriteSchema", "true")
        w.save(path)
    else:
        raise ValueError(f"unknown write mode {mode!r}")

    register(spark, cfg, name)
    if comment and is_new:
        set_comments(spark, cfg, name, comment)
    log.info("wrote %s (%s)", full_name(cfg, name), mode)


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
