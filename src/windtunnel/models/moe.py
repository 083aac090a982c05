"""Mixture-of-experts feed-forward: token-choice top-k routing, dropless grouped-GEMM experts, balancing.

Router (kept in fp32): scores s = softmax(logits) or sigmoid(logits); the top-k experts by s (+ the
aux-free bias b, which only changes *selection*) are combined with weights s_topk, renormalised to sum
to 1 when k > 1 (with k = 1 the raw score is kept, Switch-style, so the router still gets a gradient).

Balancing, each switchable by its coefficient:
- load-balancing loss (Switch Transformers, Fedus et al. 2021): E * sum_i f_i * P_i, f_i = fraction of
  the N*k assignments sent to expert i, P_i = mean normalised score of i; 1 when perfectly balanced.
- router z-loss (ST-MoE, Zoph et al. 2022): mean logsumexp(logits)^2.
MoE.forward returns (output, this layer's statistics); `router_loss` turns the statistics of all MoE
layers into the weighted loss and the logged metrics (no loss state is kept on the module).
- aux-loss-free balancing (DeepSeek-V3): after each optimizer step b_i += rate * sign(mean load - load_i),
  then b is mean-centred. Loads are counted on device (no host sync) in a buffer.

Experts compute (dropless): assignments are sorted by expert and the experts run as one grouped GEMM,
`torch.nn.functional.grouped_mm` on CUDA in bf16, else `windtunnel::expert_mm`, a custom op that loops
over the non-empty segments (opaque to torch.compile, so the step still traces as one graph).

Parameter names (per MoE block, for the muP rules): mlp.router.weight [E, D], mlp.experts.w_gate_up
[E, 2H, D] (gate rows first), mlp.experts.w_down [E, D, H] (both [out, in] per expert, as nn.Linear
and HF's Qwen2-MoE/Mixtral), mlp.shared.w_gate_up.weight / mlp.shared.w_down.weight (the shared
experts as one SwiGLU of width shared_experts * H); buffer mlp.router_bias [E].
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ..recipe import ModelConfig
from .mlp import SwiGLU

# ----------------------------------------------------------------------------- grouped GEMM


@torch.library.custom_op("windtunnel::expert_mm", mutates_args=())
def expert_mm(x: torch.Tensor, w: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Rows of `x` [M, K] sorted by expert; `offsets` [E] = cumulative row counts; w [E, K, N] -> [M, N]."""
    out = x.new_zeros(x.size(0), w.size(2))
    start = 0
    for e, end in enumerate(offsets.tolist()):  # one host sync for all experts; empty experts skipped
        if end > start:
            torch.mm(x[start:end], w[e], out=out[start:end])
        start = end
    return out


@expert_mm.register_fake
def _expert_mm_fake(x, w, offsets):
    return x.new_empty(x.size(0), w.size(2))


@torch.library.custom_op("windtunnel::expert_mm_weight_grad", mutates_args=())
def expert_mm_weight_grad(x: torch.Tensor, grad: torch.Tensor, offsets: torch.Tensor, n_experts: int) -> torch.Tensor:
    """d(x_e @ w_e)/d(w_e) for each segment: x_e^T @ grad_e -> [E, K, N]."""
    out = x.new_zeros(n_experts, x.size(1), grad.size(1))
    start = 0
    for e, end in enumerate(offsets.tolist()):
        if end > start:
            torch.mm(x[start:end].t(), grad[start:end], out=out[e])
        start = end
    return out


@expert_mm_weight_grad.register_fake
def _expert_mm_weight_grad_fake(x, grad, offsets, n_experts):
    return x.new_empty(n_experts, x.size(1), grad.size(1))


def _expert_mm_setup(ctx, inputs, output):
    x, w, offsets = inputs
    ctx.save_for_backward(x, w, offsets)


def _expert_mm_backward(ctx, grad):
    x, w, offsets = ctx.saved_tensors
    grad = grad.contiguous()
    gx = expert_mm(grad, w.transpose(1, 2), offsets) if ctx.needs_input_grad[0] else None
    gw = expert_mm_weight_grad(x, grad, offsets, w.size(0)) if ctx.needs_input_grad[1] else None
    return gx, gw, None


expert_mm.register_autograd(_expert_mm_backward, setup_context=_expert_mm_setup)


def _native_grouped_mm():
    return getattr(F, "grouped_mm", None) or getattr(torch, "_grouped_mm", None)


def fast_path_dtype(x: torch.Tensor) -> torch.dtype | None:
    """bf16 when the native grouped GEMM applies (CUDA, bf16 compute), else None (use the fallback)."""
    if not x.is_cuda or _native_grouped_mm() is None:
        return None
    dtype = torch.get_autocast_dtype("cuda") if torch.is_autocast_enabled("cuda") else x.dtype
    return torch.bfloat16 if dtype == torch.bfloat16 else None


def grouped_linear(x: torch.Tensor, w_EOI: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Per-expert x_e @ w_e^T for expert-sorted rows: torch's grouped_mm where it applies, else expert_mm."""
    w_EIO = w_EOI.transpose(1, 2)  # a view: grouped_mm takes column-major B
    aligned = w_EOI.size(1) % 8 == 0 and w_EOI.size(2) % 8 == 0  # 16-byte rows in bf16
    dtype = fast_path_dtype(x) if aligned else None
    if dtype is not None:
        return _native_grouped_mm()(x.to(dtype), w_EIO.to(dtype), offs=offsets)
    dtype = torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type) else x.dtype
    return expert_mm(x.to(dtype), w_EIO.to(dtype), offsets)


# ----------------------------------------------------------------------------- balancing losses


def router_stats(logits: torch.Tensor, scores: torch.Tensor, counts: torch.Tensor) -> dict[str, torch.Tensor]:
    """One layer's balancing statistics, on device: load (detached), Switch lb loss, router z-loss."""
    load = counts.float() / counts.sum()  # fraction of assignments per expert
    prob = (scores / scores.sum(-1, keepdim=True)).mean(0)
    return {"load": load.detach(),
            "lb": scores.size(-1) * (load.detach() * prob).sum(),
            "z": torch.logsumexp(logits, dim=-1).square().mean()}


def router_loss(cfg: ModelConfig, stats: dict[int, dict[str, torch.Tensor]]
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Coefficient-weighted balancing loss summed over MoE layers {layer: stats}, and its metrics
    (per-layer max/mean load, lb and z losses averaged over layers, all detached)."""
    m = cfg.moe
    some = next(iter(stats.values()))["lb"]
    loss, metrics = some.new_zeros(()), {}
    for layer, s in stats.items():
        metrics[f"moe_imbalance_{layer}"] = s["load"].max() / s["load"].mean()
    for key, coef in (("lb", m.load_balance_coef), ("z", m.router_z_coef)):
        total = torch.stack([s[key] for s in stats.values()]).sum()
        metrics[f"moe_{key}_loss"] = total.detach() / len(stats)
        if coef:
            loss = loss + coef * total
    return loss, metrics


# ----------------------------------------------------------------------------- modules


class Experts(nn.Module):
    """E SwiGLU experts stored as 3-D weights, run over expert-sorted rows."""

    def __init__(self, n_experts: int, d_model: int, hidden: int):
        super().__init__()
        self.w_gate_up = nn.Parameter(torch.empty(n_experts, 2 * hidden, d_model))
        self.w_down = nn.Parameter(torch.empty(n_experts, d_model, hidden))
        nn.init.normal_(self.w_gate_up, std=0.02)
        nn.init.normal_(self.w_down, std=0.02)

    def forward(self, x_sorted: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        gate, up = grouped_linear(x_sorted, self.w_gate_up, offsets).chunk(2, dim=-1)
        return grouped_linear(F.silu(gate) * up, self.w_down, offsets)


class MoE(nn.Module):
    """forward(x) -> (y, router statistics); `router_loss` turns the statistics of all layers into the loss."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        m = cfg.moe
        self.n_experts, self.top_k = m.num_experts, m.top_k
        self.score_fn, self.aux_free, self.bias_rate = m.router, m.aux_free, m.bias_update_rate
        hidden = cfg.expert_dim
        self.router = nn.Linear(cfg.d_model, m.num_experts, bias=False)
        self.experts = Experts(m.num_experts, cfg.d_model, hidden)
        self.shared = SwiGLU(cfg.d_model, m.shared_experts * hidden) if m.shared_experts else None
        self.register_buffer("router_bias", torch.zeros(m.num_experts))  # persistent: checkpointed
        # Aux-free balancing state (loads since the last optimizer step), not a loss: read by update_bias.
        self.register_buffer("load_counts", torch.zeros(m.num_experts), persistent=False)

    # ------------------------------------------------------------------ routing
    def route(self, x_ND: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(logits [N, E] fp32, scores [N, E], expert ids [N, k], combine weights [N, k] fp32)."""
        with torch.autocast(x_ND.device.type, enabled=False):
            logits = F.linear(x_ND.float(), self.router.weight.float())
        scores = logits.softmax(-1) if self.score_fn == "softmax" else logits.sigmoid()
        choice = scores + self.router_bias if self.aux_free else scores
        idx = choice.topk(self.top_k, dim=-1).indices
        weights = scores.gather(-1, idx)
        if self.top_k > 1:
            weights = weights / weights.sum(-1, keepdim=True)
        return logits, scores, idx, weights

    def forward(self, x_BTD: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        shape = x_BTD.shape
        x = x_BTD.reshape(-1, shape[-1])
        logits, scores, idx, weights = self.route(x)
        flat = idx.reshape(-1)  # [N*k] expert of each assignment
        counts = torch.zeros(self.n_experts, device=x.device, dtype=torch.int64)
        counts.scatter_add_(0, flat, torch.ones_like(flat))
        order = flat.argsort(stable=True)
        offsets = counts.cumsum(0).to(torch.int32)
        y_sorted = self.experts(x[order // self.top_k], offsets)
        y = torch.empty_like(y_sorted)
        y[order] = y_sorted  # back to (token, slot) order; no atomics, deterministic
        out = (y.view(-1, self.top_k, shape[-1]) * weights.unsqueeze(-1).to(y.dtype)).sum(1)
        if self.shared is not None:
            out = out + self.shared(x)
        if self.training and self.aux_free:
            self.load_counts.add_(counts.float())
        return out.to(x_BTD.dtype).view(shape), router_stats(logits, scores, counts)

    @torch.no_grad()
    def update_bias(self) -> None:
        """DeepSeek-V3 aux-free step: push the bias of over-loaded experts down, under-loaded up."""
        if not self.aux_free:
            return
        counts = self.load_counts
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(counts)  # every rank sees the global load, so biases stay identical
        self.router_bias.add_(self.bias_rate * (counts.mean() - counts).sign())
        self.router_bias.sub_(self.router_bias.mean())
        counts.zero_()

