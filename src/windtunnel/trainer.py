"""The training loop on accelerate: step, eval, checkpoint, resume, metrics.

    summary = Trainer(Recipe.load("recipes/smoke.yaml")).fit()

Own pieces can replace the built-in ones: `Trainer(recipe, model=..., train_data=..., val_data=...,
callbacks=[...])`. A model may return a loss tensor, logits [B, T, V], or {"loss", "metrics"}.
Host-device syncs happen only at log / eval / checkpoint steps (and every step with nan_policy=skip).
"""
from __future__ import annotations

import inspect
import json
import math
import time
from dataclasses import replace
from pathlib import Path
from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from . import accounting, checkpoint, distributed
from .branches import BranchRunner
from .compile import apply_compile
from .distributed import build_accelerator
from .logging import MetricsLogger, truncate_metrics
from .optim import set_lr
from .recipe import Recipe, RecipeError
from .schedules import Schedule


class TrainingHalted(RuntimeError):
    """Raised when the loss goes non-finite under nan_policy=halt (the last good checkpoint is kept)."""


class Callback:
    """Override any of these; each gets the trainer and plain Python values."""

    def on_step_end(self, trainer: "Trainer", step: int, row: dict | None) -> None: ...
    def on_eval(self, trainer: "Trainer", step: int, val_loss: float) -> None: ...
    def on_checkpoint(self, trainer: "Trainer", step: int, path: Path) -> None: ...


class Trainer:
    def __init__(self, recipe: Recipe, *, model: nn.Module | None = None, train_data: Iterable | None = None,
                 val_data: Iterable | None = None, callbacks: Iterable[Callback] = (),
                 out_dir: str | Path | None = None, resume: bool = False):
        self.recipe = recipe
        self.callbacks = list(callbacks)
        self.resume = resume
        self.run_dir = Path(out_dir or recipe.out_dir or "runs/run")
        if recipe.train.threads:
            torch.set_num_threads(recipe.train.threads)
        self.accelerator = build_accelerator(recipe)
        self.world = self.accelerator.num_processes
        self.rank = self.accelerator.process_index
        self._user_model, self._user_train, self._user_val = model, train_data, val_data
        self.data = self.tokenizer = None
        if train_data is None:
            self._build_data()
        self.recipe = self._resolve(recipe)
        self.total_steps = self.recipe.total_steps(self.world)
        self.schedule = Schedule.from_recipe(self.recipe, self.world, self.total_steps)

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

    def _prepare_run_dir(self) -> Path | None:
        ckpt = checkpoint.latest_checkpoint(self.run_dir)
        if self.resume:
            if ckpt is None:
                raise RecipeError(f"--resume: no complete checkpoint under {self.run_dir}/checkpoints")
            return ckpt
        if ckpt is not None or (self.run_dir / "summary.json").exists():
            raise RecipeError(f"{self.run_dir}: run directory already holds a run; pass --resume or another --out")
        return None

    def _setup(self):
        from .models import build_model

        resume_from = self._prepare_run_dir()
        acc = self.accelerator
        if acc.is_main_process:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self.recipe.dump(self.run_dir / "recipe.yaml")
        torch.manual_seed(self.recipe.train.seed)
        model = self._user_model or build_model(self.recipe.model)
        self.model_config_known = self._user_model is None
        self._call_with_targets = "targets" in inspect.signature(model.forward).parameters
        # distributed: activation checkpointing + CPU FSDP2 before the optimizer sees the parameters
        model = distributed.wrap_model(model, self.recipe, acc)
        optimizer = distributed.build_optimizer(model, self.recipe, acc)
        if self.recipe.train.compile:
            model = apply_compile(model, self.recipe)
        self.model, self.optimizer = distributed.prepare(acc, model, optimizer, self.recipe)
        state = {"step": 0, "tokens": 0, "skipped": 0}
        if resume_from is not None:
            state = checkpoint.load_checkpoint(acc, resume_from)
            if acc.is_main_process:
                truncate_metrics(self.run_dir / "metrics.jsonl", state["step"])
        return state

    # ------------------------------------------------------------------ batches
    def _batch(self, step: int, micro: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.data is not None:
            seq = self.data.train.batch(step, micro, self.rank, self.world)
        else:
            seq = next(self._user_iter)
        return self._split(seq)

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

    def _user_batches(self, skip: int):
        while True:
            for i, batch in enumerate(self._user_train):
                if skip > 0:
                    skip -= 1
                    continue
                yield batch

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
    def evaluate(self) -> float | None:
        batches = self._val_batches()
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

    # ------------------------------------------------------------------ loop
    def fit(self) -> dict:
        state = self._setup()
        acc, r = self.accelerator, self.recipe
        if self.data is None:
            self._user_iter = iter(self._user_batches(state["step"] * r.train.grad_accum))
        log = MetricsLogger(self.run_dir, r, self.total_steps, state["step"], acc.is_main_process)
        self.branches = BranchRunner(self, state["step"])  # WSD decay branches (branches.py)
        flops_tok = accounting.flops_per_token(r.model, r.train.seq_len) if self.model_config_known else None
        peak = accounting.peak_flops(torch.cuda.get_device_name() if acc.device.type == "cuda" else None,
                                     r.logging.peak_tflops)
        tokens_step = r.tokens_per_step * self.world
        t_start = t_log = time.time()
        loss_acc = torch.zeros((), device=acc.device)
        metric_acc: dict[str, torch.Tensor] = {}
        steps_in_window, last_train_loss, val_loss = 0, math.nan, None
        self.model.train()
        for step in range(state["step"], self.total_steps):
            self.branches.maybe_run(step)  # may train a decay branch, then restores the exact state
            lr = self.schedule(step)
            set_lr(self.optimizer, lr)
            step_loss, step_metrics = self._train_step(step)
            grad_norm = self._clip()
            if r.train.nan_policy == "skip" and not torch.isfinite(step_loss + grad_norm).item():
                state["skipped"] += 1
                self.optimizer.zero_grad(set_to_none=True)
                if state["skipped"] > r.train.max_skips:
                    raise TrainingHalted(f"step {step}: {state['skipped']} non-finite steps skipped "
                                         f"(train.max_skips={r.train.max_skips}); halting")
            else:
                self.optimizer.step()
                self.after_optimizer_step()
                self.optimizer.zero_grad(set_to_none=True)
            state["step"], state["tokens"] = step + 1, state["tokens"] + tokens_step
            loss_acc += step_loss
            for k, v in step_metrics.items():
                metric_acc[k] = metric_acc.get(k, 0) + v
            steps_in_window += 1
            done = step + 1 == self.total_steps
            row = None
            if (step + 1) % r.logging.log_every == 0 or done:
                now = time.time()
                row = self._log_row(state, lr, loss_acc / steps_in_window, grad_norm, metric_acc,
                                    steps_in_window, now - t_log, flops_tok, peak)
                last_train_loss = row["loss"]
                if not math.isfinite(last_train_loss) and r.train.nan_policy == "halt":
                    self._halt(state, log, f"step {step + 1}: loss is {last_train_loss}")
                log.log(row)
                loss_acc.zero_()
                metric_acc, steps_in_window, t_log = {}, 0, now
            log.advance()
            if (step + 1) % r.train.eval_every == 0 or done:
                val_loss = self.evaluate()
                if val_loss is not None:
                    log.log({"step": step + 1, "tokens": state["tokens"], "val_loss": val_loss})
                    for cb in self.callbacks:
                        cb.on_eval(self, step + 1, val_loss)
            if (r.train.ckpt_every and (step + 1) % r.train.ckpt_every == 0) or done:
                self._checkpoint(state, log)
            for cb in self.callbacks:
                cb.on_step_end(self, step + 1, row)
        log.close()
        return self._finish(state, last_train_loss, val_loss, time.time() - t_start, flops_tok)

    def _train_step(self, step: int) -> tuple[torch.Tensor, dict]:
        ga = self.recipe.train.grad_accum
        total = torch.zeros((), device=self.accelerator.device)
        metrics: dict[str, torch.Tensor] = {}
        for micro in range(ga):
            x, y = self._batch(step, micro)
            sync = micro == ga - 1
            with distributed.no_sync(self.accelerator, self.model, sync):
                with self.accelerator.autocast():
                    loss, m = self._forward(x, y)
                distributed.backward(self.accelerator, self.model, loss / ga, sync)
            total += loss.detach().float() / ga
            for k, v in m.items():
                metrics[k] = metrics.get(k, 0) + v.detach().float() / ga
        return total, metrics

    def after_optimizer_step(self) -> None:
        """Model hook outside the gradient (e.g. MoE aux-free bias updates): `model.after_optimizer_step()`."""
        hook = getattr(self.accelerator.unwrap_model(self.model), "after_optimizer_step", None)
        if hook is not None:
            hook()

    def _clip(self) -> torch.Tensor:
        return distributed.grad_norm(self.accelerator, self.model, self.recipe.train.clip)

    def _log_row(self, state, lr, loss, grad_norm, metric_acc, n_steps, dt, flops_tok, peak) -> dict:
        acc = self.accelerator
        loss = float(acc.reduce(loss.detach(), reduction="mean"))
        tokens_per_s = self.recipe.tokens_per_step * self.world * n_steps / max(dt, 1e-9)
        row = {"step": state["step"], "tokens": state["tokens"], "loss": loss, "lr": lr,
               "grad_norm": float(grad_norm), "tokens_per_s": tokens_per_s, "mfu": None}
        if flops_tok and peak:
            row["mfu"] = flops_tok * tokens_per_s / self.world / peak
        for k, v in metric_acc.items():
            row[k] = float(acc.reduce(v / n_steps, reduction="mean"))
        if acc.device.type == "cuda":
            row["mem_gb"] = torch.cuda.max_memory_allocated() / 2**30
        else:
            import psutil

            row["mem_gb"] = psutil.Process().memory_info().rss / 2**30
        if state["skipped"]:
            row["skipped_steps"] = state["skipped"]
        return row

    def _checkpoint(self, state: dict, log: MetricsLogger) -> None:
        bad = torch.tensor(0.0, device=self.accelerator.device)
        for p in self.model.parameters():
            bad += (~torch.isfinite(distributed.local_tensor(p.detach()))).sum()
        if float(self.accelerator.reduce(bad, reduction="sum")) > 0:
            self._halt(state, log, f"step {state['step']}: parameters are non-finite")
        path = checkpoint.save_checkpoint(self.accelerator, self.run_dir, state["step"], state,
                                          self.recipe.train.keep_ckpts)
        for cb in self.callbacks:
            cb.on_checkpoint(self, state["step"], path)

    def _halt(self, state: dict, log: MetricsLogger, why: str) -> None:
        last = checkpoint.latest_checkpoint(self.run_dir)
        msg = f"{why} (train.nan_policy=halt); last good checkpoint: {last or 'none'}"
        log.close()
        if self.accelerator.is_main_process:
            self._write_summary({"status": "failed", "error": msg, "steps": state["step"]})
        raise TrainingHalted(msg)

    def _finish(self, state, train_loss, val_loss, wall, flops_tok) -> dict:
        summary = {"status": "completed", "final_train_loss": train_loss, "final_val_loss": val_loss,
                   "tokens": state["tokens"], "steps": state["step"], "wall_time_s": wall,
                   "lr": self.recipe.optim.lr, "batch_tokens": self.recipe.tokens_per_step * self.world,
                   "seq_len": self.recipe.train.seq_len, "skipped_steps": state["skipped"],
                   "branches": self.branches.results}
        if self.model_config_known:
            c = accounting.count_params(self.recipe.model)
            summary.update(params=c.total, non_embedding_params=c.non_embedding, active_params=c.active,
                           active_non_embedding_params=c.active_non_embedding,
                           flops_per_token=flops_tok, flops=flops_tok * state["tokens"])
        else:
            summary["params"] = sum(p.numel() for p in self.model.parameters())
        if self.accelerator.is_main_process:
            self._write_summary(summary)
        self.accelerator.wait_for_everyone()
        return summary

    def _write_summary(self, summary: dict) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
