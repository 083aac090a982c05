"""scripts/acceptance/checks.py: no host reads in the training forward/backward of the tiny models."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))

from acceptance.checks import count_host_syncs, host_syncs, tiny_model  # noqa: E402


@pytest.mark.parametrize("kind", ["dense", "moe", "mtp4"])
def test_train_step_reads_nothing_back_to_the_host(kind):
    """Fused chunked loss, MoE routing + grouped_mm experts, MTP heads: no .item()/float()/bool()/tolist()."""
    model, recipe, x, y = tiny_model(False, kind)
    found = host_syncs(model, recipe, x, y, gpu=False)
    assert found["total"] == 0, found


def test_the_counter_sees_host_reads():
    """The CPU fallback of the MoE experts reads its segment offsets once per grouped matmul (by design):
    the counter must see those, so a zero above means something."""
    model, _, x, y = tiny_model(False, "moe")
    for block in model.blocks:
        block.mlp.impl = "fallback"
    with count_host_syncs() as calls:
        model(x, targets=y)["loss"].backward()
        float(torch.ones(()))
    assert calls["tolist"] >= 2 and calls["__float__"] == 1
    assert torch.Tensor.tolist.__name__ == "tolist"  # restored afterwards
