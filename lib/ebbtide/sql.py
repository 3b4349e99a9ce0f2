"""`ebbtide sql`: run SQL against the catalog, where every ebbtide table is registered by name."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("query", nargs="?", help="SQL text; unqualified table names resolve in the ebbtide database")
    p.add_argument("-f", "--file", help="a .sql file of ';'-separated statements")
    p.add_argument("--limit", type=int, default=50, help="rows shown per query (default 50)")


def split_statements(text: str) -> list[str]:
    """';'-separated statements, with `--` comment lines dropped."""
    lines = [ln for ln in text.splitlines() if not ln.strip().startswith("--")]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]


def run(ctx, args) -> dict:
    if not args.query and not args.file:
        raise ValueError("give a query, e.g. ebbtide sql \"SHOW TABLES\", or -f FILE.sql")
    text = Path(args.file).read_text() if args.file else args.query
    spark = ctx.spark
    spark.catalog.setCurrentDatabase(ctx.cfg.storage.database)
    rows = 0
    for stmt in split_statements(text):
        df = spark.sql(stmt)
        print(f"-- {stmt.splitlines()[0][:100]}", file=sys.stderr)
        df.show(args.limit, truncate=False)
        rows += 1
    return {"statements": rows}
