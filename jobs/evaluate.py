"""spark-submit entry point for `ebbtide evaluate`: `spark-submit jobs/evaluate.py --help`."""
import sys

from ebbtide.cli import main

if __name__ == "__main__":
    sys.exit(main(["evaluate", *sys.argv[1:]]))
