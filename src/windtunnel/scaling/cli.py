"""`windtunnel fit SOURCE --law ...`: fit a scaling law to a sweep directory or a CSV.

    windtunnel fit runs/sweep --law chinchilla --target-flops 1e21 --json fit.json --plots plots/ \
        --emit target.yaml
    windtunnel fit points.csv --law isoflop --columns N=params,C=flops,loss=val_loss

Bad input exits 2 with a one-line error.
"""
from __future__ import annotations

import argparse
import sys

import numpy as np

from ..recipe import RecipeError
from .fit import LAWS, fit_law
from .points import N_KINDS, Points, load_points, parse_columns
from .predict import MAX_EXTRAPOLATION, emit_recipe, predict_target
from .report import build_report, format_summary, write_report

SUFFIXES = {"K": 1e3, "M": 1e6, "B": 1e9, "G": 1e9, "T": 1e12}


class UsageError(ValueError):
    pass


class Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line instead of usage + message
        raise UsageError(message)


def number(text: str) -> float:
    """1e9, 1.3B, 350M, 2e21."""
    t = text.strip().replace("_", "")
    scale = SUFFIXES.get(t[-1:].upper(), 1.0) if t[-1:].isalpha() else 1.0
    try:
        return float(t[:-1] if scale != 1.0 else t) * scale
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None


def build_parser() -> Parser:
    p = Parser(prog="windtunnel fit", description="Fit a scaling law to a sweep directory or a CSV of runs.")
    p.add_argument("source", help="sweep directory (run dirs with summary.json) or CSV file")
    p.add_argument("--law", choices=[*LAWS, "mixture"], default="chinchilla")
    p.add_argument("--objective", default="mean", help="mixture: a source, name=weight,... or mean")
    p.add_argument("--mix-model", choices=["auto", "linear", "quadratic"], default="auto", help="mixture regression")
    p.add_argument("--n-kind", choices=list(N_KINDS), default="non_embedding", help="which parameter count is N")
    p.add_argument("--target-params", type=number, help="target N (with --target-tokens)")
    p.add_argument("--target-tokens", type=number, help="target D (with --target-params)")
    p.add_argument("--target-flops", type=number, help="target budget C: compute-optimal N*, D* (C = 6ND)")
    p.add_argument("--json", help="write the report here")
    p.add_argument("--plots", help="write PNG plots into this directory")
    p.add_argument("--emit", help="write a recipe for the target run here")
    p.add_argument("--base", help="base recipe for --emit (default: the largest run's recipe.yaml)")
    p.add_argument("--columns", help="CSV column mapping, e.g. N=params,D=tokens,loss=val_loss")
    p.add_argument("--where", action="append", default=[], metavar="COL=VALUE", help="keep CSV rows (repeatable)")
    p.add_argument("--bootstrap", type=int, default=200, help="bootstrap resamples (0 = none)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--level", type=float, default=0.95, help="confidence level of the intervals")
    p.add_argument("--max-extrapolation", type=float, default=MAX_EXTRAPOLATION,
                   help="warn when the target exceeds the largest fitted compute by more than this factor")
    p.add_argument("--group-tolerance", type=float, default=0.25, help="isoflop: relative width of a budget")
    p.add_argument("--neighbours", type=int, default=2,
                   help="isoflop: fit each parabola to the best run and this many on each side (0 = all runs)")
    p.add_argument("--lr-method", choices=["quadratic", "near_best"], default="quadratic", help="lr-bs optimum")
    return p


def law_options(args) -> dict:
    if args.law == "isoflop":
        return {"tolerance": args.group_tolerance, "neighbours": args.neighbours or None}
    if args.law == "lr-bs":
        return {"method": args.lr_method}
    return {}


def run(args) -> dict:
    if args.bootstrap < 0:
        raise ValueError(f"--bootstrap: must be >= 0, got {args.bootstrap}")
    if (args.target_params is None) != (args.target_tokens is None):
        raise ValueError("--target-params and --target-tokens go together")
    wants_target = args.target_flops is not None or args.target_params is not None
    if args.emit and not wants_target:
        raise ValueError("--emit needs a target: --target-flops or --target-params/--target-tokens")
    where = dict(_split(w, "--where") for w in args.where)
    points = load_points(args.source, args.n_kind, parse_columns(args.columns), where)
    result = fit_law(args.law, points, bootstrap=args.bootstrap, seed=args.seed, level=args.level,
                     **law_options(args))
    hparams = fit_hparams(points, args) if args.law != "lr-bs" else None
    target = None
    if wants_target:
        target = predict_target(result, params=args.target_params, tokens=args.target_tokens,
                                flops=args.target_flops, hparams=hparams, max_extrapolation=args.max_extrapolation)
        target["n_kind"] = args.n_kind
    plots = None
    if args.plots:
        from .plots import make_plots  # matplotlib only when asked for
        plots = make_plots(result, args.plots, target)
    emitted = None
    if args.emit:
        emitted = str(emit_recipe(target, args.base or base_recipe(points), args.emit, args.n_kind,
                                  note=f"law {args.law} fitted on {args.source}"))
    report = build_report(result, str(args.source), target, hparams, plots, emitted)
    if args.json:
        write_report(report, args.json)
    return report


def fit_hparams(points: Points, args):
    """The lr-bs law as a side fit, when the sweep has LR axes (for the target's suggestions)."""
    if not points.has_hparam_axes():
        return None
    try:
        return fit_law("lr-bs", points, bootstrap=min(args.bootstrap, 100), seed=args.seed, level=args.level,
                       method=args.lr_method)
    except ValueError as e:
        print(f"note: no lr-bs law ({e})", file=sys.stderr)
        return None


def base_recipe(points: Points) -> str:
    """recipe.yaml of the largest model's run: the sweep's own settings, closest to the target."""
    for i in np.argsort(-points.N, kind="stable"):
        run = points.labels[i].split("@")[0]
        if run in points.recipes:
            return points.recipes[run]
    raise ValueError("--emit: no run recipe.yaml found in SOURCE; pass --base RECIPE")


def _split(item: str, flag: str) -> tuple[str, str]:
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise ValueError(f"{flag}: expected COL=VALUE, got {item!r}")
    return key, value


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        if args.law == "mixture":  # data mixtures: scaling/mixture.py
            from .mixture import format_mixture, run_mixture
            report = run_mixture(args)
            print(format_mixture(report))
            return 0
        report = run(args)
    except (ValueError, RecipeError, OSError) as e:
        print(f"windtunnel fit: error: {e}", file=sys.stderr)
        return 2
    print(format_summary(report))
    for path in report["plots"]:
        print(f"wrote {path}")
    for path in (args.json, report["emitted_recipe"]):
        if path:
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
