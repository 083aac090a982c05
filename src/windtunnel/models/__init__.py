"""Model architectures. `build_model(cfg)` looks `cfg.arch` up in the registry."""
from .protocol import BlockModel
from .registry import build_model, register_model
from .transformer import Transformer

register_model("transformer")(Transformer)

__all__ = ["BlockModel", "Transformer", "build_model", "register_model"]
