"""Metrics: the one writer of metrics.jsonl, a tqdm progress bar, and wandb when enabled.

`MetricsLogger` is a trainer callback: it sums each step's loss and model metrics on the device and
reduces them to Python numbers only every logging.log_every steps (the one host sync of a log window).
Other pieces (evaluation, decay branches, spike events) write their rows through `log(row)`; rows that
are not part of the main run's step sequence pass `wandb=False` (wandb needs monotonic steps).
"""
from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .callbacks import Callback, TrainState
from .recipe import Recipe


class MetricsLogger(Callback):
    def __init__(self, run_dir: Path, recipe: Recipe, total_steps: int, enabled: bool):
        self.enabled, self.recipe, self.total_steps = enabled, recipe, total_steps
        self.path = run_dir / "metrics.jsonl"
        self.bar = self.wandb_run = None
        self._reset_window()

    # ------------------------------------------------------------------ sinks
    def log(self, row: dict, wandb: bool = True) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        if wandb and self.wandb_run is not None:
            self.wandb_run.log({k: v for k, v in row.items() if isinstance(v, (int, float))}, step=row["step"])
        if self.bar is not None and "loss" in row and "lr" in row:
            self.bar.set_postfix(loss=f"{row['loss']:.3f}", lr=f"{row['lr']:.2e}",
                                 tok_s=f"{row.get('tokens_per_s', 0):.0f}")
        if self.bar is not None and "val_loss" in row and wandb:
            self.bar.write(f"step {row['step']}: val_loss {row['val_loss']:.4f}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.wandb_run is not None:
            self.wandb_run.finish()
        self.bar = self.wandb_run = None

    # ------------------------------------------------------------------ hooks
    def pre_train(self, state: TrainState) -> None:
        if self.enabled:
            self.bar = tqdm(total=self.total_steps, initial=state.step, disable=not self.recipe.logging.progress,
                            dynamic_ncols=True, desc="train")
            if self.recipe.logging.wandb:
                self.wandb_run = start_wandb(self.recipe, state.run_dir)
        self._reset_window(tokens=state.tokens)

    def post_step(self, state: TrainState) -> None:
        self.loss_sum += state.loss
        for k, v in state.metrics.items():
            self.metric_sums[k] = self.metric_sums.get(k, 0) + v
        self.steps += 1
        state.row = None
        if state.step % self.recipe.logging.log_every == 0 or state.done:
            self.flush(state)
        if self.bar is not None:
            self.bar.update(1)

    def post_train(self, state: TrainState) -> None:
        if self.steps:  # a stopped run's last, partial window
            self.flush(state)

    def on_restore(self, state: TrainState) -> None:
        """The trainer loaded a checkpoint (resume or rewind): drop rows logged after it, restart the window."""
        if self.enabled:
            truncate_metrics(self.path, state.step)
            if self.bar is not None:
                self.bar.n = state.step
                self.bar.refresh()
        self._reset_window(tokens=state.tokens)

    # ------------------------------------------------------------------ rows
    def flush(self, state: TrainState) -> None:
        now = time.time()
        row = self.row(state, now - self.t_window)
        state.row = state.last_row = row
        if not math.isfinite(row["loss"]) and self.recipe.train.nan_policy == "halt":
            state.trainer.halt(state, f"step {state.step}: loss is {row['loss']} (train.nan_policy=halt)")
        self.log(row)
        self._reset_window(now, state.tokens)

    def row(self, state: TrainState, seconds: float) -> dict:
        trainer = state.trainer
        acc, world, n = trainer.accelerator, trainer.world, self.steps
        tokens_per_s = (state.tokens - self.tokens_before) / max(seconds, 1e-9)  # as trained, not as planned
        row = {"step": state.step, "tokens": state.tokens,
               "loss": float(acc.reduce(self.loss_sum.detach() / n, reduction="mean")), "lr": state.lr,
               "grad_norm": float(state.grad_norm), "tokens_per_s": tokens_per_s, "mfu": None}
        if trainer.flops_per_token and trainer.peak_flops:
            row["mfu"] = trainer.flops_per_token * tokens_per_s / world / trainer.peak_flops
        for k, v in self.metric_sums.items():
            row[k] = float(acc.reduce(v / n, reduction="mean"))
        row["mem_gb"] = memory_gb(acc.device)
        if state.skipped:
            row["skipped_steps"] = state.skipped
        return row

    def _reset_window(self, now: float | None = None, tokens: int = 0) -> None:
        self.loss_sum: torch.Tensor | float = 0.0
        self.metric_sums: dict = {}
        self.steps, self.t_window, self.tokens_before = 0, now or time.time(), tokens


def memory_gb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**30
    import psutil

    return psutil.Process().memory_info().rss / 2**30


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
