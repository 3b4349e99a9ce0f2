"""spark-submit entry point for `ebbtide ingest`: `spark-submit jobs/ingest.py --help`."""
import sys

from ebbtide.cli import main

if __name__ == "__main__":
    sys.exit(main(["ingest", *sys.argv[1:]]))
