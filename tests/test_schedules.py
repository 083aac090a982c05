import math

import pytest

from windtunnel.recipe import Recipe
from windtunnel.schedules import Schedule, decay_factor


def sched(name, steps=100, **kw):
    r = Recipe.from_dict({"train": {"steps": steps, "batch_size": 2, "seq_len": 8},
                          "schedule": {"name": name, **kw}, "optim": {"lr": 1.0}})
    return Schedule.from_recipe(r)


def test_constant_with_warmup():
    s = sched("constant", warmup_frac=0.1)
    assert s(0) == pytest.approx(0.1) and s(9) == pytest.approx(1.0) and s(99) == 1.0


def test_cosine_reaches_min_lr():
    s = sched("cosine", warmup_frac=0.0, min_lr_ratio=0.1)
    assert s(0) == pytest.approx(1.0)
    assert s(50) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)), rel=1e-6)
    assert s(100) == pytest.approx(0.1)


@pytest.mark.parametrize("shape", ["linear", "cosine", "1-sqrt"])
def test_wsd_stable_then_decay(shape):
    s = sched("wsd", warmup_frac=0.1, wsd={"decay_frac": 0.2, "decay_shape": shape})
    assert all(s(k) == 1.0 for k in range(10, 80))
    decay = [s(k) for k in range(80, 100)]
    assert all(a > b for a, b in zip(decay, decay[1:]))
    assert decay[-1] == pytest.approx(0.0, abs=1e-9)


def test_linear_and_cosine_meet_at_midpoint_and_separate_at_a_quarter():
    """Linear and cosine both sit at 1/2 halfway through the decay (1-sqrt is below); a quarter in,
    cosine is still higher than linear, and 1-sqrt drops fastest."""
    mids = {shape: decay_factor(0.5, shape) for shape in ["linear", "cosine", "1-sqrt"]}
    assert mids["linear"] == pytest.approx(0.5) and mids["cosine"] == pytest.approx(0.5)
    assert mids["1-sqrt"] == pytest.approx(1 - math.sqrt(0.5))
    assert decay_factor(0.25, "cosine") > decay_factor(0.25, "linear") > decay_factor(0.25, "1-sqrt")


def test_power_schedule_follows_formula_and_is_capped():
    # lr = min(lr_max, batch * a * tokens^b) (Shen et al. 2024); batch in sequences.
    s = sched("power", steps=1000, warmup_frac=0.0, power={"a": 0.1, "b": -0.51, "lr_max": 0.02, "decay_frac": 0.0})
    tokens_per_step, batch = 2 * 8, 2
    for step in (10, 100, 900):
        expected = min(0.02, batch * 0.1 * (step * tokens_per_step) ** -0.51)
        assert s(step) == pytest.approx(expected)
    assert s(1) == pytest.approx(0.02)  # capped early
    assert s(100) < 0.02
    assert s(900) < s(100)


def test_power_schedule_final_decay_and_independent_of_horizon():
    short = sched("power", steps=1000, warmup_frac=0.0, power={"decay_frac": 0.1})
    long = sched("power", steps=4000, warmup_frac=0.0, power={"decay_frac": 0.1})
    assert short(500) == long(500)  # token-budget agnostic before the decay
    assert short(999) < 1e-3 * short(899)


def test_warmup_steps_override():
    assert sched("constant", warmup_steps=4)(1) == pytest.approx(0.5)


def test_schedule_png(tmp_path):
    from windtunnel.cli import main

    path = tmp_path / "r.yaml"
    path.write_text("train: {steps: 50}\nschedule: {name: wsd}\n")
    assert main(["schedule", str(path), "--png", str(tmp_path / "s.png")]) == 0
    assert (tmp_path / "s.png").stat().st_size > 1000
