"""Model architectures. `build_model(cfg)` looks `cfg.arch` up in the registry."""
from .registry import build_model, register_model

__all__ = ["build_model", "register_model"]
