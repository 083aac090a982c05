"""The recipe's `distributed` block -> an accelerate Accelerator.

- ddp: accelerate's DDP (gloo on CPU: without it accelerate silently reports one process per rank).
- deepspeed: accelerate's DeepSpeedPlugin built from a generated config (plugins.deepspeed_config).
- fsdp: FSDP2; on GPU through accelerate's plugin, on CPU sharded by wrap.py (accelerate's FSDP path
  does nothing on CPU, and says nothing).
"""
from __future__ import annotations

import os

from accelerate import Accelerator
from accelerate.utils import InitProcessGroupKwargs

from ..recipe import Recipe
from .checks import check_distributed
from .device import mixed_precision, use_cuda
from .launcher import check_launcher
from .plugins import _launcherless_env, deepspeed_config, fsdp_plugin


def build_accelerator(recipe: Recipe) -> Accelerator:
    """Check the block (and any accelerate launch config) against the recipe, then build the Accelerator."""
    check_distributed(recipe)
    check_launcher(recipe)
    d = recipe.distributed
    cuda = use_cuda()
    handlers = []
    kwargs: dict = {}
    if d.strategy == "deepspeed":
        from accelerate.utils import DeepSpeedPlugin

        if not cuda:
            os.environ.setdefault("DS_ACCELERATOR", "cpu")  # read once, when DeepSpeed picks its accelerator
        _launcherless_env()
        user_file = os.environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE")
        # accelerate refuses a config dict while its launcher lists zero_stage & co. as "set in the accelerate
        # config"; check_launcher has verified those agree with the recipe, whose config is the one we pass.
        os.environ.pop("ACCELERATE_CONFIG_DS_FIELDS", None)
        kwargs["deepspeed_plugin"] = DeepSpeedPlugin(hf_ds_config=deepspeed_config(recipe, user_file))
    elif d.strategy == "fsdp" and cuda:
        kwargs["fsdp_plugin"] = fsdp_plugin(recipe)
    if not cuda and (int(os.environ.get("WORLD_SIZE", "1")) > 1 or d.strategy == "deepspeed"):
        handlers.append(InitProcessGroupKwargs(backend="gloo"))
    # DeepSpeed on CPU must not pass cpu=True: accelerate would then ignore the plugin.
    cpu = not cuda and d.strategy != "deepspeed"
    return Accelerator(cpu=cpu, mixed_precision=mixed_precision(recipe), kwargs_handlers=handlers, **kwargs)
