"""An independent FLOPs count for the accounting tests: torch's FLOP counter over a real training step."""
import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from windtunnel.models import moe


def _looped_grouped_linear(x: torch.Tensor, w_EOI: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Per-expert matmuls the FLOP counter sees (it cannot look inside the grouped-GEMM custom op)."""
    out, start = [], 0
    for e, end in enumerate(offsets.tolist()):
        out.append(x[start:end] @ w_EOI[e].t())
        start = end
    return torch.cat(out)


@pytest.fixture
def measured_flops_per_token(monkeypatch):
    """measured_flops_per_token(model, ids) -> matmul FLOPs of forward + backward per target token.

    Attention runs on the math backend (plain matmuls over the full T x T scores, as the 12 L d T term
    counts them) and MoE experts as per-expert matmuls. Norms and softmax are not matmuls: the count
    is a little below the accounting, by 6 FLOPs per norm gain."""
    monkeypatch.setattr(moe, "grouped_linear", _looped_grouped_linear)

    def measure(model: torch.nn.Module, ids: torch.Tensor) -> float:
        with FlopCounterMode(display=False) as counter, sdpa_kernel(SDPBackend.MATH):
            model(ids[:, :-1], ids[:, 1:])["loss"].backward()
        return counter.get_total_flops() / ids[:, 1:].numel()

    return measure
