"""DeepSpeed and FSDP2 plugins for accelerate, built from the recipe's `distributed` block."""
from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import torch

from ..recipe import Recipe, RecipeError, deep_merge
from .device import mixed_precision


def deepspeed_config(recipe: Recipe, user_file: str | None = None) -> dict:
    """The DeepSpeed config for the recipe; a user's JSON config (from accelerate) overrides non-"auto" keys."""
    d, t, m = recipe.distributed, recipe.train, recipe.model
    bucket = d.reduce_bucket_size or m.d_model ** 2  # HF's "auto" rule
    zero = {"stage": d.zero_stage, "overlap_comm": d.overlap_comm, "contiguous_gradients": d.contiguous_gradients,
            "reduce_bucket_size": bucket, "allgather_bucket_size": bucket}
    if d.zero_stage == 3:
        zero |= {"stage3_prefetch_bucket_size": d.prefetch_bucket_size or int(0.9 * m.d_model ** 2),
                 "stage3_param_persistence_threshold": 10 * m.d_model, "sub_group_size": d.sub_group_size,
                 "stage3_gather_16bit_weights_on_model_save": False}
    for key, device in (("offload_optimizer", d.offload_optimizer), ("offload_param", d.offload_params)):
        if device != "none":
            zero[key] = {"device": device, "pin_memory": d.pin_memory}
            if device == "nvme":
                zero[key]["nvme_path"] = d.nvme_path
    config = {"train_micro_batch_size_per_gpu": t.batch_size, "gradient_accumulation_steps": t.grad_accum,
              "gradient_clipping": float(t.clip), "zero_optimization": zero, "zero_allow_untested_optimizer": True,
              "steps_per_print": 2 ** 31 - 1, "wall_clock_breakdown": False}
    if d.offload_optimizer != "none":
        # build_optimizer already gives DeepSpeedCPUAdam; without this accelerate rebuilds it with
        # adamw_mode=False (L2-coupled Adam), silently changing the update.
        config["zero_force_ds_cpu_optimizer"] = False
    if mixed_precision(recipe) == "bf16":
        config["bf16"] = {"enabled": True}
    if user_file:
        config = deep_merge(config, _read_user_config(recipe, user_file), keep_base=lambda v: v == "auto")
    return config


def _read_user_config(recipe: Recipe, path: str) -> dict:
    try:
        user = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise RecipeError(f"{path}: cannot read DeepSpeed config ({e})") from None
    for section in ("optimizer", "scheduler"):
        if section in user:
            raise RecipeError(f"{path}: remove its {section!r} section (the recipe's optim/schedule drive training)")
    d = recipe.distributed
    zero = user.get("zero_optimization", {})
    pairs = (("zero_optimization.stage", zero.get("stage"), "distributed.zero_stage", d.zero_stage),
             ("zero_optimization.offload_optimizer.device", zero.get("offload_optimizer", {}).get("device"),
              "distributed.offload_optimizer", d.offload_optimizer),
             ("zero_optimization.offload_param.device", zero.get("offload_param", {}).get("device"),
              "distributed.offload_params", d.offload_params))
    for file_key, got, recipe_key, want in pairs:
        if got not in (None, "auto") and str(got) != str(want):
            raise RecipeError(f"{path}: {file_key}={got} conflicts with the recipe's {recipe_key}={want}")
    return user


def fsdp_plugin(recipe: Recipe):
    """accelerate's FSDP2 plugin (used on GPU): one shard unit per block, then the root. The block classes
    come from the model (models.protocol.BlockModel) and are set by wrap_model once it exists."""
    from accelerate.utils import FullyShardedDataParallelPlugin
    from torch.distributed.fsdp import MixedPrecisionPolicy

    d = recipe.distributed
    policy = None
    if mixed_precision(recipe) == "bf16":  # bf16 compute, fp32 gradient reduction
        policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    return FullyShardedDataParallelPlugin(
        fsdp_version=2, reshard_after_forward=d.reshard_after_forward, auto_wrap_policy="transformer_based_wrap",
        cpu_offload=d.offload_params == "cpu",
        state_dict_type="SHARDED_STATE_DICT", mixed_precision_policy=policy, activation_checkpointing=False)


def _launcherless_env() -> None:
    """DeepSpeed without torchrun/accelerate launch looks for MPI; make it a world of one instead."""
    if "WORLD_SIZE" in os.environ:
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for key, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_WORLD_SIZE", "1"),
                       ("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", str(port))):
        os.environ.setdefault(key, value)
