"""The training loop on accelerate: step, eval, checkpoint, resume, metrics.

    summary = Trainer(Recipe.load("recipes/smoke.yaml")).fit()

Own pieces can replace the built-in ones: `Trainer(recipe, model=..., train_data=..., val_data=...,
callbacks=[...])`. A model may return a loss tensor, logits [B, T, V], or {"loss", "metrics"}.
Everything around the step (metrics, evaluation, checkpoints, WSD decay branches, loss-spike handling)
is a `Callback` (callbacks.py documents the hooks and the order they run in).
Host-device syncs happen only at log / eval / checkpoint steps (and every step with nan_policy=skip or
spike_policy=skip|rewind).
"""
from __future__ import annotations

import inspect
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from . import accounting, checkpoint, distributed, rundir
from .branches import DecayBranches
from .callbacks import Callback, Checkpointer, Evaluator, TrainState
from .compile import apply_compile
from .distributed import build_accelerator
from .metrics import MetricsLogger
from .optim import set_lr
from .recipe import Recipe, RecipeError
from .schedules import Schedule
from .spikes import SpikeMonitor

__all__ = ["Callback", "TrainState", "Trainer", "TrainingHalted"]


class TrainingHalted(RuntimeError):
    """The run cannot go on: a non-finite loss under nan_policy=halt, or more skipped steps or spike
    rewinds than train.max_skips (the last good checkpoint is kept)."""


class Trainer:
    def __init__(self, recipe: Recipe, *, model: nn.Module | None = None, train_data: Iterable | None = None,
                 val_data: Iterable | None = None, callbacks: Iterable[Callback] = (),
                 out_dir: str | Path | None = None, resume: bool = False):
        self.recipe = recipe
        self.user_callbacks = list(callbacks)
        self.resume = resume
        self.run_dir = Path(out_dir or recipe.out_dir or "runs/run")
        if recipe.train.threads:
            torch.set_num_threads(recipe.train.threads)
        self.accelerator = build_accelerator(recipe)
        self.world = self.accelerator.num_processes
        self.rank = self.accelerator.process_index
        self._user_model, self._user_val = model, val_data
        self.data = self.tokenizer = None
        if train_data is None:
            self._build_data()
        self.recipe = self._resolve(recipe)
        self.total_steps = self.recipe.total_steps(self.world)
        self.schedule = Schedule.from_recipe(self.recipe, self.world, self.total_steps)
        # planned now: a branch the run cannot take is refused before the run directory is touched
        self.branches = DecayBranches.from_recipe(self.recipe, self.schedule, self.world)
        self.batches = TrainBatches(self, train_data)

    # ------------------------------------------------------------------ the loop
    def fit(self) -> dict:
        """Train to the end. summary.json records every ending: completed / stopped / halted / failed."""
        self.run = rundir.RunDirectory(self.accelerator, self.run_dir)
        resume_from = self.run.open(self.recipe, self.resume)  # lock and resume checks, then recipe.yaml
        state = None
        try:
            state = self._setup(resume_from)
            self.emit("pre_train", state)
            while state.step < self.total_steps and not state.should_stop:
                self.emit("pre_step", state)
                self.train_step(state)
                if state.rewind_to is not None:  # a callback asked to redo training from a checkpoint
                    self.restore(state, state.rewind_to)
                    continue
                self.emit("post_step", state)
            self.emit("post_train", state)
            return self._finish(state)
        except TrainingHalted:
            raise  # halt() wrote the summary
        except Exception as e:
            self.run.finish({"status": rundir.FAILED, "error": (str(e) or type(e).__name__).splitlines()[0],
                             "steps": state.step if state else 0})
            raise
        finally:
            self.run.close()

    def train_step(self, state: TrainState, schedule: Callable[[int], float] | None = None,
                   hooks: bool = True) -> None:
        """One optimizer step at state.step (LR from `schedule`, default the run's); advances the state.
        hooks=False leaves out the pre_optim_step callbacks (a decay branch's steps are not the run's)."""
        state.lr = (schedule or self.schedule)(state.step)
        set_lr(self.optimizer, state.lr)
        state.loss, state.metrics = self.forward_backward(state.data_step(state.step))
        self.optimizer_step(state, hooks)
        state.step += 1
        state.tokens += self.step_tokens

    def forward_backward(self, data_step: int) -> tuple[torch.Tensor, dict]:
        """Gradients of one step's grad_accum micro-batches; returns the mean loss and metrics (on the device)."""
        ga = self.recipe.train.grad_accum
        total = torch.zeros((), device=self.accelerator.device)
        metrics: dict[str, torch.Tensor] = {}
        tokens = 0
        for micro in range(ga):
            x, y = self._split(self.batches.get(data_step, micro))
            tokens += self._count(y)
            sync = micro == ga - 1
            with distributed.no_sync(self.accelerator, self.model, sync):
                with self.accelerator.autocast():
                    loss, m = self._forward(x, y)
                distributed.backward(self.accelerator, self.model, loss / ga, sync)
            total += loss.detach().float() / ga
            for k, v in m.items():
                metrics[k] = metrics.get(k, 0) + v.detach().float() / ga
        # ranks train on batches of one shape (the sampler's, or a user's split of one global batch)
        self.step_tokens = tokens * self.world
        return total, metrics

    def _count(self, targets: torch.Tensor) -> int:
        """Target tokens of a micro-batch from its shape (host ints: no sync); FLOPs follow its length."""
        if targets.shape[-1] != self.seq_len and self._user_model is None:
            self.flops_per_token = accounting.flops_per_token(self.recipe.model, targets.shape[-1])
        self.seq_len = targets.shape[-1]
        return targets.numel()

    def optimizer_step(self, state: TrainState, hooks: bool = True) -> None:
        """clip -> nan_policy=skip check -> pre_optim_step hooks -> optimizer.step -> model hook -> zero_grad."""
        r = self.recipe.train
        state.grad_norm = distributed.grad_norm(self.accelerator, self.model, r.clip)
        state.skip_update = False
        # nan_policy=skip decides every step, so it syncs every step
        if r.nan_policy == "skip" and not torch.isfinite(state.loss + state.grad_norm).item():
            state.skip_update = True
        elif hooks:
            self.emit("pre_optim_step", state)
        if state.skip_update and state.rewind_to is None:  # a rewind is counted by its callback
            state.skipped += 1
            self.skips_in_a_row += 1
            if self.skips_in_a_row > r.max_skips:
                self.halt(state, f"step {state.step + 1}: {self.skips_in_a_row} steps in a row skipped "
                                 f"(train.nan_policy={r.nan_policy}, train.max_skips={r.max_skips})")
        elif not state.skip_update:
            self.skips_in_a_row = 0
        if not state.skip_update:
            self.optimizer.step()
            self.after_optimizer_step()
        self.optimizer.zero_grad(set_to_none=True)

    def after_optimizer_step(self) -> None:
        """Model hook outside the gradient (e.g. MoE aux-free bias updates): `model.after_optimizer_step()`."""
        hook = getattr(self.accelerator.unwrap_model(self.model), "after_optimizer_step", None)
        if hook is not None:
            hook()

    def emit(self, hook: str, state: TrainState) -> None:
        for cb in self.callbacks:
            getattr(cb, hook)(state)

    # ------------------------------------------------------------------ setup
    def _build_data(self) -> None:
        from .data import build_data, build_tokenizer

        with self.accelerator.main_process_first():
            self.tokenizer = build_tokenizer(self.recipe)
            self.data = build_data(self.recipe, self.tokenizer)

    def _resolve(self, recipe: Recipe) -> Recipe:
        """Fill in what the recipe leaves to the data: vocab size and RoPE length."""
        m = recipe.model
        vocab = m.vocab_size or (self.tokenizer.vocab_size if self.tokenizer else 0)
        if not vocab and self._user_model is None:
            raise RecipeError("model.vocab_size: must be set when train_data is passed without a tokenizer")
        model = replace(m, vocab_size=vocab, max_seq_len=m.max_seq_len or recipe.train.seq_len)
        return replace(recipe, model=model)

    def _setup(self, resume_from: Path | None) -> TrainState:
        from .models import build_model

        acc, r = self.accelerator, self.recipe
        torch.manual_seed(r.train.seed)
        model = self._user_model if self._user_model is not None else build_model(r.model)
        self._call_with_targets = "targets" in inspect.signature(model.forward).parameters
        # distributed: activation checkpointing + CPU FSDP2 before the optimizer sees the parameters
        model = distributed.wrap_model(model, r, acc)
        optimizer = distributed.build_optimizer(model, r, acc)
        if r.train.compile:
            model = apply_compile(model, r)
        self.model, self.optimizer = distributed.prepare(acc, model, optimizer, r)
        # FLOPs are known for the models the recipe builds; a user's module may be anything
        known = self._user_model is None
        self.flops_per_token = accounting.flops_per_token(r.model, r.train.seq_len) if known else None
        self.seq_len, self.step_tokens, self.skips_in_a_row = r.train.seq_len, 0, 0  # as trained (_count)
        self.peak_flops = accounting.peak_flops(torch.cuda.get_device_name() if acc.device.type == "cuda" else None,
                                                r.logging.peak_tflops)
        self.metrics = MetricsLogger(self.run_dir, r, self.total_steps, acc.is_main_process)
        # the checkpoint comes last, so that it holds every callback's state after the step
        first = [SpikeMonitor.from_recipe(r), self.branches, self.metrics, Evaluator()]
        self.callbacks = [cb for cb in first if cb is not None] + self.user_callbacks + [Checkpointer()]
        state = TrainState(self)
        if resume_from is not None:
            self.restore(state, resume_from)
        self.model.train()
        self.t_start = time.time()
        return state

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self, state: TrainState) -> Path:
        """Collective. Halts instead when a parameter is non-finite (the last good checkpoint is kept)."""
        bad = torch.tensor(0.0, device=self.accelerator.device)
        for p in self.model.parameters():
            bad += (~torch.isfinite(distributed.local_tensor(p.detach()))).sum()
        if float(self.accelerator.reduce(bad, reduction="sum")) > 0:
            self.halt(state, f"step {state.step}: parameters are non-finite (train.nan_policy=halt)")
        saved = state.to_dict()
        kept = {type(cb).__name__: cb.state_dict() for cb in self.callbacks}
        saved["callbacks"] = {name: value for name, value in kept.items() if value is not None}
        # a first checkpoint's size, for the free-space check: weights, two Adam moments and a spare copy
        estimate = 4 * sum(p.numel() * p.element_size() for p in self.model.parameters())
        state.checkpoint = checkpoint.save_checkpoint(self.accelerator, self.run_dir, state.step, saved,
                                                      self.recipe.train.keep_ckpts, estimate)
        self.emit("on_checkpoint", state)
        return state.checkpoint

    def restore(self, state: TrainState, path: Path) -> None:
        """Load a checkpoint into the run (an older intact one when it cannot be loaded, with a warning),
        keeping the data windows already decided to skip."""
        decided = state.data_skips
        path, saved = checkpoint.load_newest_intact(self.accelerator, self.run_dir, path, self.recipe.train.seed)
        state.load(saved)
        state.data_skips = sorted(set(state.data_skips) | set(decided))
        state.checkpoint, state.rewind_to = path, None
        for cb in self.callbacks:
            kept = saved.get("callbacks", {}).get(type(cb).__name__)
            if kept is not None:
                cb.load_state_dict(kept)
        self.emit("on_restore", state)

    # ------------------------------------------------------------------ batches
    def _split(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(batch, dict):
            x = batch["input_ids"]
            y = batch.get("labels")
            batch = x if y is None else (x, y)
        if isinstance(batch, (tuple, list)):
            return self._to_device(batch[0]), self._to_device(batch[1])
        seq = self._to_device(batch)  # [B, T+1]: one host-to-device copy, sliced on the device
        if seq is batch:
            return seq[:, :-1], seq[:, 1:]
        return seq[:, :-1].contiguous(), seq[:, 1:].contiguous()

    def _to_device(self, t: torch.Tensor) -> torch.Tensor:
        """On CUDA, copy from pinned host memory: only then is non_blocking asynchronous."""
        dev = self.accelerator.device
        if dev.type == "cuda" and t.device.type == "cpu" and not t.is_pinned():
            t = t.pin_memory()
        return t.to(dev, non_blocking=True)

    def _val_batches(self) -> list:
        if self.data is not None:
            return self.data.val.batches(self.recipe.train.eval_batches, self.rank, self.world)
        return list(self._user_val) if self._user_val is not None else []

    # ------------------------------------------------------------------ forward
    def _forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict]:
        out = self.model(x, targets=y) if self._call_with_targets else self.model(x)
        if isinstance(out, dict):
            return out["loss"], out.get("metrics", {})
        if out.dim() == 0:
            return out, {}
        ce = F.cross_entropy(out.float().reshape(-1, out.size(-1)), y.reshape(-1))
        return ce, {}

    @torch.no_grad()
    def evaluate(self, batches: list | None = None) -> float | None:
        """Mean validation loss over `batches` (default: the run's validation batches)."""
        batches = self._val_batches() if batches is None else batches
        if not batches:
            return None
        self.model.eval()
        total = torch.zeros((), device=self.accelerator.device)
        for batch in batches:
            x, y = self._split(batch)
            with self.accelerator.autocast():
                loss, metrics = self._forward(x, y)
            total += metrics.get("ce", loss).float()
        self.model.train()
        mean = self.accelerator.reduce(total / len(batches), reduction="mean")
        return float(mean)

    # ------------------------------------------------------------------ the end
    def halt(self, state: TrainState, why: str) -> None:
        """Stop the run as halted: summary.json says why and names the newest intact checkpoint."""
        last = checkpoint.newest_intact(self.run_dir) if self.accelerator.is_main_process else None
        msg = f"{why}; last good checkpoint: {checkpoint.main_value(self.accelerator, str(last or 'none'))}"
        self.metrics.close()
        self.run.finish({"status": rundir.HALTED, "error": msg, "steps": state.step})
        raise TrainingHalted(msg)

    def _finish(self, state: TrainState) -> dict:
        self.metrics.close()
        r, train_loss = self.recipe, (state.last_row or {}).get("loss")
        if state.last_row is None and self.accelerator.is_main_process:  # resumed after its last step
            train_loss = rundir.last_logged(self.run_dir, "loss", state.step)
        if state.val_loss is None and state.done:  # e.g. killed after the last checkpoint, before the summary
            state.val_loss = self.evaluate()
        summary = {"status": "completed" if state.done else "stopped",
                   "final_train_loss": float("nan") if train_loss is None else train_loss,
                   "final_val_loss": state.val_loss, "tokens": state.tokens, "steps": state.step,
                   "wall_time_s": time.time() - self.t_start, "lr": r.optim.lr,
                   "batch_tokens": state.tokens // state.step if state.step else r.global_tokens_per_step(self.world),
                   "seq_len": self.seq_len, "skipped_steps": state.skipped, "branches": self._branch_results()}
        if state.data_skips:
            summary["data_skips"] = state.data_skips
        for cb in (cb for cb in self.callbacks if hasattr(cb, "summary")):  # e.g. a mixture's per-source losses
            summary.update(cb.summary(state))
        if self.flops_per_token is not None:
            c = accounting.count_params(r.model)
            summary.update(params=c.total, non_embedding_params=c.non_embedding, active_params=c.active,
                           active_non_embedding_params=c.active_non_embedding,
                           flops_per_token=self.flops_per_token, flops=self.flops_per_token * state.tokens)
        else:
            summary["params"] = sum(p.numel() for p in self.model.parameters())
        self.run.finish(summary)  # strict JSON: a non-finite loss is written as null
        self.accelerator.wait_for_everyone()
        return summary

    def _branch_results(self) -> list[dict]:
        return next((cb.results for cb in self.callbacks if isinstance(cb, DecayBranches)), [])


class TrainBatches:
    """Training batches by data step: the sampler's (a pure function of the step), or the user's iterable
    read in order, cycled, and re-read from its start when a decay branch or a rewind goes back."""

    def __init__(self, trainer: Trainer, user_data: Iterable | None):
        self.trainer, self.user_data = trainer, user_data
        self._iter, self._next = None, 0

    def get(self, data_step: int, micro: int):
        t = self.trainer
        if self.user_data is None:
            return t.data.train.batch(data_step, micro, t.rank, t.world)
        index = data_step * t.recipe.train.grad_accum + micro
        if self._iter is None or index < self._next:
            self._iter, self._next = self._cycle(), 0
        while self._next < index:
            next(self._iter)
            self._next += 1
        self._next += 1
        return next(self._iter)

    def _cycle(self):
        while True:
            yield from self.user_data
