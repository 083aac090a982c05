"""Throughput benchmark, windtunnel vs HF transformers: `python scripts/bench.py -h` (= `windtunnel bench`)."""
import sys

from windtunnel.benchmarks.throughput import main

if __name__ == "__main__":
    sys.exit(main(prog="python scripts/bench.py"))
