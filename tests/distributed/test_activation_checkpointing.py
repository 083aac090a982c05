"""Activation checkpointing: which blocks recompute in backward, what it saves, and that gradients match."""
from __future__ import annotations

import pytest
import torch

from windtunnel.distributed import apply_activation_checkpointing
from windtunnel.models import build_model
from windtunnel.recipe import RecipeError


@pytest.fixture
def make_model(tiny_model_config):
    def make():
        torch.manual_seed(0)
        return build_model(tiny_model_config(vocab_size=50, n_heads=2, n_layers=4))
    return make


def batch():
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, 50, (2, 17), generator=g)


def train_step(model) -> tuple[list[int], int]:
    """Attention calls per block during forward+backward, and bytes autograd saved for backward."""
    calls = [0] * len(model.blocks)
    for i, block in enumerate(model.blocks):
        block.attn.register_forward_hook(lambda *_, i=i: calls.__setitem__(i, calls[i] + 1))
    saved = [0]

    def pack(t):
        saved[0] += t.numel() * t.element_size()
        return t

    x = batch()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model(x[:, :-1], targets=x[:, 1:])["loss"]
    loss.backward()
    return calls, saved[0]


@pytest.mark.parametrize("mode, expected", [("none", [1, 1, 1, 1]), ("full", [2, 2, 2, 2]),
                                            ("selective", [2, 1, 2, 1])])
def test_recompute_counts(make_model, mode, expected):
    model = make_model()
    assert apply_activation_checkpointing(model, mode) == [i for i, c in enumerate(expected) if c == 2]
    calls, _ = train_step(model)
    assert calls == expected


def test_saves_less_and_keeps_gradients_and_names(make_model):
    results = {}
    for mode in ("none", "selective", "full"):
        model = make_model()
        names = list(model.state_dict())
        apply_activation_checkpointing(model, mode)
        _, saved = train_step(model)
        results[mode] = saved, {n: p.grad.clone() for n, p in model.named_parameters()}
        assert list(model.state_dict()) == names  # no wrapper prefix in checkpoints
    assert results["full"][0] < results["selective"][0] < results["none"][0]
    for mode in ("selective", "full"):
        for name, grad in results["none"][1].items():
            torch.testing.assert_close(results[mode][1][name], grad, rtol=1e-5, atol=1e-7)


def test_no_recompute_without_grad(make_model):
    model = make_model()
    apply_activation_checkpointing(model, "full")
    calls = [0]
    model.blocks[0].attn.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    with torch.no_grad():
        model(batch()[:, :-1])
    assert calls == [1]


def test_model_without_blocks_is_an_error():
    with pytest.raises(RecipeError, match="activation_checkpointing=full: Linear does not declare `blocks`"):
        apply_activation_checkpointing(torch.nn.Linear(2, 2), "full")


class Residual(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(4, 4)

    def forward(self, x):
        return x + torch.tanh(self.fc(x))


class UserModel(torch.nn.Module):
    """A user architecture: only the BlockModel protocol (blocks, block_types), no windtunnel Block."""
    block_types = (Residual,)

    def __init__(self):
        super().__init__()
        self.blocks = torch.nn.ModuleList(Residual() for _ in range(3))

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return x


def test_user_model_is_checkpointed_through_the_protocol():
    model = UserModel()
    calls = [0] * 3
    for i, block in enumerate(model.blocks):
        block.fc.register_forward_hook(lambda *_, i=i: calls.__setitem__(i, calls[i] + 1))
    assert apply_activation_checkpointing(model, "selective") == [0, 2]
    model(torch.randn(2, 4, requires_grad=True)).sum().backward()
    assert calls == [2, 1, 2]
