"""Model architectures by name: `model.arch` in a recipe picks a builder registered here.

Users add theirs with a decorator instead of import strings in recipes (nothing is evaluated):

    @register_model("my_lm")
    def build(cfg: ModelConfig) -> nn.Module: ...

The built-in "transformer" is registered by `windtunnel.models` (this module imports no model, so
models can import it without a cycle).
"""
from __future__ import annotations

from typing import Callable

from torch import nn

from ..recipe import ModelConfig, RecipeError

Builder = Callable[[ModelConfig], nn.Module]
BUILDERS: dict[str, Builder] = {}


def register_model(name: str) -> Callable[[Builder], Builder]:
    def wrap(fn: Builder) -> Builder:
        BUILDERS[name] = fn
        return fn
    return wrap


def build_model(cfg: ModelConfig) -> nn.Module:
    if cfg.arch not in BUILDERS:
        known = ", ".join(sorted(BUILDERS))
        raise RecipeError(f"model.arch: unknown architecture {cfg.arch!r} (registered: {known})")
    return BUILDERS[cfg.arch](cfg)
