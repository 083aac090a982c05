"""Shared fixtures: synthetic points from known laws, fake sweep directories, published data."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import yaml

from windtunnel.recipe import Recipe
from windtunnel.scaling.laws import chinchilla_optimal, chinchilla_predict

# Hoffmann et al.'s published Approach-3 values: a realistic surface to sample from.
CHINCHILLA_TRUE = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}
# ../shared/data beside the repository root; WINDTUNNEL_SHARED_DATA points elsewhere (e.g. from a worktree)
SHARED_DATA = Path(os.environ.get("WINDTUNNEL_SHARED_DATA") or
                   Path(__file__).resolve().parents[2].parent / "shared" / "data")


@pytest.fixture
def shared_data():
    """../shared/data next to the repo (absent in a user's clone: the test is skipped)."""
    if not SHARED_DATA.is_dir():
        pytest.skip("published scaling data not present at ../shared/data")
    return SHARED_DATA


def grid_points(noise: float = 0.0, seed: int = 0, true: dict = CHINCHILLA_TRUE):
    """6 model sizes x 5 tokens-per-parameter ratios, multiplicative log-normal noise."""
    rng = np.random.default_rng(seed)
    N = np.repeat(np.geomspace(1e7, 1e9, 6), 5)
    D = N * np.tile([5.0, 10.0, 20.0, 40.0, 80.0], 6)
    loss = chinchilla_predict(true, N, D) * np.exp(rng.normal(0.0, noise, len(N)))
    return N, D, loss


def isoflop_points(budgets=(1e17, 1e18, 1e19, 1e20), sizes: int = 9, spread: float = 4.0,
                   true: dict = CHINCHILLA_TRUE):
    """Per budget, `sizes` models log-spaced within a factor `spread` of the true optimum."""
    N, D = [], []
    for C in budgets:
        n_opt = chinchilla_optimal(true, C)[0]
        for f in np.geomspace(1 / spread, spread, sizes):
            N.append(n_opt * f)
            D.append(C / (6 * n_opt * f))
    N, D = np.array(N), np.array(D)
    return N, D, chinchilla_predict(true, N, D)


def base_recipe_dict(**model) -> dict:
    raw = {"model": {"vocab_size": 256, "d_model": 64, "n_layers": 2, "n_heads": 4, **model},
           "train": {"tokens": 100_000, "seq_len": 64, "batch_size": 4}, "out_dir": "runs/old"}
    return Recipe.from_dict(raw).to_dict()


def write_run(root: Path, name: str, N: float, D: float, loss: float, lr: float = 3e-3, batch: float = 65536,
              status: str = "completed", branches: list | None = None) -> Path:
    run = root / name
    run.mkdir(parents=True)
    summary = {"status": status, "final_train_loss": loss, "final_val_loss": loss, "params": N * 1.2,
               "non_embedding_params": N, "active_params": N * 1.2, "active_non_embedding_params": N,
               "tokens": D, "flops": 6 * N * D, "flops_per_token": 6 * N, "steps": 100, "wall_time_s": 1.0,
               "lr": lr, "batch_tokens": batch, "seq_len": 64, "branches": branches or []}
    (run / "summary.json").write_text(json.dumps(summary))
    (run / "recipe.yaml").write_text(yaml.safe_dump(base_recipe_dict()))
    return run


@pytest.fixture
def sweep_dir(tmp_path) -> Path:
    """A fake sweep: 6 sizes x 3 token counts, each with 2 WSD decay branches; one failed run."""
    root = tmp_path / "sweep"
    N_all, D_all, _ = grid_points()
    for i, (N, D) in enumerate(zip(N_all, D_all)):
        if i % 5 in (0, 2):  # the 5x and 20x runs become branches of the 10x / 40x / 80x runs
            continue
        branches = [{"tokens": D / 2, "val_loss": float(chinchilla_predict(CHINCHILLA_TRUE, N, D / 2)),
                     "flops": 3 * N * D}] if i % 5 != 4 else []
        write_run(root, f"run{i:02d}", N, D, float(chinchilla_predict(CHINCHILLA_TRUE, N, D)), branches=branches)
    write_run(root, "crashed", 5e8, 1e10, 9.9, status="failed")
    return root


def run_fit(argv: list[str]) -> int:
    """`windtunnel fit ARGV` through the real entry point and its error boundary (bad input: exit 2)."""
    from windtunnel.cli import main

    return main(["fit", *argv])
