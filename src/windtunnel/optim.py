"""Parameter groups and the optimizer.

Groups are keyed by (weight decay, LR multiplier, eps multiplier); the multipliers come from mup.py by
parameter name, so they are recomputed identically after resume and never live on tensors. Each group
carries `lr_mult`; `set_lr` writes `lr = base_lr * lr_mult` into every group at each step.
"""
from __future__ import annotations

import torch
from torch import nn

from . import mup
from .recipe import ModelConfig, Recipe


def no_weight_decay(name: str, param: torch.Tensor, decay_embeddings: bool) -> bool:
    """Norm gains, biases and (by default) embeddings are not decayed."""
    return param.ndim < 2 or (mup.is_embedding(name) and not decay_embeddings)


def param_groups(model: nn.Module, recipe: Recipe, model_cfg: ModelConfig | None = None) -> list[dict]:
    cfg = model_cfg or recipe.model
    o = recipe.optim
    groups: dict[tuple, dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        shape = tuple(p.shape)
        wd = 0.0 if no_weight_decay(name, p, o.decay_embeddings) else \
            o.weight_decay * mup.weight_decay_multiplier(name, shape, cfg)
        lr_mult = mup.lr_multiplier(name, shape, cfg)
        eps = o.eps * mup.eps_multiplier(name, shape, cfg)
        key = (wd, lr_mult, eps)
        if key not in groups:
            groups[key] = {"params": [], "weight_decay": wd, "lr_mult": lr_mult, "eps": eps,
                           "lr": o.lr * lr_mult}
        groups[key]["params"].append(p)
    return list(groups.values())


def build_optimizer(model: nn.Module, recipe: Recipe, device_type: str = "cpu",
                    model_cfg: ModelConfig | None = None) -> torch.optim.Optimizer:
    o = recipe.optim
    fused = o.fused if o.fused is not None else device_type == "cuda"
    kwargs = {"fused": True} if fused else {"foreach": device_type != "cpu"}
    return torch.optim.AdamW(param_groups(model, recipe, model_cfg), lr=o.lr, betas=tuple(o.betas),
                             eps=o.eps, weight_decay=o.weight_decay, **kwargs)


def set_lr(optimizer: torch.optim.Optimizer, base_lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = base_lr * group.get("lr_mult", 1.0)
