"""Pre-flight for the GPU half of scripts/gpu_acceptance.py: every recipe, override and sweep the GPU
steps use validates on CPU, so a typo cannot waste a GPU window."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))

from acceptance import checks, speed, training  # noqa: E402
from acceptance.context import Context  # noqa: E402
from acceptance.plan import PLAN, STEPS  # noqa: E402

from windtunnel.distributed import check_distributed  # noqa: E402
from windtunnel.recipe import Recipe  # noqa: E402


def recipe_from_args(args: list[str]) -> Recipe:
    """The recipe `windtunnel train RECIPE --set ...` would load, from a train command's arguments."""
    path = Path(args[args.index("train") + 1])
    overrides = [args[i + 1] for i, a in enumerate(args) if a == "--set"]
    return Recipe.load(path, overrides)


@pytest.mark.parametrize("gpu", [True, False], ids=["gpu", "dry-run"])
def test_train_and_resume_recipes_validate(gpu, tmp_path):
    ctx = Context("train", gpu, tmp_path, tmp_path, 0.0)
    r = recipe_from_args(training.train_args(ctx, tmp_path / "run"))
    assert r.train.steps == (100 if gpu else 30) and r.train.tokens is None
    assert r.train.compile is gpu and r.model.loss_chunk > 0 and r.train.ckpt_every * 2 == r.train.steps


@pytest.mark.parametrize("step", sorted(training.STRATEGIES))
def test_distributed_recipes_validate(step):
    config, overrides = training.STRATEGIES[step]
    cfg = training.TRAIN[True]
    r = Recipe.load(ROOT / cfg["recipe"], cfg["set"] + training.DIST[True] + overrides + ["train.steps=8"])
    check_distributed(r)
    assert config is None or (ROOT / config).exists()


@pytest.mark.parametrize("kind", sorted(checks.KINDS))
def test_step_check_models_validate_at_gpu_shapes(kind):
    r = checks.check_recipe(True, kind)
    assert r.model.loss_chunk < r.train.batch_size * r.train.seq_len  # the fused loss runs 2+ chunks


def test_gpu_mup_sweep_plans(tmp_path):
    from windtunnel.sweep.plan import expand, load_sweep

    import yaml

    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(speed.mup_sweep(True, tmp_path / "out")))
    runs = expand(load_sweep(path))
    assert sorted({r.recipe.model.d_model for r in runs}) == [256, 512, 1024] and len(runs) == 18


def test_plan_is_consistent():
    assert len(STEPS) == len(PLAN) and PLAN[0].name == "env"
    for step in PLAN:
        assert step.need_gpu <= step.cap_gpu and step.need_cpu <= step.cap_cpu, step.name
        assert step.after is None or [s.name for s in PLAN].index(step.after) < PLAN.index(step)
