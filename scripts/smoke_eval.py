"""Score a byte-level run on a fixed held-out byte stream (issue 13, item 6): nats/byte.

    python scripts/smoke_eval.py recipes/smoke.yaml [--set key=value ...] [--out runs/smoke_eval/x]
    python scripts/smoke_eval.py --run-dir runs/smoke        # score a finished run, train nothing

The stream is the last 1 % of the interpreter's sorted standard-library .py files (documents joined with
the end-of-document id), and the score is the mean next-byte cross-entropy over 8 batches of 16 windows of
256 bytes at offsets drawn with numpy seed 1. The smoke run sees each byte ~0.03 times, so the overlap of
these files with its training data does not matter; the stream is the same for every run, unlike the
recipe's own validation split, which changes with data.val_fraction.
Prints one JSON line: {"nats_per_byte", "final_val_loss", "wall_time_s", ...}.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from windtunnel.data.sources import stdlib_files
from windtunnel.data.tokenizers import ByteTokenizer

BATCHES, ROWS, SEQ, SEED, TAIL = 8, 16, 256, 1, 0.01


def held_out_stream() -> np.ndarray:
    """Bytes of the last 1 % of the sorted stdlib .py files, each followed by the end-of-document id."""
    files = stdlib_files()
    parts = []
    for path in files[int(len(files) * (1 - TAIL)):]:
        parts += [np.frombuffer(path.read_bytes(), dtype=np.uint8).astype(np.int64), [ByteTokenizer.eos_id]]
    return np.concatenate(parts)


@torch.no_grad()
def nats_per_byte(model: torch.nn.Module) -> float:
    stream = held_out_stream()
    starts = np.random.default_rng(SEED).integers(0, len(stream) - SEQ - 1, size=(BATCHES, ROWS))
    model.eval()
    total = 0.0
    for row_starts in starts:
        window = torch.from_numpy(np.stack([stream[s:s + SEQ + 1] for s in row_starts]))
        logits = model(window[:, :-1])
        total += torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), window[:, 1:].flatten()).item()
    return total / BATCHES


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("recipe", nargs="?", help="recipe to train, then score")
    p.add_argument("--run-dir", help="score this finished run instead of training")
    p.add_argument("--out", default="runs/smoke_eval/run", help="run dir for the training")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args(argv)
    if bool(args.recipe) == bool(args.run_dir):
        p.error("give a recipe or --run-dir")
    start, summary = time.time(), {}
    if args.run_dir:
        from windtunnel.generate import load_run

        model, _ = load_run(args.run_dir)
    else:
        from windtunnel.recipe import Recipe, RecipeError
        from windtunnel.trainer import Trainer

        try:
            recipe = Recipe.load(args.recipe, args.overrides)
        except RecipeError as e:
            print(f"smoke_eval: error: {e}", file=sys.stderr)
            return 2
        trainer = Trainer(recipe, out_dir=Path(args.out))
        summary = trainer.fit()
        model = trainer.accelerator.unwrap_model(trainer.model)
    row = {"nats_per_byte": round(nats_per_byte(model), 4), "final_val_loss": summary.get("final_val_loss"),
           "overrides": args.overrides, "wall_time_s": round(time.time() - start, 1)}
    print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
