"""Scale families: model shapes for a width or a parameter target, and token budgets.

Shape rules (stated once, used by the sweep planner and the scaling fitter):
- width d_model is a multiple of the head dim; heads = d_model / head_dim (head dim fixed across the
  family, as in Chinchilla's and Pythia's model ladders);
- depth: `aspect` (d_model / n_layers) fixed, n_layers = round(d_model / aspect) >= 1 (Kaplan et al. 2020
  find loss nearly flat for aspect ratios 20-200); or `depth: N` to hold the depth fixed;
- GQA group size (n_heads / n_kv_heads) is kept from the base; an explicit `ffn_hidden` in the base is
  kept as a ratio to d_model (rounded up to ffn_multiple_of), otherwise the 8/3 SwiGLU rule applies.
Defaults come from the base model: its head dim and its own aspect ratio.
Every parameter count comes from windtunnel.accounting.count_params.
"""
from __future__ import annotations

import math

from ..accounting import count_params, training_flops
from ..recipe import ModelConfig, RecipeError, build_dataclass

COUNTS = ("non_embedding", "active_non_embedding", "total", "active")
MAX_WIDTH = 65536


def _model_config(model: dict, source: str = "sweep.scale") -> ModelConfig:
    cfg = build_dataclass(ModelConfig, model, source, "model.")
    if cfg.vocab_size <= 0:  # non-embedding counts do not depend on the vocabulary
        cfg = build_dataclass(ModelConfig, {**model, "vocab_size": 256}, source, "model.")
    return cfg


def _base_rules(base: ModelConfig, aspect: float | None, head_dim: int | None) -> tuple[float, int]:
    aspect = aspect if aspect is not None else base.d_model / base.n_layers
    head_dim = head_dim if head_dim is not None else base.head_dim
    if aspect <= 0:
        raise RecipeError(f"sweep.scale.aspect: must be positive, got {aspect}")
    if head_dim <= 0 or head_dim % 2:
        raise RecipeError(f"sweep.scale.head_dim: must be a positive even number, got {head_dim}")
    return aspect, head_dim


def shape_for_width(d_model: int, base: dict, *, aspect: float | None = None, head_dim: int | None = None,
                    depth: int | None = None) -> dict:
    """The `model` section for width `d_model`, derived from `base` (a model section dict)."""
    ref = _model_config(base)
    aspect, head_dim = _base_rules(ref, aspect, head_dim)
    if d_model <= 0 or d_model % head_dim:
        raise RecipeError(f"sweep.scale.widths: {d_model} is not a positive multiple of head_dim={head_dim}")
    n_heads = d_model // head_dim
    group = ref.n_heads // ref.kv_heads
    out = dict(base)
    out.update(d_model=d_model, n_heads=n_heads,
               n_layers=depth if depth is not None else max(1, round(d_model / aspect)))
    if base.get("n_kv_heads") is not None:  # keep the GQA group; MHA where heads do not divide
        out["n_kv_heads"] = n_heads // group if n_heads % group == 0 else n_heads
    if base.get("ffn_hidden"):
        m = ref.ffn_multiple_of
        out["ffn_hidden"] = m * math.ceil(ref.ffn_dim / ref.d_model * d_model / m)
    return out


def model_params(model: dict, count: str = "non_embedding") -> int:
    """One parameter count of a model section (see accounting.ParamCounts)."""
    if count not in COUNTS:
        raise RecipeError(f"sweep.scale.count: {count!r} is not one of {', '.join(COUNTS)}")
    return getattr(count_params(_model_config(model)), count)


def shape_for_params(target_non_embedding: float, base: dict, *, aspect: float | None = None,
                     head_dim: int | None = None, depth: int | None = None,
                     count: str = "non_embedding", keep_group: bool = False) -> dict:
    """The `model` section whose `count` parameters are closest (in log) to the target.

    `base` is a model section dict (e.g. recipe.to_dict()["model"]); the shape rules are in the
    module docstring. Widths step by one head dim, so the match is within a few percent for
    models above ~1M non-embedding parameters; `keep_group=True` steps by head dim x GQA group so that
    every candidate keeps the base's query/KV group (a 32q/8kv base never becomes MHA).
    """
    if not target_non_embedding or target_non_embedding <= 0:
        raise RecipeError(f"sweep.scale.params: must be positive, got {target_non_embedding}")
    ref = _model_config(base)
    _, hd = _base_rules(ref, aspect, head_dim)
    step = hd * (ref.n_heads // ref.kv_heads if keep_group else 1)
    best, best_err = None, math.inf
    for d in range(step, MAX_WIDTH + 1, step):
        shape = shape_for_width(d, base, aspect=aspect, head_dim=head_dim, depth=depth)
        n = model_params(shape, count)
        err = abs(math.log(n / target_non_embedding))
        if err < best_err:
            best, best_err = shape, err
        elif n > target_non_embedding:  # counts grow with width: past the target, done
            break
    return best


def tokens_for(model: dict, seq_len: int, *, tokens_per_param: float | None = None,
               flops: float | None = None, count: str = "non_embedding") -> int:
    """Token budget: D = tokens_per_param * N (Chinchilla's ~20), or D = C / (FLOPs per token)."""
    if (tokens_per_param is None) == (flops is None):
        raise RecipeError("sweep.scale: set exactly one of tokens_per_param and flops")
    if tokens_per_param is not None:
        return int(round(tokens_per_param * model_params(model, count)))
    per_token = training_flops(_model_config(model), seq_len, 1.0)
    return int(round(flops / per_token))


