"""spark-submit entry point for `ebbtide monitor`: `spark-submit jobs/monitor.py --help`."""
import sys

from ebbtide.cli import main

if __name__ == "__main__":
    sys.exit(main(["monitor", *sys.argv[1:]]))
