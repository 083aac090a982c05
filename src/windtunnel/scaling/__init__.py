"""Scaling-law fitting: points from sweeps or CSV -> laws with CIs, checks, predictions, target recipes."""
from .fit import LAWS, fit_law
from .points import Points, collect_sweep, load_points, read_csv
from .predict import emit_recipe, predict_target
from .result import FitResult

__all__ = ["LAWS", "FitResult", "Points", "collect_sweep", "emit_recipe", "fit_law", "load_points",
           "predict_target", "read_csv"]
