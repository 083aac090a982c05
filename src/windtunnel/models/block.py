"""One pre-norm transformer block: x + r attn(norm(x)), then x + r ffn(norm(x)); the FFN is SwiGLU or MoE.

r is the depth rule's residual multiplier (mup.residual_multiplier: (base_depth/L)^alpha, CompleteP); it is
1 without a depth rule and at the base depth, and then the multiplication is skipped (bitwise SP).

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
        self.branch_mult = mup.residual_multiplier(cfg)

    def branch(self, y: torch.Tensor) -> torch.Tensor:
        return y * self.branch_mult if self.branch_mult != 1.0 else y

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        x = x + self.branch(self.attn(self.attn_norm(x), cos, sin))
        if self.is_moe:
            y, aux = self.mlp(self.mlp_norm(x))
            return x + self.branch(y), aux
        return x + self.branch(self.mlp(self.mlp_norm(x))), {}
