"""Dense windtunnel transformer -> transformers `LlamaForCausalLM` (config dict + state dict).

Both models are the same function: pre-norm RMSNorm blocks, RoPE in the half-split (`rotate_half`)
layout with inv_freq = theta^(-2i/E), grouped KV heads, SwiGLU, no biases. Only the storage differs
(fused wqkv / w_gate_up here, separate projections in HF) plus the forward multipliers of mup.py,
which are folded into the weights where that is exact (see `fold_multipliers`).

The pieces are public so the MoE converter (export/moe.py) can reuse the attention, norm and
embedding mapping and only add its expert layers. Every function pops what it converts from
`state`, so keys nobody converts are detected and reported instead of being silently dropped.
"""
from __future__ import annotations

import math

from torch import Tensor

from .. import mup
from ..recipe import ModelConfig, RecipeError


class ExportError(RecipeError):
    """The run cannot be written as the target architecture (one line naming the key).

    A RecipeError subclass so the CLI prints it as a one-line error."""


# Recipe keys whose value changes the forward pass in a way Llama cannot express: (key, is_set, why).
def _unsupported(cfg: ModelConfig) -> list[tuple[str, bool, str]]:
    return [
        ("model.qk_norm", cfg.qk_norm, "Llama cannot express QK-norm"),
        ("model.arch", cfg.arch != "transformer",
         f"{cfg.arch!r} is a user architecture; only the built-in 'transformer' has a converter"),
    ]


def check_supported(cfg: ModelConfig) -> None:
    """Raise ExportError for the first feature the HF Llama family cannot express exactly."""
    for key, is_set, why in _unsupported(cfg):
        if is_set:
            raise ExportError(f"{key}: {why}; export not possible")


def take(state: dict[str, Tensor], key: str) -> Tensor:
    """Pop one tensor as contiguous fp32, or fail naming the missing key."""
    if key not in state:
        raise ExportError(f"checkpoint: missing tensor {key!r} (does the checkpoint match recipe.yaml?)")
    return state.pop(key).float().contiguous()


def hf_config(cfg: ModelConfig) -> dict:
    """LlamaConfig fields; `rope_theta` is accepted by transformers 4.x and 5.x (5.x nests it itself)."""
    return {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.d_model,
        "intermediate_size": cfg.ffn_dim,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.kv_heads,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.max_seq_len,
        "rope_theta": cfg.rope_theta,
        "rms_norm_eps": cfg.norm_eps,
        "tie_word_embeddings": cfg.tie_embeddings,
        "attention_bias": False,
        "mlp_bias": False,
        "initializer_range": cfg.base_init_std,
        "torch_dtype": "float32",
    }


def query_fold(cfg: ModelConfig) -> float:
    """Factor on q_proj so that HF's fixed 1/sqrt(head_dim) reproduces mup.attention_scale (exact: RoPE is linear)."""
    return mup.attention_scale(cfg) * math.sqrt(cfg.head_dim)


def convert_attention(cfg: ModelConfig, state: dict[str, Tensor], layer: int) -> dict[str, Tensor]:
    src, dst = f"blocks.{layer}.", f"model.layers.{layer}."
    q_rows, kv_rows = cfg.n_heads * cfg.head_dim, cfg.kv_heads * cfg.head_dim
    q, k, v = take(state, src + "attn.wqkv.weight").split([q_rows, kv_rows, kv_rows], dim=0)
    fold = query_fold(cfg)
    if not math.isclose(fold, 1.0, rel_tol=1e-12):  # SP: 1/sqrt(E) * sqrt(E) is 1 up to rounding
        q = q * fold
    return {
        dst + "input_layernorm.weight": take(state, src + "attn_norm.weight"),
        dst + "self_attn.q_proj.weight": q.contiguous(),
        dst + "self_attn.k_proj.weight": k.contiguous(),
        dst + "self_attn.v_proj.weight": v.contiguous(),
        dst + "self_attn.o_proj.weight": take(state, src + "attn.wo.weight"),
        dst + "post_attention_layernorm.weight": take(state, src + "mlp_norm.weight"),
    }


def convert_swiglu(state: dict[str, Tensor], src: str, dst: str) -> dict[str, Tensor]:
    """SwiGLU at `src` (w_gate_up: gate rows first, then up) -> gate_proj/up_proj/down_proj at `dst`."""
    gate, up = take(state, src + "w_gate_up.weight").chunk(2, dim=0)
    return {
        dst + "gate_proj.weight": gate.contiguous(),
        dst + "up_proj.weight": up.contiguous(),
        dst + "down_proj.weight": take(state, src + "w_down.weight"),
    }


def convert_embeddings(cfg: ModelConfig, state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Embedding, final norm and (untied) readout, with the muP multipliers folded in."""
    out = {"model.embed_tokens.weight": take(state, "embed.weight"),
           "model.norm.weight": take(state, "norm.weight")}
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = take(state, "head.weight")
    return fold_multipliers(cfg, out)


def fold_multipliers(cfg: ModelConfig, weights: dict[str, Tensor]) -> dict[str, Tensor]:
    """Fold mup.embedding_multiplier and mup.logit_multiplier into weights HF has (exact in real arithmetic).

    windtunnel: x0 = m_emb * E[ids];  logits = m_logit * (norm(x_L) @ W_out^T), W_out = E when tied.
    Embedding: E' = m_emb * E. Logits: the final RMSNorm gain is linear in its output, so
    g' = g * m_logit (untied) or g * m_logit / m_emb (tied, undoing the factor E' put on the readout).
    """
    m_emb, m_logit = mup.embedding_multiplier(cfg), mup.logit_multiplier(cfg)
    readout = m_logit / m_emb if cfg.tie_embeddings else m_logit
    if m_emb != 1.0:
        weights["model.embed_tokens.weight"] = weights["model.embed_tokens.weight"] * m_emb
    if readout != 1.0:
        weights["model.norm.weight"] = weights["model.norm.weight"] * readout
    return weights


def convert(cfg: ModelConfig, state: dict[str, Tensor]) -> tuple[dict, dict[str, Tensor]]:
    """Dense model -> (LlamaConfig fields, LlamaForCausalLM state dict). Pops every key it uses."""
    check_supported(cfg)
    out = convert_embeddings(cfg, state)
    for i in range(cfg.n_layers):
        out.update(convert_attention(cfg, state, i))
        out.update(convert_swiglu(state, f"blocks.{i}.mlp.", f"model.layers.{i}.mlp."))
    return hf_config(cfg), out
