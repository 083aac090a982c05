"""Decoder-only transformer: embedding, pre-norm blocks (RMSNorm, RoPE attention, SwiGLU or MoE), readout.

`forward(input_ids)` returns logits [B, T, V]; `forward(input_ids, targets)` returns
{"loss": scalar to backprop, "metrics": {"ce": next-token CE, ...}} so the trainer can log extras
(MoE load, MTP depths) without host syncs.
"""
from __future__ import annotations

import torch
from torch import nn

from .. import mup
from ..accounting import is_moe_layer
from ..recipe import ModelConfig
from .attention import Attention, rope_tables
from .loss import lm_loss
from .mlp import SwiGLU
from .registry import register_model


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.attn_norm = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.attn = Attention(cfg, scale=mup.attention_scale(cfg))
        self.mlp_norm = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.is_moe = is_moe_layer(cfg, layer)
        if self.is_moe:
            from .moe import MoE

            self.mlp = MoE(cfg, layer)
        else:
            self.mlp = SwiGLU(cfg.d_model, cfg.ffn_dim)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), cos, sin)
        return x + self.mlp(self.mlp_norm(x))


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.vocab_size <= 0 or cfg.max_seq_len <= 0:
            raise ValueError("model.vocab_size and model.max_seq_len must be resolved before building")
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layers))
        self.norm = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.head = None if cfg.tie_embeddings else nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.embed_mult = mup.embedding_multiplier(cfg)
        self.logit_mult = mup.logit_multiplier(cfg)
        cos, sin = rope_tables(cfg.head_dim, cfg.max_seq_len, cfg.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.mtp = None
        if cfg.mtp.n_future > 1:
            from .mtp import build_mtp

            self.mtp = build_mtp(cfg)
        self.reset_parameters()

    @property
    def readout_weight(self) -> torch.Tensor:
        return self.embed.weight if self.head is None else self.head.weight

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Init every parameter from the parameterization rules (mup.py), by name."""
        for name, p in self.named_parameters():
            std = mup.init_std(name, tuple(p.shape), self.cfg)
            if std is not None:
                nn.init.normal_(p, mean=0.0, std=std)
        self.rope_cos, self.rope_sin = rope_tables(
            self.cfg.head_dim, self.cfg.max_seq_len, self.cfg.rope_theta, device=self.rope_cos.device
        )

    def trunk(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Residual stream after the last block [B, T, D] (before the final norm)."""
        x = self.embed(input_ids)
        if self.embed_mult != 1.0:
            x = x * self.embed_mult
        for block in self.blocks:
            x = block(x, self.rope_cos, self.rope_sin)
        return x

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return (hidden @ self.readout_weight.t()).float() * self.logit_mult

    def forward(self, input_ids: torch.Tensor, targets: torch.Tensor | None = None):
        x = self.trunk(input_ids)
        h = self.norm(x)
        if targets is None:
            return self.logits(h)
        ce, loss = lm_loss(h, self.readout_weight, targets, logit_scale=self.logit_mult,
                           z_coef=self.cfg.z_loss, chunk=self.cfg.loss_chunk)
        metrics = {"ce": ce.detach()}
        for block in self.blocks:
            if block.is_moe:
                loss = loss + block.mlp.aux_loss(metrics)
        if self.mtp is not None:
            loss = loss + self.mtp(self, x, input_ids, targets, metrics)
        return {"loss": loss, "metrics": metrics}

    def after_optimizer_step(self) -> None:
        """Called by the trainer after each optimizer step: aux-loss-free MoE bias updates (no host sync)."""
        for block in self.blocks:
            if block.is_moe:
                block.mlp.update_bias()


@register_model("transformer")
def build_transformer(cfg: ModelConfig) -> Transformer:
    return Transformer(cfg)
