"""One pre-norm transformer block: x + attn(norm(x)), then x + ffn(norm(x)); the FFN is SwiGLU or MoE.

`forward` returns (x, aux): aux holds the MoE router statistics of this block (empty for a dense block),
so the losses built from them flow back through the return value, not through module state.
"""
from __future__ import annotations

import torch
from torch import nn

from .. import mup
from ..recipe import ModelConfig
from .attention import Attention
from .mlp import SwiGLU
from .moe import MoE


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.attn_norm = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.attn = Attention(cfg, scale=mup.attention_scale(cfg))
        self.mlp_norm = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.is_moe = cfg.is_moe_layer(layer)
        self.mlp = MoE(cfg) if self.is_moe else SwiGLU(cfg.d_model, cfg.ffn_dim)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        x = x + self.attn(self.attn_norm(x), cos, sin)
        if self.is_moe:
            y, aux = self.mlp(self.mlp_norm(x))
            return x + y, aux
        return x + self.mlp(self.mlp_norm(x)), {}
