"""spark-submit entry point for `ebbtide sessionize`: `spark-submit jobs/sessionize.py --help`."""
import sys

from ebbtide.cli import main

if __name__ == "__main__":
    sys.exit(main(["sessionize", *sys.argv[1:]]))
