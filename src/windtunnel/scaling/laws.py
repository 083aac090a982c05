"""Parametric loss laws L(N, D): Chinchilla (Hoffmann et al. 2022, approach 3), Kaplan et al. (2020), and
Kaplan's form with an irreducible term (kaplan-e).

Both are fitted on log-loss with the Huber objective of `optimize.py`. Chinchilla uses the
log-sum-exp parameterisation of Hoffmann et al. / Besiroglu et al. (2024):
    log L = LSE(a - alpha*log N, b - beta*log D, e),  A = e^a, B = e^b, E = e^e.
Kaplan's eq. 1.5:  L = [(Nc/N)^(aN/aD) + Dc/D]^aD,  fitted with log Nc and log Dc.
Compute-optimal allocations use C = 6ND.
"""
from __future__ import annotations

import numpy as np

from ..errors import DataError, RecipeError
from .optimize import HUBER_DELTA, at_bounds, grid, huber_fit, lse_softmax
from .points import Points
from .result import LawFit

# ----------------------------------------------------------------------------- Chinchilla

CHINCHILLA_THETA = ["a", "b", "e", "alpha", "beta"]
CHINCHILLA_BOUNDS = [(-20.0, 60.0), (-20.0, 60.0), (-10.0, 5.0), (0.0, 5.0), (0.0, 5.0)]
# The initialisation grid of Hoffmann et al. (2022), as run by Besiroglu et al. (2024): 4,500 starts.
CHINCHILLA_GRID = grid(a=np.arange(0, 30, 5), b=np.arange(0, 30, 5), e=[-1, -0.5, 0, 0.5, 1],
                       alpha=[0, 0.5, 1, 1.5, 2], beta=[0, 0.5, 1, 1.5, 2])


def chinchilla_model(x: np.ndarray, y: np.ndarray):
    """log-loss model on x = log N, y = log D: theta = (a, b, e, alpha, beta)."""
    def model(theta: np.ndarray):
        a, b, e, alpha, beta = theta
        terms = np.stack([a - alpha * x, b - beta * y, np.full_like(x, e)])
        lse, p = lse_softmax(terms)
        return lse, np.column_stack([p[0], p[1], p[2], -p[0] * x, -p[1] * y])
    return model


def tied_model(x: np.ndarray, y: np.ndarray):
    """The single-exponent form of Gadre et al. (2024): alpha = beta; theta = (a, b, e, alpha)."""
    full = chinchilla_model(x, y)

    def model(theta: np.ndarray):
        value, jac = full(np.append(theta, theta[3]))
        return value, np.column_stack([jac[:, :3], jac[:, 3] + jac[:, 4]])
    return model


def chinchilla_params(theta: np.ndarray) -> dict[str, float]:
    a, b, e, alpha, beta = map(float, theta)
    return {"E": np.exp(e), "A": np.exp(a), "B": np.exp(b), "alpha": alpha, "beta": beta}


def chinchilla_theta(p: dict) -> np.ndarray:
    return np.array([np.log(p["A"]), np.log(p["B"]), np.log(p["E"]), p["alpha"], p["beta"]])


def chinchilla_predict(p: dict, N, D) -> np.ndarray:
    return p["E"] + p["A"] / np.asarray(N, float) ** p["alpha"] + p["B"] / np.asarray(D, float) ** p["beta"]


def chinchilla_optimal(p: dict, C) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hoffmann et al. eq. 4: N_opt = G (C/6)^(beta/(alpha+beta)), G = (alpha A / (beta B))^(1/(alpha+beta))."""
    C = np.asarray(C, float)
    alpha, beta = p["alpha"], p["beta"]
    if alpha <= 0 or beta <= 0:
        raise DataError("chinchilla: compute-optimal split needs alpha > 0 and beta > 0")
    G = (alpha * p["A"] / (beta * p["B"])) ** (1.0 / (alpha + beta))
    N = G * (C / 6.0) ** (beta / (alpha + beta))
    D = C / (6.0 * N)
    return N, D, chinchilla_predict(p, N, D)


def fit_chinchilla(points: Points, start: dict | None = None, delta: float = HUBER_DELTA,
                   refine: int = 32, tie: bool = False) -> LawFit:
    """`tie=True`: one exponent for N and D (alpha = beta, Gadre et al. 2024), 4 free parameters."""
    if not np.isfinite(delta) or delta <= 0:
        raise RecipeError(f"--huber-delta: must be a positive number, got {delta}")
    x, y = np.log(points.N), np.log(points.D)
    starts = chinchilla_theta(start)[None] if start else CHINCHILLA_GRID
    if tie:
        starts = np.unique(starts[:, :4], axis=0)
        opt = huber_fit(tied_model(x, y), np.log(points.loss), starts, CHINCHILLA_BOUNDS[:4], delta, refine)
        opt.theta = np.append(opt.theta, opt.theta[3])
    else:
        opt = huber_fit(chinchilla_model(x, y), np.log(points.loss), starts, CHINCHILLA_BOUNDS, delta, refine)
    params = chinchilla_params(opt.theta)
    bound = at_bounds(opt.theta, CHINCHILLA_BOUNDS, CHINCHILLA_THETA)
    warnings = [f"chinchilla: {name} is at its bound ({params_name(name)} = {_fmt(params, name)}): "
                "the data do not constrain it" for name in bound]
    derived = {}
    if params["alpha"] > 0 and params["beta"] > 0:  # N_opt ∝ C^a, D_opt ∝ C^b (Hoffmann et al. eq. 4)
        derived["a"] = params["beta"] / (params["alpha"] + params["beta"])
        derived["b"] = params["alpha"] / (params["alpha"] + params["beta"])
    return LawFit(params, warnings, {"objective": opt.objective, "converged": opt.converged, "delta": delta,
                                     "tied_exponents": tie}, derived)


def params_name(theta_name: str) -> str:
    return {"a": "A", "b": "B", "e": "E"}.get(theta_name, theta_name)


def _fmt(params: dict, theta_name: str) -> str:
    return f"{params[params_name(theta_name)]:.4g}"


# ----------------------------------------------------------------------------- Kaplan

KAPLAN_THETA = ["alpha_N", "alpha_D", "log_Nc", "log_Dc"]
KAPLAN_BOUNDS = [(1e-3, 3.0), (1e-3, 3.0), (0.0, 120.0), (0.0, 120.0)]
KAPLAN_GRID = grid(alpha_N=[0.05, 0.1, 0.2, 0.4], alpha_D=[0.05, 0.1, 0.2, 0.4],
                   log_Nc=[10, 20, 30, 40, 50], log_Dc=[10, 20, 30, 40, 50])


def kaplan_model(x: np.ndarray, y: np.ndarray):
    def model(theta: np.ndarray):
        aN, aD, lnc, ldc = theta
        u1, u2 = aN / aD * (lnc - x), ldc - y
        terms = np.stack([u1, u2])
        S, p = lse_softmax(terms)
        jac = np.column_stack([p[0] * (lnc - x), S - p[0] * u1, p[0] * aN, aD * p[1]])
        return aD * S, jac
    return model


def kaplan_params(theta: np.ndarray) -> dict[str, float]:
    aN, aD, lnc, ldc = map(float, theta)
    return {"alpha_N": aN, "alpha_D": aD, "Nc": float(np.exp(lnc)), "Dc": float(np.exp(ldc))}


def kaplan_theta(p: dict) -> np.ndarray:
    return np.array([p["alpha_N"], p["alpha_D"], np.log(p["Nc"]), np.log(p["Dc"])])


def kaplan_predict(p: dict, N, D) -> np.ndarray:
    N, D = np.asarray(N, float), np.asarray(D, float)
    return ((p["Nc"] / N) ** (p["alpha_N"] / p["alpha_D"]) + p["Dc"] / D) ** p["alpha_D"]


def kaplan_optimal(p: dict, C) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """At fixed C = 6ND the bracket is a sum of two exponentials in log N (convex): set its
    derivative to zero, r e^{r(log Nc - x)} = e^{x + log(6 Dc / C)} with r = alpha_N / alpha_D."""
    C = np.asarray(C, float)
    r = p["alpha_N"] / p["alpha_D"]
    k = np.log(6.0 * p["Dc"] / C)
    x = (r * np.log(p["Nc"]) + np.log(r) - k) / (r + 1.0)
    N = np.exp(x)
    D = C / (6.0 * N)
    return N, D, kaplan_predict(p, N, D)


def fit_kaplan(points: Points, start: dict | None = None, delta: float = HUBER_DELTA, refine: int = 32) -> LawFit:
    return fit_form("kaplan", kaplan_model, kaplan_theta, kaplan_params, KAPLAN_GRID, KAPLAN_BOUNDS, KAPLAN_THETA,
                    points, start, delta, refine)


def fit_form(law: str, model_fn, theta_fn, params_fn, starts_grid: np.ndarray, bounds: list, names: list[str],
             points: Points, start: dict | None, delta: float, refine: int) -> LawFit:
    """Huber fit of a log-loss model on (log N, log D) from a start grid (or one start), flagging bounds."""
    model = model_fn(np.log(points.N), np.log(points.D))
    starts = theta_fn(start)[None] if start else starts_grid
    opt = huber_fit(model, np.log(points.loss), starts, bounds, delta, refine)
    bound = at_bounds(opt.theta, bounds, names)
    warnings = [f"{law}: {name} is at its bound ({float(v):.4g}): the data do not constrain it"
                for name, v in zip(names, opt.theta) if name in bound]
    return LawFit(params_fn(opt.theta), warnings,
                  {"objective": opt.objective, "converged": opt.converged, "delta": delta})


# ----------------------------------------------------------------------------- Kaplan + E

# Kaplan's eq. 1.5 plus Chinchilla's irreducible term:  L = E + [(Nc/N)^(aN/aD) + Dc/D]^aD.
# Unlike Chinchilla's sum, the data term's effect depends on N (a small model gains less from more tokens),
# which is what the CPU end-to-end proxies show (docs/scaling.md, attempt 5); E keeps the law from
# promising a loss that falls without bound.
KAPLAN_E_THETA = KAPLAN_THETA + ["e"]
KAPLAN_E_BOUNDS = KAPLAN_BOUNDS + [(-10.0, 5.0)]
KAPLAN_E_GRID = np.array([np.append(row, e) for row in KAPLAN_GRID for e in (-1.0, -0.5, 0.0, 0.5)])


def kaplan_e_model(x: np.ndarray, y: np.ndarray):
    """log L = LSE(log Kaplan(N, D), e) on x = log N, y = log D; theta = (aN, aD, log Nc, log Dc, e)."""
    kaplan = kaplan_model(x, y)

    def model(theta: np.ndarray):
        k, jac_k = kaplan(theta[:4])
        lse, q = lse_softmax(np.stack([k, np.full_like(x, theta[4])]))
        return lse, np.column_stack([q[0][:, None] * jac_k, q[1]])
    return model


def kaplan_e_params(theta: np.ndarray) -> dict[str, float]:
    return {**kaplan_params(theta[:4]), "E": float(np.exp(theta[4]))}


def kaplan_e_theta(p: dict) -> np.ndarray:
    return np.append(kaplan_theta(p), np.log(p["E"]))


def kaplan_e_predict(p: dict, N, D) -> np.ndarray:
    return p["E"] + kaplan_predict(p, N, D)


def kaplan_e_optimal(p: dict, C) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """E is a constant: the compute-optimal split is Kaplan's."""
    N, D, _ = kaplan_optimal(p, C)
    return N, D, kaplan_e_predict(p, N, D)


def fit_kaplan_e(points: Points, start: dict | None = None, delta: float = HUBER_DELTA, refine: int = 32) -> LawFit:
    return fit_form("kaplan-e", kaplan_e_model, kaplan_e_theta, kaplan_e_params, KAPLAN_E_GRID, KAPLAN_E_BOUNDS,
                    KAPLAN_E_THETA, points, start, delta, refine)
