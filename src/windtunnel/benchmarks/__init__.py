"""Benchmarks, kept out of the library's import path (nothing in windtunnel imports this package; the
CLI loads it on `windtunnel bench`): throughput.py times windtunnel against HF transformers and
report.py writes its table; offload.py finds the largest model per memory strategy
(`python scripts/bench_offload.py`)."""
