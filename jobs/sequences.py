"""spark-submit entry point for `ebbtide sequences`: `spark-submit jobs/sequences.py --help`."""
import sys

from ebbtide.cli import main

if __name__ == "__main__":
    sys.exit(main(["sequences", *sys.argv[1:]]))
