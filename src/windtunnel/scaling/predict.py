"""Predictions for a target run and the recipe that trains it (`windtunnel fit ... --emit target.yaml`)."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import yaml

from ..errors import DataError, RecipeError
from ..recipe import Recipe, deep_merge, load_yaml_tree
from .checks import drift_warning, extrapolation_warning, form_spread, form_warning, min_steps_drift
from .fit import LAWS
from .result import FitResult

MAX_EXTRAPOLATION = 10.0  # warn beyond one decade of compute past the largest fitted run


def predict_target(result: FitResult, *, params: float | None = None, tokens: float | None = None,
                   flops: float | None = None, hparams: FitResult | None = None,
                   max_extrapolation: float = MAX_EXTRAPOLATION) -> dict:
    """N*, D*, loss (with CI) for a budget C (compute-optimal, C = 6ND) or for a given (N, D);
    plus the learning rate and batch suggested by the lr-bs law (`hparams`, or `result` itself), and
    for loss laws `min_steps_drift`: the prediction refitted without the shortest runs (checks.py), and
    after --law auto `forms`: every candidate form's prediction at the same (N, D)."""
    if flops is not None and (params is not None or tokens is not None):
        raise RecipeError("target: give either --target-flops or --target-params with --target-tokens, not both")
    out: dict = {"warnings": []}
    if flops is not None:
        _positive("--target-flops", flops)
        with np.errstate(divide="ignore", over="ignore"):  # a degenerate split is refused just below
            N, D, loss = (float(v) for v in result.compute_optimal(flops))
        if not (np.isfinite(N) and np.isfinite(D) and N > 0 and D > 0):  # exponents fitted at their bound 0
            raise DataError(f"--target-flops {flops:g}: law {result.law} gives no compute-optimal split "
                            f"(N* = {N:.3g}, D* = {D:.3g}): the data do not constrain its exponents")
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
            raise RecipeError(f"law {result.law} predicts only compute-optimal runs: use --target-flops")
    else:
        raise RecipeError("target: give --target-flops C, or --target-params N with --target-tokens D")
    out.update(loss=loss, tokens_per_param=D / N, extrapolation=out["C"] / result.max_fitted_compute)
    warning = extrapolation_warning(out["C"], result.max_fitted_compute, max_extrapolation)
    if warning:
        out["warnings"].append(warning)
    if result.impl.kind == "loss":  # at the main fit's N, D: the refits' losses compare with `loss`
        out["min_steps_drift"] = min_steps_drift(result, N, D)
        out["warnings"] += drift_warning(out["min_steps_drift"])
    if "auto" in result.details:  # --law auto: what the form not chosen predicts at the same (N, D)
        out["forms"] = form_spread(result.details["auto"], {k: law.predict for k, law in LAWS.items()}, N, D)
        out["warnings"] += form_warning(out["forms"])
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
        raise RecipeError(f"{name}: must be a positive number, got {value}")


# ----------------------------------------------------------------------------- --emit


def default_shape_fn() -> Callable[[float, dict], dict]:
    from ..sweep.families import shape_for_params  # a missing package says so (exit 2); a broken import is a bug

    return shape_for_params


def family_rules(recipes: list[str | Path]) -> dict:
    """The scale-family rules the proxy runs followed, read from their recipe.yaml files, so that the
    target is one more member of the same family: their common head dim, and their depth when every
    run had the same n_layers (otherwise the base's aspect ratio, shape_for_params' default)."""
    models = [(load_yaml_tree(Path(r)).get("model") or {}) for r in recipes]
    if len(models) < 2:
        return {}
    shapes = {(m.get("d_model", 256), m.get("n_layers", 4), m.get("n_heads", 4)) for m in models}
    rules = {}
    head_dims = {d // h for d, _, h in shapes if h and d % h == 0}
    if len(head_dims) == 1:
        rules["head_dim"] = head_dims.pop()
    depths = {n for _, n, _ in shapes}
    if len(depths) == 1 and len(shapes) > 1:
        rules["depth"] = depths.pop()
    return rules


def emit_recipe(target: dict, base: str | Path, out: str | Path, n_kind: str = "non_embedding",
                shape_fn: Callable[..., dict] | None = None, note: str = "",
                rules: dict | None = None) -> tuple[Path, dict]:
    """Write a recipe for the target run: `base` with the model shaped for N* by the family `rules`
    (head_dim/depth/aspect; the GQA group is kept), train.tokens = D*, the suggested LR and batch,
    out_dir cleared. Validated through Recipe before writing. Returns the path and what the recipe
    will actually train (N of the shape found, D rounded down to whole steps), so that the
    prediction can be restated for the run that is trained rather than the ideal N*, D*."""
    shape_fn = shape_fn or default_shape_fn()
    raw = load_yaml_tree(Path(base))
    raw["model"] = _shape(target["N"], raw.get("model") or {}, n_kind, shape_fn, rules or {})
    train = raw.setdefault("train", {})
    train["tokens"], train["steps"] = int(round(target["D"])), None
    wsd = (raw.get("schedule") or {}).get("wsd") or {}
    if wsd.get("branches"):  # the proxy's decay branches sit at fractions of the proxy's tokens, not the target's
        wsd["branches"] = []
    hp = target.get("hparams") or {}
    if "lr" in hp:
        raw.setdefault("optim", {})["lr"] = float(hp["lr"])
    if "batch" in hp:
        per_step = Recipe.from_dict(raw, source=str(base)).train
        train["batch_size"] = max(1, int(round(hp["batch"] / (per_step.seq_len * per_step.grad_accum))))
    raw["out_dir"] = None
    raw.setdefault("logging", {})["run_name"] = None
    recipe = Recipe.from_dict(raw, source=str(out))
    actual = emitted_run(recipe, n_kind)
    actual["warnings"] = kept_from_base(recipe, hp, base)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(_header(target, note, actual) + yaml.safe_dump(recipe.to_dict(), sort_keys=False))
    return out, actual


def kept_from_base(recipe: Recipe, hp: dict, base: str | Path) -> list[str]:
    """Say loudly what the target inherits unfitted from the base recipe."""
    data = recipe.data.dataset or ",".join(recipe.data.paths) or recipe.data.source
    kept = []
    if "lr" not in hp:
        kept.append(f"optim.lr = {recipe.optim.lr:g}")
    if "batch" not in hp:
        kept.append(f"batch {recipe.tokens_per_step_per_rank} tokens/step per process")
    out = []
    if kept:
        transfer = "they transfer to N*"
        if "lr" not in hp and recipe.model.parameterization == "mup":
            transfer = (f"the batch transfers to N* (the LR does under muP, base width "
                        f"{recipe.model.mup.base_width}, if it was tuned at that width)")
        out.append(f"--emit: {' and '.join(kept)} NOT fitted (no LR/batch axes in the source): kept from "
                   f"the base {base}; right only if the proxies used them too and {transfer}")
    out.append(f"--emit: data ({recipe.data.source}: {data}) and tokenizer ({recipe.tokenizer.kind}) are the base's")
    return out


def emitted_run(recipe: Recipe, n_kind: str = "non_embedding") -> dict:
    """N (of kind n_kind), D and C = 6ND of the run a recipe trains on one process."""
    from ..sweep.families import model_params
    from ..sweep.plan import planning_vocab

    tree = recipe.to_dict()
    model = {**tree["model"], "vocab_size": tree["model"].get("vocab_size") or planning_vocab(tree)}
    N = float(model_params(model, SHAPE_COUNTS[n_kind]))
    D = float(recipe.total_steps() * recipe.tokens_per_step_per_rank)
    return {"N": N, "D": D, "C": 6.0 * N * D, "lr": recipe.optim.lr,
            "batch": float(recipe.tokens_per_step_per_rank), "d_model": recipe.model.d_model,
            "n_layers": recipe.model.n_layers, "n_heads": recipe.model.n_heads,
            "n_kv_heads": recipe.model.kv_heads}


def restate_for_emitted(result: FitResult, target: dict, actual: dict) -> dict:
    """The prediction at the emitted (N, D): the shape family and whole steps move N and D off N*, D*."""
    out = dict(actual)
    if result.impl.predict is not None:
        out["loss"] = float(result.predict(actual["N"], actual["D"]))
        band = result.predict_interval(actual["N"], actual["D"])
        if band:
            out["loss_ci"] = _pair(band)
    out["N_vs_target"] = actual["N"] / target["N"]
    out["D_vs_target"] = actual["D"] / target["D"]
    return out


# --n-kind -> the `count` of sweep.families.shape_for_params
SHAPE_COUNTS = {"non_embedding": "non_embedding", "total": "total", "active": "active_non_embedding"}


def _shape(N: float, base_model: dict, n_kind: str, shape_fn: Callable, rules: dict) -> dict:
    """Model section with N parameters of kind n_kind (sized by the sweep's scale-family rules)."""
    extra = {**rules, "keep_group": True}
    if n_kind != "non_embedding":
        extra["count"] = SHAPE_COUNTS[n_kind]
    return deep_merge(base_model, shape_fn(N, base_model, **extra))


def _header(target: dict, note: str, actual: dict | None = None) -> str:
    loss = target.get("loss")
    ci = target.get("loss_ci")
    lines = [f"# written by `windtunnel fit`{': ' + note if note else ''}",
             f"# target: N = {target['N']:.4g} ({target.get('n_kind', 'non_embedding')}), D = {target['D']:.4g} "
             f"tokens, C = {target['C']:.4g} FLOPs"]
    if loss is not None:
        lines.append(f"# predicted loss {loss:.4f}" + (f" (CI {ci[0]:.4f}-{ci[1]:.4f})" if ci else ""))
    if actual:
        lines.append(f"# this recipe trains N = {actual['N']:.4g}, D = {actual['D']:.4g} tokens "
                     f"(d_model {actual['d_model']}, {actual['n_layers']} layers, "
                     f"{actual['n_heads']}q/{actual['n_kv_heads']}kv heads)")
    hp = target.get("hparams") or {}
    if "batch" in hp:
        lines.append(f"# suggested global batch {hp['batch']:.4g} tokens: train.batch_size assumes one process; "
                     "divide it by the number of processes")
    lines += [f"# warning: {w}" for w in target.get("warnings", []) + (actual or {}).get("warnings", [])]
    return "\n".join(lines) + "\n"
