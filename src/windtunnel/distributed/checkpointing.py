"""Activation checkpointing: recompute every block (full) or every other block (selective) in backward."""
from __future__ import annotations

import types

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..models.protocol import blocks_of


def apply_activation_checkpointing(model: nn.Module, mode: str) -> list[int]:
    """Recompute the chosen blocks in backward; returns their indices. Parameter names do not change."""
    if mode == "none":
        return []
    blocks = blocks_of(model, f"distributed.activation_checkpointing={mode}")
    chosen = [i for i in range(len(blocks)) if mode == "full" or i % 2 == 0]
    for i in chosen:
        # An instance-level forward keeps state-dict names (a wrapper module would add a prefix).
        blocks[i].forward = types.MethodType(_checkpointed_forward, blocks[i])
    return chosen


def _checkpointed_forward(self: nn.Module, *args, **kwargs):
    forward = type(self).forward.__get__(self)
    if not torch.is_grad_enabled():
        return forward(*args, **kwargs)
    return checkpoint(forward, *args, use_reentrant=False, **kwargs)
