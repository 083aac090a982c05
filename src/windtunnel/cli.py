"""Command line: a thin front over the modules (it holds no logic of its own).

    windtunnel train RECIPE [--set key=value ...] [--out RUN_DIR] [--resume]
    windtunnel schedule RECIPE --png out.png
    windtunnel tokenizer train RECIPE
    windtunnel export RUN_DIR OUT_DIR
    windtunnel fit SOURCE ...          (scaling-law fitter; see `windtunnel fit -h`)
    windtunnel sweep SWEEP.yaml ...    (proxy sweeps; see `windtunnel sweep -h`)

Exit codes: 0 done; 1 a halted run (non-finite loss); 2 bad input: one line naming the key, file or
path and the reason (recipe, data, file system, missing package, unreachable dataset). A bug keeps its
traceback; `--debug` (anywhere on the line) or WINDTUNNEL_DEBUG=1 shows it for bad input too.
"""
from __future__ import annotations

import argparse
import errno
import importlib
import sys
from pathlib import Path

from .errors import check_writable, debug_requested, run_command
from .recipe import Recipe, RecipeError

# Subcommands whose argument parsing lives with their feature: name -> module with main(argv) -> int.
DELEGATED = {
    "fit": "windtunnel.scaling.cli",
    "sweep": "windtunnel.sweep.cli",
    "coord-check": "windtunnel.coord_check",
    "bench": "windtunnel.benchmarks.throughput",
    "generate": "windtunnel.generate",
}


def _recipe_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("recipe", help="recipe YAML file")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe key, e.g. --set train.steps=100 (repeatable)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="windtunnel", description=__doc__.split("\n")[0])
    parser.add_argument("--debug", action="store_true",
                        help="print the traceback of expected errors too (also WINDTUNNEL_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train a recipe")
    _recipe_args(t)
    t.add_argument("--out", help="run directory (default: recipe out_dir or runs/<recipe name>)")
    t.add_argument("--resume", action="store_true", help="continue from the run directory's last checkpoint")
    s = sub.add_parser("schedule", help="plot a recipe's learning-rate schedule")
    _recipe_args(s)
    s.add_argument("--png", required=True)
    s.add_argument("--world-size", type=int, default=1)
    tok = sub.add_parser("tokenizer", help="tokenizer tools")
    tok_sub = tok.add_subparsers(dest="tok_command", required=True)
    tt = tok_sub.add_parser("train", help="train the recipe's BPE tokenizer on its corpus")
    _recipe_args(tt)
    e = sub.add_parser("export", help="write a run as a transformers model folder")
    e.add_argument("run_dir")
    e.add_argument("out_dir")
    e.add_argument("--checkpoint", help="checkpoint directory (default: the run's latest)")
    for name in DELEGATED:
        sub.add_parser(name, help=f"see `windtunnel {name} -h`", add_help=False)
    return parser


def cmd_train(args) -> int:
    from .trainer import Trainer, TrainingHalted

    recipe = Recipe.load(args.recipe, args.overrides)
    out = args.out or recipe.out_dir or str(Path("runs") / Path(args.recipe).stem)
    check_writable(out, "--out" if args.out else "out_dir")
    try:
        summary = Trainer(recipe, out_dir=out, resume=args.resume).fit()
    except TrainingHalted as e:
        print(f"windtunnel: halted: {e}", file=sys.stderr)
        return 1
    except OSError as e:  # a write that fails on a full disk names no file: name the run directory
        if e.filename is None and e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise OSError(e.errno, e.strerror, out) from e
        raise
    val = summary.get("final_val_loss")
    print(f"done: {summary['steps']} steps, {summary['tokens']:,} tokens, train loss "
          f"{summary['final_train_loss']:.4f}, val loss {val if val is None else f'{val:.4f}'}, "
          f"{summary['wall_time_s']:.0f} s -> {out}")
    return 0


def cmd_schedule(args) -> int:
    from .schedules import plot_schedule

    recipe = Recipe.load(args.recipe, args.overrides)
    if args.world_size < 1:
        raise RecipeError(f"--world-size: must be positive, got {args.world_size}")
    check_writable(args.png, "--png", directory=False)
    plot_schedule(recipe, args.png, args.world_size)
    print(f"wrote {args.png}")
    return 0


def cmd_tokenizer(args) -> int:
    from .data import train_tokenizer

    path = train_tokenizer(Recipe.load(args.recipe, args.overrides))
    print(f"tokenizer saved to {path}")
    return 0


def cmd_export(args) -> int:
    from .export import export_run

    check_writable(args.out_dir, "out_dir")
    out = export_run(args.run_dir, args.out_dir, checkpoint=args.checkpoint)
    print(f"exported to {out}")
    return 0


COMMANDS = {"train": cmd_train, "schedule": cmd_schedule, "tokenizer": cmd_tokenizer, "export": cmd_export}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or debug_requested()
    argv = [a for a in argv if a != "--debug"]
    if argv and argv[0] in DELEGATED:
        name, rest = argv[0], argv[1:]
        return run_command(lambda: importlib.import_module(DELEGATED[name]).main(rest),
                           prog=f"windtunnel {name}", debug=debug)
    args = build_parser().parse_args(argv)
    return run_command(lambda: COMMANDS[args.command](args), debug=debug)


if __name__ == "__main__":
    raise SystemExit(main())
