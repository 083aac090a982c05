"""Parameter groups and the optimizer (AdamW, or Muon on the hidden matrices with AdamW on the rest).

Groups are keyed by (weight decay, LR multiplier, eps multiplier); the multipliers come from mup.py by
parameter name, so they are recomputed identically after resume and never live on tensors. Each group
carries `lr_mult`; `set_lr` writes `lr = base_lr * lr_mult` into every group at each step.

optim.name=muon: `MuonAdamW` is ONE torch optimizer (one state_dict, one set of param_groups, so
checkpoints, accelerate.prepare, FSDP2's DCP save and `set_lr` work unchanged). Groups flagged `muon`
take orthogonalised Nesterov momentum (Keller Jordan's Muon) built from torch.optim.Muon's own pieces:
its Newton-Schulz kernel and its per-matrix LR adjustment (`adjust_lr_fn`). torch.optim.Muon itself does
not fit as is: it rejects 3-D MoE expert weights, scales fused QKV / gate-up matrices by the fused shape,
cannot see DTensor shards as matrices, and would need a second optimizer object for the AdamW groups.
Here each expert, and each of Q, K, V (gate, up), is orthogonalised and scaled as its own matrix, and an
FSDP2 shard is gathered (full_tensor) for the Newton-Schulz step. See docs/optimizers.md.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.optim._muon import _adjust_lr, _zeropower_via_newtonschulz  # torch==2.13 is pinned

from . import mup
from .recipe import ModelConfig, Recipe

NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)  # torch.optim.Muon's defaults (Keller Jordan's quintic)
NS_EPS = 1e-7


def no_weight_decay(name: str, param: torch.Tensor, decay_embeddings: bool) -> bool:
    """Norm gains, biases and (by default) embeddings are not decayed."""
    return param.ndim < 2 or (mup.is_embedding(name) and not decay_embeddings)


def uses_muon(name: str, shape: tuple[int, ...]) -> bool:
    """Muon takes the hidden matrices (both dims grow with width): attention, MLP, MoE experts, MTP
    projections. Embeddings, readout, router, norms and biases stay on AdamW (Moonlight, Sec. 2)."""
    return len(shape) in (2, 3) and mup.param_role(name, shape) == "hidden"


def muon_split(name: str, shape: tuple[int, ...], cfg: ModelConfig) -> list[int]:
    """Row sizes of the separate matrices fused in one weight (dim -2): Q, K, V for the fused QKV, gate and
    up for the fused SwiGLU input; [] when the weight is one matrix (per expert for 3-D weights)."""
    bare = mup.canonical_name(name)
    if bare.endswith("attn.wqkv.weight"):
        q, kv = cfg.n_heads * cfg.head_dim, cfg.kv_heads * cfg.head_dim
        return [q, kv, kv]
    if bare.endswith(("w_gate_up.weight", "experts.w_gate_up")):
        return [shape[-2] // 2, shape[-2] // 2]
    return []


def muon_lr_multiplier(name: str, shape: tuple[int, ...], cfg: ModelConfig, adjust_lr: str) -> float:
    """muP for Muon groups from the spectral condition (Yang, Simon & Bernstein 2023): ||dW||_2 should be
    Theta(sqrt(fan_out / fan_in)) = Theta(1) for hidden matrices. An orthogonalised update has spectral norm
    ~1, so `original` (sqrt(max(1, A/B))) is already width-independent; `match_rms_adamw`
    (0.2 * sqrt(max(A, B))) grows as sqrt(width), hence LR / sqrt(width_mult). Equal to 1 at base width."""
    return 1.0 if adjust_lr == "original" else 1.0 / math.sqrt(mup.width_mult(cfg))


def param_groups(model: nn.Module, recipe: Recipe, model_cfg: ModelConfig | None = None) -> list[dict]:
    cfg = model_cfg or recipe.model
    o = recipe.optim
    muon = o.name == "muon"
    groups: dict[tuple, dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        shape = tuple(p.shape)
        if muon and uses_muon(name, shape):
            lr_mult = muon_lr_multiplier(name, shape, cfg, o.muon.adjust_lr)
            wd = o.weight_decay / lr_mult  # lr * wd width-independent, as for AdamW under muP
            split = muon_split(name, shape, cfg)
            key = ("muon", wd, lr_mult, tuple(split))
            extra = {"muon": True, "split": split}
        else:
            wd = 0.0 if no_weight_decay(name, p, o.decay_embeddings) else \
                o.weight_decay * mup.weight_decay_multiplier(name, shape, cfg)
            lr_mult = mup.lr_multiplier(name, shape, cfg) * (o.muon.adamw_lr_mult if muon else 1.0)
            key = ("adamw", wd, lr_mult, o.eps * mup.eps_multiplier(name, shape, cfg))
            extra = {"eps": key[3], **({"muon": False} if muon else {})}
        if key not in groups:
            groups[key] = {"params": [], "weight_decay": wd, "lr_mult": lr_mult, "lr": o.lr * lr_mult, **extra}
        groups[key]["params"].append(p)
    return list(groups.values())


def build_optimizer(model: nn.Module, recipe: Recipe, device_type: str = "cpu",
                    model_cfg: ModelConfig | None = None) -> torch.optim.Optimizer:
    o = recipe.optim
    fused = o.fused if o.fused is not None else device_type == "cuda"
    kwargs = {"fused": True} if fused else {"foreach": device_type != "cpu"}
    groups = param_groups(model, recipe, model_cfg)
    if o.name == "muon":
        m = o.muon
        return MuonAdamW(groups, lr=o.lr, betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay,
                         momentum=m.momentum, nesterov=m.nesterov, ns_steps=m.ns_steps, adjust_lr=m.adjust_lr,
                         **kwargs)
    return torch.optim.AdamW(groups, lr=o.lr, betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay,
                             **kwargs)


def set_lr(optimizer: torch.optim.Optimizer, base_lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = base_lr * group.get("lr_mult", 1.0)


# ----------------------------------------------------------------------------- Muon + AdamW in one optimizer


def matrices(t: torch.Tensor, split: list[int]) -> list[torch.Tensor]:
    """2-D views of the separate matrices in `t`: one per expert (3-D), each cut into `split` row blocks."""
    mats = list(t.unbind(0)) if t.ndim == 3 else [t]
    return [block for m in mats for block in (m.split(split, dim=0) if split else [m])]


def orthogonalised(update: torch.Tensor, split: list[int], ns_steps: int, adjust_lr: str) -> torch.Tensor:
    """Newton-Schulz orthogonalisation of each matrix in `update` (a full, unsharded tensor), each scaled
    by its own LR adjustment (torch.optim.Muon's rule for that matrix's shape)."""
    out = torch.empty_like(update, dtype=torch.float32)
    for src, dst in zip(matrices(update, split), matrices(out, split)):
        ortho = _zeropower_via_newtonschulz(src, NS_COEFFICIENTS, ns_steps, NS_EPS)
        dst.copy_(ortho).mul_(_adjust_lr(1.0, adjust_lr, src.shape))
    return out


def _gathered(t: torch.Tensor) -> torch.Tensor:
    """The whole matrix of an FSDP2 shard (DTensor); the tensor itself otherwise."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def _like(full: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
    """`full` laid out like `param`: every rank holds the same full update, so it keeps its own shard
    (src_data_rank=None: no communication)."""
    if not hasattr(param, "device_mesh"):
        return full
    from torch.distributed.tensor import distribute_tensor

    return distribute_tensor(full.to(param.dtype), param.device_mesh, param.placements, src_data_rank=None)


class MuonAdamW(torch.optim.AdamW):
    """Muon (Jordan et al. 2024; Liu et al. 2025, "Muon is Scalable for LLM Training") on groups with
    `muon=True`, torch's AdamW step on the others. Muon groups carry momentum, nesterov, ns_steps and
    adjust_lr; their update is W <- W(1 - lr*wd) - lr * adjust(A, B) * NS(nesterov momentum), the decoupled
    weight decay of Moonlight. Muon state is torch.optim.Muon's ("momentum_buffer")."""

    def __init__(self, params, *, momentum: float = 0.95, nesterov: bool = True, ns_steps: int = 5,
                 adjust_lr: str = "match_rms_adamw", **adamw_kwargs):
        super().__init__(params, **adamw_kwargs)
        for group in self.param_groups:
            group.setdefault("muon", False)
            if group["muon"]:
                group.setdefault("split", [])
                for key, value in (("momentum", momentum), ("nesterov", nesterov), ("ns_steps", ns_steps),
                                   ("adjust_lr", adjust_lr)):
                    group.setdefault(key, value)

    def __setstate__(self, state: dict) -> None:
        # load_state_dict: Adam's __setstate__ expects a "step" in every state, so show it the AdamW groups only
        groups = state["param_groups"]
        super().__setstate__({**state, "param_groups": [g for g in groups if not g.get("muon")]})
        self.param_groups = groups

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        groups = self.param_groups
        for group in groups:
            if group["muon"]:
                self._muon_group_step(group)
        self.param_groups = [g for g in groups if not g["muon"]]
        try:  # torch's AdamW (foreach / fused) on the remaining groups, same state dict
            super().step()
        finally:
            self.param_groups = groups
        return loss

    def _muon_group_step(self, group: dict) -> None:
        lr, momentum = group["lr"], group["momentum"]
        for p in group["params"]:
            if p.grad is None:
                continue
            state = self.state[p]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.zeros_like(p.grad, memory_format=torch.preserve_format)
            buf = state["momentum_buffer"]
            buf.lerp_(p.grad, 1 - momentum)
            update = p.grad.lerp(buf, momentum) if group["nesterov"] else buf
            full = orthogonalised(_gathered(update), group["split"], group["ns_steps"], group["adjust_lr"])
            p.mul_(1 - lr * group["weight_decay"])
            p.add_(_like(full, p), alpha=-lr)
