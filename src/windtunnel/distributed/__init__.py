"""The recipe's `distributed` block -> an accelerate Accelerator, a wrapped model and the backward step.

One module per job:
- checks.py: strategy/offload combinations the strategies cannot do;
- launcher.py: an `accelerate launch --config_file` reconciled with the recipe (one line where they disagree);
- plugins.py: the DeepSpeed config and accelerate's FSDP2 plugin; accelerator.py builds the Accelerator;
- checkpointing.py: activation checkpointing; wrap.py: FSDP2 sharding per block on CPU;
- optimizer.py: the optimizer (DeepSpeedCPUAdam under DeepSpeed offload) and prepare();
- step.py: no_sync, backward, grad_norm, local_tensor.
Blocks are found through the model protocol (models.protocol.BlockModel), never by class name.
"""
from .accelerator import build_accelerator
from .checkpointing import apply_activation_checkpointing
from .checks import check_distributed
from .device import mixed_precision, use_cuda
from .launcher import check_launcher, launcher_strategy
from .optimizer import build_optimizer, prepare
from .plugins import deepspeed_config, fsdp_plugin
from .step import backward, full_tensor, grad_norm, is_deepspeed, local_tensor, no_sync
from .wrap import native_fsdp, wrap_model

__all__ = ["apply_activation_checkpointing", "backward", "build_accelerator", "build_optimizer",
           "check_distributed", "check_launcher", "deepspeed_config", "fsdp_plugin", "full_tensor",
           "grad_norm", "is_deepspeed", "launcher_strategy", "local_tensor", "mixed_precision", "native_fsdp",
           "no_sync", "prepare", "use_cuda", "wrap_model"]
