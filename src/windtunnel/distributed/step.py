"""One training step's distributed pieces: gradient-sync control, backward, and the global gradient norm."""
from __future__ import annotations

import contextlib

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType
from torch import nn


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
