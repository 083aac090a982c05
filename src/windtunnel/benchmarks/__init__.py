"""Benchmarks, kept out of the library's import path: `windtunnel bench` (throughput.py, windtunnel vs
HF transformers) and the offload capacity probe (offload.py; `python scripts/bench_offload.py`).
Nothing in windtunnel imports this package; the CLI loads it on `windtunnel bench`."""
