"""scaling/plots.py: the figures `windtunnel fit --plots` writes."""
from windtunnel.scaling import fit_law
from windtunnel.scaling.plots import make_plots

from .conftest import grid_points


def test_target_outside_its_own_interval_still_plots(tmp_path):
    """A percentile interval of a few bootstrap refits may miss the point estimate (kaplan on the grid
    with --bootstrap 3 did): the error bar is clipped at the point instead of matplotlib refusing it."""
    N, D, loss = grid_points()
    result = fit_law("kaplan", N=N, D=D, loss=loss, bootstrap=0, holdout=False)
    target = {"C": 1e21, "N": 1e9, "D": 1.7e11, "loss": 2.0, "loss_ci": [2.1, 2.2]}
    written = make_plots(result, tmp_path, target)
    assert (tmp_path / "loss_vs_compute.png") in written
    assert (tmp_path / "loss_vs_compute.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
