"""`windtunnel fit SOURCE --law ...`: fit a scaling law to a sweep directory or a CSV.

    windtunnel fit runs/sweep --law chinchilla --target-flops 1e21 --json fit.json --plots plots/ \
        --emit target.yaml
    windtunnel fit points.csv --law isoflop --columns N=params,C=flops,loss=val_loss

Bad input raises RecipeError / DataError: `windtunnel.cli`'s boundary prints it as one line (exit 2);
anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from ..errors import DataError, RecipeError, run_command
from . import filters
from .filters import parse_number
from .fit import LAWS, fit_law
from .optimize import HUBER_DELTA
from .points import N_KINDS, Points, load_points, parse_columns
from .predict import MAX_EXTRAPOLATION, emit_recipe, family_rules, predict_target, restate_for_emitted
from .report import build_report, format_summary, write_report


class UsageError(RecipeError):
    """A bad flag or argument, as argparse words it (one line, no usage block)."""


class Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line instead of usage + message
        raise UsageError(message)


def number(text: str) -> float:
    """1e9, 1.3B, 350M, 2e21."""
    value = parse_number(text)
    if value is None or not np.isfinite(value):
        raise argparse.ArgumentTypeError(f"not a number: {text!r}")
    return value


def non_negative(kind):
    def check(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a {kind.__name__}: {text!r}") from None
        if not np.isfinite(value) or value < 0:
            raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
        return value
    check.__name__ = kind.__name__
    return check


def positive_float(text: str) -> float:
    value = non_negative(float)(text)
    if value == 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def build_parser() -> Parser:
    p = Parser(prog="windtunnel fit", description="Fit a scaling law to a sweep directory or a CSV of runs.")
    p.add_argument("source", help="sweep directory (run dirs with summary.json) or CSV file")
    p.add_argument("--law", choices=[*LAWS, "auto", "critical-batch", "mixture"], default="chinchilla",
                   help="auto: chinchilla or kaplan-e, whichever predicts the top compute budget best")
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
    p.add_argument("--where", action="append", default=[], metavar="COL=VALUE",
                   help="keep rows: COL=V, COL!=V, COL>X, COL>=X, COL<X, COL<=X (repeatable: COL=a "
                        "COL=b keeps either, all other conditions must hold; sweeps: N, D, C, loss, lr, batch, run)")
    p.add_argument("--exclude", action="append", default=[], metavar="COL=VALUE",
                   help="drop rows matching (same forms as --where; repeatable), e.g. run=lr0.1_w256")
    p.add_argument("--min-steps", type=non_negative(float), metavar="K",
                   help="drop points trained for fewer than K optimizer steps (D / batch; needs the batch)")
    p.add_argument("--batch-unit", choices=["tokens", "sequences"],
                   help="unit of a CSV batch column (sequences: times --seq-len or a seq_len column)")
    p.add_argument("--seq-len", type=positive_float, help="sequence length for --batch-unit sequences")
    p.add_argument("--bootstrap", type=non_negative(int), default=200, help="bootstrap resamples (0 = none)")
    p.add_argument("--seed", type=non_negative(int), default=0, help="bootstrap resampling seed")
    p.add_argument("--level", type=float, default=0.95, help="confidence level of the intervals")
    p.add_argument("--max-extrapolation", type=positive_float, default=MAX_EXTRAPOLATION,
                   help="warn when the target exceeds the largest fitted compute by more than this factor")
    p.add_argument("--huber-delta", type=positive_float, default=HUBER_DELTA,
                   help="chinchilla/kaplan/kaplan-e: Huber delta on log loss (Hoffmann et al.: 1e-3)")
    p.add_argument("--tie-exponents", action="store_true",
                   help="chinchilla: one exponent for N and D (alpha = beta; Gadre et al. 2024)")
    p.add_argument("--group-tolerance", type=non_negative(float), default=0.25,
                   help="isoflop: relative width of a budget")
    p.add_argument("--neighbours", type=non_negative(int), default=2,
                   help="isoflop: fit each parabola to the best run and this many on each side (0 = all runs)")
    p.add_argument("--lr-method", choices=["quadratic", "near_best"], default="quadratic", help="lr-bs optimum")
    return p


def law_options(args) -> dict:
    if args.law == "isoflop":
        return {"tolerance": args.group_tolerance, "neighbours": args.neighbours or None}
    if args.law == "lr-bs":
        return {"method": args.lr_method}
    if args.tie_exponents and args.law != "chinchilla":
        raise RecipeError(f"--tie-exponents: only for --law chinchilla, not {args.law}")
    if args.law == "envelope":  # the frontier's power laws take no options
        return {}
    options = {"delta": args.huber_delta}
    return {**options, "tie": True} if args.tie_exponents else options


def check_args(args) -> None:
    """Everything that can be refused before reading data or fitting."""
    if (args.target_params is None) != (args.target_tokens is None):
        raise RecipeError("--target-params and --target-tokens go together")
    wants_target = args.target_flops is not None or args.target_params is not None
    if args.emit and not wants_target:
        raise RecipeError("--emit needs a target: --target-flops or --target-params/--target-tokens")
    check_outputs(args)


def check_outputs(args) -> None:
    """The checks every law shares (mixture too): the interval level and the output paths."""
    if not 0 < args.level < 1:
        raise RecipeError(f"--level: must be between 0 and 1, got {args.level}")
    if args.min_steps and args.law in ("critical-batch", "mixture"):  # not read there: refuse, not ignore
        raise RecipeError(f"--min-steps: not for --law {args.law} (only for laws fitted to sweep points)")
    for flag, path in (("--json", args.json), ("--emit", args.emit)):
        if path and Path(path).is_dir():
            raise RecipeError(f"{flag} {path}: is a directory (give a file name)")
    if args.plots and Path(args.plots).exists() and not Path(args.plots).is_dir():
        raise RecipeError(f"--plots {args.plots}: exists and is not a directory")


def run(args) -> dict:
    check_args(args)
    if args.law == "critical-batch":
        return run_critical_batch(args)
    where, exclude = filters.parse(args.where, "--where"), filters.parse(args.exclude, "--exclude")
    points = load_points(args.source, args.n_kind, parse_columns(args.columns), where, exclude,
                         args.batch_unit, args.seq_len, args.min_steps)
    base = usable_base(args.base or base_recipe(points)) if args.emit else None
    result = fit_law(args.law, points, bootstrap=args.bootstrap, seed=args.seed, level=args.level,
                     **law_options(args))
    hparams = fit_hparams(points, args) if args.law != "lr-bs" else None
    target = None
    if args.target_flops is not None or args.target_params is not None:
        target = predict_target(result, params=args.target_params, tokens=args.target_tokens,
                                flops=args.target_flops, hparams=hparams, max_extrapolation=args.max_extrapolation)
        target["n_kind"] = args.n_kind
    plots = None
    if args.plots:
        from .plots import make_plots  # matplotlib only when asked for
        plots = _writing("--plots", args.plots, lambda: make_plots(result, args.plots, target))
    emitted = None
    if args.emit:
        path, actual = _writing("--emit", args.emit, lambda: emit_recipe(
            target, base, args.emit, args.n_kind, rules=family_rules(points.recipes.values()),
            note=f"law {args.law} fitted on {args.source}"))
        emitted = str(path)
        target["emitted"] = restate_for_emitted(result, target, actual)
        target["warnings"] += actual["warnings"]
    report = build_report(result, str(args.source), target, hparams, plots, emitted)
    if args.json:
        _writing("--json", args.json, lambda: write_report(report, args.json))
    return report


def run_critical_batch(args) -> dict:
    from . import critical_batch

    if Path(args.source).is_dir():
        raise DataError(f"{args.source}: --law critical-batch reads a CSV (N, batch, steps to a target loss)")
    if not Path(args.source).is_file():
        raise DataError(f"{args.source}: no such CSV file")
    N, batch, steps = critical_batch.load(args.source, parse_columns(args.columns, critical_batch.COLUMNS),
                                          filters.parse(args.where, "--where"), filters.parse(args.exclude, "--exclude"))
    if args.batch_unit == "sequences":
        if args.seq_len is None:
            raise RecipeError("--batch-unit sequences needs --seq-len for --law critical-batch")
        batch = batch * args.seq_len
    report = critical_batch.fit_critical_batch(N, batch, steps, args.bootstrap, args.seed, args.level)
    report.update(source=str(args.source), plots=[], emitted_recipe=None)
    if args.target_params is not None:
        report["target"] = {"N": args.target_params, "B_crit": float(critical_batch.predict(report["params"],
                                                                                             args.target_params))}
    if args.json:
        _writing("--json", args.json, lambda: write_report(report, args.json))
    return report


def _writing(flag: str, path: str, write):
    """Run a writer; a file-system failure names the flag and the path."""
    try:
        return write()
    except OSError as e:
        raise RecipeError(f"{flag} {path}: cannot write ({e.strerror or e})") from None


def fit_hparams(points: Points, args):
    """The lr-bs law as a side fit, when the sweep has LR axes (for the target's suggestions)."""
    if not points.has_hparam_axes():
        return None
    try:
        return fit_law("lr-bs", points, bootstrap=min(args.bootstrap, 100), seed=args.seed, level=args.level,
                       method=args.lr_method)
    except DataError as e:  # too few cells or no LR axes: the loss law stands without suggestions
        print(f"note: no lr-bs law ({e})", file=sys.stderr)
        return None


def base_recipe(points: Points) -> str:
    """recipe.yaml of the largest model's run: the sweep's own settings, closest to the target."""
    for i in np.argsort(-points.N, kind="stable"):
        run = points.labels[i].split("@")[0]
        if run in points.recipes:
            return points.recipes[run]
    raise RecipeError("--emit: no run recipe.yaml found in SOURCE; pass --base RECIPE")


def usable_base(path: str) -> str:
    """Check the --emit base before any fitting: a readable, valid recipe."""
    from ..recipe import Recipe

    if not Path(path).is_file():
        raise RecipeError(f"--base: {path}: no such recipe file")
    Recipe.load(path)  # RecipeError names the file and key
    return path


def main(argv: list[str] | None = None) -> int:
    """Errors propagate to the boundary in `windtunnel.cli.main` (bad input: one line, exit 2)."""
    args = build_parser().parse_args(argv)
    if args.law == "mixture":  # data mixtures: scaling/mixture.py
        from .mixture import format_mixture, run_mixture
        check_outputs(args)
        print(format_mixture(run_mixture(args)))
        return 0
    report = run(args)
    if args.law == "critical-batch":
        from .critical_batch import summary
        print(summary(report))
    else:
        print(format_summary(report))
    for path in report["plots"]:
        print(f"wrote {path}")
    for path in (args.json, report["emitted_recipe"]):
        if path:
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_command(main, prog="windtunnel fit"))
