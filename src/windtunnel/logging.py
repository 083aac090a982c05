"""Metrics sinks: metrics.jsonl in the run dir, a tqdm progress bar, and wandb when enabled.

Rows arrive already reduced to Python numbers (the trainer syncs only at log intervals).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from tqdm.auto import tqdm

from .recipe import Recipe


class MetricsLogger:
    def __init__(self, run_dir: Path, recipe: Recipe, total_steps: int, start_step: int, enabled: bool):
        self.enabled = enabled
        self.path = run_dir / "metrics.jsonl"
        self.bar = None
        self.wandb_run = None
        if not enabled:
            return
        self.bar = tqdm(total=total_steps, initial=start_step, disable=not recipe.logging.progress,
                        dynamic_ncols=True, desc="train")
        if recipe.logging.wandb:
            self.wandb_run = start_wandb(recipe, run_dir)

    def log(self, row: dict) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        if self.wandb_run is not None:
            self.wandb_run.log({k: v for k, v in row.items() if isinstance(v, (int, float))}, step=row["step"])
        if self.bar is not None and "loss" in row:
            self.bar.set_postfix(loss=f"{row['loss']:.3f}", lr=f"{row['lr']:.2e}",
                                 tok_s=f"{row.get('tokens_per_s', 0):.0f}")
        if self.bar is not None and "val_loss" in row:
            self.bar.write(f"step {row['step']}: val_loss {row['val_loss']:.4f}")

    def advance(self, steps: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(steps)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.wandb_run is not None:
            self.wandb_run.finish()


def truncate_metrics(path: Path, last_step: int) -> None:
    """On resume, drop rows a killed run logged after its last checkpoint (they will be redone)."""
    if not path.exists():
        return
    keep = [line for line in path.read_text().splitlines()
            if line.strip() and json.loads(line).get("step", 0) <= last_step]
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(line + "\n" for line in keep))
    os.replace(tmp, path)


def start_wandb(recipe: Recipe, run_dir: Path):
    """wandb offline when no API key is configured (it would raise otherwise); never blocks a run."""
    import wandb

    mode = os.environ.get("WANDB_MODE")
    if mode is None and not os.environ.get("WANDB_API_KEY"):
        mode = "offline"
    return wandb.init(project=recipe.logging.wandb_project, name=recipe.logging.run_name or run_dir.name,
                      dir=str(run_dir), config=recipe.to_dict(), mode=mode, resume="allow")
