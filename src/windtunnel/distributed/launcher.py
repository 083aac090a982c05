"""Reconcile an `accelerate launch --config_file` with the recipe: where they disagree, stop with one line
naming both sides (the recipe stays the one source of truth)."""
from __future__ import annotations

import os

from ..recipe import Recipe, RecipeError
from .device import mixed_precision


def launcher_strategy(env: dict) -> tuple[str | None, str | None]:
    """(strategy, env variable) that `accelerate launch --config_file` asked for, if any."""
    for var, name in (("ACCELERATE_USE_DEEPSPEED", "deepspeed"), ("ACCELERATE_USE_FSDP", "fsdp")):
        if env.get(var, "false").lower() == "true":
            return name, var
    return None, None


def check_launcher(recipe: Recipe, env: dict | None = None) -> None:
    """Raise one line naming both sides when an accelerate config disagrees with the recipe."""
    env = os.environ if env is None else env
    d = recipe.distributed
    launched, var = launcher_strategy(env)
    if launched and launched != d.strategy:
        raise RecipeError(f"distributed.strategy={d.strategy} in the recipe conflicts with {var}=true "
                          f"(set by accelerate launch --config_file); make them agree")
    precision = env.get("ACCELERATE_MIXED_PRECISION", "no")
    if precision not in ("no", mixed_precision(recipe)):
        raise RecipeError(f"train.precision={recipe.train.precision} in the recipe conflicts with "
                          f"ACCELERATE_MIXED_PRECISION={precision} from accelerate launch")
    expected = {
        "ACCELERATE_GRADIENT_ACCUMULATION_STEPS": ("train.grad_accum", str(recipe.train.grad_accum)),
        "ACCELERATE_GRADIENT_CLIPPING": ("train.clip", str(float(recipe.train.clip))),
    }
    if d.strategy == "deepspeed":
        expected |= {
            "ACCELERATE_DEEPSPEED_ZERO_STAGE": ("distributed.zero_stage", str(d.zero_stage)),
            "ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE": ("distributed.offload_optimizer", d.offload_optimizer),
            "ACCELERATE_DEEPSPEED_OFFLOAD_PARAM_DEVICE": ("distributed.offload_params", d.offload_params),
        }
    if d.strategy == "fsdp":
        expected |= {"FSDP_VERSION": ("distributed.strategy=fsdp (FSDP2)", "2"),
                     "FSDP_OFFLOAD_PARAMS": ("distributed.offload_params", str(d.offload_params == "cpu").lower())}
    if env.get("FSDP_ACTIVATION_CHECKPOINTING", "false").lower() == "true":
        raise RecipeError("FSDP_ACTIVATION_CHECKPOINTING=true from accelerate launch: set "
                          "distributed.activation_checkpointing in the recipe instead")
    for var, (key, want) in expected.items():
        got = env.get(var)
        if got is not None and _normal(got) != _normal(want):
            value = want if "=" in key else f"={want}"
            raise RecipeError(f"{key}{value} in the recipe conflicts with {var}={got} from accelerate launch")


def _normal(value: str) -> str:
    try:
        return str(float(value))
    except ValueError:
        return value.lower()
