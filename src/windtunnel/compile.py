"""torch.compile for training, as the recipe asks, and a graph-break count for checking it.

    model = apply_compile(model, recipe)   # the Trainer calls this when train.compile is true

- `train.compile_mode`: default | reduce-overhead (CUDA graphs: launch overhead gone, shapes must not
  change, so it also compiles with static shapes) | max-autotune (Triton autotuning: slower warm-up).
- `train.compile_scope`: model = one graph over the whole forward, loss included (the fewest kernels);
  blocks = each transformer `Block` compiled in place ("regional compilation"): identical blocks reuse one
  compiled graph, so warm-up costs one block instead of n_layers; parameter names stay unchanged.
- `train.compile_static`: true = `dynamic=False`: every new shape gets its own specialised graph instead of
  a dynamic-shape one after the first recompile (what CUDA graphs and the fastest kernels need).

`graph_breaks(model, *args)` runs dynamo's `explain` (tracing only, no code generation: seconds on CPU)
and returns how many graphs and breaks one call produces, with the reasons.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .recipe import Recipe, RecipeError

BLOCK_CLASS = "Block"  # the transformer block (models/transformer.py), also FSDP2's shard unit


def compile_kwargs(recipe: Recipe) -> dict[str, Any]:
    """Keyword arguments for torch.compile from the recipe's train.compile_* keys."""
    t = recipe.train
    static = t.compile_static or t.compile_mode == "reduce-overhead"
    return {"mode": t.compile_mode, "dynamic": False if static else None}


def compiled_blocks(model: nn.Module) -> list[nn.Module]:
    """The transformer blocks of `model` (MTP heads' blocks included), in module order."""
    return [m for m in model.modules() if type(m).__name__ == BLOCK_CLASS]


def apply_compile(model: nn.Module, recipe: Recipe, backend: str = "inductor") -> nn.Module:
    """Compile `model` as train.compile_scope says; returns the module to train (the same one for blocks).
    `backend="aot_eager"` traces the same graphs without generating code (CPU tests, dry runs)."""
    kwargs = compile_kwargs(recipe)
    if backend != "inductor":
        kwargs = {"backend": backend, "dynamic": kwargs["dynamic"]}  # modes are inductor options
    if recipe.train.compile_scope == "model":
        return torch.compile(model, **kwargs)
    blocks = compiled_blocks(model)
    if not blocks:
        raise RecipeError(f"train.compile_scope: blocks needs {BLOCK_CLASS} modules; "
                          f"{type(model).__name__} has none (use compile_scope: model)")
    for block in blocks:
        block.compile(**kwargs)  # in place: state-dict names keep no `_orig_mod.` prefix
    return model


def graph_breaks(fn, *args, **kwargs) -> dict[str, Any]:
    """{"graphs", "breaks", "reasons"} of one call of `fn` under dynamo (torch._dynamo.explain)."""
    import torch._dynamo

    torch._dynamo.reset()  # explain must trace afresh, not reuse another test's or run's cache
    try:
        out = torch._dynamo.explain(fn)(*args, **kwargs)
    finally:
        torch._dynamo.reset()
    reasons = sorted({str(r.reason).splitlines()[0][:200] for r in out.break_reasons})
    return {"graphs": out.graph_count, "breaks": out.graph_break_count, "reasons": reasons}
