"""The optimizer for a strategy, and accelerate.prepare with checkpoint hooks that keep names plain."""
from __future__ import annotations

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType, extract_model_from_parallel
from torch import nn

from .. import consolidate, optim
from ..recipe import Recipe
from .wrap import native_fsdp


def build_optimizer(model: nn.Module, recipe: Recipe, accelerator: Accelerator) -> torch.optim.Optimizer:
    """The recipe's AdamW over optim.param_groups; DeepSpeedCPUAdam (same groups) when DeepSpeed offloads it."""
    if recipe.distributed.strategy != "deepspeed" or recipe.distributed.offload_optimizer == "none":
        return optim.build_optimizer(model, recipe, accelerator.device.type)
    from deepspeed.ops.adam import DeepSpeedCPUAdam

    o = recipe.optim
    return DeepSpeedCPUAdam(optim.param_groups(model, recipe), lr=o.lr, betas=tuple(o.betas), eps=o.eps,
                            weight_decay=o.weight_decay, adamw_mode=True)


def prepare(accelerator: Accelerator, model: nn.Module, optimizer: torch.optim.Optimizer,
            recipe: Recipe) -> tuple[nn.Module, torch.optim.Optimizer]:
    """accelerate.prepare plus checkpoint hooks that keep parameter names plain in every format."""
    if native_fsdp(recipe, accelerator):
        # Not handed to accelerate: it would wrap the sharded model in DDP and save rank 0's shard only.
        accelerator.register_save_state_pre_hook(
            lambda models, weights, out: consolidate.save_sharded(model, optimizer, out))
        accelerator.register_load_state_pre_hook(lambda models, src: consolidate.load_sharded(model, optimizer, src))
        return model, optimizer
    model, optimizer = accelerator.prepare(model, optimizer)
    if accelerator.distributed_type not in (DistributedType.DEEPSPEED, DistributedType.FSDP):
        accelerator.register_save_state_pre_hook(_plain_weights)
        accelerator.register_load_state_pre_hook(_plain_models)
    return model, optimizer


def _plain_weights(models: list, weights: list, output_dir: str) -> None:
    """Save model.safetensors without DDP's `module.` or torch.compile's `_orig_mod.` prefixes."""
    for i, m in enumerate(models):
        weights[i] = extract_model_from_parallel(m, keep_torch_compile=False).state_dict()


def _plain_models(models: list, input_dir: str) -> None:
    models[:] = [extract_model_from_parallel(m, keep_torch_compile=False) for m in models]
