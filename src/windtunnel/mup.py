"""Parameterization rules (SP and muP): init std, LR / eps / weight-decay multipliers and forward multipliers.

Everything is derived from the parameter's name and the ModelConfig — nothing is stored on tensors — so
the rules survive torch.save, torch.compile, DeepSpeed ZeRO flattening and FSDP wrapping. Wrapper
prefixes (`module.`, `_orig_mod.`, `_fsdp_wrapped_module.`, ...) are stripped by consolidate.canonical_name.

Each parameter gets a role from its name (and its number of dims):
- input:   the token embedding (fan_in = vocab, fixed; fan_out = width);
- hidden:  matrices whose two dims both grow with width (attention, MLP, MoE experts, MTP projections);
- readout: untied output heads whose logits the model multiplies by `logit_multiplier` (muTransfer Table 8 form);
- router:  other output-like matrices (fan_out fixed, e.g. the MoE router) with no forward multiplier,
           so they take Tensor Programs V Table 3 form instead (init and Adam LR both ~ 1/width);
- vector:  norm gains and biases.
muP rules for Adam (Yang et al. 2022, Tensor Programs V, Tables 3 and 8) with width_mult = d_model / base_width:
hidden init std / sqrt(width_mult) and LR / width_mult; input and vector params unchanged; logits times
output_mult / width_mult; attention scale attn_mult * sqrt(base_head_dim) / head_dim. Adam's eps is scaled
like each parameter's gradient (Everett et al. 2024) and weight decay so that lr * wd is width-independent
(microsoft/mup's MuAdamW). At width == base_width every muP rule equals SP exactly. See docs/mup.md.
"""
from __future__ import annotations

import math
from typing import Literal

from .consolidate import canonical_name
from .recipe import ModelConfig

Role = Literal["input", "hidden", "readout", "router", "vector"]

# Output projections of residual branches (scaled by 1/sqrt(2L) at init, GPT-2 style), matched as suffixes.
RESIDUAL_OUT = ("attn.wo.weight", "w_down.weight", "w_down")  # also MoE experts / shared experts
INPUT_MODULES = frozenset({"embed", "embedding", "embeddings", "wte", "tok_embeddings"})
READOUT_MODULES = frozenset({"head", "lm_head"})
ROUTER_MODULES = frozenset({"router", "gate"})


def param_role(name: str, shape: tuple[int, ...]) -> Role:
    parts = canonical_name(name).split(".")
    module = parts[-2] if len(parts) > 1 else ""
    if len(shape) < 2 or parts[-1] == "bias" or "norm" in module:
        return "vector"  # TP5 groups all biases with the input weights: Θ(1) init and LR
    if module in INPUT_MODULES:
        return "input"
    if module in READOUT_MODULES:
        return "readout"
    if module in ROUTER_MODULES:
        return "router"
    return "hidden"


def is_embedding(name: str) -> bool:
    return param_role(name, (2, 2)) == "input"


# ----------------------------------------------------------------------------- width and forward multipliers


def _is_mup(cfg: ModelConfig) -> bool:
    return cfg.parameterization == "mup"


def check_config(cfg: ModelConfig) -> None:
    """One-line ValueError naming the bad model.mup key (the recipe checks base_width itself)."""
    m = cfg.mup
    if m.base_width <= 0:
        raise ValueError(f"model.mup.base_width: must be positive, got {m.base_width}")
    if m.base_head_dim is not None and m.base_head_dim <= 0:
        raise ValueError(f"model.mup.base_head_dim: must be positive, got {m.base_head_dim}")
    for key in ("input_mult", "output_mult", "attn_mult"):
        if not getattr(m, key) > 0:
            raise ValueError(f"model.mup.{key}: must be positive, got {getattr(m, key)}")


def width_mult(cfg: ModelConfig) -> float:
    """d_model / base_width under muP; 1 under SP."""
    if not _is_mup(cfg):
        return 1.0
    check_config(cfg)
    return cfg.d_model / cfg.mup.base_width


def base_head_dim(cfg: ModelConfig) -> float:
    """Head dim of the base model; None in the recipe means base_width / n_heads (heads fixed, head dim scales)."""
    return cfg.mup.base_head_dim or cfg.mup.base_width / cfg.n_heads


def attention_scale(cfg: ModelConfig) -> float:
    """SP: 1/sqrt(d_head). muP: attn_mult * sqrt(base_head_dim) / d_head, i.e. 1/d_head scaling (TP V) pinned
    to SP at the base head dim (the '8/d' of microsoft/mup is the case base_head_dim = 64)."""
    sp = 1.0 / math.sqrt(cfg.head_dim)
    if not _is_mup(cfg):
        return sp
    check_config(cfg)
    return cfg.mup.attn_mult * sp * math.sqrt(base_head_dim(cfg) / cfg.head_dim)  # written so base == SP bitwise


def embedding_multiplier(cfg: ModelConfig) -> float:
    return cfg.mup.input_mult if _is_mup(cfg) else 1.0


def logit_multiplier(cfg: ModelConfig) -> float:
    """muP readout (MuReadout): logits * output_mult / width_mult; also applies to a tied embedding readout."""
    return cfg.mup.output_mult / width_mult(cfg) if _is_mup(cfg) else 1.0


# ----------------------------------------------------------------------------- per-parameter rules


def init_std(name: str, shape: tuple[int, ...], cfg: ModelConfig) -> float | None:
    """Std of the normal init; None = leave the module's own init (norm gains = 1)."""
    role = param_role(name, shape)
    if role == "vector":
        return None
    std = cfg.init_std
    if canonical_name(name).endswith(RESIDUAL_OUT):
        std /= math.sqrt(2 * cfg.n_layers)
    if role == "hidden":
        std /= math.sqrt(width_mult(cfg))  # variance ~ 1/fan_in
    elif role == "router":
        std /= width_mult(cfg)  # Table 3 output weights: variance ~ 1/fan_in^2
    return std


def lr_multiplier(name: str, shape: tuple[int, ...], cfg: ModelConfig) -> float:
    """Adam LR multiplier: 1/width_mult for hidden and router matrices (TP V Tables 3/8), 1 otherwise."""
    if param_role(name, shape) in ("hidden", "router"):
        return 1.0 / width_mult(cfg)
    return 1.0


def eps_multiplier(name: str, shape: tuple[int, ...], cfg: ModelConfig) -> float:
    """Adam eps follows the gradient's scale (Everett et al. 2024): under muP the backward signal in the
    residual stream is ~1/width (1/width readout), so every gradient is ~1/width except the router's
    (its output is summed over the width, which cancels the 1/width)."""
    if param_role(name, shape) == "router":
        return 1.0
    return 1.0 / width_mult(cfg)


def weight_decay_multiplier(name: str, shape: tuple[int, ...], cfg: ModelConfig) -> float:
    """Inverse of the LR multiplier, so AdamW's per-step decay lr * wd does not change with width (MuAdamW;
    Kosson et al. 2025 find muP transfer needs this width-independent decay)."""
    return 1.0 / lr_multiplier(name, shape, cfg)


def describe(model, cfg: ModelConfig) -> list[dict]:
    """One row per parameter with its role and multipliers (for docs, debugging and tests)."""
    rows = []
    for name, p in model.named_parameters():
        shape = tuple(p.shape)
        rows.append({"name": name, "shape": shape, "role": param_role(name, shape),
                     "init_std": init_std(name, shape, cfg), "lr_mult": lr_multiplier(name, shape, cfg),
                     "eps_mult": eps_multiplier(name, shape, cfg),
                     "wd_mult": weight_decay_multiplier(name, shape, cfg)})
    return rows
