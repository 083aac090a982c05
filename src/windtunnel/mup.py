"""Parameterization rules (SP and muP): init std, LR multiplier and forward multipliers per parameter.

Everything is derived from the parameter's name and the ModelConfig — nothing is stored on tensors — so
the rules survive torch.save, torch.compile, DeepSpeed ZeRO flattening and FSDP wrapping.
"""
from __future__ import annotations

import math

from .recipe import ModelConfig

# Names of output projections of residual branches (scaled by 1/sqrt(2L) at init, GPT-2 style).
RESIDUAL_OUT = ("attn.wo.weight", "mlp.w_down.weight", "w_down")


def is_vector_like(name: str, ndim: int) -> bool:
    return ndim < 2


def is_embedding(name: str) -> bool:
    return name.endswith("embed.weight")


def is_readout(name: str) -> bool:
    return name.endswith("head.weight")


def attention_scale(cfg: ModelConfig) -> float:
    return 1.0 / math.sqrt(cfg.head_dim)


def embedding_multiplier(cfg: ModelConfig) -> float:
    return 1.0


def logit_multiplier(cfg: ModelConfig) -> float:
    return 1.0


def init_std(name: str, shape: tuple[int, ...], cfg: ModelConfig) -> float | None:
    """Std of the normal init; None = leave the module's own init (norm gains = 1)."""
    if len(shape) < 2:
        return None
    std = cfg.init_std
    if name.endswith(RESIDUAL_OUT):
        std /= math.sqrt(2 * cfg.n_layers)
    return std


def lr_multiplier(name: str, shape: tuple[int, ...], cfg: ModelConfig) -> float:
    return 1.0


def eps_multiplier(name: str, shape: tuple[int, ...], cfg: ModelConfig) -> float:
    return 1.0
