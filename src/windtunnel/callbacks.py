"""Trainer extension points: `Callback` hooks and the `TrainState` they read.

    class PrintLoss(Callback):
        def post_step(self, state):
            if state.row:                      # a metrics row was logged at this step
                print(state.step, state.row["loss"])

    Trainer(recipe, callbacks=[PrintLoss()]).fit()

One optimizer step, and where each hook runs (`Trainer.fit`):

    pre_train                      once, after setup (and after a resume has loaded its checkpoint)
    loop while state.step < total_steps and not state.should_stop:
      pre_step                     state.step = steps done so far; WSD decay branches run here
      forward + backward           (grad_accum micro-batches)
      clip                         state.loss, state.grad_norm, state.metrics hold device tensors
      pre_optim_step               set state.skip_update to drop this step's update
      optimizer.step, zero_grad
      post_step                    state.step += 1; metrics row, eval, user callbacks, checkpoint
        on_eval                    after an evaluation (state.val_loss)
        on_checkpoint              after a checkpoint is complete on disk (state.checkpoint)
    on_restore                     after a checkpoint was loaded into the run (resume, spike rewind)
    post_train                     once; then summary.json

The built-in pieces are callbacks too: decay branches, spike detection, the metrics logger and
evaluation run before user callbacks, checkpointing after them (so a checkpoint holds every callback's
state after the step). Setting `state.should_stop = True` ends the run after the
current step: the last metrics window is logged, a checkpoint is written when train.ckpt_every > 0, and
summary.json says "stopped". A callback that keeps state across a resume returns it from `state_dict()`
(JSON-able) and gets it back in `load_state_dict()`; it is stored in the checkpoint's trainer_state.json.

Reading `state.loss` / `state.grad_norm` as numbers is a host-device sync: do it at log steps
(`state.row is not None`) unless a per-step decision needs it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .trainer import Trainer

HOOKS = ("pre_train", "pre_step", "pre_optim_step", "post_step", "on_eval", "on_checkpoint", "on_restore",
         "post_train")


@dataclass
class TrainState:
    """The public state of a run. Callbacks read it; they write only the three flags at the end."""

    trainer: "Trainer" = field(repr=False)
    step: int = 0  # optimizer steps done (in post_step: including the one just taken)
    tokens: int = 0  # global tokens trained on
    skipped: int = 0  # steps whose update was dropped (nan_policy=skip, spike_policy=skip)
    data_skips: list[int] = field(default_factory=list)  # data steps never trained on (spike rewinds)
    lr: float = 0.0  # base LR of the current step (each param group scales it by its lr_mult)
    loss: Any = None  # current step's mean loss, a device tensor
    grad_norm: Any = None  # current step's gradient norm before clipping, a device tensor
    metrics: dict = field(default_factory=dict)  # current step's model metrics, device tensors
    row: dict | None = None  # the metrics row logged at this step (plain numbers), else None
    last_row: dict | None = None  # the latest training metrics row
    val_loss: float | None = None  # the latest validation loss
    checkpoint: Path | None = None  # the latest checkpoint written by this run
    should_stop: bool = False  # set to end the run gracefully after this step
    skip_update: bool = False  # set in pre_optim_step to drop this step's update (reset every step)
    rewind_to: Path | None = None  # set in pre_optim_step to reload this checkpoint instead of this step

    # handles, for callbacks that need them
    @property
    def recipe(self):
        return self.trainer.recipe

    @property
    def run_dir(self) -> Path:
        return self.trainer.run_dir

    @property
    def total_steps(self) -> int:
        return self.trainer.total_steps

    @property
    def done(self) -> bool:
        return self.step >= self.trainer.total_steps

    def data_step(self, step: int) -> int:
        """The data position trained at optimizer step `step`: steps listed in data_skips are passed over."""
        for skipped in self.data_skips:  # sorted
            if skipped <= step:
                step += 1
        return step

    def to_dict(self) -> dict:
        """What a checkpoint keeps (trainer_state.json)."""
        return {"step": self.step, "tokens": self.tokens, "skipped": self.skipped, "data_skips": self.data_skips}

    def load(self, saved: dict) -> None:
        self.step, self.tokens, self.skipped = saved["step"], saved["tokens"], saved["skipped"]
        self.data_skips = sorted(saved.get("data_skips", []))


class Callback:
    """Override the hooks you need; each gets the TrainState (the trainer is `state.trainer`)."""

    def pre_train(self, state: TrainState) -> None: ...
    def pre_step(self, state: TrainState) -> None: ...
    def pre_optim_step(self, state: TrainState) -> None: ...

    def post_step(self, state: TrainState) -> None:
        self.on_step_end(state.trainer, state.step, state.row)

    def on_eval(self, state: TrainState) -> None: ...
    def on_checkpoint(self, state: TrainState) -> None: ...
    def on_restore(self, state: TrainState) -> None: ...
    def post_train(self, state: TrainState) -> None: ...

    def on_step_end(self, trainer: "Trainer", step: int, row: dict | None) -> None:
        """Older hook, still called from the default post_step: (trainer, steps done, row or None)."""

    def summary(self, state: TrainState) -> dict:
        """Entries this callback adds to summary.json at the end of the run."""
        return {}

    def state_dict(self) -> dict | None:
        return None

    def load_state_dict(self, state: dict) -> None: ...


class Evaluator(Callback):
    """Validation loss every train.eval_every steps and at the end. For a data mixture also each source's
    (val_loss/<name>); the run's val_loss is then their plain mean, the same target whatever the weights."""

    def __init__(self):
        self.by_source: dict[str, float] = {}

    def post_step(self, state: TrainState) -> None:
        if state.step % state.recipe.train.eval_every and not state.done:
            return
        val, by_source = evaluate_run(state.trainer)
        if val is None:
            return
        state.val_loss, self.by_source = val, by_source
        row = {"step": state.step, "tokens": state.tokens, "val_loss": val}
        state.trainer.metrics.log({**row, **{f"val_loss/{n}": v for n, v in by_source.items()}})
        state.trainer.emit("on_eval", state)

    def summary(self, state: TrainState) -> dict:
        from .data.mixture import mixture_record

        data = state.trainer.data
        extra = mixture_record(data.train, state.step, state.trainer.world) if data is not None else {}
        return {**extra, "val_loss_by_source": self.by_source} if self.by_source else extra


def evaluate_run(trainer: "Trainer") -> tuple[float | None, dict[str, float]]:
    """(val loss, {source: val loss}); the second is empty unless the run trains on a data mixture."""
    from .data.mixture import evaluate_sources

    by_source = evaluate_sources(trainer)
    if by_source:
        return sum(by_source.values()) / len(by_source), by_source
    return trainer.evaluate(), {}


class Checkpointer(Callback):
    """A checkpoint every train.ckpt_every steps, at the end, and on a graceful stop (when ckpt_every > 0)."""

    def __init__(self):
        self.saved_at: int | None = None

    def post_step(self, state: TrainState) -> None:
        every = state.recipe.train.ckpt_every
        if (every and state.step % every == 0) or state.done:
            state.trainer.save_checkpoint(state)

    def on_checkpoint(self, state: TrainState) -> None:
        self.saved_at = state.step

    def post_train(self, state: TrainState) -> None:
        if state.should_stop and state.recipe.train.ckpt_every and self.saved_at != state.step:
            state.trainer.save_checkpoint(state)
