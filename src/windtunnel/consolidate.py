"""Checkpoint formats per strategy, and their consolidation into one `model.safetensors`.

What accelerate's save_state leaves in a checkpoint directory:
- ddp / one process: model.safetensors (plain parameter names: distributed.prepare's save hook strips
  DDP's `module.` and torch.compile's `_orig_mod.`);
- deepspeed: pytorch_model/ (DeepSpeed's model + ZeRO partition files);
- fsdp: pytorch_model_fsdp_0/ and optimizer_0/ (torch.distributed.checkpoint, DCP) — written by accelerate
  on GPU, and by `save_sharded` below for the CPU path (same layout, so both consolidate the same way).
`consolidate_checkpoint(dir)` writes dir/model.safetensors (fp32 master weights, plain names) from any of
them; `windtunnel export` reads that file. Plain names are `canonical_name`s: what the bare model calls
a parameter, whatever wrapped it (the muP rules match on them too).
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

WEIGHTS = "model.safetensors"  # consolidated weights of a checkpoint (and of an exported model)
DEEPSPEED_TAG = "pytorch_model"  # accelerate's checkpoint id for the first model
FSDP_MODEL_DIR = "pytorch_model_fsdp_0"
FSDP_OPTIM_DIR = "optimizer_0"
# Name components added by wrappers: torch.compile, FSDP1, activation checkpointing (anywhere in a name).
WRAPPER_PARTS = frozenset({"_orig_mod", "_fsdp_wrapped_module", "_checkpoint_wrapped_module", "_forward_module"})
# DDP, DeepSpeed engine and accelerate's wrappers put the model under `module.` (leading only).
LEADING_WRAPPERS = frozenset({"module"})


def canonical_name(name: str) -> str:
    """The parameter name as the bare model sees it, whatever wraps the model."""
    parts = [p for p in name.split(".") if p not in WRAPPER_PARTS]
    while len(parts) > 1 and parts[0] in LEADING_WRAPPERS:
        parts.pop(0)
    return ".".join(parts)


# ----------------------------------------------------------------------------- FSDP2 on CPU (collective)


def save_sharded(model: torch.nn.Module, optimizer: torch.optim.Optimizer, out_dir: str | Path) -> None:
    """Every rank writes its shards of model and optimizer (DCP); names are plain FQNs."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_sd, optim_sd = get_state_dict(model, optimizer)
    dcp.save({"model": model_sd}, checkpoint_id=str(Path(out_dir) / FSDP_MODEL_DIR))
    dcp.save({"optimizer": optim_sd}, checkpoint_id=str(Path(out_dir) / FSDP_OPTIM_DIR))


def load_sharded(model: torch.nn.Module, optimizer: torch.optim.Optimizer, in_dir: str | Path) -> None:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    model_sd, optim_sd = get_state_dict(model, optimizer)
    model_state, optim_state = {"model": model_sd}, {"optimizer": optim_sd}
    dcp.load(model_state, checkpoint_id=str(Path(in_dir) / FSDP_MODEL_DIR))
    dcp.load(optim_state, checkpoint_id=str(Path(in_dir) / FSDP_OPTIM_DIR))
    set_state_dict(model, optimizer, model_state_dict=model_state["model"], optim_state_dict=optim_state["optimizer"])


# ----------------------------------------------------------------------------- consolidation (one process)


def consolidate_checkpoint(ckpt_dir: str | Path) -> Path:
    """Write ckpt_dir/model.safetensors from whatever format the checkpoint holds; return its path."""
    ckpt = Path(ckpt_dir)
    out = ckpt / WEIGHTS
    if out.exists():
        return out
    if (ckpt / FSDP_MODEL_DIR).is_dir():
        state = _from_dcp(ckpt / FSDP_MODEL_DIR)
    elif (ckpt / DEEPSPEED_TAG).is_dir():
        state = _from_deepspeed(ckpt)
    else:
        raise FileNotFoundError(f"{ckpt}: no model weights ({WEIGHTS}, {FSDP_MODEL_DIR}/ or {DEEPSPEED_TAG}/)")
    # torch.compile / DDP / engine wrappers may have put prefixes on the names (`_orig_mod.`, `module.`)
    write_safetensors({canonical_name(k): v for k, v in state.items()}, out)
    return out


def write_safetensors(state: dict[str, torch.Tensor], path: Path) -> None:
    """Atomic write; tensors that share storage (tied weights) are stored as separate copies."""
    from safetensors.torch import save_file

    seen: set[tuple[int, int]] = set()
    plain = {}
    for name, t in state.items():
        t = t.detach().cpu().contiguous()
        key = (t.untyped_storage().data_ptr(), t.storage_offset())
        plain[name] = t.clone() if key in seen else t
        seen.add(key)
    tmp = path.with_name(path.name + ".tmp")
    save_file(plain, str(tmp), metadata={"format": "pt"})
    os.replace(tmp, path)


def load_weights(ckpt_dir: str | Path) -> dict[str, torch.Tensor]:
    """The consolidated weights of a checkpoint (consolidating first if needed)."""
    from safetensors.torch import load_file

    return load_file(str(consolidate_checkpoint(ckpt_dir)))


def _from_dcp(dcp_dir: Path) -> dict[str, torch.Tensor]:
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    tmp = dcp_dir.with_name(dcp_dir.name + ".consolidated.pt")
    dcp_to_torch_save(str(dcp_dir), str(tmp))  # reads with no process group, so rank 0 can do it alone
    try:
        state = torch.load(tmp, map_location="cpu", weights_only=True)
    finally:
        tmp.unlink(missing_ok=True)
    return state["model"] if set(state) == {"model"} else state


def _from_deepspeed(ckpt: Path) -> dict[str, torch.Tensor]:
    tag_dir = ckpt / DEEPSPEED_TAG
    if any(tag_dir.glob("*optim_states.pt")):  # ZeRO 1-3 (and bf16): fp32 master partitions
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        return get_fp32_state_dict_from_zero_checkpoint(str(ckpt), tag=DEEPSPEED_TAG)
    states = torch.load(tag_dir / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=True)
    return {k: v.float() if v.is_floating_point() else v for k, v in states["module"].items()}
