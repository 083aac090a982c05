"""WSD decay branches: several (N, D, loss) points from one training run.

A warmup-stable-decay run can stop its stable phase anywhere and decay: the loss after a short decay
matches a run planned for that length (Hägele et al. 2024, "Scaling Laws and Compute-Optimal Training
Beyond Fixed Training Durations"; MiniCPM, Hu et al. 2024). For each `schedule.wsd.branches` token count
D (S = D / global tokens per step), when the main run reaches step S - round(decay_frac * S) the
`DecayBranches` callback snapshots model, optimizer and RNG state (accelerate save_state, so every
strategy works), trains the decay steps with the LR of a WSD schedule of S steps (same warmup, same
shape) through the trainer's own train_step, evaluates, records {"tokens", "val_loss", "flops",
"step"}, restores the snapshot and continues the main run unchanged. With a data mixture the branch's decay
steps read `schedule.wsd.decay_mix` (data/mixture.py) and its record holds that mix and each source's
val loss, so the fitter can tell branches with different mixes apart.
Branch results survive a kill: they are kept in <run>/branches.json and not redone on resume.
"""
from __future__ import annotations

import dataclasses
import json
import math
import shutil
from dataclasses import dataclass

import torch

from .callbacks import Callback, TrainState, evaluate_run
from .data.mixture import decay_phase, mixture_record
from .recipe import Recipe, RecipeError
from .schedules import Schedule

RESULTS_FILE = "branches.json"
SNAPSHOT_DIR = ".branch_snapshot"


@dataclass(frozen=True)
class Branch:
    tokens: int  # requested token count
    start_step: int  # main-run step at which the decay starts
    end_step: int  # optimizer steps of the branch (its length as a standalone run)


def plan_branches(main: Schedule, global_tokens_per_step: int) -> list[Branch]:
    """The branches of a run, checked against its schedule (one-line RecipeError on bad values)."""
    cfg = main.cfg
    if not cfg.wsd.branches:
        return []
    if cfg.name != "wsd":
        raise RecipeError(f"schedule.wsd.branches: decay branches need schedule.name=wsd, got {cfg.name}")
    out: dict[int, Branch] = {}
    for tokens in cfg.wsd.branches:
        end = round(tokens / global_tokens_per_step)
        decay = round(cfg.wsd.decay_frac * end)
        if end >= main.total_steps:
            raise RecipeError(f"schedule.wsd.branches: {tokens} tokens is not before the end of the run "
                              f"({main.total_steps * global_tokens_per_step} tokens)")
        if decay < 1:
            raise RecipeError(f"schedule.wsd.branches: {tokens} tokens leaves no decay step "
                              f"(decay_frac={cfg.wsd.decay_frac}, {global_tokens_per_step} tokens per step)")
        if end - decay < main.warmup_steps:
            raise RecipeError(f"schedule.wsd.branches: {tokens} tokens would start decaying at step "
                              f"{end - decay}, inside the warmup ({main.warmup_steps} steps)")
        out.setdefault(end, Branch(tokens=tokens, start_step=end - decay, end_step=end))
    return sorted(out.values(), key=lambda b: b.end_step)


def branch_schedule(main: Schedule, branch: Branch) -> Schedule:
    """The main schedule for a horizon of branch.end_step steps, keeping the main run's warmup."""
    cfg = dataclasses.replace(main.cfg, warmup_steps=main.warmup_steps)
    return dataclasses.replace(main, cfg=cfg, total_steps=branch.end_step)


class DecayBranches(Callback):
    """Runs each planned branch when the main run reaches its start step (pre_step), then restores."""

    def __init__(self, schedule: Schedule, recipe: Recipe, world: int):
        self.main_schedule = schedule
        self.global_tokens_per_step = recipe.global_tokens_per_step(world)
        self.plans = plan_branches(schedule, self.global_tokens_per_step)
        self.results: list[dict] = []
        self.pending: dict[int, Branch] = {}

    @classmethod
    def from_recipe(cls, recipe: Recipe, schedule: Schedule, world: int) -> "DecayBranches | None":
        """None when the recipe asks for no branches."""
        return cls(schedule, recipe, world) if recipe.schedule.wsd.branches else None

    def pre_train(self, state: TrainState) -> None:
        path = state.run_dir / RESULTS_FILE
        self.results = json.loads(path.read_text()) if state.step and path.exists() else []
        done = {r["step"] for r in self.results}
        self.pending = {b.start_step: b for b in self.plans if b.end_step not in done and b.start_step >= state.step}

    def pre_step(self, state: TrainState) -> None:
        branch = self.pending.pop(state.step, None)
        if branch is None:
            return
        acc = state.trainer.accelerator
        snapshot = state.run_dir / SNAPSHOT_DIR
        if acc.is_main_process:
            shutil.rmtree(snapshot, ignore_errors=True)
        acc.wait_for_everyone()
        acc.save_state(str(snapshot), safe_serialization=True)
        try:
            with decay_phase(getattr(state.trainer.data, "train", None), branch.start_step):
                self._record(state, branch, self._decay(state, branch))
        finally:
            acc.load_state(str(snapshot))
            acc.wait_for_everyone()
            if acc.is_main_process:
                shutil.rmtree(snapshot, ignore_errors=True)

    def _decay(self, main: TrainState, branch: Branch) -> tuple[float | None, float, dict]:
        """Train the decay steps on a copy of the state; returns (val loss, mean train loss of the last window,
        mixture fields of the record)."""
        t = main.trainer
        state = dataclasses.replace(main, data_skips=list(main.data_skips), row=None)
        schedule = branch_schedule(self.main_schedule, branch)
        log_every = t.recipe.logging.log_every
        window: list[torch.Tensor] = []
        while state.step < branch.end_step:
            t.train_step(state, schedule, hooks=False)  # the main loop's step, without the callbacks
            window.append(state.loss)
            if state.step % log_every == 0 or state.step == branch.end_step:
                train_loss = float(t.accelerator.reduce(torch.stack(window).mean(), reduction="mean"))
                t.metrics.log({"step": state.step, "tokens": state.tokens,
                               "branch_tokens": branch.end_step * self.global_tokens_per_step,
                               "loss": train_loss, "lr": state.lr}, wandb=False)
                window = []
        val, by_source = evaluate_run(t)
        mix = mixture_record(getattr(t.data, "train", None), branch.end_step, t.world).get("mixture")
        extra = {"mix": mix["decay_mix"] or mix["weights"], "val_loss_by_source": by_source} if mix else {}
        return val, train_loss, extra

    def _record(self, state: TrainState, branch: Branch, outcome: tuple[float | None, float, dict]) -> None:
        t = state.trainer
        val, train = (None if x is None or not math.isfinite(x) else x for x in outcome[:2])
        tokens = branch.end_step * self.global_tokens_per_step
        per_token = t.flops_per_token
        result = {"tokens": tokens, "val_loss": val, "flops": per_token * tokens if per_token else None,
                  "step": branch.end_step, "train_loss": train, "decay_start_step": branch.start_step, **outcome[2]}
        self.results = sorted([*self.results, result], key=lambda r: r["tokens"])
        t.metrics.log({"step": branch.end_step, "tokens": tokens, "branch_tokens": tokens, "val_loss": val},
                      wandb=False)
        if t.accelerator.is_main_process:
            (state.run_dir / RESULTS_FILE).write_text(json.dumps(self.results, indent=2))
