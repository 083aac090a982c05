"""scripts/acceptance/checks.py: no host reads in the training forward/backward of the tiny models."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))

from acceptance.checks import count_host_syncs, host_syncs, moe_path, tiny_model  # noqa: E402


@pytest.mark.parametrize("kind", ["dense", "moe", "mtp4"])
def test_train_step_reads_nothing_back_to_the_host(kind):
    """Fused chunked loss, MoE routing + grouped_mm experts, MTP heads: no .item()/float()/bool()/tolist()."""
    model, recipe, x, y = tiny_model(False, kind)
    with moe_path("native"):
        found = host_syncs(model, recipe, x, y, gpu=False)
    assert found["total"] == 0, found


def test_the_counter_sees_host_reads():
    """The CPU fallback of the MoE experts reads its segment offsets once per grouped matmul (by design):
    the counter must see those, so a zero above means something."""
    model, _, x, y = tiny_model(False, "moe")
    with moe_path("fallback"), count_host_syncs() as calls:
        model(x, targets=y)["loss"].backward()
        float(torch.ones(()))
    assert calls["tolist"] >= 2 and calls["__float__"] == 1
    assert torch.Tensor.tolist.__name__ == "tolist"  # restored afterwards


def wheel(folder: Path, dist: str, module: str) -> Path:
    """A minimal pure-Python wheel (PEP 427 layout) holding one module."""
    import zipfile

    path = folder / f"{dist}-0.1-py3-none-any.whl"
    info = f"{dist}-0.1.dist-info"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"{module}.py", "VALUE = 42\n")
        z.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
        z.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        z.writestr(f"{info}/RECORD", "")
    return path


def test_carried_wheels_install_only_what_is_missing(tmp_path, monkeypatch):
    """The env step installs a wheel whose distribution is absent (into <work>/site, importable at once)
    and leaves one whose distribution is already installed (pyyaml here) alone."""
    import importlib
    import time

    from acceptance.context import Context
    from acceptance.env import install_wheels

    folder = tmp_path / "wheels"
    folder.mkdir()
    wheel(folder, "wt_probe_dist", "wt_probe_module")
    wheel(folder, "pyyaml", "yaml_shadow")
    ctx = Context("env", False, tmp_path, tmp_path, time.time() + 60)
    monkeypatch.setattr(sys, "path", list(sys.path))
    assert install_wheels(ctx, folder) == ["wt_probe_dist-0.1-py3-none-any.whl"]
    assert importlib.import_module("wt_probe_module").VALUE == 42
    assert not (tmp_path / "site" / "yaml_shadow.py").exists()


def test_moe_paths_match_the_dense_reference():
    """Both expert paths agree with an all-experts dense computation of the same router decisions."""
    from acceptance.checks import dense_reference

    model, _, x_ids, _ = tiny_model(False, "moe", layers=1)
    moe = model.blocks[0].mlp
    x = torch.randn(x_ids.numel(), model.cfg.d_model)
    ref = dense_reference(moe, x)
    for path in ("native", "fallback"):
        with moe_path(path):
            out = moe(x[None])[0][0]
        torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
