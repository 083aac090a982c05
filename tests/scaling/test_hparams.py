"""lr-bs law (Step Law form): per-cell optima, then power laws in N and D."""
import numpy as np
import pytest

from windtunnel.errors import DataError
from windtunnel.scaling import fit_law
from windtunnel.scaling.hparams import cell_optimum, cells
from windtunnel.scaling.points import Points

TRUE = {"lr_coef": 1.79, "lr_N": -0.713, "lr_D": 0.307, "bs_coef": 0.58, "bs_D": 0.571}  # Li et al. 2025


def lr_grid(sizes=(2e7, 5e7, 1e8, 3e8), tokens=(2e9, 8e9, 3e10), batches=True, offset=1.1):
    """A loss surface quadratic in (log lr, log batch) around the true optima, grid off-centre by
    `offset` so that no run sits exactly at the optimum."""
    rows = []
    for N in sizes:
        for D in tokens:
            lr0 = TRUE["lr_coef"] * N ** TRUE["lr_N"] * D ** TRUE["lr_D"]
            bs0 = TRUE["bs_coef"] * D ** TRUE["bs_D"]
            for lr in lr0 * 2.0 ** np.arange(-3, 4) * offset:
                for bs in (bs0 * 2.0 ** np.arange(-2, 3) * 0.9 if batches else [bs0]):
                    x, y = np.log(lr / lr0), np.log(bs / bs0)
                    rows.append((N, D, 3.0 + 0.02 * x * x + 0.01 * y * y + 0.005 * x * y, lr, bs))
    N, D, loss, lr, bs = map(np.array, zip(*rows))
    return {"N": N, "D": D, "loss": loss, "lr": lr, "batch": bs}


def test_quadratic_optima_recover_the_law_exactly():
    res = fit_law("lr-bs", **lr_grid(), bootstrap=10)
    for k, v in TRUE.items():
        assert res.params[k] == pytest.approx(v, rel=1e-6), k
    assert {c["method"] for c in res.details["cells"]} == {"quadratic2d"}
    s = res.suggest(1e9, 1e11)
    assert s["lr"] == pytest.approx(1.79 * 1e9 ** -0.713 * 1e11 ** 0.307, rel=1e-6)
    assert s["batch"] == pytest.approx(0.58 * 1e11 ** 0.571, rel=1e-6)
    assert res.holdout["lr_max_abs_rel_error"] < 1e-6


def test_near_best_gets_the_exponents_but_not_the_offset():
    # Step Law's filter keeps whole grid rows near the best run: exponents survive, the grid's 1.1x
    # offset from the true optimum does not average out
    res = fit_law("lr-bs", **lr_grid(), bootstrap=0, method="near_best")
    assert res.params["lr_N"] == pytest.approx(TRUE["lr_N"], abs=1e-6)
    assert res.params["bs_D"] == pytest.approx(TRUE["bs_D"], abs=1e-6)
    assert res.params["lr_coef"] != pytest.approx(TRUE["lr_coef"], rel=0.02)


def test_one_dimensional_lr_sweep_and_no_batch_law():
    res = fit_law("lr-bs", **lr_grid(batches=False), bootstrap=0)
    assert res.params["lr_N"] == pytest.approx(TRUE["lr_N"], rel=1e-6)
    assert {c["method"] for c in res.details["cells"]} == {"quadratic"}
    assert "bs_coef" not in res.params and any("no batch-size law" in w for w in res.warnings)
    assert "batch" not in res.suggest(1e8, 1e9)


def test_fixed_D_drops_the_D_exponent_with_a_warning():
    res = fit_law("lr-bs", **lr_grid(tokens=(8e9,)), bootstrap=0)
    assert res.params["lr_D"] == 0.0
    assert res.params["lr_N"] == pytest.approx(TRUE["lr_N"], rel=1e-6)
    assert any("D does not vary" in w for w in res.warnings)


def test_optimum_at_the_edge_of_the_sweep_is_flagged():
    g = lr_grid(sizes=(5e7, 1e8), tokens=(8e9, 3e10))
    keep = g["lr"] < np.median(g["lr"]) * 0.9  # cut the grid below the optimum
    res = fit_law("lr-bs", **{k: v[keep] for k, v in g.items()}, bootstrap=0)
    assert any("edge of the swept LR/batch range" in w for w in res.warnings)
    assert all(c["method"] != "quadratic2d" or c["lr"] <= g["lr"][keep].max() for c in res.details["cells"])


def test_cell_optimum_falls_back_to_the_best_run_without_curvature():
    pts = Points.from_arrays(N=[1e8] * 3, D=[1e9] * 3, loss=[3.0, 2.9, 2.8], lr=[1e-3, 2e-3, 4e-3])
    (idx,) = cells(pts)
    o = cell_optimum(pts, idx)
    assert o["method"] == "best" and o["lr"] == 4e-3 and o["lr_edge"]


def test_no_learning_rates_is_an_error():
    with pytest.raises(DataError, match="no learning rates"):
        fit_law("lr-bs", N=[1e8, 2e8], D=[1e9, 1e9], loss=[3, 2.9])
