"""A table as a job wrote it, against its spec in ebbtide.catalog: column names and order, Spark
types, column comments, partition columns, table comment, and no null where the spec says none."""
from __future__ import annotations

from ebbtide import catalog, tables


def assert_matches_spec(spark, cfg, name: str, *, nulls: bool = True) -> None:
    from delta.tables import DeltaTable
    from pyspark.sql import functions as F

    spec = catalog.spec(name)
    df = tables.read(spark, cfg, name)
    got = [(f.name, f.dataType.simpleString()) for f in df.schema.fields]
    want = [(c.name, catalog.simple_string(c.type)) for c in spec.columns]
    assert got == want, f"{name}: columns and types differ from ebbtide.catalog"
    comments = {f.name: f.metadata.get("comment") for f in df.schema.fields}
    assert comments == spec.comments, f"{name}: column comments differ from ebbtide.catalog"
    detail = DeltaTable.forPath(spark, tables.table_path(cfg, name)).detail().first()
    assert list(detail["partitionColumns"]) == list(spec.partition_by), name
    assert detail["description"] == spec.comment, name
    required = [c.name for c in spec.columns if not c.nullable]
    if nulls and required:
        row = df.agg(*[F.count(F.when(F.col(c).isNull(), 1)).alias(c) for c in required]).first()
        assert not any(row), f"{name}: nulls in columns the spec says never hold one: " \
                             f"{[c for c in required if row[c]]}"
