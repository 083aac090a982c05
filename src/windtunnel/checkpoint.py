"""Checkpoints: atomic, verified, rotated, and never the last intact one lost.

A checkpoint directory `checkpoints/step_00000100/` holds accelerate's save_state output (model,
optimizer, per-rank RNG states; DeepSpeed/FSDP shards under those strategies), trainer_state.json
(step, tokens, skipped steps, world size) and, written last, manifest.json: every file's size and
checksum (xxh3-128, or sha256 when xxhash is missing). The whole directory is written as
`.tmp_step_*` and renamed into place, so a final name means a complete write; the manifest catches
what happens to the files afterwards (truncation, flipped bytes). Data position needs no state: the
sampler is a pure function of (seed, step).

Resume takes the newest checkpoint that verifies and loads; a corrupt one is moved aside to
`.corrupt_step_*` with a warning. Before writing, free space is checked against the previous
checkpoint's size; when short, checkpoints that rotation would delete anyway go first, but never the
newest intact one. A failed write leaves no `.tmp_step_*` behind.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import warnings
from pathlib import Path

from .recipe import RecipeError

PREFIX = "step_"
TMP_PREFIX = ".tmp_" + PREFIX
CORRUPT_PREFIX = ".corrupt_" + PREFIX
MANIFEST = "manifest.json"
STATE = "trainer_state.json"
SPACE_MARGIN = 1.1  # checkpoints of one run differ little in size; 10% covers metadata and growth
CHUNK = 1 << 22


class CheckpointError(RecipeError):
    """No room or no permission to write a checkpoint, or no intact one to resume from: CLI exit 2."""


class CheckpointWarning(UserWarning):
    """A checkpoint was skipped (corrupt or unloadable) or resumed under different conditions."""


# ----------------------------------------------------------------------------- listing


def checkpoint_dirs(run_dir: Path) -> list[Path]:
    """Completed checkpoints (final name + trainer_state.json), oldest first; not yet verified."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    done = [p for p in root.iterdir() if p.name.startswith(PREFIX) and (p / STATE).exists()]
    return sorted(done, key=lambda p: int(p.name[len(PREFIX):]))


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest completed checkpoint by name (cheap; see newest_intact for a verified one)."""
    dirs = checkpoint_dirs(run_dir)
    return dirs[-1] if dirs else None


def newest_intact(run_dir: Path, quarantine: bool = False) -> Path | None:
    """The newest checkpoint whose files match its manifest; with quarantine, corrupt ones are moved aside."""
    for path in reversed(checkpoint_dirs(run_dir)):
        problem = verify(path)
        if problem is None:
            return path
        if quarantine:
            set_aside(path, problem)
    return None


def readable_checkpoint(run_dir: Path) -> Path | None:
    """For readers such as export: the newest intact checkpoint (warning about newer corrupt ones),
    else the newest by name (checkpoints written before manifests existed)."""
    skipped = []
    for path in reversed(checkpoint_dirs(run_dir)):
        problem = verify(path)
        if problem is None:
            for name, why in skipped:
                warnings.warn(f"checkpoint {name} is corrupt ({why}); using {path.name}", CheckpointWarning,
                              stacklevel=2)
            return path
        skipped.append((path, problem))
    return latest_checkpoint(run_dir)


# ----------------------------------------------------------------------------- manifest


def _hash_fn(algo: str):
    """The checksum constructor for a manifest's algorithm, or None when it is not installed."""
    if algo == "sha256":
        return hashlib.sha256
    if algo == "xxh3_128":
        try:
            import xxhash  # comes with datasets; ~10x faster than sha256 on multi-GB checkpoints
        except ImportError:
            return None
        return xxhash.xxh3_128
    return None


def _hasher():
    return ("xxh3_128", _hash_fn("xxh3_128")) if _hash_fn("xxh3_128") else ("sha256", hashlib.sha256)


def _digest(path: Path, new) -> str:
    h = new()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _files(ckpt: Path) -> list[Path]:
    return sorted(p for p in ckpt.rglob("*") if p.is_file() and p.name != MANIFEST)


def write_manifest(ckpt: Path) -> None:
    """Sizes and checksums of every file under ckpt: the last file written into a checkpoint."""
    algo, new = _hasher()
    files = {p.relative_to(ckpt).as_posix(): {"size": p.stat().st_size, "hash": _digest(p, new)}
             for p in _files(ckpt)}
    tmp = ckpt / (MANIFEST + ".tmp")
    with tmp.open("w") as f:
        json.dump({"format": 1, "hash": algo, "files": files}, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, ckpt / MANIFEST)


def verify(ckpt: Path) -> str | None:
    """Why ckpt is not intact (one line), or None when every file matches its manifest."""
    try:
        manifest = json.loads((ckpt / MANIFEST).read_text())
        files, algo = manifest["files"], manifest["hash"]
    except FileNotFoundError:
        return f"no {MANIFEST} (incomplete write)"
    except (ValueError, KeyError, TypeError):
        return f"{MANIFEST} is unreadable"
    new = _hash_fn(algo)
    if new is None:
        return f"{MANIFEST}: checksum {algo!r} unavailable here (pip install xxhash)"
    for name, want in files.items():
        path = ckpt / name
        if not path.is_file():
            return f"{name} is missing"
        size = path.stat().st_size
        if size != want["size"]:
            return f"{name} is {size} bytes, manifest says {want['size']} (truncated?)"
        if _digest(path, new) != want["hash"]:
            return f"{name} does not match its checksum (corrupted bytes)"
    try:
        int(json.loads((ckpt / STATE).read_text())["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return f"{STATE} is unreadable"
    return None


def set_aside(ckpt: Path, problem: str) -> Path:
    """Rename a corrupt checkpoint out of the way (kept for inspection; rotation never counts it)."""
    target = ckpt.with_name(CORRUPT_PREFIX + ckpt.name[len(PREFIX):])
    shutil.rmtree(target, ignore_errors=True)
    os.replace(ckpt, target)
    warnings.warn(f"checkpoint {ckpt} is corrupt ({problem}); moved to {target.name}, "
                  "falling back to the previous one", CheckpointWarning, stacklevel=3)
    return target


# ----------------------------------------------------------------------------- space


def dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def no_space(where: Path, need: int) -> CheckpointError:
    return CheckpointError(f"no space left on device: {where} (needs ~{max(1, round(need / 2**20))} MB)")


def make_room(run_dir: Path, keep: int, estimate: int = 0) -> int:
    """Before writing: enough free space for a checkpoint the size of the previous one (else estimate).

    When short, delete what rotation would delete after this write anyway (all but the newest keep-1),
    never the newest intact checkpoint; then raise "no space left on device" if still short.
    Returns the bytes needed.
    """
    root = Path(run_dir) / "checkpoints"
    existing = checkpoint_dirs(run_dir)
    need = int((dir_size(existing[-1]) if existing else estimate) * SPACE_MARGIN)
    if shutil.disk_usage(root).free >= need:
        return need
    keep_safe = newest_intact(run_dir)
    for old in existing[:len(existing) - max(keep - 1, 0)]:
        if old != keep_safe:
            shutil.rmtree(old, ignore_errors=True)
    if shutil.disk_usage(root).free < need:
        raise no_space(root, need)
    return need


def clean_stale(run_dir: Path) -> None:
    """Remove `.tmp_step_*` left by a write that was killed (it never became a checkpoint)."""
    root = Path(run_dir) / "checkpoints"
    if root.is_dir():
        for p in root.glob(TMP_PREFIX + "*"):
            shutil.rmtree(p, ignore_errors=True)


# ----------------------------------------------------------------------------- agreement across processes


def main_value(accelerator, value):
    """The main process's value on every process: decisions that must agree (accept, abort a write)."""
    if accelerator.num_processes == 1:
        return value
    from accelerate.utils import broadcast_object_list

    return broadcast_object_list([value])[0]


def any_process(accelerator, flag: bool) -> bool:
    """True on every process when `flag` is true on any (e.g. a failed write or load)."""
    if accelerator.num_processes == 1:
        return flag
    import torch

    return bool(accelerator.reduce(torch.tensor(float(flag), device=accelerator.device), reduction="sum") > 0)


# ----------------------------------------------------------------------------- save / load


def _write_error(err: BaseException, where: Path, need: int) -> CheckpointError:
    if isinstance(err, CheckpointError):
        return err
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        return no_space(where, need)
    return CheckpointError(f"cannot write checkpoint {where}: {err}")


def save_checkpoint(accelerator, run_dir: Path, step: int, state: dict, keep: int, estimate: int = 0) -> Path:
    """Collective: every process calls it (sharded strategies save their own shards).

    estimate: expected size in bytes when there is no previous checkpoint to measure (0 = unknown).
    Raises CheckpointError ("no space left on device: ...") with the temp dir removed on every failure.
    """
    root = Path(run_dir) / "checkpoints"
    final, tmp = root / f"{PREFIX}{step:08d}", root / f"{TMP_PREFIX}{step:08d}"
    error, need = None, estimate
    if accelerator.is_main_process:
        try:
            root.mkdir(parents=True, exist_ok=True)
            clean_stale(run_dir)
            need = make_room(run_dir, keep, estimate)
            tmp.mkdir()
        except (OSError, CheckpointError) as e:
            error = str(_write_error(e, root, need))
    _raise_if(accelerator, error, tmp)
    try:
        accelerator.save_state(str(tmp), safe_serialization=True)
        failed = None
    except OSError as e:
        failed = e
    failed_anywhere = any_process(accelerator, failed is not None)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        error = str(_write_error(failed, root, need or dir_size(tmp))) if failed else None
        error = error or ("checkpoint write failed on another process" if failed_anywhere else None)
        if error is None:
            error = _finalize(tmp, final, {**state, "world": accelerator.num_processes}, root, need)
        if error is None:
            for old in checkpoint_dirs(run_dir)[:-keep]:  # the new one is intact: older ones may go
                shutil.rmtree(old, ignore_errors=True)
    _raise_if(accelerator, error, tmp)
    return final


def _finalize(tmp: Path, final: Path, state: dict, root: Path, need: int) -> str | None:
    """Main process: consolidate, trainer_state, manifest (last), rename. Returns an error line or None."""
    from .consolidate import consolidate_checkpoint

    try:
        consolidate_checkpoint(tmp)  # model.safetensors with plain names, whatever the strategy
        (tmp / STATE).write_text(json.dumps(state))
        write_manifest(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except OSError as e:
        return str(_write_error(e, root, need or dir_size(tmp)))
    return None


def _raise_if(accelerator, error: str | None, tmp: Path) -> None:
    error = main_value(accelerator, error)
    if error is None:
        return
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    raise CheckpointError(error)


def read_state(path: Path) -> dict:
    return json.loads((Path(path) / STATE).read_text())


def load_checkpoint(accelerator, path: Path, seed: int = 0) -> dict:
    """Load model/optimizer/RNG states; ranks with no saved RNG state (more processes than when saved)
    are reseeded from (seed, step, rank), so a resume on another world size is still reproducible."""
    accelerator.load_state(str(path))
    state = read_state(path)
    rank = accelerator.process_index
    if not (Path(path) / f"random_states_{rank}.pkl").exists():
        import numpy as np
        import torch

        torch.manual_seed(int(np.random.SeedSequence([seed, state["step"], rank]).generate_state(1)[0]))
    return state


def resume_point(accelerator, run_dir: Path) -> Path | None:
    """Collective: the newest intact checkpoint (main verifies; corrupt ones are set aside)."""
    path = newest_intact(run_dir, quarantine=True) if accelerator.is_main_process else None
    found = main_value(accelerator, None if path is None else str(path))
    return None if found is None else Path(found)


def load_newest_intact(accelerator, run_dir: Path, first: Path, seed: int = 0) -> tuple[Path, dict]:
    """Collective: load `first`, falling back to older intact checkpoints when loading fails."""
    path: Path | None = first
    while path is not None:
        try:
            state, failed = load_checkpoint(accelerator, path, seed), None
        except Exception as e:  # any reader error means this checkpoint cannot be resumed from
            state, failed = None, e
        if not any_process(accelerator, failed is not None):
            return path, state
        if accelerator.is_main_process:
            why = f"{type(failed).__name__}: {(str(failed).splitlines() or [''])[0]}" if failed else "elsewhere"
            set_aside(path, f"cannot be loaded: {why}")
        accelerator.wait_for_everyone()
        path = resume_point(accelerator, run_dir)
    raise CheckpointError(f"--resume: no intact checkpoint under {Path(run_dir) / 'checkpoints'}")
