"""Compute-optimal laws from the data's frontier (Hoffmann et al. 2022, approaches 1 and 2).

envelope (approach 1): the Pareto frontier of loss against compute (each point on it beats every
  cheaper point); its models give N_opt(C) = k_N C^a and D_opt(C) = k_D C^b.
isoflop (approach 2): points grouped by compute budget; per budget a parabola of loss in log N gives
  N*(C) at its vertex (D* interpolated in log space along the group); then the same power laws.
Both also fit the optimal loss L*(C) = E + A C^-gamma (the form of Porian et al. 2024).
"""
from __future__ import annotations

import numpy as np

from ..errors import DataError
from .checks import errors, item, report
from .optimize import at_bounds, grid, huber_fit, lse_softmax, power_law_ols
from .points import Points
from .result import LawFit

# isoFLOP parabolas through the best run and 2 on each side: on Porian et al.'s 15 published
# configurations this reproduces the exponent of their own optima within 0.03 (all runs: up to 0.08).
NEIGHBOURS = 2
LOSS_BOUNDS = [(-10.0, 5.0), (-50.0, 150.0), (0.0, 3.0)]  # e = log E, log A, gamma
LOSS_GRID = grid(e=[-1, 0, 0.5, 1, 1.5], a=[0, 2, 5, 10, 20], gamma=[0.02, 0.05, 0.1, 0.2, 0.4])


def frontier_optimal(p: dict, C) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    C = np.asarray(C, float)
    return p["k_N"] * C ** p["a"], p["k_D"] * C ** p["b"], p["E"] + p["A"] * C ** -p["gamma"]


def fit_loss_frontier(C: np.ndarray, L: np.ndarray, start: dict | None = None) -> tuple[dict, list[str]]:
    """L*(C) = E + A C^-gamma by the Huber fit in log space (for the Chinchilla law this form is exact:
    both terms at the optimum scale as C^(-alpha*beta/(alpha+beta))); a pure power law from 2 points.
    `start` (a previous fit, for bootstrap refits) replaces the initialisation grid."""
    if len(C) < 3:
        A, slope = power_law_ols(C, L)
        return {"E": 0.0, "A": A, "gamma": -slope}, [
            f"loss frontier: only {len(C)} optima, fitted L*(C) = A C^-gamma without an irreducible term"]
    notes = [f"loss frontier: 3 parameters through {len(C)} optima (no check left)"] if len(C) == 3 else []
    x = np.log(C)

    def model(theta):
        e, a, gamma = theta
        terms = np.stack([np.full_like(x, e), a - gamma * x])
        lse, p = lse_softmax(terms)
        return lse, np.column_stack([p[0], p[1], -p[1] * x])

    starts = LOSS_GRID
    if start and start.get("E", 0) > 0:
        starts = np.array([[np.log(start["E"]), np.log(start["A"]), start["gamma"]]])
    opt = huber_fit(model, np.log(L), starts, LOSS_BOUNDS, refine=8)
    e, a, gamma = opt.theta
    names = at_bounds(opt.theta, LOSS_BOUNDS, ["E", "A", "gamma"])
    return {"E": float(np.exp(e)), "A": float(np.exp(a)), "gamma": float(gamma)}, notes + [
        f"loss frontier: {n} is at its bound" for n in names]


def _law_from_optima(C, N, D, L, details: dict, warnings: list[str], start: dict | None) -> LawFit:
    k_N, a = power_law_ols(C, N)
    k_D, b = power_law_ols(C, D)
    loss_params, loss_warnings = fit_loss_frontier(C, L, start)
    params = {"k_N": k_N, "a": a, "k_D": k_D, "b": b, **loss_params}
    return LawFit(params, warnings + loss_warnings, details, {"tokens_per_param_at_max_C": float(
        (k_D * C.max() ** b) / (k_N * C.max() ** a))})


# ----------------------------------------------------------------------------- approach 1


def pareto_frontier(points: Points) -> np.ndarray:
    """Indices of points whose loss is below that of every point with less compute, by compute."""
    order = np.lexsort((points.loss, points.C))
    keep, best = [], np.inf
    for i in order:
        if points.loss[i] < best:
            keep.append(i)
            best = points.loss[i]
    return np.array(keep, dtype=int)


def fit_envelope(points: Points, start: dict | None = None) -> LawFit:
    idx = pareto_frontier(points)
    if len(idx) < 3:
        raise DataError(f"envelope: only {len(idx)} points on the loss frontier (need >= 3)")
    f = points.subset(idx)
    details = {"frontier": [{"label": f.labels[i], "C": f.C[i], "N": f.N[i], "D": f.D[i], "loss": f.loss[i]}
                            for i in range(len(f))]}
    warnings = []
    if len(np.unique(f.N)) < 3:
        warnings.append(f"envelope: the frontier holds only {len(np.unique(f.N))} distinct model sizes")
    return _law_from_optima(f.C, f.N, f.D, f.loss, details, warnings, start)


def holdout_envelope(points: Points, options: dict) -> dict:
    """Hold out the compute decade's top: the frontier's largest point and everything >= C/2 of it."""
    idx = pareto_frontier(points)
    top = idx[-1]
    C_top = points.C[top]
    train = points.subset(points.C < C_top / options.get("holdout_factor", 2.0))
    fit = fit_envelope(train)
    N, D, L = frontier_optimal(fit.params, C_top)
    return report(f"frontier point at C = {C_top:.3g} (all points with C >= {C_top / 2:.3g} held out)",
                  len(train), [item("loss", points, top, points.loss[top], L),
                               item("N_opt", points, top, points.N[top], N)])


# ----------------------------------------------------------------------------- approach 2


def group_by_compute(C: np.ndarray, tolerance: float = 0.25) -> list[np.ndarray]:
    """Indices grouped into compute budgets: a group spans at most a factor (1 + tolerance)."""
    order = np.argsort(C, kind="stable")
    groups, current = [], [order[0]]
    for i in order[1:]:
        if C[i] <= C[current[0]] * (1 + tolerance):
            current.append(i)
        else:
            groups.append(np.array(current))
            current = [i]
    groups.append(np.array(current))
    return groups


def isoflop_vertex(points: Points, idx: np.ndarray, neighbours: int | None = None) -> dict | str:
    """Parabola of loss in log N through one budget: its optimum, or why there is none.
    `neighbours` = k fits only the best run and k runs on each side of it (sizes sorted); far from
    the optimum the profile is not a parabola and biases the vertex (Hoffmann et al. use all)."""
    idx = idx[np.argsort(points.N[idx], kind="stable")]
    x_all = np.log(points.N[idx])
    if neighbours:
        best = int(np.argmin(points.loss[idx]))
        idx = idx[max(0, best - neighbours): best + neighbours + 1]
    x, loss = np.log(points.N[idx]), points.loss[idx]
    if len(np.unique(x)) < 3:
        return f"{len(np.unique(x))} distinct model sizes (need >= 3)"
    q2, q1, q0 = np.polyfit(x, loss, 2)
    if q2 <= 0:
        return "loss is not convex in log N (no minimum)"
    x_opt = -q1 / (2 * q2)
    if not x_all.min() <= x_opt <= x_all.max():
        return (f"optimum N = {np.exp(x_opt):.3g} lies outside the sampled sizes "
                f"{np.exp(x_all.min()):.3g}-{np.exp(x_all.max()):.3g}")
    slope, icpt = np.polyfit(x, np.log(points.D[idx]), 1)  # log D along the budget, linear in log N
    return {"C": float(np.exp(np.mean(np.log(points.C[idx])))), "N": float(np.exp(x_opt)),
            "D": float(np.exp(icpt + slope * x_opt)), "loss": float(q0 + q1 * x_opt + q2 * x_opt ** 2),
            "points": int(len(idx)), "parabola": [q2, q1, q0],
            "N_range": [float(np.exp(x.min())), float(np.exp(x.max()))]}


def isoflop_optima(points: Points, tolerance: float = 0.25,
                   neighbours: int | None = None) -> tuple[list[dict], list[str]]:
    optima, warnings = [], []
    for idx in group_by_compute(points.C, tolerance):
        v = isoflop_vertex(points, idx, neighbours)
        if isinstance(v, dict):
            optima.append(v)
        elif len(idx) >= 3:
            warnings.append(f"isoflop: budget C = {np.exp(np.mean(np.log(points.C[idx]))):.3g} skipped: {v}")
    return optima, warnings


def fit_isoflop(points: Points, start: dict | None = None, tolerance: float = 0.25,
                neighbours: int | None = NEIGHBOURS) -> LawFit:
    optima, warnings = isoflop_optima(points, tolerance, neighbours)
    if len(optima) < 2:
        raise DataError(f"isoflop: {len(optima)} usable compute budgets (need >= 2, each with >= 3 model "
                         "sizes around an interior minimum); set the grouping with --group-tolerance")
    if len(optima) < 3:
        warnings.append(f"isoflop: only {len(optima)} compute budgets: the exponents rest on 2 points")
    C, N, D, L = (np.array([o[k] for o in optima]) for k in ("C", "N", "D", "loss"))
    details = {"groups": optima, "tolerance": tolerance, "neighbours": neighbours}
    return _law_from_optima(C, N, D, L, details, warnings, start)


def holdout_isoflop(points: Points, options: dict) -> dict:
    tol, k = options.get("tolerance", 0.25), options.get("neighbours", NEIGHBOURS)
    usable = [g for g in group_by_compute(points.C, tol) if isinstance(isoflop_vertex(points, g, k), dict)]
    if not usable:
        raise DataError("isoflop: no compute budget with an interior minimum to hold out")
    held = usable[-1]
    mask = np.ones(len(points), bool)
    mask[held] = False
    train = points.subset(mask)
    fit = fit_isoflop(train, tolerance=tol, neighbours=k)
    actual = isoflop_vertex(points, held, k)
    N, D, L = frontier_optimal(fit.params, actual["C"])
    row = {"C": actual["C"], "N": actual["N"], "D": actual["D"]}
    return report(f"largest isoFLOP budget C = {actual['C']:.3g} ({len(held)} points)", len(train),
                  [{**row, **errors("loss", actual["loss"], L)}, {**row, **errors("N_opt", actual["N"], N)}])
