"""The `sweep.mixture` axis: data-mixture weights as sweep points (each sets `data.mix`).

    sweep:
      mixture:
        points: [{code: 0.8, prose: 0.2}, {code: 0.2, prose: 0.8}]   # explicit mixes
        dirichlet: {n: 8, prior: {code: 0.5, prose: 0.5}, concentration: 2.0, seed: 0}

`dirichlet` draws n mixes from Dirichlet(concentration * prior * k) (k = number of sources), seeded,
as RegMix (Liu et al. 2024) samples its proxy mixtures around the token distribution; with the
default concentration 1 and a uniform prior that is the uniform distribution over the simplex.
Each mix is normalised and rounded to 4 decimals. Like plan.py this module does not import torch.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..recipe import RecipeError, build_dataclass

KEY = "data.mix"


@dataclass
class DirichletSpec:
    n: int = 8  # mixes to draw
    prior: dict[str, float] = field(default_factory=dict)  # the centre {source: weight}
    concentration: float = 1.0  # higher = closer to the prior
    seed: int = 0


@dataclass
class MixtureAxis:
    points: list[dict[str, float]] = field(default_factory=list)
    dirichlet: DirichletSpec | None = None


def mixture_points(raw: object, src: str) -> list[dict]:
    """The axis's sweep points, [{"data.mix": {name: weight}}, ...]; [] when the axis is absent."""
    if raw is None:
        return []
    axis = build_dataclass(MixtureAxis, raw, src, "sweep.mixture.")
    mixes = [_normalised(p, src, f"sweep.mixture.points[{i}]") for i, p in enumerate(axis.points)]
    if axis.dirichlet is not None:
        mixes += dirichlet_mixes(axis.dirichlet, src)
    if not mixes:
        raise RecipeError(f"{src}: sweep.mixture: give points and/or dirichlet")
    return [{KEY: mix} for mix in mixes]


def dirichlet_mixes(spec: DirichletSpec, src: str = "<sweep>") -> list[dict[str, float]]:
    """n seeded draws from a Dirichlet centred on the prior."""
    where = f"{src}: sweep.mixture.dirichlet"
    if spec.n < 1 or spec.concentration <= 0:
        raise RecipeError(f"{where}: n and concentration must be positive, got n={spec.n}, "
                          f"concentration={spec.concentration}")
    prior = _normalised(spec.prior, src, "sweep.mixture.dirichlet.prior")
    if min(prior.values()) <= 0:
        raise RecipeError(f"{where}.prior: every source needs a positive prior weight, got {spec.prior}")
    names = list(prior)
    alpha = spec.concentration * len(names) * np.array([prior[n] for n in names])
    draws = np.random.default_rng(spec.seed).dirichlet(alpha, size=spec.n)
    return [_rounded(dict(zip(names, row))) for row in draws]


def _normalised(mix: dict, src: str, path: str) -> dict[str, float]:
    if len(mix) < 2 or any(not isinstance(w, (int, float)) or w < 0 for w in mix.values()) or sum(mix.values()) <= 0:
        raise RecipeError(f"{src}: {path}: expected {{source: weight}} with >= 2 sources and weights >= 0, got {mix}")
    return _rounded({str(k): float(v) for k, v in mix.items()})


def _rounded(mix: dict[str, float]) -> dict[str, float]:
    total = sum(mix.values())
    return {k: round(float(v) / total, 4) for k, v in mix.items()}
