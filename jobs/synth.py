"""spark-submit entry point for `ebbtide synth`: `spark-submit jobs/synth.py --help`."""
import sys

from ebbtide.cli import main

if __name__ == "__main__":
    sys.exit(main(["synth", *sys.argv[1:]]))
