"""Parameter and FLOPs accounting: the one place these numbers come from.

Computed from the ModelConfig alone (no torch), so the trainer's MFU, the sweep planner and the
scaling fitter report the same figures; tests check the counts against the built model.

Conventions (Kaplan et al. 2020; the attention term as in PaLM appendix B):
- `non_embedding` excludes the input embedding and the output unembedding (tied or not).
- training FLOPs per token = 6 * (active non-embedding params + unembedding matmul) + 12 * L * d * T.
  The unembedding matmul is counted even when tied: it is real compute (Porian et al. 2024).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from .recipe import ModelConfig


@dataclass(frozen=True)
class ParamCounts:
    total: int  # every trainable parameter, MTP heads included
    embedding: int  # input embedding
    unembedding: int  # output head as a separate tensor (0 when tied)
    non_embedding: int  # trunk: total - embedding - unembedding - mtp
    active: int  # parameters a token touches (MoE: top-k + shared experts), trunk + embeddings
    active_non_embedding: int
    mtp: int  # extra multi-token-prediction heads (dropped at export)

    def as_dict(self) -> dict:
        return asdict(self)


def attention_params(cfg: ModelConfig) -> int:
    d, hd = cfg.d_model, cfg.head_dim
    qkv = d * (cfg.n_heads + 2 * cfg.kv_heads) * hd
    out = cfg.n_heads * hd * d
    qk_norm = 2 * hd if cfg.qk_norm else 0
    return qkv + out + qk_norm


def mlp_params(d: int, hidden: int) -> int:
    return 3 * d * hidden  # SwiGLU: gate, up, down


def layer_params(cfg: ModelConfig, layer: int) -> tuple[int, int]:
    """(total, active) parameters of one transformer block."""
    d = cfg.d_model
    norms = 2 * d
    attn = attention_params(cfg)
    if not cfg.is_moe_layer(layer):
        mlp = mlp_params(d, cfg.ffn_dim)
        return norms + attn + mlp, norms + attn + mlp
    m, eh = cfg.moe, cfg.expert_dim
    router = d * m.num_experts
    shared = m.shared_experts * mlp_params(d, eh)
    total = router + shared + m.num_experts * mlp_params(d, eh)
    active = router + shared + m.top_k * mlp_params(d, eh)
    return norms + attn + total, norms + attn + active


def dense_block_params(cfg: ModelConfig) -> int:
    return 2 * cfg.d_model + attention_params(cfg) + mlp_params(cfg.d_model, cfg.ffn_dim)


def mtp_params(cfg: ModelConfig) -> int:
    """Extra heads for depths 2..n_future. Parallel: one dense block + norm each (Gloeckle et al.
    2024). Sequential (DeepSeek-V3): two norms, a 2d->d projection, one dense block, a final norm."""
    extra = cfg.mtp_depths
    if extra <= 0:
        return 0
    d = cfg.d_model
    if cfg.mtp.style == "parallel":
        per = dense_block_params(cfg) + d
    else:
        per = 3 * d + 2 * d * d + dense_block_params(cfg)
    return extra * per


def count_params(cfg: ModelConfig) -> ParamCounts:
    if cfg.vocab_size <= 0:
        raise ValueError("model.vocab_size must be resolved (from the tokenizer) before counting")
    d, V = cfg.d_model, cfg.vocab_size
    emb = V * d
    unemb = 0 if cfg.tie_embeddings else V * d
    trunk_total = trunk_active = d  # final norm
    for layer in range(cfg.n_layers):
        t, a = layer_params(cfg, layer)
        trunk_total += t
        trunk_active += a
    mtp = mtp_params(cfg)
    return ParamCounts(
        total=emb + unemb + trunk_total + mtp,
        embedding=emb,
        unembedding=unemb,
        non_embedding=trunk_total,
        active=emb + unemb + trunk_active,
        active_non_embedding=trunk_active,
        mtp=mtp,
    )


def flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
    """Training FLOPs (forward + backward) per token, from active parameters."""
    c = count_params(cfg)
    d, L, V = cfg.d_model, cfg.n_layers, cfg.vocab_size
    head = V * d
    extra = cfg.mtp_depths
    dense = c.active_non_embedding + head
    # MTP: each extra depth runs its own head block(s) and the shared unembedding matmul.
    dense += c.mtp + extra * head
    attn = 12 * L * d * seq_len + extra * 12 * d * seq_len
    return 6.0 * dense + attn


def training_flops(cfg: ModelConfig, seq_len: int, tokens: float) -> float:
    return flops_per_token(cfg, seq_len) * tokens


# Dense bf16 peak FLOP/s of known accelerators (vendor spec sheets, no sparsity).
PEAK_TFLOPS = {
    "H100": 989.4, "H200": 989.4, "GH200": 989.4, "B200": 2250.0, "A100": 312.0, "A10G": 125.0,
    "L40S": 362.0, "L4": 121.0, "A6000": 154.8, "4090": 165.2, "V100": 125.0, "MI300X": 1307.0,
}


def peak_flops(device_name: str | None, override_tflops: float | None = None) -> float | None:
    """Peak FLOP/s for MFU; None when unknown (then MFU is not reported)."""
    if override_tflops:
        return override_tflops * 1e12
    if not device_name:
        return None
    name = device_name.upper()
    for key in sorted(PEAK_TFLOPS, key=len, reverse=True):
        if key in name:
            return PEAK_TFLOPS[key] * 1e12
    return None
