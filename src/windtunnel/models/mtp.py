"""Multi-token prediction: extra heads that predict tokens t+2 .. t+n from the trunk (depth 1 = the model).

- parallel (Gloeckle et al. 2024, "Better & Faster LLMs via Multi-token Prediction"): head d is one
  transformer block + RMSNorm on the shared trunk output, read out by the shared unembedding.
  Memory-efficient backward as in the paper: the heads run one after another, each forward immediately
  followed by its backward into a detached trunk output, so only one head's activations and logits are
  alive at a time; the accumulated gradients are handed to autograd by `_SequentialHeadsLoss`, so the
  trainer still calls loss.backward() once and the trunk is backpropagated once. (ZeRO-3 / FSDP2 sharded
  parameters fall back to plain autograd.)
- sequential (DeepSeek-V3): module d combines the previous depth's hidden state h_{d-1}[t] with the
  embedding of token t+d-1: h_d = Block(W [RMSNorm(h_{d-1}); RMSNorm(Emb(x_{t+d-1}))]), then RMSNorm and
  the shared unembedding predict x_{t+d}. Depth 1's h is the trunk output (before the final norm).

Loss = sum over extra depths of weights[d-2] * CE_d (+ the model's logit z-loss). metrics["ce"] stays the
next-token CE (val loss uses it); each extra depth logs mtp_ce_{d} and mtp_acc_{d} (top-1 accuracy).
The heads hold no reference to the model: the pieces of the trunk they share (unembedding, RoPE tables,
token embedding) come in as a `Shared` argument, and forward returns (loss, metrics).
Parameter names: mtp.heads.{j}.block.* (a dense Block, same names as the trunk's), mtp.heads.{j}.norm.weight,
and for sequential also mtp.heads.{j}.h_norm.weight, mtp.heads.{j}.e_norm.weight, mtp.heads.{j}.proj.weight [D, 2D].
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..recipe import ModelConfig
from .block import Block
from .loss import IGNORE, lm_loss


@dataclass
class Shared:
    """What the heads share with the trunk, handed in at each call."""
    readout_weight: torch.Tensor  # the unembedding [V, D] (tied or not)
    logit_scale: float  # muP readout multiplier
    cos: torch.Tensor  # RoPE tables
    sin: torch.Tensor
    embed: Callable[[torch.Tensor], torch.Tensor]  # token ids -> input embeddings (sequential heads)

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        return (h @ self.readout_weight.t()).float() * self.logit_scale


def shift_targets(targets: torch.Tensor, offset: int) -> torch.Tensor:
    """targets[:, t] = x[t+1]; returns x[t+1+offset] at t, IGNORE where it falls off the end."""
    if offset == 0:
        return targets
    pad = targets.new_full((targets.size(0), offset), IGNORE)
    return torch.cat([targets[:, offset:], pad], dim=1)


def head_loss(cfg: ModelConfig, shared: Shared, h: torch.Tensor, targets: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(CE, CE + z-loss, top-1 accuracy) of normalised hidden states h through the shared unembedding.

    With loss_chunk > 0 the loss is lm_loss's fused chunked path and the accuracy is measured on the
    first chunk only (an estimate, to avoid a second pass over the vocabulary)."""
    h, y = h.flatten(0, 1), targets.reshape(-1)
    if 0 < cfg.loss_chunk < y.numel():
        ce, total = lm_loss(h, shared.readout_weight, y, logit_scale=shared.logit_scale, z_coef=cfg.z_loss,
                            chunk=cfg.loss_chunk)
        with torch.no_grad():
            acc = _accuracy(shared.logits(h[: cfg.loss_chunk]), y[: cfg.loss_chunk])
        return ce, total, acc
    logits = shared.logits(h)
    valid = y != IGNORE
    count = valid.sum().clamp(min=1)
    ce = F.cross_entropy(logits, y, ignore_index=IGNORE, reduction="sum") / count
    total = ce
    if cfg.z_loss:
        total = ce + cfg.z_loss * (torch.logsumexp(logits, -1).square() * valid).sum() / count
    return ce, total, _accuracy(logits.detach(), y)


def _accuracy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    valid = y != IGNORE
    return ((logits.argmax(-1) == y) & valid).sum() / valid.sum().clamp(min=1)


def depth_metrics(stats: list[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """mtp_ce_{d}, mtp_acc_{d} for depths d = 2.. from [(CE, accuracy)] per head."""
    out = {}
    for j, (ce, acc) in enumerate(stats):
        out[f"mtp_ce_{j + 2}"], out[f"mtp_acc_{j + 2}"] = ce.detach(), acc
    return out


class ParallelHead(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.block = Block(cfg.dense(), 0)
        self.norm = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        return self.norm(self.block(x, cos, sin)[0])


class SequentialHead(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d = cfg.d_model
        self.h_norm = nn.RMSNorm(d, eps=cfg.norm_eps)
        self.e_norm = nn.RMSNorm(d, eps=cfg.norm_eps)
        self.proj = nn.Linear(2 * d, d, bias=False)
        self.block = Block(cfg.dense(), 0)
        self.norm = nn.RMSNorm(d, eps=cfg.norm_eps)

    def forward(self, h_prev: torch.Tensor, emb: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """Hidden state of this depth (pre-norm) from h_{d-1} and the embeddings of the tokens one step ahead."""
        x = self.proj(torch.cat([self.h_norm(h_prev), self.e_norm(emb)], dim=-1))
        return self.block(x, cos, sin)[0]


class _SequentialHeadsLoss(torch.autograd.Function):
    """Forward runs each head's forward+backward in turn; backward returns the stored gradients."""

    @staticmethod
    def forward(ctx, heads: "ParallelMTP", shared: Shared, targets, x, *params):
        x_d = x.detach().requires_grad_()
        grads = [torch.zeros_like(x)] + [torch.zeros_like(p) for p in params]
        total = x.new_zeros((), dtype=torch.float32)
        stats = []
        with torch.enable_grad():
            for j in range(len(heads.heads)):
                weighted, ce, acc = heads.depth_loss(shared, j, x_d, targets)
                for g, new in zip(grads, torch.autograd.grad(weighted, [x_d, *params], allow_unused=True)):
                    if new is not None:
                        g.add_(new)
                total += weighted.detach()
                stats.append(torch.stack([ce.detach(), acc]))
        ctx.save_for_backward(*grads)
        stats = torch.stack(stats)
        ctx.mark_non_differentiable(stats)
        return total, stats

    @staticmethod
    def backward(ctx, grad_total, grad_stats):
        return (None, None, None) + tuple(g * grad_total for g in ctx.saved_tensors)


class ParallelMTP(nn.Module):
    """When training, the heads' backward runs inside forward, one head at a time (see the module doc)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.heads = nn.ModuleList(ParallelHead(cfg) for _ in range(cfg.mtp_depths))
        self.weights = cfg.mtp.weights or [1.0] * len(self.heads)

    def depth_loss(self, shared: Shared, j: int, x: torch.Tensor, targets: torch.Tensor):
        """(weighted loss, CE, accuracy) of head j, which predicts depth j + 2."""
        h = self.heads[j](x, shared.cos, shared.sin)
        ce, total, acc = head_loss(self.cfg, shared, h, shift_targets(targets, j + 1))
        return self.weights[j] * total, ce, acc

    def forward(self, x: torch.Tensor, input_ids: torch.Tensor, targets: torch.Tensor, shared: Shared
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        params = [p for p in [*self.parameters(), shared.readout_weight] if p.requires_grad]
        if torch.is_grad_enabled() and x.requires_grad and _unsharded(params):
            loss, stats = _efficient_loss(self, shared, targets, x, params)
            return loss, depth_metrics([(s[0], s[1]) for s in stats])
        parts = [self.depth_loss(shared, j, x, targets) for j in range(len(self.heads))]
        loss = torch.stack([p[0] for p in parts]).sum()
        return loss, depth_metrics([(ce, acc) for _, ce, acc in parts])

    @torch.no_grad()
    def draft(self, x: torch.Tensor, tokens: torch.Tensor, next_token: torch.Tensor, shared: Shared
              ) -> list[torch.Tensor]:
        """Greedy guesses for the tokens after `next_token`, from the heads at the last position."""
        return [shared.logits(head(x, shared.cos, shared.sin)[:, -1]).argmax(-1) for head in self.heads]


def _unsharded(params: list[torch.Tensor]) -> bool:
    """The per-head backward hands autograd full-size gradients: not for ZeRO-3 / FSDP2 sharded parameters
    (those fall back to plain autograd, which their gradient hooks expect)."""
    from torch.distributed.tensor import DTensor

    return not any(isinstance(p, DTensor) or hasattr(p, "ds_id") for p in params)


@torch.compiler.disable  # autograd.grad inside forward: run eagerly (a graph break only around the heads)
def _efficient_loss(heads, shared, targets, x, params):
    return _SequentialHeadsLoss.apply(heads, shared, targets, x, *params)


class SequentialMTP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.heads = nn.ModuleList(SequentialHead(cfg) for _ in range(cfg.mtp_depths))
        self.weights = cfg.mtp.weights or [1.0] * len(self.heads)

    def forward(self, x: torch.Tensor, input_ids: torch.Tensor, targets: torch.Tensor, shared: Shared
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        full = torch.cat([input_ids, targets[:, -1:].clamp(min=0)], dim=1)  # x_0 .. x_T
        T = input_ids.size(1)
        loss, h, stats = x.new_zeros((), dtype=torch.float32), x, []
        for j, head in enumerate(self.heads):
            tokens = full[:, j + 1: j + 1 + T]
            tokens = F.pad(tokens, (0, T - tokens.size(1)))  # positions without a target anyway
            h = head(h, shared.embed(tokens), shared.cos, shared.sin)
            ce, total, acc = head_loss(self.cfg, shared, head.norm(h), shift_targets(targets, j + 1))
            loss = loss + self.weights[j] * total
            stats.append((ce, acc))
        return loss, depth_metrics(stats)

    @torch.no_grad()
    def draft(self, x: torch.Tensor, tokens: torch.Tensor, next_token: torch.Tensor, shared: Shared
              ) -> list[torch.Tensor]:
        """Chain the depths: depth d reads the token drafted by depth d-1 at the last position."""
        ext, h, out = torch.cat([tokens, next_token[:, None]], dim=1), x, []
        T = tokens.size(1)
        for j, head in enumerate(self.heads):
            h = head(h, shared.embed(ext[:, j + 1: j + 1 + T]), shared.cos, shared.sin)
            guess = shared.logits(head.norm(h[:, -1])).argmax(-1)
            out.append(guess)
            ext = torch.cat([ext, guess[:, None]], dim=1)
        return out


def build_mtp(cfg: ModelConfig) -> nn.Module:
    return ParallelMTP(cfg) if cfg.mtp.style == "parallel" else SequentialMTP(cfg)
