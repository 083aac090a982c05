"""Language-model loss: cross-entropy (+ PaLM z-loss), optionally fused with the unembedding in chunks.

With `chunk > 0` the readout matmul and the loss run `chunk` tokens at a time, and when a gradient is
needed it is computed in the forward pass, chunk by chunk (the fused linear-cross-entropy idea of
Liger-Kernel, Hsu et al. 2024): only one [chunk, vocab] fp32 block of logits exists at any time, and
nothing is recomputed in backward, so the readout costs the usual 6 FLOPs per parameter and token.
The stored gradients (hidden [N, D] and weight [V, D]) are what autograd would produce anyway;
backward only scales them by the incoming gradient.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

IGNORE = -100


def _logits(h: torch.Tensor, w: torch.Tensor, scale: float) -> torch.Tensor:
    logits = F.linear(h, w).float()
    return logits * scale if scale != 1.0 else logits


def _sums(logits: torch.Tensor, y: torch.Tensor, z_coef: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed CE and summed logsumexp^2 over non-ignored targets of one chunk."""
    ce = F.cross_entropy(logits, y, reduction="sum", ignore_index=IGNORE)
    if not z_coef:
        return ce, logits.new_zeros(())
    lse = torch.logsumexp(logits, dim=-1)
    return ce, (lse.square() * (y != IGNORE)).sum()


class _FusedLinearCE(torch.autograd.Function):
    """(mean CE, mean logsumexp^2) of logits = scale * h @ w.T, gradients computed in forward."""

    @staticmethod
    def forward(ctx, h_ND, w_VD, y_N, count, scale: float, z_coef: float, chunk: int):
        grad_h = torch.empty_like(h_ND)
        grad_w = torch.zeros_like(w_VD, dtype=torch.float32)
        grad_hz = torch.empty_like(h_ND) if z_coef else None
        grad_wz = torch.zeros_like(grad_w) if z_coef else None
        ce = h_ND.new_zeros((), dtype=torch.float32)
        z = h_ND.new_zeros((), dtype=torch.float32)
        inv = scale / count  # d(mean)/d(sum), chained through the logit scale
        dev = h_ND.device.type  # matmuls in autocast's dtype (as unfused), operands cast once, not per chunk
        cdt = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else torch.promote_types(
            h_ND.dtype, w_VD.dtype)
        h_c, w_c = h_ND.to(cdt), w_VD.to(cdt)
        for start in range(0, y_N.numel(), chunk):
            sl = slice(start, start + chunk)
            h, y = h_c[sl], y_N[sl]
            logits = (h @ w_c.t()).float()
            if scale != 1.0:
                logits = logits * scale
            valid = y != IGNORE
            lse = torch.logsumexp(logits, dim=-1)
            target = logits.gather(1, y.clamp(min=0).unsqueeze(1)).squeeze(1)
            ce = ce + ((lse - target) * valid).sum()
            prob = logits.sub_(lse.unsqueeze(1)).exp_()  # softmax, in place of the logits
            if z_coef:
                z = z + (lse.square() * valid).sum()
                # d lse^2 / d logits = 2 lse softmax (PaLM z-loss)
                g_z = (prob * (2 * lse * valid).unsqueeze(1) * inv).to(cdt)
                grad_hz[sl] = g_z @ w_c
                grad_wz.add_(g_z.t() @ h)
            # d CE / d logits = softmax - onehot(target), zero on ignored rows
            prob.scatter_add_(1, y.clamp(min=0).unsqueeze(1), -valid.unsqueeze(1).to(prob.dtype))
            g = prob.mul_((valid * inv).unsqueeze(1)).to(cdt)
            grad_h[sl] = g @ w_c
            grad_w.add_(g.t() @ h)
        ctx.save_for_backward(grad_h, grad_w, grad_hz, grad_wz)
        ctx.w_dtype = w_VD.dtype
        return ce / count, z / count

    @staticmethod
    @once_differentiable
    def backward(ctx, g_ce, g_z):
        grad_h, grad_w, grad_hz, grad_wz = ctx.saved_tensors
        dh = grad_h * g_ce.to(grad_h.dtype)
        dw = grad_w * g_ce
        if grad_hz is not None:
            dh = dh + grad_hz * g_z.to(grad_hz.dtype)
            dw = dw + grad_wz * g_z
        return dh, dw.to(ctx.w_dtype), None, None, None, None, None


def lm_loss(
    hidden_ND: torch.Tensor, weight_VD: torch.Tensor, targets_N: torch.Tensor, *,
    logit_scale: float = 1.0, z_coef: float = 0.0, chunk: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean next-token CE and the total loss (CE + z_coef * mean logsumexp^2) over non-ignored targets.

    `chunk > 0` never materialises more than [chunk, vocab] logits; both outputs stay differentiable.
    """
    hidden_ND = hidden_ND.reshape(-1, hidden_ND.size(-1))
    targets_N = targets_N.reshape(-1)
    count = (targets_N != IGNORE).sum().clamp(min=1)
    n = targets_N.numel()
    if chunk <= 0 or chunk >= n:
        ce, z = _sums(_logits(hidden_ND, weight_VD, logit_scale), targets_N, z_coef)
        ce, z = ce / count, z / count
    elif torch.is_grad_enabled() and (hidden_ND.requires_grad or weight_VD.requires_grad):
        ce, z = _FusedLinearCE.apply(hidden_ND, weight_VD, targets_N, count, logit_scale, z_coef, chunk)
    else:  # evaluation: chunked, nothing stored
        ce = z = hidden_ND.new_zeros((), dtype=torch.float32)
        for start in range(0, n, chunk):
            sl = slice(start, start + chunk)
            c, zc = _sums(_logits(hidden_ND[sl], weight_VD, logit_scale), targets_N[sl], z_coef)
            ce, z = ce + c, z + zc
        ce, z = ce / count, z / count
    return ce, ce + z_coef * z
