"""spark-submit entry point for `ebbtide score`: `spark-submit jobs/score.py --help`."""
import sys

from ebbtide.cli import main

if __name__ == "__main__":
    sys.exit(main(["score", *sys.argv[1:]]))
