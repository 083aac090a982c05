"""Causal self-attention with RoPE and grouped KV heads (MHA: kv = heads, GQA: 1 < kv < heads, MQA: kv = 1).

Shape suffixes: B batch, T time, D model width, H query heads, K kv heads, E head dim.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..recipe import ModelConfig


def rope_tables(head_dim: int, seq_len: int, theta: float, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables [T, E/2] for rotary embeddings (Su et al. 2021), half-split layout as in Llama/HF."""
    inv = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim))
    freqs = torch.outer(torch.arange(seq_len, device=device, dtype=torch.float32), inv)
    return freqs.cos(), freqs.sin()


def apply_rope(x_BHTE: torch.Tensor, cos_TE: torch.Tensor, sin_TE: torch.Tensor) -> torch.Tensor:
    x1, x2 = x_BHTE.float().chunk(2, dim=-1)
    cos, sin = cos_TE[: x_BHTE.size(-2)], sin_TE[: x_BHTE.size(-2)]
    out = torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)
    return out.type_as(x_BHTE)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, scale: float):
        super().__init__()
        self.n_heads, self.n_kv, self.head_dim = cfg.n_heads, cfg.kv_heads, cfg.head_dim
        self.scale = scale
        self.wqkv = nn.Linear(cfg.d_model, (self.n_heads + 2 * self.n_kv) * self.head_dim, bias=False)
        self.wo = nn.Linear(self.n_heads * self.head_dim, cfg.d_model, bias=False)
        self.q_norm = nn.RMSNorm(self.head_dim, eps=cfg.norm_eps) if cfg.qk_norm else None
        self.k_norm = nn.RMSNorm(self.head_dim, eps=cfg.norm_eps) if cfg.qk_norm else None

    def forward(self, x_BTD: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        B, T, _ = x_BTD.shape
        sizes = [self.n_heads * self.head_dim, self.n_kv * self.head_dim, self.n_kv * self.head_dim]
        q, k, v = self.wqkv(x_BTD).split(sizes, dim=-1)
        q_BHTE = q.view(B, T, self.n_heads, self.head_dim).transpose(1, 2)
        k_BKTE = k.view(B, T, self.n_kv, self.head_dim).transpose(1, 2)
        v_BKTE = v.view(B, T, self.n_kv, self.head_dim).transpose(1, 2)
        if self.q_norm is not None:
            q_BHTE, k_BKTE = self.q_norm(q_BHTE), self.k_norm(k_BKTE)
        q_BHTE, k_BKTE = apply_rope(q_BHTE, cos, sin), apply_rope(k_BKTE, cos, sin)
        y = F.scaled_dot_product_attention(
            q_BHTE, k_BKTE, v_BKTE, is_causal=True, scale=self.scale, enable_gqa=self.n_kv != self.n_heads
        )
        return self.wo(y.transpose(1, 2).reshape(B, T, -1))
