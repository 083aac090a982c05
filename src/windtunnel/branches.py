"""WSD decay branches: several (N, D, loss) points from one training run.

A warmup-stable-decay run can stop its stable phase anywhere and decay: the loss after a short decay
matches a run planned for that length (Hägele et al. 2024, "Scaling Laws and Compute-Optimal Training
Beyond Fixed Training Durations"; MiniCPM, Hu et al. 2024). For each `schedule.wsd.branches` token count
D (S = D / global batch tokens steps), when the main run reaches step S - round(decay_frac * S) the
trainer snapshots model, optimizer and RNG state (accelerate save_state, so every strategy works), trains
the decay steps with the LR of a WSD schedule of S steps (same warmup, same shape), evaluates, records
{"tokens", "val_loss", "flops", "step"}, restores the snapshot and continues the main run unchanged.
Branch results survive a kill: they are kept in <run>/branches.json and not redone on resume.
"""
from __future__ import annotations

import dataclasses
import json
import math
import shutil
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from .optim import set_lr
from .recipe import RecipeError
from .schedules import Schedule

if TYPE_CHECKING:
    from .trainer import Trainer

RESULTS_FILE = "branches.json"
SNAPSHOT_DIR = ".branch_snapshot"


@dataclass(frozen=True)
class Branch:
    tokens: int  # requested token count
    start_step: int  # main-run step at which the decay starts
    end_step: int  # optimizer steps of the branch (its length as a standalone run)


def plan_branches(main: Schedule, tokens_per_step: int) -> list[Branch]:
    """The branches of a run, checked against its schedule (one-line RecipeError on bad values)."""
    cfg = main.cfg
    if not cfg.wsd.branches:
        return []
    if cfg.name != "wsd":
        raise RecipeError(f"schedule.wsd.branches: decay branches need schedule.name=wsd, got {cfg.name}")
    out: dict[int, Branch] = {}
    for tokens in cfg.wsd.branches:
        end = round(tokens / tokens_per_step)
        decay = round(cfg.wsd.decay_frac * end)
        if end >= main.total_steps:
            raise RecipeError(f"schedule.wsd.branches: {tokens} tokens is not before the end of the run "
                              f"({main.total_steps * tokens_per_step} tokens)")
        if decay < 1:
            raise RecipeError(f"schedule.wsd.branches: {tokens} tokens leaves no decay step "
                              f"(decay_frac={cfg.wsd.decay_frac}, {tokens_per_step} tokens per step)")
        if end - decay < main.warmup_steps:
            raise RecipeError(f"schedule.wsd.branches: {tokens} tokens would start decaying at step "
                              f"{end - decay}, inside the warmup ({main.warmup_steps} steps)")
        out.setdefault(end, Branch(tokens=tokens, start_step=end - decay, end_step=end))
    return sorted(out.values(), key=lambda b: b.end_step)


def branch_schedule(main: Schedule, branch: Branch) -> Schedule:
    """The main schedule for a horizon of branch.end_step steps, keeping the main run's warmup."""
    cfg = dataclasses.replace(main.cfg, warmup_steps=main.warmup_steps)
    return dataclasses.replace(main, cfg=cfg, total_steps=branch.end_step)


class BranchRunner:
    """Owned by the Trainer for one fit(); `maybe_run(step)` is called at the top of each main step."""

    def __init__(self, trainer: "Trainer", start_step: int):
        self.trainer = trainer
        self.tokens_per_step = trainer.recipe.tokens_per_step * trainer.world
        self.plans = plan_branches(trainer.schedule, self.tokens_per_step)
        self.path = trainer.run_dir / RESULTS_FILE
        self.results: list[dict] = json.loads(self.path.read_text()) if start_step and self.path.exists() else []
        done = {r["step"] for r in self.results}
        self.pending = {b.start_step: b for b in self.plans if b.end_step not in done and b.start_step >= start_step}

    def maybe_run(self, step: int) -> None:
        branch = self.pending.pop(step, None)
        if branch is None:
            return
        t, acc = self.trainer, self.trainer.accelerator
        snapshot = t.run_dir / SNAPSHOT_DIR
        if acc.is_main_process:
            shutil.rmtree(snapshot, ignore_errors=True)
        acc.wait_for_everyone()
        acc.save_state(str(snapshot), safe_serialization=True)
        main_iter = getattr(t, "_user_iter", None)
        try:
            self._record(branch, self._decay(branch))
        finally:
            if main_iter is not None:
                t._user_iter = main_iter
            acc.load_state(str(snapshot))
            acc.wait_for_everyone()
            if acc.is_main_process:
                shutil.rmtree(snapshot, ignore_errors=True)

    def _decay(self, branch: Branch) -> tuple[float | None, float]:
        """Train the decay steps; returns (val loss, mean train loss of the last log window)."""
        t = self.trainer
        if t.data is None:  # user batches: a fresh iterator, positioned as a standalone run would be
            t._user_iter = iter(t._user_batches(branch.start_step * t.recipe.train.grad_accum))
        sched = branch_schedule(t.schedule, branch)
        log_every = t.recipe.logging.log_every
        window: list[torch.Tensor] = []
        for step in range(branch.start_step, branch.end_step):
            lr = sched(step)
            set_lr(t.optimizer, lr)
            loss, _ = t._train_step(step)
            t._clip()
            t.optimizer.step()
            t.after_optimizer_step()  # e.g. MoE aux-free bias updates, as in the main loop
            t.optimizer.zero_grad(set_to_none=True)
            window.append(loss)
            if (step + 1) % log_every == 0 or step + 1 == branch.end_step:
                train_loss = float(acc_mean(t, torch.stack(window).mean()))
                self._write_row({"step": step + 1, "tokens": (step + 1) * self.tokens_per_step,
                                 "branch_tokens": branch.end_step * self.tokens_per_step,
                                 "loss": train_loss, "lr": lr})
                window = []
        return t.evaluate(), train_loss

    def _record(self, branch: Branch, losses: tuple[float | None, float]) -> None:
        t = self.trainer
        val, train = (None if x is None or not math.isfinite(x) else x for x in losses)
        tokens = branch.end_step * self.tokens_per_step
        per_token = _flops_per_token(t)
        result = {"tokens": tokens, "val_loss": val, "flops": per_token * tokens if per_token else None,
                  "step": branch.end_step, "train_loss": train, "decay_start_step": branch.start_step}
        self.results = sorted([*self.results, result], key=lambda r: r["tokens"])
        self._write_row({"step": branch.end_step, "tokens": tokens, "branch_tokens": tokens, "val_loss": val})
        if t.accelerator.is_main_process:
            self.path.write_text(json.dumps(self.results, indent=2))

    def _write_row(self, row: dict) -> None:
        # Straight to metrics.jsonl, not through MetricsLogger: wandb needs monotonic steps.
        if self.trainer.accelerator.is_main_process:
            with (self.trainer.run_dir / "metrics.jsonl").open("a") as f:
                f.write(json.dumps(row) + "\n")


def acc_mean(trainer: "Trainer", value: torch.Tensor) -> torch.Tensor:
    return trainer.accelerator.reduce(value.detach().float(), reduction="mean")


def _flops_per_token(trainer: "Trainer") -> float | None:
    from .accounting import flops_per_token

    if not trainer.model_config_known:
        return None
    return flops_per_token(trainer.recipe.model, trainer.recipe.train.seq_len)
