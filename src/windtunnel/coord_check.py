"""Coordinate check (Tensor Programs V, Sec. 8 / microsoft/mup): activation size vs width over a few steps.

    windtunnel coord-check RECIPE --widths 64,128,256,512,1024 --steps 5 [--json PATH] [--png PATH]
                                  [--head-dim N] [--set key=value ...]
    windtunnel coord-check RECIPE --depths 2,4,8,16 --steps 5 [...]      # depth instead of width

For each parameterization (sp, mup) and width, the recipe's model is built at that width with the same seed
and trained `steps` AdamW steps at the recipe's peak LR (constant, no clipping) on the same batches. Forward
hooks record the RMS of: the residual stream entering block 0 ("embed"), each block's attention and MLP
outputs ("blocks.i.attn", "blocks.i.mlp"), the residual stream after each block ("blocks.i") and after the
last block ("last", the same key at every depth), and the logits.
Entry t of each list is measured in the forward pass of step t (t = 0 is the initialization).
Under a correct muP the curves are flat in width after the first steps; under SP they grow with width.
Width scaling keeps n_heads (head dim grows, which exercises the 1/d attention rule) unless --head-dim
fixes the head dim (then heads grow and model.mup.base_head_dim defaults to that head dim).
With --depths the width stays the recipe's and n_layers varies; muP then uses the recipe's model.mup.depth_rule
(completep when it is none) with base_depth = the recipe's (default: the first depth). Under CompleteP the
last residual stream and the logits stay flat in depth; without a depth rule the stream grows with depth.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
from collections import defaultdict
from pathlib import Path

import torch
from torch import nn

from .data import build_data, build_tokenizer
from .models import build_model
from .optim import build_optimizer, set_lr
from .recipe import Recipe, RecipeError

DEFAULT_WIDTHS = "64,128,256,512,1024"
MODES = ("width", "depth")
Table = dict[str, dict[str, dict[str, list[float]]]]


def width_recipe(recipe: Recipe, width: int, parameterization: str, head_dim: int | None = None) -> Recipe:
    """The recipe with the model scaled to `width` (validated, so bad widths fail with the key named)."""
    m = recipe.model
    sets = [f"model.d_model={width}", f"model.parameterization={parameterization}"]
    if head_dim is not None:
        if width % head_dim:
            raise RecipeError(f"--widths: {width} is not a multiple of --head-dim {head_dim}")
        heads = width // head_dim
        group = m.n_heads // m.kv_heads
        sets += [f"model.n_heads={heads}", f"model.n_kv_heads={heads // group if heads % group == 0 else heads}"]
        if m.mup.base_head_dim is None:
            sets.append(f"model.mup.base_head_dim={head_dim}")
    if m.ffn_hidden is not None:  # an explicit FFN size (recipe key) keeps its ratio to the width
        mult = m.ffn_multiple_of
        sets.append(f"model.ffn_hidden={mult * math.ceil(m.ffn_dim * width / m.d_model / mult)}")
    return recipe.with_overrides(sets)


def depth_recipe(recipe: Recipe, depth: int, parameterization: str, base_depth: int) -> Recipe:
    """The recipe with `depth` blocks; muP gets a depth rule (the recipe's, or CompleteP) at `base_depth`."""
    sets = [f"model.n_layers={depth}", f"model.parameterization={parameterization}"]
    if parameterization == "mup":
        rule = recipe.model.mup.depth_rule if recipe.model.mup.depth_rule != "none" else "completep"
        sets += [f"model.mup.depth_rule={rule}", f"model.mup.base_depth={base_depth}"]
    return recipe.with_overrides(sets)


@contextlib.contextmanager
def record_rms(model: nn.Module, store: dict[str, list[float]]):
    """Append the RMS of each watched activation to store[name] on every forward pass of `model`."""
    def rms(t: torch.Tensor) -> float:
        return float(t.detach().float().pow(2).mean().sqrt())

    def save(name):  # blocks (and MoE layers) return (hidden, aux): the hidden state is what is watched
        return lambda mod, inp, out: store[name].append(rms(out[0] if isinstance(out, tuple) else out))

    handles = [model.blocks[0].register_forward_pre_hook(lambda mod, args: store["embed"].append(rms(args[0])))]
    for i, block in enumerate(model.blocks):
        handles += [block.attn.register_forward_hook(save(f"blocks.{i}.attn")),
                    block.mlp.register_forward_hook(save(f"blocks.{i}.mlp")),
                    block.register_forward_hook(save(f"blocks.{i}"))]

    def logits_hook(mod, inp, out):
        store["last"].append(rms(inp[0]))
        with torch.no_grad():
            store["logits"].append(rms(model.logits(out)))

    handles.append(model.norm.register_forward_hook(logits_hook))
    try:
        yield store
    finally:
        for h in handles:
            h.remove()


def train_and_record(recipe: Recipe, batches: list[torch.Tensor], steps: int) -> dict[str, list[float]]:
    """Build the recipe's model (seeded), train `steps` steps on `batches` (cycled), return the RMS lists."""
    torch.manual_seed(recipe.train.seed)
    model = build_model(recipe.model)
    optimizer = build_optimizer(model, recipe)
    set_lr(optimizer, recipe.optim.lr)
    store: dict[str, list[float]] = defaultdict(list)
    with record_rms(model, store):
        for step in range(steps):
            seq = batches[step % len(batches)]
            out = model(seq[:, :-1], targets=seq[:, 1:])
            out["loss"].backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if hasattr(model, "after_optimizer_step"):  # MoE aux-free bias updates
                model.after_optimizer_step()
    return dict(store)


def coord_check(recipe: Recipe, widths: list[int], steps: int, batches: list[torch.Tensor],
                parameterizations: tuple[str, ...] = ("sp", "mup"), head_dim: int | None = None,
                mode: str = "width") -> Table:
    """{"sp"|"mup": {"<width or depth>": {"logits": [rms per step], "<layer>": [...]}}}; `widths` holds the
    depths when mode == "depth"."""
    if steps <= 0:
        raise RecipeError(f"--steps: must be positive, got {steps}")
    if not widths:
        raise RecipeError(f"--{mode}s: needs at least one value")
    m = recipe.model
    if m.vocab_size <= 0 or m.max_seq_len <= 0:
        raise RecipeError("model.vocab_size and model.max_seq_len must be resolved for a coordinate check")
    base_depth = m.mup.base_depth or widths[0]

    def scaled(size: int, par: str) -> Recipe:
        if mode == "depth":
            return depth_recipe(recipe, size, par, base_depth)
        return width_recipe(recipe, size, par, head_dim)

    return {par: {str(n): train_and_record(scaled(n, par), batches, steps) for n in widths}
            for par in parameterizations}


def spread(table: Table, par: str, layer: str, step: int = -1) -> float:
    """max / min over widths of one layer's RMS at one step (1 = perfectly width-independent)."""
    values = [rows[layer][step] for rows in table[par].values()]
    return max(values) / min(values)


def plot_coord_check(table: Table, png: str | Path, mode: str = "width") -> None:
    """Rows: parameterizations; columns: a few layers; x: width or depth (log2); one curve per step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pars = list(table)
    first = next(iter(table[pars[0]].values()))
    layers = ["embed", "blocks.0.attn", "blocks.0.mlp", "last", "logits"]
    steps = len(first["logits"])
    fig, axes = plt.subplots(len(pars), len(layers), figsize=(3.2 * len(layers), 2.8 * len(pars)),
                             squeeze=False, sharex=True)
    colors = plt.cm.viridis([i / max(1, steps - 1) for i in range(steps)])
    for r, par in enumerate(pars):
        widths = sorted(table[par], key=int)
        for c, layer in enumerate(layers):
            ax = axes[r][c]
            for t in range(steps):
                ax.plot([int(w) for w in widths], [table[par][w][layer][t] for w in widths], marker="o",
                        ms=3, color=colors[t], label=f"t={t}")
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_title(f"{par}: {layer}", fontsize=9)
            ax.grid(alpha=0.3)
            if r == len(pars) - 1:
                ax.set_xlabel("width (d_model)" if mode == "width" else "depth (n_layers)")
            if c == 0:
                ax.set_ylabel("activation RMS")
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


def recipe_batches(recipe: Recipe, steps: int) -> tuple[Recipe, list[torch.Tensor]]:
    """The first `steps` training batches of the recipe's data, and the recipe with vocab/seq resolved."""
    tok = build_tokenizer(recipe)
    data = build_data(recipe, tok)
    batches = [data.train.batch(s, 0, 0, 1) for s in range(steps)]
    sets = [f"model.max_seq_len={recipe.model.max_seq_len or recipe.train.seq_len}"]
    if not recipe.model.vocab_size:
        sets.append(f"model.vocab_size={tok.vocab_size}")
    return recipe.with_overrides(sets), batches


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="windtunnel coord-check", description=__doc__.split("\n")[0])
    p.add_argument("recipe", help="recipe YAML file")
    p.add_argument("--widths", default=DEFAULT_WIDTHS, help=f"comma-separated d_model values ({DEFAULT_WIDTHS})")
    p.add_argument("--depths", help="comma-separated n_layers values: check depth (CompleteP) instead of width")
    p.add_argument("--steps", type=int, default=5, help="training steps per width (5)")
    p.add_argument("--head-dim", type=int, help="fix the head dim (heads grow with width); default: fix heads")
    p.add_argument("--parameterizations", default="sp,mup", help="comma-separated subset of sp,mup")
    p.add_argument("--json", help="write the RMS table here")
    p.add_argument("--png", help="write the plot here")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe key (repeatable)")
    return p


def _int_list(text: str, flag: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise RecipeError(f"{flag}: expected comma-separated integers, got {text!r}") from None


def run(args: argparse.Namespace) -> Table:
    recipe = Recipe.load(args.recipe, args.overrides)
    if recipe.train.threads:
        torch.set_num_threads(recipe.train.threads)
    pars = tuple(x.strip() for x in args.parameterizations.split(",") if x.strip())
    bad = [x for x in pars if x not in ("sp", "mup")]
    if bad or not pars:
        raise RecipeError(f"--parameterizations: expected a subset of sp,mup, got {args.parameterizations!r}")
    mode = "depth" if args.depths else "width"
    sizes = _int_list(args.depths, "--depths") if args.depths else _int_list(args.widths, "--widths")
    recipe, batches = recipe_batches(recipe, args.steps)
    table = coord_check(recipe, sizes, args.steps, batches, pars, args.head_dim, mode)
    if args.json:
        Path(args.json).write_text(json.dumps(table, indent=1))
    if args.png:
        plot_coord_check(table, args.png, mode)
    for par in pars:
        print(f"{par}: RMS max/min over {mode}s {sizes[0]}..{sizes[-1]} at step {args.steps - 1}: "
              f"logits {spread(table, par, 'logits'):.2f}x, last hidden {spread(table, par, 'last'):.2f}x")
    return table


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    run(args)  # bad input raises RecipeError: cli.py's boundary prints it as one line (exit 2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
