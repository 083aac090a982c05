"""Bootstrap over runs: resample points with replacement, refit, take percentile intervals."""
from __future__ import annotations

import numpy as np

from ..errors import DataError

from .points import Points
from .result import Law, LawFit


def bootstrap_fits(law: Law, points: Points, estimate: LawFit, resamples: int, seed: int,
                   options: dict) -> tuple[list[dict], int]:
    """Refits on `resamples` resampled point sets, each started at the point estimate (as Besiroglu
    et al. 2024 start theirs at the published values). Returns (params+derived per refit, failures)."""
    rng = np.random.default_rng(seed)
    samples, failures = [], 0
    for _ in range(resamples):
        idx = rng.integers(0, len(points), len(points))
        try:
            fit = law.fit(points.subset(idx), start=estimate.params, **options)
        except (DataError, np.linalg.LinAlgError):
            failures += 1  # e.g. a resample left a compute budget with too few model sizes
            continue
        samples.append({**fit.params, **fit.derived})
    return samples, failures


def percentile_ci(samples: list[dict], level: float = 0.95) -> dict[str, tuple[float, float]]:
    """Equal-tailed percentile intervals for every key present in all samples."""
    if len(samples) < 2:
        return {}
    keys = [k for k in samples[0] if all(k in s for s in samples)]
    q = 100 * (1 - level) / 2
    out = {}
    for k in keys:
        values = np.array([s[k] for s in samples], dtype=float)
        values = values[np.isfinite(values)]
        if len(values) >= 2:
            out[k] = (float(np.percentile(values, q)), float(np.percentile(values, 100 - q)))
    return out
