"""The one SparkSession factory.

Embedded default: ``local[*]`` with Delta enabled from the jars that ``scripts/setup.sh``
cached, a warehouse folder, UTC everywhere, and every Delta table of the warehouse
registered by name in the catalog database, so ``ebbtide sql`` can SELECT them. On a
cluster (``spark.use_platform_session: true``) it adds no jars and takes the platform's
session, whose metastore already knows the tables.
"""
from __future__ import annotations

import glob
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from ebbtide.config import Config, ConfigError
from ebbtide.log import get_logger

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

log = get_logger("spark")

DELTA_EXTENSION = "io.delta.sql.DeltaSparkSessionExtension"
DELTA_CATALOG = "org.apache.spark.sql.delta.catalog.DeltaCatalog"


def _cached_jars(env: str, marker_name: str) -> list[str]:
    """The jars of a folder that setup.sh cached and named in ``<venv>/<marker_name>``; the
    environment variable ``env`` (a folder) overrides."""
    folder = os.environ.get(env)
    if not folder:
        marker = Path(sys.prefix) / marker_name
        if marker.exists():
            folder = marker.read_text().strip()
    return sorted(glob.glob(os.path.join(folder, "*.jar"))) if folder else []


def delta_jars() -> list[str]:
    """The Delta jars setup.sh cached; EBBTIDE_DELTA_JARS (a folder) overrides."""
    jars = _cached_jars("EBBTIDE_DELTA_JARS", "delta-jars.path")
    if not jars:
        raise ConfigError(
            "Delta jars not found: run `make setup` (scripts/setup.sh caches them), "
            "or set EBBTIDE_DELTA_JARS to a folder holding delta-spark_2.13 and delta-storage jars, "
            "or set spark.add_delta_jars: false on a platform that ships Delta"
        )
    return jars


def s3a_jars() -> list[str]:
    """hadoop-aws and the AWS SDK bundle for ``s3a://`` (pip's pyspark has Hadoop's client but not
    the s3a connector), as setup.sh cached them; EBBTIDE_S3A_JARS (a folder) overrides. Platforms
    (EMR, Databricks) ship their own; only a self-run cluster such as ``make cluster-test`` needs them."""
    jars = _cached_jars("EBBTIDE_S3A_JARS", "s3a-jars.path")
    if not any(os.path.basename(j).startswith("hadoop-aws-") for j in jars):
        raise ConfigError(
            "hadoop-aws jars not found: run `scripts/setup.sh --s3a` (`make cluster-test` does; it caches hadoop-aws and the AWS SDK "
            "bundle matching pyspark's Hadoop), or set EBBTIDE_S3A_JARS to a folder holding them"
        )
    return jars


def get_spark(cfg: Config) -> "SparkSession":
    from pyspark.sql import SparkSession

    sc = cfg.spark
    if sc.use_platform_session:
        spark = SparkSession.getActiveSession() or SparkSession.builder.getOrCreate()
    else:
        active = SparkSession.getActiveSession()
        if active is not None:
            spark = active
        else:
            os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
            os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
            b = (
                SparkSession.builder.master(sc.master)
                .appName(sc.app_name)
                .config("spark.sql.extensions", DELTA_EXTENSION)
                .config("spark.sql.catalog.spark_catalog", DELTA_CATALOG)
                .config("spark.sql.warehouse.dir", cfg.path(cfg.storage.warehouse_dir))
                .config("spark.sql.session.timeZone", "UTC")
                .config("spark.sql.shuffle.partitions", str(sc.shuffle_partitions))
                .config("spark.driver.memory", sc.driver_memory)
                .config("spark.ui.showConsoleProgress", "false")
                .config("spark.driver.extraJavaOptions", "-Duser.timezone=UTC")
                .config("spark.executor.extraJavaOptions", "-Duser.timezone=UTC")
                .config("spark.databricks.delta.snapshotPartitions", "2")
                .config("spark.sql.sources.parallelPartitionDiscovery.parallelism", "2")
            )
            if sc.add_delta_jars:
                b = b.config("spark.jars", ",".join(delta_jars()))
            for k, v in sc.conf.items():
                b = b.config(k, v)
            log.info("starting Spark %s (warehouse %s)", sc.master, cfg.path(cfg.storage.warehouse_dir))
            spark = b.getOrCreate()
            spark.sparkContext.setLogLevel("WARN")
    _quiet_query_context_loggers()
    from ebbtide import tables

    tables.ensure_database(spark, cfg)
    if not sc.use_platform_session:
        # The local catalog lives in memory: re-register tables and the analysts' views.
        from ebbtide.scoring.views import create_views

        tables.register_all(spark, cfg)
        create_views(spark, cfg.storage.database)
    return spark


def _quiet_query_context_loggers() -> None:
    """PySpark 4 logs every SQL error it raises, JVM stack included, as JSON on stderr. The error
    still reaches the caller, which reports it (the CLI as one line, with --debug its traceback),
    so the log would only repeat it as a wall of text."""
    import logging

    from pyspark.logger import PySparkLogger

    for name in ("SQLQueryContextLogger", "DataFrameQueryContextLogger"):
        # PySparkLogger.getLogger, not logging.getLogger: PySpark calls these loggers with
        # keyword arguments that only its own logger class accepts.
        PySparkLogger.getLogger(name).setLevel(logging.CRITICAL)


# Loggers that repeat a failed task's error, JVM stack and Python traceback included, while the
# same error also reaches the driver's caller as an exception.
FAILURE_ECHO_LOGGERS = (
    "org.apache.spark.executor.Executor",
    "org.apache.spark.scheduler.TaskSetManager",
    "org.apache.spark.storage.BlockManager",
    "org.apache.spark.sql.execution.streaming.MicroBatchExecution",
    "org.apache.spark.sql.execution.streaming.StreamExecution",
)


def quiet_failure_echoes(spark: "SparkSession") -> None:
    """Silence the loggers that echo a failure the caller reports anyway (the CLI does so in one
    line; it calls this for local sessions unless --debug)."""
    import logging

    jvm = spark.sparkContext._jvm
    off = jvm.org.apache.logging.log4j.Level.toLevel("OFF")
    for name in FAILURE_ECHO_LOGGERS:
        jvm.org.apache.logging.log4j.core.config.Configurator.setLevel(name, off)
    # py4j logs the traceback of a Python foreachBatch function that raised, then hands it on.
    logging.getLogger("py4j.clientserver").setLevel(logging.CRITICAL)
