"""The recipe's `distributed` block -> an accelerate Accelerator, a wrapped model and the backward step.

- ddp: accelerate's DDP (gloo on CPU: without it accelerate silently reports one process per rank).
- deepspeed: accelerate's DeepSpeedPlugin built from a generated config (ZeRO 0-3, CPU/NVMe offload,
  overlap knobs); with optimizer offload the optimizer is DeepSpeedCPUAdam over the same param groups.
- fsdp: FSDP2. On GPU through accelerate's FullyShardedDataParallelPlugin; on CPU accelerate's FSDP path
  does nothing (and says nothing), so the model is sharded here with torch's native `fully_shard`.
Activation checkpointing recomputes every block (full) or every other block (selective) in backward.
An `accelerate launch --config_file` still works; where it disagrees with the recipe we stop with one line.
"""
from __future__ import annotations

import contextlib
import json
import os
import socket
import types
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType, InitProcessGroupKwargs, extract_model_from_parallel
from torch import nn
from torch.utils.checkpoint import checkpoint

from . import optim
from .recipe import Recipe, RecipeError


def use_cuda() -> bool:
    return torch.cuda.is_available() and os.environ.get("WINDTUNNEL_CPU") != "1"


def mixed_precision(recipe: Recipe) -> str:
    p = recipe.train.precision
    if p == "bf16" or (p == "auto" and use_cuda()):
        return "bf16"
    return "no"


# ----------------------------------------------------------------------------- checks


def check_distributed(recipe: Recipe) -> None:
    """Combinations the recipe schema allows but the strategies do not."""
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


# ----------------------------------------------------------------------------- DeepSpeed / FSDP plugins


def deepspeed_config(recipe: Recipe, user_file: str | None = None) -> dict:
    """The DeepSpeed config for the recipe; a user's JSON config (from accelerate) overrides non-"auto" keys."""
    d, t, m = recipe.distributed, recipe.train, recipe.model
    bucket = d.reduce_bucket_size or m.d_model ** 2  # HF's "auto" rule
    zero = {"stage": d.zero_stage, "overlap_comm": d.overlap_comm, "contiguous_gradients": d.contiguous_gradients,
            "reduce_bucket_size": bucket, "allgather_bucket_size": bucket}
    if d.zero_stage == 3:
        zero |= {"stage3_prefetch_bucket_size": d.prefetch_bucket_size or int(0.9 * m.d_model ** 2),
                 "stage3_param_persistence_threshold": 10 * m.d_model, "sub_group_size": d.sub_group_size,
                 "stage3_gather_16bit_weights_on_model_save": False}
    for key, device in (("offload_optimizer", d.offload_optimizer), ("offload_param", d.offload_params)):
        if device != "none":
            zero[key] = {"device": device, "pin_memory": d.pin_memory}
            if device == "nvme":
                zero[key]["nvme_path"] = d.nvme_path
    config = {"train_micro_batch_size_per_gpu": t.batch_size, "gradient_accumulation_steps": t.grad_accum,
              "gradient_clipping": float(t.clip), "zero_optimization": zero, "zero_allow_untested_optimizer": True,
              "steps_per_print": 2 ** 31 - 1, "wall_clock_breakdown": False}
    if d.offload_optimizer != "none":
        # build_optimizer already gives DeepSpeedCPUAdam; without this accelerate rebuilds it with
        # adamw_mode=False (L2-coupled Adam), silently changing the update.
        config["zero_force_ds_cpu_optimizer"] = False
    if mixed_precision(recipe) == "bf16":
        config["bf16"] = {"enabled": True}
    if user_file:
        config = _overlay(config, _read_user_config(recipe, user_file))
    return config


def _read_user_config(recipe: Recipe, path: str) -> dict:
    try:
        user = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise RecipeError(f"{path}: cannot read DeepSpeed config ({e})") from None
    for section in ("optimizer", "scheduler"):
        if section in user:
            raise RecipeError(f"{path}: remove its {section!r} section (the recipe's optim/schedule drive training)")
    d = recipe.distributed
    zero = user.get("zero_optimization", {})
    pairs = (("zero_optimization.stage", zero.get("stage"), "distributed.zero_stage", d.zero_stage),
             ("zero_optimization.offload_optimizer.device", zero.get("offload_optimizer", {}).get("device"),
              "distributed.offload_optimizer", d.offload_optimizer),
             ("zero_optimization.offload_param.device", zero.get("offload_param", {}).get("device"),
              "distributed.offload_params", d.offload_params))
    for file_key, got, recipe_key, want in pairs:
        if got not in (None, "auto") and str(got) != str(want):
            raise RecipeError(f"{path}: {file_key}={got} conflicts with the recipe's {recipe_key}={want}")
    return user


def _overlay(base: dict, over: dict) -> dict:
    out = dict(base)
    for key, value in over.items():
        if value == "auto" and key in out:
            continue
        out[key] = _overlay(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def fsdp_plugin(recipe: Recipe):
    """accelerate's FSDP2 plugin (used on GPU): one shard unit per transformer Block, then the root."""
    from accelerate.utils import FullyShardedDataParallelPlugin
    from torch.distributed.fsdp import MixedPrecisionPolicy

    d = recipe.distributed
    policy = None
    if mixed_precision(recipe) == "bf16":  # bf16 compute, fp32 gradient reduction
        policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    return FullyShardedDataParallelPlugin(
        fsdp_version=2, reshard_after_forward=d.reshard_after_forward, auto_wrap_policy="transformer_based_wrap",
        transformer_cls_names_to_wrap=["Block"], cpu_offload=d.offload_params == "cpu",
        state_dict_type="SHARDED_STATE_DICT", mixed_precision_policy=policy, activation_checkpointing=False)


def _launcherless_env() -> None:
    """DeepSpeed without torchrun/accelerate launch looks for MPI; make it a world of one instead."""
    if "WORLD_SIZE" in os.environ:
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for key, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_WORLD_SIZE", "1"),
                       ("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", str(port))):
        os.environ.setdefault(key, value)


def build_accelerator(recipe: Recipe) -> Accelerator:
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


# ----------------------------------------------------------------------------- model and optimizer


def apply_activation_checkpointing(model: nn.Module, mode: str) -> list[int]:
    """Recompute the chosen blocks in backward; returns their indices. Parameter names do not change."""
    if mode == "none":
        return []
    blocks = getattr(model, "blocks", None)
    if blocks is None:
        raise RecipeError(f"distributed.activation_checkpointing={mode}: the model has no .blocks to checkpoint")
    chosen = [i for i in range(len(blocks)) if mode == "full" or i % 2 == 0]
    for i in chosen:
        # An instance-level forward keeps state-dict names (a wrapper module would add a prefix).
        blocks[i].forward = types.MethodType(_checkpointed_forward, blocks[i])
    return chosen


def _checkpointed_forward(self: nn.Module, *args, **kwargs):
    forward = type(self).forward.__get__(self)
    if not torch.is_grad_enabled():
        return forward(*args, **kwargs)
    return checkpoint(forward, *args, use_reentrant=False, **kwargs)


def native_fsdp(recipe: Recipe, accelerator: Accelerator) -> bool:
    """FSDP2 applied by us (CPU); on GPU accelerate's plugin shards the model in prepare()."""
    return (recipe.distributed.strategy == "fsdp" and accelerator.device.type == "cpu"
            and accelerator.num_processes > 1)


def wrap_model(model: nn.Module, recipe: Recipe, accelerator: Accelerator) -> nn.Module:
    """Activation checkpointing, then (CPU) FSDP2 sharding; call before building the optimizer."""
    apply_activation_checkpointing(model, recipe.distributed.activation_checkpointing)
    if not native_fsdp(recipe, accelerator):
        return model
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import CPUOffloadPolicy, OffloadPolicy, fully_shard

    mesh = init_device_mesh("cpu", (accelerator.num_processes,))
    d = recipe.distributed
    offload = CPUOffloadPolicy(pin_memory=False) if d.offload_params == "cpu" else OffloadPolicy()
    for block in getattr(model, "blocks", []):
        fully_shard(block, mesh=mesh, reshard_after_forward=d.reshard_after_forward, offload_policy=offload)
    fully_shard(model, mesh=mesh, reshard_after_forward=d.reshard_after_forward, offload_policy=offload)
    return model


def build_optimizer(model: nn.Module, recipe: Recipe, accelerator: Accelerator) -> torch.optim.Optimizer:
    """The recipe's AdamW over optim.param_groups; DeepSpeedCPUAdam (same groups) when DeepSpeed offloads it."""
    if recipe.distributed.strategy != "deepspeed" or recipe.distributed.offload_optimizer == "none":
        return optim.build_optimizer(model, recipe, accelerator.device.type)
    from deepspeed.ops.adam import DeepSpeedCPUAdam

    o = recipe.optim
    return DeepSpeedCPUAdam(optim.param_groups(model, recipe), lr=o.lr, betas=tuple(o.betas), eps=o.eps,
                            weight_decay=o.weight_decay, adamw_mode=True)


def prepare(accelerator: Accelerator, model: nn.Module, optimizer: torch.optim.Optimizer,
            recipe: Recipe) -> tuple[nn.Module, torch.optim.Optimizer]:
    """accelerate.prepare plus checkpoint hooks that keep parameter names plain in every format."""
    from . import consolidate

    if native_fsdp(recipe, accelerator):
        # Not handed to accelerate: it would wrap the sharded model in DDP and save rank 0's shard only.
        accelerator.register_save_state_pre_hook(
            lambda models, weights, out: consolidate.save_sharded(model, optimizer, out))
        accelerator.register_load_state_pre_hook(lambda models, src: consolidate.load_sharded(model, optimizer, src))
        return model, optimizer
    model, optimizer = accelerator.prepare(model, optimizer)
    if accelerator.distributed_type not in (DistributedType.DEEPSPEED, DistributedType.FSDP):
        accelerator.register_save_state_pre_hook(_plain_weights)
        accelerator.register_load_state_pre_hook(_plain_models)
    return model, optimizer


def _plain_weights(models: list, weights: list, output_dir: str) -> None:
    """Save model.safetensors without DDP's `module.` or torch.compile's `_orig_mod.` prefixes."""
    for i, m in enumerate(models):
        weights[i] = extract_model_from_parallel(m, keep_torch_compile=False).state_dict()


def _plain_models(models: list, input_dir: str) -> None:
    models[:] = [extract_model_from_parallel(m, keep_torch_compile=False) for m in models]


# ----------------------------------------------------------------------------- the step


def is_deepspeed(accelerator: Accelerator) -> bool:
    return accelerator.distributed_type == DistributedType.DEEPSPEED


def no_sync(accelerator: Accelerator, model: nn.Module, sync: bool):
    """Context for one micro-batch (forward and backward): skip gradient sync unless `sync`."""
    if sync or is_deepspeed(accelerator):  # DeepSpeed: the boundary is set in backward()
        return contextlib.nullcontext()
    if hasattr(model, "set_requires_gradient_sync"):  # FSDP2
        return _fsdp_no_sync(model)
    return accelerator.no_sync(model)


@contextlib.contextmanager
def _fsdp_no_sync(model):
    model.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)


def backward(accelerator: Accelerator, model: nn.Module, loss: torch.Tensor, sync: bool) -> None:
    """Backward of an already grad-accum-scaled loss; under DeepSpeed the engine also steps when `sync`."""
    if not is_deepspeed(accelerator):
        accelerator.backward(loss)
        return
    # accelerate's path would step at every micro-batch and divide the loss by grad_accum a second time.
    model.set_gradient_accumulation_boundary(sync)
    model.backward(loss, scale_wrt_gas=False)
    if sync:
        model.step()


def local_tensor(t: torch.Tensor) -> torch.Tensor:
    """This rank's shard of a DTensor (FSDP2), the tensor itself otherwise."""
    return t.to_local() if hasattr(t, "to_local") else t


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def grad_norm(accelerator: Accelerator, model: nn.Module, clip: float) -> torch.Tensor:
    """Global gradient norm (clipped to `clip` when > 0) as a plain fp32 tensor, for any strategy."""
    device = accelerator.device
    if is_deepspeed(accelerator):  # DeepSpeed clipped inside its step (gradient_clipping in the config)
        norm = model.get_global_grad_norm()
        return torch.tensor(float(norm if norm is not None else 0.0), device=device)
    params = [p for p in model.parameters() if p.grad is not None]
    if clip > 0:
        norm = accelerator.clip_grad_norm_(params, clip)
    else:
        norm = torch.nn.utils.get_total_norm([p.grad for p in params])
    return full_tensor(norm).float()
