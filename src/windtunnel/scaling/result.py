"""What a fit returns: point estimate, bootstrap CIs, checks, and the law's prediction functions."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..errors import DataError, RecipeError
from .points import Points


@dataclass
class LawFit:
    """One fit of one law on one set of points (no uncertainty yet)."""
    params: dict[str, float]
    warnings: list[str] = field(default_factory=list)
    details: dict = field(default_factory=dict)  # law-specific, JSON-able (objective, isoFLOP groups, ...)
    derived: dict[str, float] = field(default_factory=dict)  # functions of params (get CIs too)


@dataclass(frozen=True)
class Law:
    """How to fit, use and check one law. `predict`/`optimal`/`suggest` are None where meaningless."""
    name: str
    kind: str  # "loss" (L(N, D)), "frontier" (compute-optimal only) or "hparams"
    fit: Callable[..., LawFit]  # fit(points, start=None, **options)
    holdout: Callable[..., dict]  # holdout(points, options) -> leave-largest-out report
    predict: Callable | None = None  # (params, N, D) -> loss
    optimal: Callable | None = None  # (params, C) -> (N*, D*, loss*)
    suggest: Callable | None = None  # (params, N, D) -> {"lr": ..., "batch": ...}
    n_params: int = 0


@dataclass
class FitResult:
    law: str
    params: dict[str, float]
    ci: dict[str, tuple[float, float]]
    warnings: list[str]
    points: Points
    impl: Law
    derived: dict[str, float] = field(default_factory=dict)
    details: dict = field(default_factory=dict)
    samples: list[dict] = field(default_factory=list)  # bootstrap refits: params + derived
    holdout: dict | None = None
    level: float = 0.95
    bootstrap_failures: int = 0
    options: dict = field(default_factory=dict)  # the fitter's options (delta, tie, ...): checks refit with them

    # ------------------------------------------------------------------ predictions
    def predict(self, N, D) -> np.ndarray:
        """Predicted loss at N parameters (the fit's n_kind) trained on D tokens."""
        if self.impl.predict is None:
            raise RecipeError(f"law {self.law} does not predict L(N, D); use compute_optimal(C)"
                             if self.impl.optimal else f"law {self.law} predicts hyperparameters; use suggest(N, D)")
        return self.impl.predict(self.params, N, D)

    def compute_optimal(self, C) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(N*, D*, loss*) for a training budget of C FLOPs (C = 6ND)."""
        if self.impl.optimal is None:
            raise RecipeError(f"law {self.law} has no compute-optimal allocation")
        return self.impl.optimal(self.params, C)

    def suggest(self, N, D) -> dict[str, np.ndarray]:
        """Learning rate and global batch (tokens) for N, D: only the lr-bs law."""
        if self.impl.suggest is None:
            raise RecipeError(f"law {self.law} does not model hyperparameters; fit law lr-bs")
        return self.impl.suggest(self.params, N, D)

    def interval(self, fn: Callable[[dict], object], level: float | None = None) -> tuple | None:
        """Percentile interval of fn(params) over the bootstrap refits (None without bootstrap)."""
        values = []
        for sample in self.samples:
            try:
                values.append(np.asarray(fn(sample), dtype=float))
            except (DataError, FloatingPointError, ZeroDivisionError):  # e.g. a refit with alpha = 0
                continue
        if len(values) < 2:
            return None
        q = 100 * (1 - (level or self.level)) / 2
        stack = np.stack(values)
        stack = stack[np.all(np.isfinite(stack.reshape(len(stack), -1)), axis=1)]
        if len(stack) < 2:
            return None
        return np.percentile(stack, q, axis=0), np.percentile(stack, 100 - q, axis=0)

    def predict_interval(self, N, D, level: float | None = None) -> tuple | None:
        return self.interval(lambda p: self.impl.predict(p, N, D), level)

    def compute_optimal_interval(self, C, level: float | None = None) -> dict | None:
        band = self.interval(lambda p: np.stack(self.impl.optimal(p, C)), level)
        if band is None:
            return None
        return {key: (band[0][i], band[1][i]) for i, key in enumerate(("N", "D", "loss"))}

    @property
    def max_fitted_compute(self) -> float:
        """Largest 6ND among the fitted points: the reference for extrapolation checks."""
        return float(np.max(6.0 * self.points.N * self.points.D))

    def to_dict(self) -> dict:
        return {
            "law": self.law, "n_kind": self.points.n_kind, "params": _plain(self.params),
            "derived": _plain(self.derived), "ci_level": self.level,
            "ci": {k: [float(v[0]), float(v[1])] for k, v in self.ci.items()},
            "bootstrap": {"resamples": len(self.samples) + self.bootstrap_failures,
                          "failed": self.bootstrap_failures},
            "warnings": list(self.warnings), "leave_largest_out": self.holdout,
            "data": self.points.summary(), "details": _plain(self.details),
        }


def _plain(obj):
    """numpy scalars/arrays -> JSON-able Python values, recursively."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _plain(obj.tolist())
    if isinstance(obj, (np.floating, float)):
        return float(obj) if np.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj
