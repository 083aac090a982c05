"""Critical batch size: B_crit = c * N^a (`windtunnel fit runs.csv --law critical-batch`).

Input: per model size N, the optimizer steps S needed to reach a target loss at several batch sizes B
(tokens), as in Zhang et al. (2024), "How Does Critical Batch Size Scale in Pre-training?".
Per size, McCandlish et al. (2018)'s steps/batch trade-off  S(B) = S_min (1 + B_crit / B)  is fitted by
least squares on log S (S_min: steps at infinite batch; B_crit: the batch where the steps are twice
S_min and the tokens twice E_min = S_min B_crit). Then log B_crit = log c + a log N (least squares).
Bootstrap: batch rows resampled with replacement within each size, the whole two-stage fit redone.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy.optimize import least_squares

from ..errors import DataError
from .bootstrap import percentile_ci
from .filters import keep_row
from .points import _cell, _read_table

COLUMNS = {"N": ("n", "params", "n_params", "n_millions"),
           "batch": ("batch", "batch_tokens", "batch_size_tokens", "bs"),
           "steps": ("steps", "steps_to_goal", "steps_to_goal_used_in_fit", "steps_to_target")}


def fit_size(batch: np.ndarray, steps: np.ndarray) -> tuple[float, float]:
    """(S_min, B_crit) of S = S_min (1 + B_crit / B), fitted on log S."""
    if len(np.unique(batch)) < 3:
        raise DataError("critical-batch: need >= 3 batch sizes per model size")
    lb, ls = np.log(batch), np.log(steps)

    def resid(theta):  # theta = (log S_min, log B_crit)
        return theta[0] + np.logaddexp(0.0, theta[1] - lb) - ls

    start = np.array([ls.min(), np.median(lb)])
    sol = least_squares(resid, start)
    return float(np.exp(sol.x[0])), float(np.exp(sol.x[1]))


def fit_power(N: np.ndarray, batch: np.ndarray, steps: np.ndarray) -> dict:
    sizes = np.unique(N)
    if len(sizes) < 2:
        raise DataError(f"critical-batch: {len(sizes)} model size(s): need >= 2 for B_crit = c N^a")
    per = [fit_size(batch[N == n], steps[N == n]) for n in sizes]
    b_crit = np.array([b for _, b in per])
    a, log_c = np.polyfit(np.log(sizes), np.log(b_crit), 1)
    return {"params": {"c": float(np.exp(log_c)), "a": float(a)},
            "sizes": [{"N": float(n), "S_min": s, "B_crit": b} for n, (s, b) in zip(sizes, per)]}


def fit_critical_batch(N, batch, steps, bootstrap: int = 200, seed: int = 0, level: float = 0.95) -> dict:
    N, batch, steps = (np.asarray(v, float) for v in (N, batch, steps))
    ok = np.isfinite(N) & np.isfinite(batch) & np.isfinite(steps) & (N > 0) & (batch > 0) & (steps > 0)
    dropped = int((~ok).sum())
    N, batch, steps = N[ok], batch[ok], steps[ok]
    out = fit_power(N, batch, steps)
    rng = np.random.default_rng(seed)
    groups = [np.flatnonzero(N == n) for n in np.unique(N)]
    samples, failures = [], 0
    for _ in range(bootstrap):
        idx = np.concatenate([rng.choice(g, len(g)) for g in groups])
        try:
            samples.append(fit_power(N[idx], batch[idx], steps[idx])["params"])
        except DataError:  # a resample left a size with fewer than 3 batch sizes
            failures += 1
    out.update(law="critical-batch", ci=percentile_ci(samples, level), ci_level=level,
               bootstrap={"resamples": bootstrap, "failed": failures}, dropped_rows=dropped,
               warnings=warnings_for(out, dropped, len(groups)))
    return out


def warnings_for(out: dict, dropped: int, n_sizes: int) -> list[str]:
    w = []
    if dropped:
        w.append(f"critical-batch: {dropped} rows dropped: a missing, zero or negative N, batch or steps")
    if n_sizes < 3:
        w.append(f"critical-batch: only {n_sizes} model sizes: the exponent a is not checked by any third size")
    return w


def predict(params: dict, N) -> np.ndarray:
    return params["c"] * np.asarray(N, float) ** params["a"]


def load(path, columns: dict[str, str], where: list, exclude: list) -> tuple[np.ndarray, ...]:
    """N, batch (tokens), steps from a CSV (columns found by name or mapped with --columns)."""
    path = Path(path)
    header, table = _read_table(path)
    lower = {h.lower(): h for h in header}
    mapping = {}
    for key, names in COLUMNS.items():
        name = columns.get(key) or next((lower[n] for n in names if n in lower), None)
        if name is None or name not in header:
            raise DataError(f"{path}: critical-batch needs a {key} column; map it with --columns {key}=NAME")
        mapping[key] = name
    table = [r for r in table if keep_row(lambda c, r=r: r.get(c, r.get(mapping.get(c))), where, exclude)]
    if not table:
        raise DataError(f"{path}: no rows (after --where/--exclude filters)")
    return tuple(np.array([_cell(path, i, r[mapping[k]], mapping[k]) for i, r in enumerate(table)])
                 for k in ("N", "batch", "steps"))


def summary(out: dict) -> str:
    p, ci = out["params"], out.get("ci", {})
    band = {k: f" [{ci[k][0]:.4g}, {ci[k][1]:.4g}]" if k in ci else "" for k in p}
    lines = [f"law critical-batch: B_crit = c N^a on {len(out['sizes'])} model sizes",
             f"           c = {p['c']:.4g}{band['c']}", f"           a = {p['a']:.4g}{band['a']}"]
    lines += [f"  N = {s['N']:.4g}: B_crit = {s['B_crit']:.4g}, S_min = {s['S_min']:.4g}" for s in out["sizes"]]
    return "\n".join(lines + [f"warning: {w}" for w in out["warnings"]])
