"""Loss-spike detection and recovery (`train.spike_policy`), a trainer callback.

A step's loss is a spike when it lies more than `train.spike_threshold` standard deviations above its
running mean. Mean and variance are exponential moving averages (weight 1 - BETA per step) over the
steps that were not spikes; nothing is flagged during the first WARMUP steps (the early loss falls
faster than any running mean follows), and the standard deviation is floored at STD_FLOOR of the mean
so that a near-constant loss does not turn noise into spikes. Each spike is an event row in
metrics.jsonl: {"step" (the spike's), "event": "loss_spike", "spike_loss", "loss_mean", "loss_z",
"grad_norm", "action"}.

- log: the event only. Losses are read at log intervals, with the metrics row (no extra host sync).
- skip: also drop the spike step's update (counted in skipped_steps; over train.max_skips halts).
- rewind: reload the latest checkpoint and pass over the spike step's data and the spike_window - 1
  data steps after it, for good (PaLM, Chowdhery et al. 2022, Sec. 5.1, restarted about 100 steps
  before a spike and skipped 200-500 batches). The passed-over data steps live in the trainer state and
  its checkpoints, so a resumed run takes the same decisions; the event row names the checkpoint's step
  ("to_step"). Without a checkpoint yet the step is skipped instead. More than train.max_skips rewinds halt.
skip and rewind must decide before the update, so they read the loss every step: a host sync (and,
with several processes, an all-reduce) per step, as nan_policy=skip does.

At every log step the monitor also writes the update/grad-norm ratio, ||new params - old params|| /
||gradient||: Adam's update keeps its size when the gradient shrinks, the time-domain correlation that
Molybog et al. 2023 ("A Theory on Adam Instability in Large-Scale Machine Learning") find before
spikes. Measuring it keeps a copy of the parameters for that one step (not under DeepSpeed).
"""
from __future__ import annotations

import math

import torch

from . import checkpoint, distributed
from .callbacks import Callback, TrainState
from .recipe import Recipe

BETA = 0.95  # EMA weight of the past: about the last 20 steps
WARMUP = 10  # steps observed before any is flagged
STD_FLOOR = 0.01  # the standard deviation used is at least this fraction of the mean


class LossStats:
    """Exponentially weighted mean and variance of the loss (West 1979's incremental form)."""

    def __init__(self, mean: float = 0.0, var: float = 0.0, n: int = 0):
        self.mean, self.var, self.n = mean, var, n

    def z(self, loss: float) -> float:
        if not math.isfinite(loss):
            return math.inf
        return (loss - self.mean) / max(math.sqrt(self.var), STD_FLOOR * abs(self.mean), 1e-12)

    def is_spike(self, loss: float, threshold: float) -> bool:
        return self.n >= WARMUP and self.z(loss) > threshold

    def add(self, loss: float) -> None:
        if self.n == 0:
            self.mean = loss
        else:
            delta = loss - self.mean
            self.mean += (1 - BETA) * delta
            self.var = BETA * (self.var + (1 - BETA) * delta * delta)
        self.n += 1


class SpikeMonitor(Callback):
    def __init__(self, policy: str, threshold: float, window: int):
        self.policy, self.threshold, self.window = policy, threshold, window
        self.stats = LossStats()
        self.pending: list[tuple[int, torch.Tensor, torch.Tensor]] = []  # (step, loss, grad norm), log policy
        self.params_before: list[torch.Tensor] | None = None
        self.rewind_event: dict | None = None

    @classmethod
    def from_recipe(cls, recipe: Recipe) -> "SpikeMonitor | None":
        t = recipe.train
        return None if t.spike_policy == "off" else cls(t.spike_policy, t.spike_threshold, t.spike_window)

    # ------------------------------------------------------------------ hooks
    def pre_optim_step(self, state: TrainState) -> None:
        if self.policy != "log":
            self._decide(state)
        if is_log_step(state, state.step + 1) and not state.skip_update and not self._deepspeed(state):
            self.params_before = [p.detach().clone() for p in state.trainer.model.parameters()]

    def post_step(self, state: TrainState) -> None:
        if self.policy == "log":
            self.pending.append((state.step, state.loss, state.grad_norm))
        every = state.recipe.train.ckpt_every
        if is_log_step(state, state.step) or (every and state.step % every == 0):
            # at checkpoint steps too: a checkpoint holds statistics that include every step before it
            self._observe_pending(state)
        if is_log_step(state, state.step):
            self._log_update_ratio(state)

    def post_train(self, state: TrainState) -> None:
        self._observe_pending(state)

    def state_dict(self) -> dict:
        return {"mean": self.stats.mean, "var": self.stats.var, "n": self.stats.n}

    def load_state_dict(self, saved: dict) -> None:
        self.stats = LossStats(saved["mean"], saved["var"], saved["n"])
        self.pending = []

    # ------------------------------------------------------------------ decisions
    def _decide(self, state: TrainState) -> None:
        """skip / rewind: this step's loss, read now (a host sync per step)."""
        acc = state.trainer.accelerator
        loss = float(acc.reduce(state.loss.detach(), reduction="mean"))
        if not self.stats.is_spike(loss, self.threshold):
            self.stats.add(loss)
            return
        state.skip_update = True
        event = self._event(state.step + 1, loss, float(state.grad_norm), "skip")
        latest = checkpoint.latest_checkpoint(state.run_dir)
        if self.policy == "rewind" and latest is not None:
            rewinds = len(state.data_skips) // self.window + 1
            if rewinds > state.recipe.train.max_skips:
                state.trainer.halt(state, f"step {state.step + 1}: loss spike after {rewinds - 1} rewinds "
                                          f"(train.max_skips={state.recipe.train.max_skips})")
            window = [state.data_step(state.step + k) for k in range(self.window)]
            state.data_skips = sorted({*state.data_skips, *window})
            state.rewind_to = latest
            # written once the checkpoint is loaded (loading drops the rows logged after it)
            self.rewind_event = {**event, "action": "rewind", "to_step": int(latest.name.split("_")[-1])}
        else:
            state.trainer.metrics.log(event, wandb=False)

    def pre_step(self, state: TrainState) -> None:
        if self.rewind_event is not None:
            state.trainer.metrics.log(self.rewind_event, wandb=False)
            self.rewind_event = None

    def _observe_pending(self, state: TrainState) -> None:
        """log policy: the window's losses in one read, through the statistics in step order."""
        if not self.pending:
            return
        acc = state.trainer.accelerator
        steps = [s for s, _, _ in self.pending]
        losses = acc.reduce(torch.stack([loss.detach() for _, loss, _ in self.pending]), reduction="mean")
        norms = torch.stack([g for _, _, g in self.pending])
        self.pending = []
        for step, loss, norm in zip(steps, losses.tolist(), norms.tolist()):
            if self.stats.is_spike(loss, self.threshold):
                state.trainer.metrics.log(self._event(step, loss, norm, "log"), wandb=False)
            else:
                self.stats.add(loss)

    def _event(self, step: int, loss: float, grad_norm: float, action: str) -> dict:
        return {"step": step, "event": "loss_spike", "spike_loss": loss, "loss_mean": self.stats.mean,
                "loss_z": self.stats.z(loss), "grad_norm": grad_norm, "action": action}

    # ------------------------------------------------------------------ update size
    def _log_update_ratio(self, state: TrainState) -> None:
        before, self.params_before = self.params_before, None
        if before is None:
            return
        deltas = [p.detach() - b for p, b in zip(state.trainer.model.parameters(), before)]
        update = float(distributed.full_tensor(torch.nn.utils.get_total_norm(deltas)))
        grad = float(state.grad_norm)
        state.trainer.metrics.log({"step": state.step, "update_norm": update,
                                   "update_grad_ratio": update / grad if grad > 0 else None})

    @staticmethod
    def _deepspeed(state: TrainState) -> bool:
        return distributed.is_deepspeed(state.trainer.accelerator)


def is_log_step(state: TrainState, steps_done: int) -> bool:
    return steps_done % state.recipe.logging.log_every == 0 or steps_done >= state.total_steps
