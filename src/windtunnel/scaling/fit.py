"""fit_law: one entry point for every law, with bootstrap CIs, leave-largest-out and warnings.

    from windtunnel.scaling import fit_law
    res = fit_law("chinchilla", N=n, D=d, loss=l, bootstrap=200)
    res.params, res.ci, res.predict(N, D), res.compute_optimal(C), res.warnings, res.to_dict()
"""
from __future__ import annotations

import numpy as np
from threadpoolctl import threadpool_limits

from . import frontier, hparams, laws
from ..errors import DataError, RecipeError
from .bootstrap import bootstrap_fits, percentile_ci
from .checks import (ci_warnings, holdout_loss_law, holdout_top_compute, holdout_warnings, scale_warnings,
                     top_compute_warning)
from .points import Points
from .result import FitResult, Law

LAWS: dict[str, Law] = {
    "chinchilla": Law("chinchilla", "loss", laws.fit_chinchilla,
                      holdout_loss_law(laws.fit_chinchilla, laws.chinchilla_predict),
                      predict=laws.chinchilla_predict, optimal=laws.chinchilla_optimal, n_params=5),
    "kaplan": Law("kaplan", "loss", laws.fit_kaplan, holdout_loss_law(laws.fit_kaplan, laws.kaplan_predict),
                  predict=laws.kaplan_predict, optimal=laws.kaplan_optimal, n_params=4),
    "kaplan-e": Law("kaplan-e", "loss", laws.fit_kaplan_e, holdout_loss_law(laws.fit_kaplan_e, laws.kaplan_e_predict),
                    predict=laws.kaplan_e_predict, optimal=laws.kaplan_e_optimal, n_params=5),
    "envelope": Law("envelope", "frontier", frontier.fit_envelope, frontier.holdout_envelope,
                    optimal=frontier.frontier_optimal, n_params=7),
    "isoflop": Law("isoflop", "frontier", frontier.fit_isoflop, frontier.holdout_isoflop,
                   optimal=frontier.frontier_optimal, n_params=7),
    "lr-bs": Law("lr-bs", "hparams", hparams.fit_lr_bs, hparams.holdout_lr_bs, suggest=hparams.suggest, n_params=5),
}
EXPONENTS = ["alpha", "beta", "alpha_N", "alpha_D", "a", "b", "gamma", "lr_N", "lr_D", "bs_D"]


def fit_law(law: str, points: Points | None = None, *, N=None, D=None, loss=None, C=None, lr=None, batch=None,
            n_kind: str = "non_embedding", bootstrap: int = 200, seed: int = 0, level: float = 0.95,
            holdout: bool = True, **options) -> FitResult:
    """Fit `law` (chinchilla | kaplan | kaplan-e | envelope | isoflop | lr-bs | auto) to points or arrays.

    Loss laws see each (N, D) cell at its best loss (sweeps with LR axes). `options` go to the
    law's fitter: delta/refine (chinchilla, kaplan, kaplan-e), tolerance/neighbours (isoflop), method/window (lr-bs)."""
    if law not in LAWS and law != "auto":
        raise RecipeError(f"--law: {law!r} is not one of {', '.join([*LAWS, 'auto'])}")
    if not 0 < level < 1:
        raise RecipeError(f"level: {level} must be between 0 and 1")
    if points is None:
        points = Points.from_arrays(N, D, loss, C=C, lr=lr, batch=batch, n_kind=n_kind)
    # One BLAS thread: the fits are thousands of tiny L-BFGS-B steps, and a threaded BLAS inside them
    # runs ~10x slower on a busy machine (measured on the 2-core CI box).
    with threadpool_limits(limits=1, user_api="blas"):
        if law == "auto":
            return fit_auto(points, bootstrap, seed, level, options)
        return _fit(LAWS[law], points, bootstrap, seed, level, holdout, options)


# --law auto: the L(N, D) forms with an irreducible term, which differ in whether the data term's effect
# depends on N (kaplan-e) or not (chinchilla).
AUTO_LAWS = ("chinchilla", "kaplan-e")


def fit_auto(points: Points, bootstrap: int, seed: int, level: float, options: dict) -> FitResult:
    """Fit every AUTO_LAWS form and keep the one that best predicts the top compute budget from the runs
    below it: the extrapolation in compute that a target makes. The forms can disagree at the target by
    more than either one's bootstrap interval (docs/scaling.md, end-to-end attempts 3-5); the choice and
    the others' parameters are kept in details["auto"] so the spread can be reported."""
    if options.get("tie"):
        raise RecipeError("--law auto: --tie-exponents applies to chinchilla only; name the law")
    trials = {name: _fit(LAWS[name], points, 0, seed, level, True, options) for name in AUTO_LAWS}
    scores = {name: holdout_score(trial) for name, trial in trials.items()}
    best = min(AUTO_LAWS, key=lambda name: scores[name])
    result = _fit(LAWS[best], points, bootstrap, seed, level, True, options) if bootstrap else trials[best]
    result.details["auto"] = {"chosen": best, "by": "leave-top-compute-out max |error| (leave-largest-out "
                              "where it is skipped)", "scores": scores,
                              "params": {name: trial.params for name, trial in trials.items()}}
    if not np.isfinite(scores[best]):
        result.warnings.append(f"--law auto: no holdout check could run on these points; {best} was kept by "
                               "default, not chosen")
    return result


def holdout_score(result: FitResult) -> float:
    """Max relative loss error of the compute holdout, else of leave-largest-out; inf when neither ran."""
    for rep in (result.details.get("leave_top_compute_out"), result.holdout):
        if rep and "loss_max_abs_rel_error" in rep:
            return float(rep["loss_max_abs_rel_error"])
    return float("inf")


def _fit(impl: Law, points: Points, bootstrap: int, seed: int, level: float, holdout: bool,
         options: dict) -> FitResult:
    notes = []
    if impl.kind != "hparams":
        reduced = points.best_per_cell()
        if len(reduced) < len(points):
            dup = points.duplicates()
            notes.append(f"{len(points)} runs reduced to {len(reduced)} (N, D) cells by best loss"
                         + (f" ({dup} exact duplicate rows collapsed)" if dup else ""))
        points = reduced
    too_few(impl, points, options)
    try:
        estimate = impl.fit(points, **options)
    except np.linalg.LinAlgError as e:  # a singular design: degenerate points, not a fitter bug
        raise DataError(f"{impl.name}: the fit is singular on these {len(points)} points ({e})") from None
    samples, failures = bootstrap_fits(impl, points, estimate, bootstrap, seed, options) if bootstrap else ([], 0)
    ci = percentile_ci(samples, level)
    warnings = list(points.warnings) + scale_warnings(points, impl.kind, impl.n_params) + estimate.warnings
    warnings += ci_warnings({**estimate.params, **estimate.derived}, ci, EXPONENTS)
    fixed = ("beta", "a", "b") if options.get("tie") else ()  # equal by construction when tied
    flat = [k for k, (lo, hi) in ci.items() if k in EXPONENTS and k not in fixed and lo == hi]
    if flat:
        warnings.append(f"bootstrap: zero-width intervals for {', '.join(flat)}: every resample gave the same "
                        "fit (too few distinct points); the intervals mean nothing")
    if bootstrap and failures > 0.1 * bootstrap:
        warnings.append(f"bootstrap: {failures} of {bootstrap} refits failed: the fit is fragile")
    report = leave_largest_out(impl, points, options) if holdout else None
    warnings += holdout_warnings(report)
    details = {**estimate.details, **({"notes": notes} if notes else {})}
    if holdout and impl.kind == "loss":
        details["leave_top_compute_out"] = leave_top_compute_out(impl, points, options)
        warnings += top_compute_warning(details["leave_top_compute_out"])
    return FitResult(impl.name, estimate.params, ci, warnings, points, impl, estimate.derived, details, samples,
                     report, level, failures, dict(options))


def too_few(impl: Law, points: Points, options: dict) -> None:
    """Refuse a fit with fewer points than free parameters: it would 'succeed' with zero-width CIs."""
    n_params = impl.n_params - (1 if options.get("tie") else 0)
    if impl.kind == "loss" and len(points) < n_params:
        raise DataError(f"{impl.name}: {len(points)} distinct (N, D) point(s) for {n_params} parameters: "
                         f"need at least {n_params} (and more for meaningful intervals)")
    if impl.kind == "frontier" and len(np.unique(points.C)) < 2:
        raise DataError(f"{impl.name}: {len(points)} point(s) at one compute: need several budgets")


def leave_top_compute_out(impl: Law, points: Points, options: dict) -> dict:
    try:
        return holdout_top_compute(impl.fit, impl.predict, points, options)
    except (DataError, np.linalg.LinAlgError) as e:  # too few points left, or a singular refit
        return {"skipped": f"refit without the top compute budget failed: {e}"}


def leave_largest_out(impl: Law, points: Points, options: dict) -> dict:
    """Refit without the largest scale and report how well it is predicted (or why it cannot be)."""
    if len(np.unique(points.N)) < 3 and impl.kind != "frontier":
        return {"skipped": "fewer than 3 model sizes: nothing left to fit after holding one out"}
    try:
        return impl.holdout(points, options)
    except (DataError, np.linalg.LinAlgError) as e:  # too few points left, or a singular refit
        return {"skipped": f"refit without the largest scale failed: {e}"}
