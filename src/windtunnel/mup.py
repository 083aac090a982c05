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
from .errors import RecipeError
from .recipe import ModelConfig
from .validation import RECIPE_BOUNDS, check_numbers

Role = Literal["input", "hidden", "readout", "router", "vector"]
DEPTH_ALPHA = {"none": 0.0, "completep": 1.0, "sqrt": 0.5}
# The tunable per-group LR constant (model.mup.*) of each role; the router is a matrix inside the blocks.
GROUP_LR_KEYS = {"input": "embed_lr_mult", "hidden": "hidden_lr_mult", "router": "hidden_lr_mult",
                 "readout": "readout_lr_mult", "vector": "vector_lr_mult"}
BLOCK_MODULES = frozenset({"blocks", "block"})  # trunk blocks and the MTP heads' blocks

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


def in_block(name: str) -> bool:
    """The parameter lives inside a residual branch (its gradient carries the branch multiplier)."""
    return not BLOCK_MODULES.isdisjoint(canonical_name(name).split("."))


def is_embedding(name: str) -> bool:
    return param_role(name, (2, 2)) == "input"


# ----------------------------------------------------------------------------- width and forward multipliers


def _is_mup(cfg: ModelConfig) -> bool:
    return cfg.parameterization == "mup"


def check_config(cfg: ModelConfig) -> None:
    """One-line error naming the bad model.mup key, for configs built in code (a loaded recipe has
    already passed the same bounds table in validation.py)."""

    def fail(path: str, msg: str) -> None:
        raise RecipeError(f"{path}: {msg}")

    check_numbers(cfg.mup, RECIPE_BOUNDS, fail, "model.mup.")


def width_mult(cfg: ModelConfig) -> float:
    """d_model / base_width under muP; 1 under SP."""
    if not _is_mup(cfg):
        return 1.0
    check_config(cfg)
    return cfg.d_model / cfg.mup.base_width


def depth_alpha(cfg: ModelConfig) -> float:
    """Exponent of the depth rule: 0 (none, or SP), 1 (CompleteP), 1/2 (sqrt: MiniCPM / Depth-muP)."""
    return DEPTH_ALPHA[cfg.mup.depth_rule] if _is_mup(cfg) else 0.0


def depth_ratio(cfg: ModelConfig) -> float:
    """base_depth / n_layers (1 when no depth rule applies)."""
    if depth_alpha(cfg) == 0.0:
        return 1.0
    check_config(cfg)
    return (cfg.mup.base_depth or cfg.n_layers) / cfg.n_layers


def residual_multiplier(cfg: ModelConfig) -> float:
    """Multiplier of every residual branch, x + r * f(x): (base_depth / L)^alpha (Dey et al. 2025, CompleteP
    alpha = 1; alpha = 1/2 is MiniCPM's scale_depth / sqrt(L) pinned to 1 at the base depth). 1 at base depth."""
    alpha = depth_alpha(cfg)
    return depth_ratio(cfg) if alpha == 1.0 else depth_ratio(cfg) ** alpha


def depth_lr_multiplier(cfg: ModelConfig) -> float:
    """Adam LR of parameters inside the blocks: (L / base_depth)^(alpha - 1) (CompleteP Table 1): 1 for
    CompleteP, sqrt(base_depth / L) for the sqrt rule."""
    alpha = depth_alpha(cfg)
    return 1.0 if alpha in (0.0, 1.0) else depth_ratio(cfg) ** (1.0 - alpha)


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
    """Std of the normal init; None = leave the module's own init (norm gains = 1). The base std is
    model.init_std or the width-aware default (ModelConfig.base_init_std); under a depth rule the GPT-2
    1/sqrt(2L) residual factor is frozen at the base depth (the branch multiplier does the depth scaling)."""
    role = param_role(name, shape)
    if role == "vector":
        return None
    std = cfg.base_init_std
    if canonical_name(name).endswith(RESIDUAL_OUT):
        depth = cfg.n_layers if depth_alpha(cfg) == 0.0 else (cfg.mup.base_depth or cfg.n_layers)
        std /= math.sqrt(2 * depth)
    if role == "hidden":
        std /= math.sqrt(width_mult(cfg))  # variance ~ 1/fan_in
    elif role == "router":
        std /= width_mult(cfg)  # Table 3 output weights: variance ~ 1/fan_in^2
    return std


def lr_multiplier(name: str, shape: tuple[int, ...], cfg: ModelConfig) -> float:
    """Adam LR multiplier: the group's tunable constant (muP only), times 1/width_mult for hidden and router
    matrices (TP V Tables 3/8), times the depth rule's factor inside the blocks."""
    role = param_role(name, shape)
    if not _is_mup(cfg):
        return 1.0
    mult = getattr(cfg.mup, GROUP_LR_KEYS[role])
    if role in ("hidden", "router"):
        mult /= width_mult(cfg)
    return mult * depth_lr_multiplier(cfg) if in_block(name) else mult


def eps_multiplier(name: str, shape: tuple[int, ...], cfg: ModelConfig) -> float:
    """Adam eps follows the gradient's scale (Everett et al. 2024): under muP the backward signal in the
    residual stream is ~1/width (1/width readout), so every gradient is ~1/width except the router's
    (its output is summed over the width, which cancels the 1/width). Inside the blocks the residual
    multiplier scales the gradients too (CompleteP: eps x (base_depth/L)^alpha)."""
    mult = 1.0 if param_role(name, shape) == "router" else 1.0 / width_mult(cfg)
    return mult * residual_multiplier(cfg) if in_block(name) else mult


def weight_decay_multiplier(name: str, shape: tuple[int, ...], cfg: ModelConfig) -> float:
    """Inverse of the width LR rule, so AdamW's per-step decay lr * wd does not change with width (MuAdamW;
    Kosson et al. 2025 find muP transfer needs this width-independent decay). The tunable LR constants and
    the depth rule do not change it."""
    return width_mult(cfg) if param_role(name, shape) in ("hidden", "router") else 1.0


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
