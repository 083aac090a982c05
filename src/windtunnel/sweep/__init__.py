"""Proxy sweeps: sweep files -> planned runs (plan.py), model-size families (families.py), local and
Slurm executors with resumable bookkeeping (executors.py), and `windtunnel sweep` (cli.py).
Format and behaviour: docs/sweeps.md."""
