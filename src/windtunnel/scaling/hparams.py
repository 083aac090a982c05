"""Hyperparameter laws in the Step Law form (Li et al. 2025, "Predictable Scale"):
    lr_opt = c_lr * N^lr_N * D^lr_D,     batch_opt (tokens) = c_bs * D^bs_D.

Fitted by least squares in log space on per-(N, D) optima found in sweeps with LR/batch axes:
- method "quadratic": per cell, a quadratic of loss in (log lr, log batch) through the points near the
  best one; its vertex is the optimum (1-D in log lr when the batch does not vary; the best run when
  the surface has no interior minimum);
- method "near_best": Step Law's own procedure: every run within 0.25% of its cell's best loss enters
  the regression (the paper's repo, code/fit_tool.py).
"""
from __future__ import annotations

import numpy as np

from ..errors import DataError, RecipeError
from .checks import errors, report
from .points import Points
from .result import LawFit

NEAR_BEST = 0.0025  # Step Law: |L / L_min - 1| < 0.25%
WINDOW = 0.02  # quadratic: fit through runs within 2% of the cell's best loss (at least the 6 best)


def cells(points: Points) -> list[np.ndarray]:
    """Row indices per (N, D) cell, among rows with a known learning rate."""
    groups: dict[tuple, list[int]] = {}
    for i in np.flatnonzero(np.isfinite(points.lr)):
        key = (round(float(np.log(points.N[i])), 6), round(float(np.log(points.D[i])), 6))
        groups.setdefault(key, []).append(int(i))
    return [np.array(v) for _, v in sorted(groups.items())]


def cell_optimum(points: Points, idx: np.ndarray, window: float = WINDOW) -> dict:
    loss = points.loss[idx]
    best = idx[np.argmin(loss)]
    x_all, y_all = np.log(points.lr[idx]), np.log(points.batch[idx])
    has_batch = bool(np.all(np.isfinite(y_all)))
    near = idx[np.argsort(loss)][: max(6, int(np.sum(loss <= loss.min() * (1 + window))))]
    x, z = np.log(points.lr[near]), points.loss[near]
    y = np.log(points.batch[near]) if has_batch else np.zeros_like(x)
    out = {"N": float(points.N[best]), "D": float(points.D[best]), "loss": float(points.loss[best]),
           "lr": float(points.lr[best]), "batch": float(points.batch[best]), "method": "best", "runs": len(idx),
           "lr_edge": bool(points.lr[best] in (points.lr[idx].min(), points.lr[idx].max()) and len(idx) > 1),
           "batch_edge": bool(has_batch and len(np.unique(y_all)) > 1 and
                              points.batch[best] in (points.batch[idx].min(), points.batch[idx].max()))}
    if has_batch and len(np.unique(x)) >= 3 and len(np.unique(y)) >= 3:
        vertex = _vertex_2d(x, y, z)
        if vertex is not None and _inside(vertex, x_all, y_all):
            out.update(lr=float(np.exp(vertex[0])), batch=float(np.exp(vertex[1])), method="quadratic2d")
            return out
    if len(np.unique(x)) >= 3:
        # one axis: the batch at the best run (or the only one) stays fixed
        sel = near if not has_batch else near[np.isclose(np.log(points.batch[near]), np.log(points.batch[best]))]
        xs = np.log(points.lr[sel])
        if len(np.unique(xs)) >= 3:
            q2, q1, _ = np.polyfit(xs, points.loss[sel], 2)
            if q2 > 0 and x_all.min() <= -q1 / (2 * q2) <= x_all.max():
                out.update(lr=float(np.exp(-q1 / (2 * q2))), method="quadratic")
    return out


def _vertex_2d(x, y, z) -> np.ndarray | None:
    design = np.column_stack([np.ones_like(x), x, y, x * x, x * y, y * y])
    c, *_ = np.linalg.lstsq(design, z, rcond=None)
    hess = np.array([[2 * c[3], c[4]], [c[4], 2 * c[5]]])
    if np.any(np.linalg.eigvalsh(hess) <= 0):
        return None
    return np.linalg.solve(hess, -c[1:3])


def _inside(v: np.ndarray, x: np.ndarray, y: np.ndarray) -> bool:
    return bool(x.min() <= v[0] <= x.max() and y.min() <= v[1] <= y.max())


def _ols(columns: list[np.ndarray], target: np.ndarray) -> np.ndarray:
    design = np.column_stack([np.ones_like(target), *columns])
    coef, *_ = np.linalg.lstsq(design, target, rcond=None)
    return coef


def regression_rows(points: Points, method: str, window: float) -> tuple[dict, list[dict]]:
    """(N, D, lr, batch) arrays entering the regression, and the per-cell optima (for reports/plots)."""
    groups = cells(points)
    optima = [cell_optimum(points, idx, window) for idx in groups]
    if method == "quadratic":
        rows = {k: np.array([o[k] for o in optima]) for k in ("N", "D", "lr", "batch")}
    elif method == "near_best":
        keep = np.concatenate([idx[points.loss[idx] <= points.loss[idx].min() * (1 + NEAR_BEST)] for idx in groups])
        rows = {"N": points.N[keep], "D": points.D[keep], "lr": points.lr[keep], "batch": points.batch[keep]}
    else:
        raise RecipeError(f"lr-bs: method {method!r} is not one of quadratic, near_best")
    return rows, optima


def fit_lr_bs(points: Points, start: dict | None = None, method: str = "quadratic", window: float = WINDOW) -> LawFit:
    if not np.isfinite(points.lr).any():
        raise DataError("lr-bs: no learning rates in the data (summary.json 'lr' or an lr column)")
    rows, optima = regression_rows(points, method, window)
    if len(optima) < 2:
        raise DataError(f"lr-bs: {len(optima)} (N, D) cells (need >= 2)")
    logN, logD = np.log(rows["N"]), np.log(rows["D"])
    vary_N, vary_D = len(np.unique(logN)) > 1, len(np.unique(logD)) > 1
    warnings = [f"lr-bs: {name} does not vary across cells: its exponent is fixed at 0"
                for name, varies in (("N", vary_N), ("D", vary_D)) if not varies]
    coef = _ols([c for c, v in ((logN, vary_N), (logD, vary_D)) if v], np.log(rows["lr"]))
    it = iter(coef[1:])
    params = {"lr_coef": float(np.exp(coef[0])), "lr_N": float(next(it)) if vary_N else 0.0,
              "lr_D": float(next(it)) if vary_D else 0.0}
    batch = rows["batch"]
    swept = any(len(np.unique(points.batch[idx])) > 1 for idx in cells(points))
    if swept and np.all(np.isfinite(batch)) and vary_D:
        c_bs = _ols([logD], np.log(batch))
        params.update(bs_coef=float(np.exp(c_bs[0])), bs_D=float(c_bs[1]))
    else:
        warnings.append("lr-bs: batch size is not swept within any (N, D) cell (or D does not vary): "
                        "no batch-size law")
    edges = [o for o in optima if o["lr_edge"] or o["batch_edge"]]
    if edges:
        warnings.append(f"lr-bs: in {len(edges)} of {len(optima)} cells the best run sits at the edge of the "
                        "swept LR/batch range: the optimum may lie outside it")
    return LawFit(params, warnings, {"method": method, "cells": optima, "regression_rows": len(rows["lr"])})


def suggest(p: dict, N, D) -> dict[str, np.ndarray]:
    N, D = np.asarray(N, float), np.asarray(D, float)
    out = {"lr": p["lr_coef"] * N ** p["lr_N"] * D ** p["lr_D"]}
    if "bs_coef" in p:
        out["batch"] = p["bs_coef"] * D ** p["bs_D"]
    return out


def holdout_lr_bs(points: Points, options: dict) -> dict:
    """Refit without the largest model's cells; compare their optima with the law's suggestion."""
    n_max = points.N.max()
    held = points.N >= n_max * (1 - 1e-9)
    train = points.subset(~held)
    fit = fit_lr_bs(train, **options)
    held_points = points.subset(held)
    window = options.get("window", WINDOW)
    items = []
    for o in (cell_optimum(held_points, idx, window) for idx in cells(held_points)):
        s = suggest(fit.params, o["N"], o["D"])
        row = {"N": o["N"], "D": o["D"], "C": 6.0 * o["N"] * o["D"]}
        items.append({**row, **errors("lr", o["lr"], s["lr"])})
        if "batch" in s and np.isfinite(o["batch"]):
            items.append({**row, **errors("batch", o["batch"], s["batch"])})
    return report(f"largest model N = {n_max:.3g} ({int(held.sum())} runs)", len(train), items)
