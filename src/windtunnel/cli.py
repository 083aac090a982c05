"""Command line: a thin front over the modules (it holds no logic of its own).

    windtunnel train RECIPE [--set key=value ...] [--out RUN_DIR] [--resume]
    windtunnel schedule RECIPE --png out.png
    windtunnel tokenizer train RECIPE
    windtunnel export RUN_DIR OUT_DIR
    windtunnel fit SOURCE ...          (scaling-law fitter; see `windtunnel fit -h`)
    windtunnel sweep SWEEP.yaml ...    (proxy sweeps; see `windtunnel sweep -h`)

Bad input exits 2 with a one-line error; a halted run (non-finite loss) exits 1.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

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
    try:
        summary = Trainer(recipe, out_dir=out, resume=args.resume).fit()
    except TrainingHalted as e:
        print(f"windtunnel: halted: {e}", file=sys.stderr)
        return 1
    val = summary.get("final_val_loss")
    print(f"done: {summary['steps']} steps, {summary['tokens']:,} tokens, train loss "
          f"{summary['final_train_loss']:.4f}, val loss {val if val is None else f'{val:.4f}'}, "
          f"{summary['wall_time_s']:.0f} s -> {out}")
    return 0


def cmd_schedule(args) -> int:
    from .schedules import plot_schedule

    plot_schedule(Recipe.load(args.recipe, args.overrides), args.png, args.world_size)
    print(f"wrote {args.png}")
    return 0


def cmd_tokenizer(args) -> int:
    from .data import train_tokenizer

    path = train_tokenizer(Recipe.load(args.recipe, args.overrides))
    print(f"tokenizer saved to {path}")
    return 0


def cmd_export(args) -> int:
    from .export import export_run

    out = export_run(args.run_dir, args.out_dir, checkpoint=args.checkpoint)
    print(f"exported to {out}")
    return 0


COMMANDS = {"train": cmd_train, "schedule": cmd_schedule, "tokenizer": cmd_tokenizer, "export": cmd_export}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in DELEGATED:
        return importlib.import_module(DELEGATED[argv[0]]).main(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except (RecipeError, FileNotFoundError) as e:
        print(f"windtunnel: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
