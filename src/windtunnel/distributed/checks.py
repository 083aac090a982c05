"""Combinations of the `distributed` block that the recipe schema allows but the strategies do not."""
from __future__ import annotations

from ..recipe import Recipe, RecipeError


def check_distributed(recipe: Recipe) -> None:
    """Raise one line naming the recipe key when the strategy cannot do what the block asks."""
    d = recipe.distributed

    def fail(key: str, msg: str) -> None:
        raise RecipeError(f"distributed.{key}: {msg}")

    if d.strategy != "deepspeed" and d.zero_stage:
        fail("zero_stage", f"{d.zero_stage} applies to strategy deepspeed, not {d.strategy}")
    if d.strategy == "ddp":
        for key, device in (("offload_optimizer", d.offload_optimizer), ("offload_params", d.offload_params)):
            if device != "none":
                fail(key, f"{device} offload needs strategy deepspeed (or fsdp with offload_params=cpu)")
    if d.strategy == "fsdp":
        if d.offload_optimizer != "none":
            fail("offload_optimizer", "FSDP2 runs the optimizer step on CPU with offload_params=cpu; "
                                      "set offload_optimizer=none")
        if d.offload_params == "nvme":
            fail("offload_params", "FSDP2 offloads to cpu only; nvme needs strategy deepspeed with zero_stage 3")
    if d.strategy == "deepspeed":
        if d.offload_params != "none" and d.zero_stage != 3:
            fail("offload_params", f"parameter offload needs zero_stage 3, got {d.zero_stage}")
        if d.offload_optimizer != "none" and d.zero_stage == 0:
            fail("offload_optimizer", "optimizer offload needs zero_stage 1-3, got 0")
        if d.offload_optimizer == "nvme" and d.zero_stage != 3:
            fail("offload_optimizer", f"nvme optimizer offload needs zero_stage 3, got {d.zero_stage}")
        if recipe.train.nan_policy == "skip":
            raise RecipeError("train.nan_policy: skip is not possible with distributed.strategy=deepspeed "
                              "(DeepSpeed steps inside backward); use halt")
