"""spark-submit entry point for `ebbtide train`: `spark-submit jobs/train.py --help`."""
import sys

from ebbtide.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
