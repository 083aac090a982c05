"""`fit --law mixture`: recovers a known optimum from synthetic proxy runs, with intervals and a recipe."""
import json

import numpy as np
import pytest
import yaml

from windtunnel.errors import RecipeError
from windtunnel.recipe import Recipe
from windtunnel.scaling.mixture import MixturePoints, parse_objective, propose

from .conftest import run_fit

NAMES = ["web", "code", "math"]
OPTIMUM = np.array([0.5, 0.3, 0.2])


def synthetic(n: int = 40, noise: float = 0.002, seed: int = 0) -> MixturePoints:
    """Per-source losses whose mean is a bowl with its minimum at OPTIMUM; each source is best when it
    has more weight (the trade-off a mixture resolves)."""
    rng = np.random.default_rng(seed)
    w = rng.dirichlet(np.ones(3), size=n)
    bowl = 3.0 + 4.0 * ((w - OPTIMUM) ** 2).sum(axis=1)
    tilt = 0.3 * (w - OPTIMUM)
    losses = {name: bowl - tilt[:, i] + noise * rng.standard_normal(n) for i, name in enumerate(NAMES)}
    # the tilts sum to 0 across sources, so the mean objective is exactly the bowl
    return MixturePoints(NAMES, w, losses, [f"run{i}" for i in range(n)])


def test_recovers_the_known_optimum_with_an_interval_covering_it():
    report = propose(synthetic(), parse_objective("mean", NAMES), bootstrap=100)
    chosen = np.array([report["chosen"][n] for n in NAMES])
    assert report["model"] == "quadratic"
    assert np.abs(chosen - OPTIMUM).max() < 0.04
    assert report["predicted_objective"] == pytest.approx(3.0, abs=0.01)
    for name, true in zip(NAMES, OPTIMUM):
        lo, hi = report["ci"][name]
        assert lo <= true <= hi and hi - lo < 0.2
    assert report["loo_rmse"] < 0.01 and report["warnings"] == []


def test_warns_when_the_proxies_do_not_resolve_the_objective():
    points = synthetic(noise=0.0)
    rng = np.random.default_rng(5)
    points.losses = {n: 3.0 + 0.05 * rng.standard_normal(len(points.weights)) for n in NAMES}  # noise only
    report = propose(points, parse_objective("mean", NAMES), bootstrap=0)
    assert "do not resolve this objective" in report["warnings"][0]


def test_one_source_objective_moves_the_optimum_towards_that_source():
    points = synthetic()
    mean = propose(points, parse_objective("mean", NAMES), bootstrap=0)
    code = propose(points, parse_objective("code", NAMES), bootstrap=0)
    assert code["chosen"]["code"] > mean["chosen"]["code"] + 0.01
    assert parse_objective("web=0.25,code=0.75", NAMES) == {"web": 0.25, "code": 0.75}
    with pytest.raises(RecipeError, match="--objective: unknown source 'books'"):
        parse_objective("books", NAMES)


def test_linear_model_with_few_runs_and_proposal_stays_in_the_sampled_box():
    points = synthetic(n=6, seed=1)
    report = propose(points, parse_objective("mean", NAMES), model="auto", bootstrap=20)
    assert report["model"] == "linear"
    for i, name in enumerate(NAMES):
        assert points.weights[:, i].min() - 1e-6 <= report["chosen"][name] <= points.weights[:, i].max() + 1e-6


def test_cli_reads_a_sweep_and_emits_a_recipe_with_the_mix(tmp_path, capsys):
    points = synthetic(n=16)
    base = {"data": {"sources": [{"name": n, "source": "stdlib"} for n in NAMES]}, "train": {"steps": 10}}
    for i, label in enumerate(points.labels):
        run = tmp_path / "sweep" / label
        run.mkdir(parents=True)
        (run / "recipe.yaml").write_text(yaml.safe_dump(base))
        (run / "summary.json").write_text(json.dumps({
            "status": "completed", "mixture": {"weights": dict(zip(NAMES, points.weights[i].tolist()))},
            "val_loss_by_source": {n: float(points.losses[n][i]) for n in NAMES}}))
    out = tmp_path / "target.yaml"
    code = run_fit([str(tmp_path / "sweep"), "--law", "mixture", "--objective", "mean", "--bootstrap", "20",
                    "--emit", str(out), "--json", str(tmp_path / "fit.json")])
    assert code == 0
    assert "chosen mix: web=" in capsys.readouterr().out
    mix = Recipe.load(out).data.mix
    assert mix == json.loads((tmp_path / "fit.json").read_text())["chosen"]
    assert abs(mix["web"] - 0.5) < 0.1
    assert run_fit([str(tmp_path / "sweep"), "--law", "mixture", "--objective", "books"]) == 2
