"""spark-submit entry point for `ebbtide sql`: `spark-submit jobs/sql.py --help`."""
import sys

from ebbtide.cli import main

if __name__ == "__main__":
    sys.exit(main(["sql", *sys.argv[1:]]))
