"""Decoder-only transformer: embedding, pre-norm blocks (RMSNorm, RoPE attention, SwiGLU or MoE), readout.

`forward(input_ids)` returns logits [B, T, V]; `forward(input_ids, targets)` returns
{"loss": scalar to backprop, "metrics": {"ce": next-token CE, ...}} so the trainer can log extras
(MoE load, MTP depths) without host syncs. The MoE blocks and the MTP heads return their losses and
metrics; this module adds them up.
"""
from __future__ import annotations

import torch
from torch import nn

from .. import mup
from ..recipe import ModelConfig
from .attention import rope_tables
from .block import Block
from .loss import lm_loss
from .moe import router_loss
from .mtp import Shared, build_mtp


class Transformer(nn.Module):
    block_types = (Block,)  # models.protocol.BlockModel: what FSDP shards and checkpointing recomputes

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
        self.mtp = build_mtp(cfg) if cfg.mtp_depths > 0 else None
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

    def embed_tokens(self, input_ids: torch.Tensor) -> torch.Tensor:
        x = self.embed(input_ids)
        return x * self.embed_mult if self.embed_mult != 1.0 else x

    def run_blocks(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, dict[int, dict[str, torch.Tensor]]]:
        """Residual stream after the last block [B, T, D] (before the final norm) and the router
        statistics of each MoE block {layer: stats}."""
        x, router = self.embed_tokens(input_ids), {}
        for i, block in enumerate(self.blocks):
            x, aux = block(x, self.rope_cos, self.rope_sin)
            if aux:
                router[i] = aux
        return x, router

    def trunk(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Residual stream after the last block [B, T, D] (before the final norm)."""
        return self.run_blocks(input_ids)[0]

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return (hidden @ self.readout_weight.t()).float() * self.logit_mult

    def shared_with_heads(self) -> Shared:
        """The trunk pieces the MTP heads read (they hold no reference to this model)."""
        return Shared(self.readout_weight, self.logit_mult, self.rope_cos, self.rope_sin, self.embed_tokens)

    def forward(self, input_ids: torch.Tensor, targets: torch.Tensor | None = None):
        x, router = self.run_blocks(input_ids)
        h = self.norm(x)
        if targets is None:
            return self.logits(h)
        ce, loss = lm_loss(h, self.readout_weight, targets, logit_scale=self.logit_mult,
                           z_coef=self.cfg.z_loss, chunk=self.cfg.loss_chunk)
        metrics = {"ce": ce.detach()}
        if router:
            aux, moe_metrics = router_loss(self.cfg, router)
            loss, metrics = loss + aux, metrics | moe_metrics
        if self.mtp is not None:
            aux, mtp_metrics = self.mtp(x, input_ids, targets, self.shared_with_heads())
            loss, metrics = loss + aux, metrics | mtp_metrics
        return {"loss": loss, "metrics": metrics}

    @torch.no_grad()
    def draft(self, x: torch.Tensor, tokens: torch.Tensor, next_token: torch.Tensor) -> list[torch.Tensor]:
        """The MTP heads' greedy guesses for the tokens after `next_token` (speculative decoding)."""
        return self.mtp.draft(x, tokens, next_token, self.shared_with_heads())

    def after_optimizer_step(self) -> None:
        """Called by the trainer after each optimizer step: aux-loss-free MoE bias updates (no host sync)."""
        for block in self.blocks:
            if block.is_moe:
                block.mlp.update_bias()
