"""The sweep.mixture axis: explicit mixes and seeded Dirichlet draws around a prior, as data.mix points."""
import numpy as np
import pytest
import yaml

from windtunnel.recipe import RecipeError
from windtunnel.sweep.mixture_axis import DirichletSpec, dirichlet_mixes
from windtunnel.sweep.plan import expand, load_sweep

BASE = {
    "model": {"d_model": 64, "n_layers": 2, "n_heads": 2},
    "data": {"sources": [{"name": "code", "source": "stdlib"},
                         {"name": "prose", "source": "files", "paths": ["prose.jsonl"]}]},
    "train": {"steps": 10, "batch_size": 4, "seq_len": 32},
}


def write(tmp_path, sweep):
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(BASE))
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"base": "base.yaml", "sweep": sweep}))
    return path


def test_points_and_dirichlet_draws_multiply_with_other_axes(tmp_path):
    path = write(tmp_path, {"grid": {"optim.lr": [1e-3, 3e-3]},
                            "mixture": {"points": [{"code": 3, "prose": 1}],
                                        "dirichlet": {"n": 3, "prior": {"code": 0.5, "prose": 0.5}, "seed": 1}}})
    runs = expand(load_sweep(path))
    assert len(runs) == 2 * 4 and len({r.name for r in runs}) == 8
    assert runs[0].recipe.data.mix == {"code": 0.75, "prose": 0.25}
    mixes = [r.recipe.data.mix for r in runs[:4]]
    assert all(abs(sum(m.values()) - 1) < 1e-3 for m in mixes) and len({tuple(m.values()) for m in mixes}) == 4
    assert [r.recipe.data.mix for r in expand(load_sweep(path))] == [r.recipe.data.mix for r in runs]  # seeded


def test_dirichlet_centres_on_the_prior_and_concentration_tightens():
    prior = {"a": 0.6, "b": 0.3, "c": 0.1}
    loose = np.array([list(m.values()) for m in dirichlet_mixes(DirichletSpec(n=400, prior=prior, seed=0))])
    tight = np.array([list(m.values()) for m in dirichlet_mixes(DirichletSpec(n=400, prior=prior,
                                                                             concentration=50.0, seed=0))])
    assert np.allclose(loose.mean(axis=0), [0.6, 0.3, 0.1], atol=0.04)
    assert np.allclose(tight.mean(axis=0), [0.6, 0.3, 0.1], atol=0.01)
    assert (tight.std(axis=0) < loose.std(axis=0) / 3).all()
    assert dirichlet_mixes(DirichletSpec(n=2, prior=prior, seed=3)) != dirichlet_mixes(DirichletSpec(n=2, prior=prior))


@pytest.mark.parametrize("mixture, message", [
    ({"points": [{"code": 1, "web": 1}]}, "data.mix: unknown source 'web'"),
    ({"points": [{"code": -1, "prose": 1}]}, r"sweep.mixture.points\[0\]: expected"),
    ({"dirichlet": {"n": 0, "prior": {"code": 1, "prose": 1}}}, "n and concentration must be positive"),
    ({"dirichlet": {"prior": {"code": 1, "prose": 0}}}, "every source needs a positive prior weight"),
    ({}, "give points and/or dirichlet"),
])
def test_bad_mixture_axes_name_the_key(tmp_path, mixture, message):
    with pytest.raises(RecipeError, match=message):
        expand(load_sweep(write(tmp_path, {"mixture": mixture})))


def test_mixture_axis_and_a_data_mix_list_conflict(tmp_path):
    path = write(tmp_path, {"list": [{"data.mix": {"code": 1, "prose": 1}}],
                            "mixture": {"points": [{"code": 1, "prose": 2}]}})
    with pytest.raises(RecipeError, match="data.mix is set by both sweep.list and sweep.mixture"):
        load_sweep(path)
