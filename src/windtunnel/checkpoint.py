"""Checkpoints: atomic (write to a temp dir, then rename) and rotated (keep the last K).

A checkpoint directory `checkpoints/step_00000100/` holds accelerate's save_state output (model,
optimizer, RNG states; DeepSpeed/FSDP shards under those strategies) and trainer_state.json (step,
tokens, skipped steps). Data position needs no state: the sampler is a pure function of (seed, step).
A checkpoint on disk is either complete (it has trainer_state.json and its final name) or absent.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

PREFIX = "step_"


def checkpoint_dirs(run_dir: Path) -> list[Path]:
    root = run_dir / "checkpoints"
    if not root.is_dir():
        return []
    done = [p for p in root.iterdir() if p.name.startswith(PREFIX) and (p / "trainer_state.json").exists()]
    return sorted(done, key=lambda p: int(p.name[len(PREFIX):]))


def latest_checkpoint(run_dir: Path) -> Path | None:
    dirs = checkpoint_dirs(run_dir)
    return dirs[-1] if dirs else None


def save_checkpoint(accelerator, run_dir: Path, step: int, state: dict, keep: int) -> Path:
    """Collective: every process calls it (sharded strategies save their own shards)."""
    root = run_dir / "checkpoints"
    final = root / f"{PREFIX}{step:08d}"
    tmp = root / f".tmp_{PREFIX}{step:08d}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp), safe_serialization=True)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        from .consolidate import consolidate_checkpoint

        consolidate_checkpoint(tmp)  # model.safetensors with plain names, whatever the strategy
        (tmp / "trainer_state.json").write_text(json.dumps(state))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        for old in checkpoint_dirs(run_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator, path: Path) -> dict:
    accelerator.load_state(str(path))
    return json.loads((path / "trainer_state.json").read_text())
