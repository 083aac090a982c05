"""MoE windtunnel transformer -> a transformers MoE family with the same forward pass.

Which family (the first that expresses the recipe exactly):
- Mixtral: no shared experts, every layer MoE, no QK-norm, top_k > 1 (Mixtral always renormalises top-k);
- Qwen3-MoE: QK-norm, no shared experts; dense layers via `mlp_only_layers`;
- Qwen2-MoE: everything else without QK-norm. Its shared expert is gated by sigmoid(w_g . x); with w_g = 0
  the gate is exactly 1/2, so the shared expert's down projection is exported times 2 (exact in floats).
All three route with softmax -> top-k, renormalised iff `norm_topk_prob` (windtunnel renormalises iff
top_k > 1). Not expressible (ExportError naming the key): a sigmoid router, aux-loss-free bias (it changes
the selection), QK-norm together with shared experts. MTP heads are dropped by export/__init__.py.
Attention, norms, embeddings and the muP multipliers are mapped by export/llama.py.
"""
from __future__ import annotations

import dataclasses
import math

import torch
from torch import Tensor

from ..recipe import ModelConfig
from . import llama
from .llama import ExportError, take


def family(cfg: ModelConfig) -> str:
    """'mixtral', 'qwen3_moe' or 'qwen2_moe'; ExportError for what no family expresses."""
    m = cfg.moe
    if cfg.arch != "transformer":
        raise ExportError(f"model.arch: {cfg.arch!r} is a user architecture; only 'transformer' has a converter")
    if m.router != "softmax":
        raise ExportError("model.moe.router: sigmoid routing has no exact HF equivalent (Mixtral/Qwen-MoE "
                          "use softmax); export not possible")
    if m.aux_free:
        raise ExportError("model.moe.aux_free: the learned router bias changes expert selection, which "
                          "Mixtral/Qwen-MoE cannot express; export not possible")
    if cfg.qk_norm and m.shared_experts:
        raise ExportError("model.qk_norm: QK-norm with model.moe.shared_experts > 0 has no HF family "
                          "(Qwen3-MoE has no shared experts, Qwen2-MoE no QK-norm); export not possible")
    if cfg.qk_norm:
        return "qwen3_moe"
    all_moe = len(cfg.moe_layers) == cfg.n_layers
    if not m.shared_experts and all_moe and m.top_k > 1:
        return "mixtral"
    return "qwen2_moe"


def hf_config(cfg: ModelConfig, kind: str) -> dict:
    m = cfg.moe
    base = llama.hf_config(cfg)
    base.pop("mlp_bias")
    base |= {"model_type": kind, "num_experts_per_tok": m.top_k, "output_router_logits": False,
             "router_aux_loss_coef": m.load_balance_coef}
    if kind == "mixtral":
        return base | {"architectures": ["MixtralForCausalLM"], "num_local_experts": m.num_experts,
                       "intermediate_size": cfg.expert_dim, "router_jitter_noise": 0.0, "sliding_window": None}
    dense = [i for i in range(cfg.n_layers) if not cfg.is_moe_layer(i)]
    base |= {"num_experts": m.num_experts, "moe_intermediate_size": cfg.expert_dim,
             "intermediate_size": cfg.ffn_dim, "norm_topk_prob": m.top_k > 1, "decoder_sparse_step": 1,
             "mlp_only_layers": dense, "use_sliding_window": False}
    if kind == "qwen3_moe":
        return base | {"architectures": ["Qwen3MoeForCausalLM"]}
    return base | {"architectures": ["Qwen2MoeForCausalLM"], "qkv_bias": False,
                   "shared_expert_intermediate_size": m.shared_experts * cfg.expert_dim}


def convert_qk_norm_attention(cfg: ModelConfig, state: dict[str, Tensor], layer: int) -> dict[str, Tensor]:
    """Qwen3 attention: the muP query factor goes on the q_norm gain (it follows q_proj)."""
    src, dst = f"blocks.{layer}.", f"model.layers.{layer}."
    fold = llama.query_fold(cfg)
    q_norm = take(state, src + "attn.q_norm.weight")
    out = llama.convert_attention(dataclasses.replace(cfg, parameterization="sp"), state, layer)  # no q fold
    if not math.isclose(fold, 1.0, rel_tol=1e-12):
        q_norm = q_norm * fold
    out[dst + "self_attn.q_norm.weight"] = q_norm
    out[dst + "self_attn.k_norm.weight"] = take(state, src + "attn.k_norm.weight")
    return out


def convert_moe_layer(cfg: ModelConfig, state: dict[str, Tensor], layer: int, kind: str) -> dict[str, Tensor]:
    src, dst = f"blocks.{layer}.mlp.", f"model.layers.{layer}.mlp."
    bias = take(state, src + "router_bias")
    if bias.abs().max() > 0:
        raise ExportError(f"checkpoint: {src}router_bias is non-zero (aux-free balancing was used); export not possible")
    out = {dst + "gate.weight": take(state, src + "router.weight"),
           dst + "experts.gate_up_proj": take(state, src + "experts.w_gate_up"),
           dst + "experts.down_proj": take(state, src + "experts.w_down")}
    if kind == "qwen2_moe":
        width = cfg.moe.shared_experts * cfg.expert_dim
        if width:
            shared = llama.convert_swiglu(state, src + "shared.", dst + "shared_expert.")
            shared[dst + "shared_expert.down_proj.weight"] *= 2.0  # undoes the gate's sigmoid(0) = 1/2
        else:
            shared = {dst + f"shared_expert.{p}_proj.weight": torch.zeros(0, cfg.d_model) for p in ("gate", "up")}
            shared[dst + "shared_expert.down_proj.weight"] = torch.zeros(cfg.d_model, 0)
        out |= shared | {dst + "shared_expert_gate.weight": torch.zeros(1, cfg.d_model)}
    return out


def convert(cfg: ModelConfig, state: dict[str, Tensor]) -> tuple[dict, dict[str, Tensor]]:
    """MoE model -> (HF config fields, HF state dict). Pops every key it uses (see export/__init__.py)."""
    kind = family(cfg)
    out = llama.convert_embeddings(cfg, state)
    for i in range(cfg.n_layers):
        if cfg.qk_norm:
            out |= convert_qk_norm_attention(cfg, state, i)
        else:
            out |= llama.convert_attention(cfg, state, i)
        if cfg.is_moe_layer(i):
            out |= convert_moe_layer(cfg, state, i, kind)
        else:
            out |= llama.convert_swiglu(state, f"blocks.{i}.mlp.", f"model.layers.{i}.mlp.")
    return hf_config(cfg, kind), out
