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
    """';'-separated statements; `--` comments dropped; ';' and '--' inside quotes kept."""
    out, cur, quote, i = [], [], None, 0
    while i < len(text):
        ch = text[i]
        if quote:
            cur.append(ch)
            if ch == "\\" and i + 1 < len(text):
                cur.append(text[i + 1])
                i += 1
            elif ch == quote:
                quote = None
        elif ch in ("'", '"', "`"):
            quote = ch
            cur.append(ch)
        elif text.startswith("--", i):
            nl = text.find("\n", i)
            i = len(text) if nl < 0 else nl
            continue
        elif ch == ";":
            out.append("".join(cur).strip())
            cur = []
        else:
            cur.append(ch)
        i += 1
    out.append("".join(cur).strip())
    return [s for s in out if s]


def run(ctx, args) -> dict:
    if not args.query and not args.file:
        raise ValueError("give a query, e.g. ebbtide sql \"SHOW TABLES\", or -f FILE.sql")
    text = Path(args.file).read_text() if args.file else args.query
    spark = ctx.spark
    # USE takes a schema and a Unity Catalog catalog.schema alike.
    spark.sql(f"USE {ctx.cfg.storage.database}")
    rows = 0
    for stmt in split_statements(text):
        df = spark.sql(stmt)
        print(f"-- {stmt.splitlines()[0][:100]}", file=sys.stderr)
        df.show(args.limit, truncate=False)
        rows += 1
    return {"statements": rows}
