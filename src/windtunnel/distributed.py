"""The recipe's `distributed` block -> an accelerate Accelerator.

One process on CPU or one GPU needs nothing here beyond precision. Under `accelerate launch` /
torchrun the process group is set up by accelerate; on CPU it must be told to use gloo, or accelerate
silently reports one process per rank (env-notes.md).
"""
from __future__ import annotations

import os

import torch
from accelerate import Accelerator
from accelerate.utils import InitProcessGroupKwargs

from .recipe import Recipe


def use_cuda() -> bool:
    return torch.cuda.is_available() and os.environ.get("WINDTUNNEL_CPU") != "1"


def mixed_precision(recipe: Recipe) -> str:
    p = recipe.train.precision
    if p == "bf16" or (p == "auto" and use_cuda()):
        return "bf16"
    return "no"


def build_accelerator(recipe: Recipe) -> Accelerator:
    cuda = use_cuda()
    handlers = []
    if not cuda and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        handlers.append(InitProcessGroupKwargs(backend="gloo"))
    return Accelerator(cpu=not cuda, mixed_precision=mixed_precision(recipe), kwargs_handlers=handlers)
