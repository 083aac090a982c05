"""Model architectures by name: `model.arch` in a recipe picks a builder registered here.

Users add theirs with a decorator instead of import strings in recipes (nothing is evaluated):

    @register_model("my_lm")
    def build(cfg: ModelConfig) -> nn.Module: ...
"""
from __future__ import annotations

from typing import Callable

from torch import nn

from ..recipe import ModelConfig, RecipeError

Builder = Callable[[ModelConfig], nn.Module]
_BUILDERS: dict[str, Builder] = {}


def register_model(name: str) -> Callable[[Builder], Builder]:
    def wrap(fn: Builder) -> Builder:
        _BUILDERS[name] = fn
        return fn
    return wrap


def build_model(cfg: ModelConfig) -> nn.Module:
    from . import transformer  # noqa: F401  (registers the built-in architecture)

    if cfg.arch not in _BUILDERS:
        known = ", ".join(sorted(_BUILDERS))
        raise RecipeError(f"model.arch: unknown architecture {cfg.arch!r} (registered: {known})")
    return _BUILDERS[cfg.arch](cfg)
