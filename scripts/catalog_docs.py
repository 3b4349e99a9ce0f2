"""Write what derives from the table specs in lib/ebbtide/catalog.py: docs/tables.md, and the
CREATE TABLE statements of deploy/sql/01_score_tables.sql (the comment lines above them are kept).

    .venv/bin/python scripts/catalog_docs.py           # write both
    .venv/bin/python scripts/catalog_docs.py --check   # write nothing; exit 1 when either differs

tests/unit/test_catalog.py fails while either file differs from what the specs render.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "lib"))

from ebbtide import catalog  # noqa: E402

DOCS = ROOT / "docs" / "tables.md"
DDL = ROOT / "deploy" / "sql" / "01_score_tables.sql"


def rendered() -> dict[Path, str]:
    """Each generated file and the text it should hold."""
    ddl = DDL.read_text()
    head = ddl[: ddl.index("CREATE TABLE")] if "CREATE TABLE" in ddl else ddl
    return {DOCS: catalog.render_markdown(), DDL: head + catalog.create_tables_sql(catalog.SCORE_TABLES)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="write nothing; exit 1 when a file differs from the specs")
    args = p.parse_args(argv)
    stale = []
    for path, text in rendered().items():
        if path.exists() and path.read_text() == text:
            continue
        stale.append(path.relative_to(ROOT))
        if not args.check:
            path.write_text(text)
    verb = "differs from the specs" if args.check else "written"
    for path in stale:
        print(f"{path}: {verb}")
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
