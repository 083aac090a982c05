"""Offload capacity benchmark: `python scripts/bench_offload.py -h` (windtunnel.benchmarks.offload)."""
import sys

from windtunnel.benchmarks.offload import main

if __name__ == "__main__":
    sys.exit(main())
