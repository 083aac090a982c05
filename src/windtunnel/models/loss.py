"""Language-model loss: cross-entropy (+ PaLM z-loss), optionally fused with the unembedding in chunks.

With `chunk > 0` the logits of `chunk` tokens are computed, reduced and dropped one chunk at a time and
recomputed in backward (activation checkpointing), so the full [tokens, vocab] fp32 logits never exist.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint


def _chunk_loss(h: torch.Tensor, w: torch.Tensor, y: torch.Tensor, scale: float, z_coef: float):
    logits = F.linear(h, w).float() * scale
    ce = F.cross_entropy(logits, y, reduction="sum", ignore_index=-100)
    if z_coef:
        lse = torch.logsumexp(logits, dim=-1)
        z = (lse.square() * (y != -100)).sum()
    else:
        z = logits.new_zeros(())
    return ce, z


def lm_loss(
    hidden_ND: torch.Tensor, weight_VD: torch.Tensor, targets_N: torch.Tensor, *,
    logit_scale: float = 1.0, z_coef: float = 0.0, chunk: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean next-token CE and the total loss (CE + z_coef * mean logsumexp^2) over non-ignored targets."""
    hidden_ND = hidden_ND.reshape(-1, hidden_ND.size(-1))
    targets_N = targets_N.reshape(-1)
    count = (targets_N != -100).sum().clamp(min=1)
    if chunk <= 0 or chunk >= targets_N.numel():
        ce, z = _chunk_loss(hidden_ND, weight_VD, targets_N, logit_scale, z_coef)
    else:
        ce = z = hidden_ND.new_zeros((), dtype=torch.float32)
        for start in range(0, targets_N.numel(), chunk):
            sl = slice(start, start + chunk)
            c, zc = checkpoint(_chunk_loss, hidden_ND[sl], weight_VD, targets_N[sl], logit_scale, z_coef,
                               use_reentrant=False)
            ce, z = ce + c, z + zc
    ce = ce / count
    return ce, ce + z_coef * (z / count)
