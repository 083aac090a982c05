"""Predictions for a target run and the recipe that trains it (`windtunnel fit ... --emit target.yaml`)."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import yaml

from ..recipe import Recipe, deep_merge, load_yaml_tree
from .checks import extrapolation_warning
from .result import FitResult

MAX_EXTRAPOLATION = 10.0  # warn beyond one decade of compute past the largest fitted run


def predict_target(result: FitResult, *, params: float | None = None, tokens: float | None = None,
                   flops: float | None = None, hparams: FitResult | None = None,
                   max_extrapolation: float = MAX_EXTRAPOLATION) -> dict:
    """N*, D*, loss (with CI) for a budget C (compute-optimal, C = 6ND) or for a given (N, D);
    plus the learning rate and batch suggested by the lr-bs law (`hparams`, or `result` itself)."""
    if flops is not None and (params is not None or tokens is not None):
        raise ValueError("target: give either --target-flops or --target-params with --target-tokens, not both")
    out: dict = {"warnings": []}
    if flops is not None:
        _positive("--target-flops", flops)
        N, D, loss = (float(v) for v in result.compute_optimal(flops))
        band = result.compute_optimal_interval(flops)
        out.update(mode="compute_optimal", C=float(flops), N=N, D=D)
        if band:
            out.update(N_ci=_pair(band["N"]), D_ci=_pair(band["D"]), loss_ci=_pair(band["loss"]))
    elif params is not None and tokens is not None:
        _positive("--target-params", params)
        _positive("--target-tokens", tokens)
        N, D = float(params), float(tokens)
        out.update(mode="given", C=6.0 * N * D, N=N, D=D)
        loss = None
        if result.impl.predict is not None:
            loss = float(result.predict(N, D))
            band = result.predict_interval(N, D)
            if band:
                out["loss_ci"] = _pair(band)
        elif result.impl.kind == "frontier":
            raise ValueError(f"law {result.law} predicts only compute-optimal runs: use --target-flops")
    else:
        raise ValueError("target: give --target-flops C, or --target-params N with --target-tokens D")
    out.update(loss=loss, tokens_per_param=D / N, extrapolation=out["C"] / result.max_fitted_compute)
    warning = extrapolation_warning(out["C"], result.max_fitted_compute, max_extrapolation)
    if warning:
        out["warnings"].append(warning)
    law = hparams if hparams is not None else (result if result.impl.suggest else None)
    if law is not None:
        out["hparams"] = suggest_hparams(law, N, D)
    return out


def suggest_hparams(law: FitResult, N: float, D: float) -> dict:
    s = law.suggest(N, D)
    out = {key: float(value) for key, value in s.items()}
    for key in s:
        band = law.interval(lambda p, k=key: law.impl.suggest(p, N, D)[k])
        if band:
            out[f"{key}_ci"] = _pair(band)
    return out


def _pair(band) -> list[float]:
    return [float(np.asarray(band[0])), float(np.asarray(band[1]))]


def _positive(name: str, value: float) -> None:
    if not np.isfinite(value) or value <= 0:
        raise ValueError(f"{name}: must be a positive number, got {value}")


# ----------------------------------------------------------------------------- --emit


def default_shape_fn() -> Callable[[float, dict], dict]:
    try:
        from ..sweep.families import shape_for_params
    except ImportError as e:
        raise ValueError(f"--emit needs windtunnel.sweep.families.shape_for_params ({e})") from None
    return shape_for_params


def emit_recipe(target: dict, base: str | Path, out: str | Path, n_kind: str = "non_embedding",
                shape_fn: Callable[[float, dict], dict] | None = None, note: str = "") -> Path:
    """Write a recipe for the target run: `base` with the model shaped for N*, train.tokens = D*,
    the suggested LR and batch, and out_dir cleared. Validated through Recipe before writing."""
    shape_fn = shape_fn or default_shape_fn()
    raw = load_yaml_tree(Path(base))
    raw["model"] = _shape(target["N"], raw.get("model") or {}, n_kind, shape_fn)
    train = raw.setdefault("train", {})
    train["tokens"], train["steps"] = int(round(target["D"])), None
    hp = target.get("hparams") or {}
    if "lr" in hp:
        raw.setdefault("optim", {})["lr"] = float(hp["lr"])
    if "batch" in hp:
        per_step = Recipe.from_dict(raw, source=str(base)).train
        train["batch_size"] = max(1, int(round(hp["batch"] / (per_step.seq_len * per_step.grad_accum))))
    raw["out_dir"] = None
    raw.setdefault("logging", {})["run_name"] = None
    recipe = Recipe.from_dict(raw, source=str(out))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(_header(target, note) + yaml.safe_dump(recipe.to_dict(), sort_keys=False))
    return out


# --n-kind -> the `count` of sweep.families.shape_for_params
SHAPE_COUNTS = {"non_embedding": "non_embedding", "total": "total", "active": "active_non_embedding"}


def _shape(N: float, base_model: dict, n_kind: str, shape_fn: Callable) -> dict:
    """Model section with N parameters of kind n_kind (sized by the sweep's scale-family rules)."""
    extra = {} if n_kind == "non_embedding" else {"count": SHAPE_COUNTS[n_kind]}
    return deep_merge(base_model, shape_fn(N, base_model, **extra))


def _header(target: dict, note: str) -> str:
    loss = target.get("loss")
    ci = target.get("loss_ci")
    lines = [f"# written by `windtunnel fit`{': ' + note if note else ''}",
             f"# target: N = {target['N']:.4g} ({target.get('n_kind', 'non_embedding')}), D = {target['D']:.4g} "
             f"tokens, C = {target['C']:.4g} FLOPs"]
    if loss is not None:
        lines.append(f"# predicted loss {loss:.4f}" + (f" (CI {ci[0]:.4f}-{ci[1]:.4f})" if ci else ""))
    hp = target.get("hparams") or {}
    if "batch" in hp:
        lines.append(f"# suggested global batch {hp['batch']:.4g} tokens: train.batch_size assumes one process; "
                     "divide it by the number of processes")
    lines += [f"# warning: {w}" for w in target.get("warnings", [])]
    return "\n".join(lines) + "\n"
