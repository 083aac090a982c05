"""Which device and compute precision the recipe asks for on this machine."""
from __future__ import annotations

import os

import torch

from ..recipe import Recipe


def use_cuda() -> bool:
    return torch.cuda.is_available() and os.environ.get("WINDTUNNEL_CPU") != "1"


def mixed_precision(recipe: Recipe) -> str:
    """accelerate's mixed_precision value: bf16 autocast on GPU for precision=auto, else what the recipe says."""
    p = recipe.train.precision
    if p == "bf16" or (p == "auto" and use_cuda()):
        return "bf16"
    return "no"
