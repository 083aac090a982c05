"""Run directory integrity: one trainer per run, resumes that match the checkpoint, summaries that parse.

A run directory holds recipe.yaml (the resolved recipe, written once the run or resume is accepted),
metrics.jsonl, checkpoints/ (checkpoint.py), summary.json (every terminal state) and `.lock`.

- `RunLock(run_dir)`: an OS file lock (filelock; released by the kernel when the process dies, even
  by kill -9), held by the main process for the whole fit; a second trainer exits 2 at once.
- `check_resume(...)`: on --resume the new recipe is compared with the saved one; keys that change
  what the checkpoint means are refused, naming them. Allowed (RESUMABLE_KEYS): logging, eval,
  checkpoint cadence and rotation, threads, compile, nan handling, the run length (train.steps /
  train.tokens: the schedule is recomputed for the new length, e.g. to extend a WSD run before its
  decay), performance-only distributed knobs, and batch_size / grad_accum / the number of processes
  as long as the global batch (batch_size x grad_accum x processes) is unchanged — the sampler then
  gives the same data per step (data/sampler.py). Everything else (model, data, tokenizer, optimizer,
  schedule shape, seq_len, seed, precision, strategy) is refused: start a new run instead.
- `write_summary`: strict JSON (NaN/inf become null), written atomically.
- `RunDirectory.open(...)`: all of the above in the order a trainer needs them (collective).
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import filelock

from . import checkpoint
from .checkpoint import main_value
from .recipe import Recipe, RecipeError

COMPLETED, HALTED, FAILED = "completed", "halted", "failed"
LOCK_NAME = ".lock"
RESUMABLE_KEYS = (
    "logging.", "out_dir", "data.cache_dir", "optim.fused",
    "train.eval_every", "train.eval_batches", "train.ckpt_every", "train.keep_ckpts", "train.threads",
    "train.compile", "train.nan_policy", "train.max_skips", "train.steps", "train.tokens",
    "distributed.activation_checkpointing", "distributed.overlap_comm", "distributed.contiguous_gradients",
    "distributed.pin_memory", "distributed.reduce_bucket_size", "distributed.prefetch_bucket_size",
    "distributed.sub_group_size", "distributed.reshard_after_forward",
)
BATCH_KEYS = ("train.batch_size", "train.grad_accum")  # free as long as the global batch is unchanged
SHOWN = 6  # conflicting keys named in the one-line error


class RunDirError(RecipeError):
    """The run directory cannot serve the request (busy, already a run, incompatible resume): CLI exit 2."""


# ----------------------------------------------------------------------------- lock


class RunLock:
    """Exclusive lock on a run directory; `with RunLock(d):` or acquire()/release()."""

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self._lock = filelock.FileLock(str(self.path), timeout=0)

    def acquire(self) -> "RunLock":
        self.run_dir.mkdir(parents=True, exist_ok=True)
        try:
            self._lock.acquire(timeout=0)
        except filelock.Timeout:
            raise RunDirError(f"{self.run_dir}: another trainer is running in this run directory "
                              f"(lock {self.path} is held); wait for it or stop it") from None
        return self

    def release(self) -> None:
        if self._lock.is_locked:
            self._lock.release(force=True)

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def is_locked(run_dir: str | Path) -> bool:
    """True while some process holds the run's lock (e.g. a trainer a previous sweep left running)."""
    if not (Path(run_dir) / LOCK_NAME).exists():
        return False
    probe = filelock.FileLock(str(Path(run_dir) / LOCK_NAME), timeout=0)
    try:
        probe.acquire(timeout=0)
    except filelock.Timeout:
        return True
    probe.release(force=True)
    return False


# ----------------------------------------------------------------------------- resume compatibility


def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _resumable(key: str) -> bool:
    return any(key == k or (k.endswith(".") and key.startswith(k)) for k in RESUMABLE_KEYS)


def _global_batch(flat: dict, world: int) -> int:
    return flat["train.batch_size"] * flat["train.grad_accum"] * world


def resume_conflicts(saved: Recipe, new: Recipe, saved_world: int | None, world: int) -> list[str]:
    """'key: old -> new' for every change the checkpoint cannot follow (empty: resume is fine)."""
    a, b = flatten(saved.to_dict()), flatten(new.to_dict())
    saved_world = saved_world or world  # checkpoints from before world sizes were recorded
    out = [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(a.keys() | b.keys())
           if a.get(k) != b.get(k) and not _resumable(k) and k not in BATCH_KEYS]
    if _global_batch(a, saved_world) != _global_batch(b, world):
        out.append(f"global batch (train.batch_size x train.grad_accum x processes): "
                   f"{a['train.batch_size']}x{a['train.grad_accum']}x{saved_world} -> "
                   f"{b['train.batch_size']}x{b['train.grad_accum']}x{world}")
    sharded = b["distributed.strategy"] == "fsdp" or (b["distributed.strategy"] == "deepspeed"
                                                     and b["distributed.zero_stage"] > 0)
    if saved_world != world and sharded:
        out.append(f"processes: {saved_world} -> {world} (sharded {b['distributed.strategy']} checkpoints "
                   "resume only on the same number of processes)")
    return out


def check_resume(run_dir: str | Path, new: Recipe, saved_world: int | None, world: int) -> None:
    """Raise RunDirError naming the keys when `new` cannot continue the run saved in run_dir."""
    path = Path(run_dir) / "recipe.yaml"
    if not path.exists():
        return  # the trainer writes recipe.yaml before its first checkpoint; nothing to compare against
    try:
        saved = Recipe.load(path)
    except (RecipeError, OSError, UnicodeDecodeError) as e:
        raise RunDirError(f"--resume: saved recipe unreadable: {e}") from None
    conflicts = resume_conflicts(saved, new, saved_world, world)
    if conflicts:
        more = f" and {len(conflicts) - SHOWN} more" if len(conflicts) > SHOWN else ""
        raise RunDirError(f"--resume: {path}: changes the checkpoint cannot follow: "
                          f"{'; '.join(conflicts[:SHOWN])}{more} (restore them, or start a new run with --out)")


# ----------------------------------------------------------------------------- records


def strict(value: Any) -> Any:
    """JSON-safe copy: non-finite floats become None (json.dumps would write NaN, which is not JSON)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict(v) for v in value]
    return value


def write_json(path: Path, data: Any) -> None:
    """Strict JSON, atomically (a crash leaves the old file or the new one, never half of one)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(strict(data), indent=2, allow_nan=False))
    os.replace(tmp, path)


def write_summary(run_dir: str | Path, summary: dict) -> dict:
    """summary.json for a terminal state (status completed / halted / failed); returns what was written."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    clean = strict(summary)
    write_json(run_dir / "summary.json", clean)
    return clean


def last_logged(run_dir: str | Path, key: str, upto_step: int) -> float | None:
    """The last value of `key` in metrics.jsonl at a step <= upto_step (None when absent or not finite)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return None
    value = None
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except ValueError:  # a line cut short by a kill
            continue
        if key in row and row.get("step", 0) <= upto_step:
            value = row[key]
    return strict(value) if isinstance(value, float) else value


# ----------------------------------------------------------------------------- the trainer's entry point


class RunDirectory:
    """A trainer's hold on its run directory, from acceptance to the summary.

        run = RunDirectory(accelerator, run_dir)
        resume_from = run.open(recipe, resume)   # lock, checks, recipe.yaml; the checkpoint to load or None
        ...
        run.finish(summary)                      # summary.json (main process), lock released
    """

    def __init__(self, accelerator, run_dir: str | Path):
        self.accelerator = accelerator
        self.path = Path(run_dir)
        self.lock = RunLock(self.path)

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    def open(self, recipe: Recipe, resume: bool) -> Path | None:
        """Collective. Refusals (busy, already a run, no intact checkpoint, incompatible recipe) raise
        RunDirError on every process before anything in the directory is written."""
        error = found = None
        if self.is_main:
            try:
                self.lock.acquire()
                found = self._accept(recipe, resume)
                recipe.dump(self.path / "recipe.yaml.tmp")  # accepted: now the recipe may be (re)written
                os.replace(self.path / "recipe.yaml.tmp", self.path / "recipe.yaml")
            except (RecipeError, OSError) as e:  # e.g. an unwritable directory: the CLI's one line
                self.lock.release()
                error = e
        error, found = main_value(self.accelerator, (error, None if found is None else str(found)))
        if error is not None:
            raise error  # the same error on every process
        return None if found is None else Path(found)

    def _accept(self, recipe: Recipe, resume: bool) -> Path | None:
        checkpoint.clean_stale(self.path)
        if not resume:
            if checkpoint.latest_checkpoint(self.path) or (self.path / "summary.json").exists():
                raise RunDirError(f"{self.path}: run directory already holds a run; pass --resume or another --out")
            # rows of an attempt killed before its first checkpoint: this run redoes those steps
            (self.path / "metrics.jsonl").unlink(missing_ok=True)
            return None
        found = checkpoint.newest_intact(self.path, quarantine=True)
        if found is None:
            raise checkpoint.CheckpointError(f"--resume: no intact checkpoint under {self.path / 'checkpoints'}")
        check_resume(self.path, recipe, checkpoint.read_state(found).get("world"), self.accelerator.num_processes)
        return found

    def finish(self, summary: dict) -> dict:
        """Write summary.json (strict JSON) on the main process and release the lock; returns it cleaned."""
        clean = strict(summary)
        if self.is_main:
            write_summary(self.path, clean)
        self.close()
        return clean

    def close(self) -> None:
        self.lock.release()
