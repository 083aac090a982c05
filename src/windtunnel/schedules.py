"""Learning-rate schedules: pure functions of the optimizer step, usable with any optimizer.

`Schedule(...)(step)` gives the base LR for step `step` (0-based); each param group multiplies it by
its own `lr_mult` (muP), so schedules and parameterization compose.
- constant, cosine: the classics (warmup, then flat / half-cosine to min_lr).
- wsd: warmup-stable-decay (MiniCPM, Hu et al. 2024; River Valley, Wen et al. 2024) with a short final
  decay of shape linear, cosine or 1-sqrt (Hägele et al. 2024 find 1-sqrt best).
- power: Power Scheduler (Shen et al. 2024): lr = min(lr_max, batch * a * n^b) with n the tokens seen and
  batch the global batch in sequences, plus warmup and a final decay; agnostic to the token budget.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from .recipe import Recipe, ScheduleConfig


def decay_factor(progress: float, shape: str) -> float:
    """1 -> 0 as progress goes 0 -> 1."""
    p = min(max(progress, 0.0), 1.0)
    if shape == "linear":
        return 1.0 - p
    if shape == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * p))
    if shape == "1-sqrt":
        return 1.0 - math.sqrt(p)
    if shape == "exp":  # exponential to 1e-3 of the start, then snapped to 0 at the end
        return 0.0 if p >= 1.0 else 1e-3 ** p
    raise ValueError(f"unknown decay shape {shape!r}")


@dataclass(frozen=True)
class Schedule:
    cfg: ScheduleConfig
    peak_lr: float
    total_steps: int
    global_tokens_per_step: int = 1  # all processes together (power schedule)
    global_batch_seqs: int = 1  # sequences per optimizer step, all processes together (power schedule)

    @classmethod
    def from_recipe(cls, recipe: Recipe, world_size: int = 1, total_steps: int | None = None) -> "Schedule":
        t = recipe.train
        return cls(recipe.schedule, recipe.optim.lr, total_steps or recipe.total_steps(world_size),
                   recipe.global_tokens_per_step(world_size), t.batch_size * t.grad_accum * world_size)

    @property
    def warmup_steps(self) -> int:
        if self.cfg.warmup_steps is not None:
            return self.cfg.warmup_steps
        return int(self.cfg.warmup_frac * self.total_steps)

    def decay_steps(self) -> int:
        frac = {"wsd": self.cfg.wsd.decay_frac, "power": self.cfg.power.decay_frac}.get(self.cfg.name, 0.0)
        return int(round(frac * self.total_steps))

    def __call__(self, step: int) -> float:
        c, total = self.cfg, self.total_steps
        peak = self.power_lr(step) if c.name == "power" else self.peak_lr
        floor = c.min_lr_ratio * peak
        warm = self.warmup_steps
        if step < warm:
            return peak * (step + 1) / warm
        if c.name == "constant":
            return peak
        if c.name == "cosine":
            progress = (step - warm) / max(1, total - warm)
            return floor + (peak - floor) * decay_factor(progress, "cosine")
        decay = self.decay_steps()
        start = total - decay
        if step < start or decay == 0:
            return peak
        shape = c.wsd.decay_shape if c.name == "wsd" else c.power.decay_shape
        # Reach the floor on the last step: progress = 1 at step total-1.
        progress = (step - start + 1) / decay
        return floor + (peak - floor) * decay_factor(progress, shape)

    def power_lr(self, step: int) -> float:
        p = self.cfg.power
        tokens = max(1, step * self.global_tokens_per_step) if step >= self.warmup_steps else \
            max(1, self.warmup_steps * self.global_tokens_per_step)
        # During the final decay the LR decays from the value the power law had at the decay start.
        decay_start = self.total_steps - self.decay_steps()
        if self.cfg.name == "power" and step >= decay_start:
            tokens = max(1, decay_start * self.global_tokens_per_step)
        return min(p.lr_max, self.global_batch_seqs * p.a * tokens ** p.b)


def plot_schedule(recipe: Recipe, png: str, world_size: int = 1) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sched = Schedule.from_recipe(recipe, world_size)
    steps = list(range(sched.total_steps))
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.plot(steps, [sched(s) for s in steps])
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("learning rate (multiplier-1 groups)")
    ax.set_title(f"{recipe.schedule.name} schedule, {sched.total_steps} steps")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)
