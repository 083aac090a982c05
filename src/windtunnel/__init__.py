"""windtunnel: pretrain small language models, sweep proxies, extrapolate with scaling laws."""
from .callbacks import Callback, TrainState
from .recipe import Recipe, RecipeError

__all__ = ["Callback", "Recipe", "RecipeError", "TrainState", "Trainer", "register_model"]
__version__ = "0.1.0"


def __getattr__(name: str):
    # torch-heavy pieces load on first use, so `windtunnel fit` and the planner stay light.
    if name == "Trainer":
        from .trainer import Trainer
        return Trainer
    if name == "register_model":
        from .models.registry import register_model
        return register_model
    raise AttributeError(name)
