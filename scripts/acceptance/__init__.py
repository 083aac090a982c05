"""Pieces of scripts/gpu_acceptance.py: the plan, the per-step code run in child processes, the report."""
