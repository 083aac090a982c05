"""What the rest of windtunnel needs from a model, declared once.

Distributed wrapping (FSDP2 shard units) and activation checkpointing work on the model's repeated
blocks; they find them through this protocol, never by class name or attribute guessing. A registered
architecture satisfies it by having `blocks` (a ModuleList) and `block_types` (the classes to wrap).
"""
from __future__ import annotations

from typing import Protocol, runtime_checkable

from torch import nn

from ..recipe import RecipeError


@runtime_checkable
class BlockModel(Protocol):
    blocks: nn.ModuleList  # the repeated units, in forward order
    block_types: tuple[type[nn.Module], ...]  # their classes (FSDP wrap policy by class)


def blocks_of(model: nn.Module, why: str) -> nn.ModuleList:
    """The model's blocks; a one-line error naming `why` (the recipe key) when it declares none."""
    if not isinstance(model, BlockModel):
        raise RecipeError(f"{why}: {type(model).__name__} does not declare `blocks` and `block_types` "
                          "(windtunnel.models.protocol.BlockModel)")
    return model.blocks
