"""Model wrapping before the optimizer is built: activation checkpointing, then FSDP2 sharding per block."""
from __future__ import annotations

from accelerate import Accelerator
from accelerate.utils import DistributedType
from torch import nn

from ..models.protocol import blocks_of
from ..recipe import Recipe
from .checkpointing import apply_activation_checkpointing


def native_fsdp(recipe: Recipe, accelerator: Accelerator) -> bool:
    """FSDP2 applied by us (CPU); on GPU accelerate's plugin shards the model in prepare()."""
    return (recipe.distributed.strategy == "fsdp" and accelerator.device.type == "cpu"
            and accelerator.num_processes > 1)


def wrap_model(model: nn.Module, recipe: Recipe, accelerator: Accelerator) -> nn.Module:
    """Activation checkpointing, then (CPU) FSDP2 sharding; call before building the optimizer."""
    apply_activation_checkpointing(model, recipe.distributed.activation_checkpointing)
    if accelerator.distributed_type == DistributedType.FSDP:  # GPU: accelerate shards in prepare()
        set_wrap_classes(accelerator.state.fsdp_plugin, model)
    if not native_fsdp(recipe, accelerator):
        return model
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import CPUOffloadPolicy, OffloadPolicy, fully_shard

    mesh = init_device_mesh("cpu", (accelerator.num_processes,))
    d = recipe.distributed
    offload = CPUOffloadPolicy(pin_memory=False) if d.offload_params == "cpu" else OffloadPolicy()
    for block in blocks_of(model, "distributed.strategy=fsdp"):
        fully_shard(block, mesh=mesh, reshard_after_forward=d.reshard_after_forward, offload_policy=offload)
    fully_shard(model, mesh=mesh, reshard_after_forward=d.reshard_after_forward, offload_policy=offload)
    return model


def set_wrap_classes(plugin, model: nn.Module) -> None:
    """accelerate's FSDP2 plugin shards one unit per instance of the model's block classes."""
    blocks_of(model, "distributed.strategy=fsdp")
    plugin.transformer_cls_names_to_wrap = [cls.__name__ for cls in model.block_types]
