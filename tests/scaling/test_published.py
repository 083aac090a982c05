"""Validation on published scaling data in ../shared/data (skipped when absent; never copied here).

Reference figures come from each folder's PROVENANCE.md; tolerances are argued next to each test.
"""
import csv

import numpy as np
import pytest

from windtunnel.scaling import fit_law, read_csv
from windtunnel.scaling.optimize import power_law_ols


def epoch_points(shared_data):
    return read_csv(shared_data / "epoch_chinchilla" / "svg_extracted_data.csv",
                    {"N": "Model Size", "C": "Training FLOP"}, n_kind="total")  # D = C / 6N, as Epoch


def test_epoch_chinchilla_refit(shared_data):
    """Besiroglu et al. 2024 (Epoch AI), 240 points (5 highest losses dropped), Huber delta 1e-3 on
    log-loss, L-BFGS-B over Hoffmann's grid. Their plain replication: A=477.84, B=2143.86, E=1.8172,
    alpha=0.34731, beta=0.36718, objective 1.01827e-3; paper estimate A=482.01, B=2085.43, E=1.8172,
    alpha=0.3478, beta=0.3658 with 95% CIs A (285.2, 743.6), B (1042.4, 5810.3), E (1.769, 1.871),
    alpha (0.317, 0.373), beta (0.331, 0.415)."""
    pts = epoch_points(shared_data)
    pts = pts.subset(pts.loss < np.sort(pts.loss)[-5])
    assert len(pts) == 240
    res = fit_law("chinchilla", pts, bootstrap=40, seed=42, refine=16, holdout=False)
    p = res.params
    # same objective and optimum as Epoch's plain replication (same loss, same grid): E, alpha, beta to
    # 4 digits; A and B to 0.5% (PROVENANCE: the landscape is flat in B, optimisers differ by ~5%)
    assert res.details["objective"] == pytest.approx(1.01827e-3, rel=1e-4)
    assert p["E"] == pytest.approx(1.8172, abs=2e-4)
    assert p["alpha"] == pytest.approx(0.34731, abs=1e-4)
    assert p["beta"] == pytest.approx(0.36718, abs=1e-4)
    assert p["A"] == pytest.approx(477.84, rel=5e-3) and p["B"] == pytest.approx(2143.86, rel=5e-3)
    assert res.derived["a"] == pytest.approx(0.513, abs=0.002)  # Epoch: a = 0.513 (SE 0.020)
    # 40 resamples give rough intervals: each must contain Epoch's estimate and overlap Epoch's CI
    published = {"E": (1.8172, 1.769, 1.871), "alpha": (0.3478, 0.317, 0.373), "beta": (0.3658, 0.331, 0.415),
                 "A": (482.01, 285.2, 743.6), "B": (2085.43, 1042.4, 5810.3)}
    for k, (est, lo, hi) in published.items():
        assert res.ci[k][0] < est < res.ci[k][1], k
        assert lo < p[k] < hi, k


def test_epoch_chinchilla_all_points(shared_data):
    """With all 245 points Epoch report A=535.2, B=13,530, E=1.892, alpha=0.3529, beta=0.4560: the 5
    high-loss points move beta by 0.09. We land on E=1.891, alpha=0.349, beta=0.453, A=496, B=12,846
    (Epoch's number here comes from their likelihood fit, not the plain Huber one: within 1% on E
    and the exponents, 10% on A and B)."""
    res = fit_law("chinchilla", epoch_points(shared_data), bootstrap=0, refine=16, holdout=False)
    p = res.params
    assert p["E"] == pytest.approx(1.892, rel=0.01)
    assert p["alpha"] == pytest.approx(0.3529, rel=0.015) and p["beta"] == pytest.approx(0.4560, rel=0.015)
    assert p["A"] == pytest.approx(535.2, rel=0.1) and p["B"] == pytest.approx(13530, rel=0.1)


PORIAN_CONFIGS = ["rw|tuned|short|const|standard|val", "owt2|tuned|short|const|standard|val",
                  "rw|base|long|kaplan|kaplan|train", "rw|base|short|chinchilla|standard|val"]


@pytest.mark.parametrize("config", PORIAN_CONFIGS)
def test_porian_isoflop_exponent_matches_the_authors_optima(shared_data, config):
    """Porian et al. 2024 published per-budget optima n*(C) (optimal_pairs.csv, their interpolation);
    our isoFLOP parabolas on their raw profiles must give the same exponent a of n* ∝ C^a. Over all 15
    configurations we measured |a_ours - a_theirs| <= 0.031; 0.04 leaves room without hiding a bug
    (the configurations' exponents span 0.50-0.87). The paper's headline: the tuned setting agrees
    with Chinchilla (a ≈ 0.5), the Kaplan reproduction does not (a ≈ 0.83-0.87)."""
    folder = shared_data / "porian_resolving"
    rows = [r for r in csv.DictReader(open(folder / "optimal_pairs.csv")) if r["config_id"] == config and r["n"]]
    _, a_theirs = power_law_ols(np.array([float(r["flops"]) for r in rows]), np.array([float(r["n"]) for r in rows]))
    pts = read_csv(folder / "isoflop_runs.csv", {"N": "N", "D": "T_tokens", "C": "flops"}, where={"config_id": config})
    res = fit_law("isoflop", pts, bootstrap=0, holdout=False)
    assert res.params["a"] == pytest.approx(a_theirs, abs=0.04)
    if "tuned|short" in config:
        assert 0.45 < res.params["a"] < 0.55
    if "kaplan|kaplan" in config:
        assert res.params["a"] > 0.8


def test_steplaw_grid_reproduces_the_documented_refit(shared_data):
    """Step Law (Li et al. 2025) procedure (0.25% smoothed-loss filter, bs x 2048 tokens, OLS) on the
    released dense grid: PROVENANCE measured lr = 77.7 N^-0.766 D^0.197 and B = 0.209 D^0.613 from 129
    runs in 17 cells. Our near_best method is that procedure, so it must agree to 3 digits."""
    pts = read_csv(shared_data / "steplaw" / "dense_lr_bs_loss.csv", {"loss": "smooth loss", "batch": "bs"})
    pts.batch = pts.batch * 2048  # sequences of 2048 tokens -> tokens
    res = fit_law("lr-bs", pts, bootstrap=0, method="near_best", holdout=False)
    p = res.params
    assert res.details["regression_rows"] == 129 and len(res.details["cells"]) == 17
    assert p["lr_coef"] == pytest.approx(77.7, rel=2e-3)
    assert p["lr_N"] == pytest.approx(-0.766, abs=1e-3) and p["lr_D"] == pytest.approx(0.197, abs=1e-3)
    assert p["bs_coef"] == pytest.approx(0.209, rel=5e-3) and p["bs_D"] == pytest.approx(0.613, abs=1e-3)


def test_steplaw_quadratic_optima_land_in_the_published_intervals(shared_data):
    """Per-cell quadratic optima give exponents inside the paper's 95% bootstrap intervals for the
    N exponent of lr (-0.77, -0.66) and the D exponent of the batch (0.53, 0.606); the lr D exponent
    is not reproducible from the released grid (PROVENANCE: 0.13-0.29 depending on the filter,
    paper 0.307), so it is only checked to be in that documented range."""
    pts = read_csv(shared_data / "steplaw" / "dense_lr_bs_loss.csv", {"loss": "smooth loss", "batch": "bs"})
    pts.batch = pts.batch * 2048
    res = fit_law("lr-bs", pts, bootstrap=0, holdout=False)
    assert -0.77 < res.params["lr_N"] < -0.66
    assert 0.53 < res.params["bs_D"] < 0.606
    assert 0.13 < res.params["lr_D"] < 0.29


def columns(rows: list[dict], *names: str) -> list[np.ndarray]:
    """The named CSV columns of `rows` as float arrays."""
    return [np.array([float(r[name]) for r in rows]) for name in names]


def test_olmo_ladder_predicts_3b_7b_13b(shared_data):
    """OLMo ladder (Bhagia et al. 2024), C4 loss: fit on the 190M-1.3B runs (0.5-10x Chinchilla),
    predict the 3.2B runs and the full OLMo-2 7B (4T tokens) / 13B (5T) models. Measured errors:
    3.2B within 2.6%, 7B -1.1%, 13B -2.7% (both under-predicted: those runs use another schedule).
    Tolerance 3.5%: the regression guard is the measurement plus ~1 point."""
    rows = list(csv.DictReader(open(shared_data / "olmo_ladder" / "ladder_final_ce_losses.csv")))
    N, D, L = columns(rows, "N_nonembed", "throughput/total_tokens", "eval/c4_en-validation/CrossEntropyLoss")
    small = N < 2e9
    res = fit_law("chinchilla", N=N[small], D=D[small], loss=L[small], bootstrap=0, refine=16)
    err = (res.predict(N[~small], D[~small]) - L[~small]) / L[~small]
    assert len(err) == 8 and np.abs(err).max() < 0.035
    assert res.holdout["loss_max_abs_rel_error"] < 0.02  # 1.3B from 190M-760M: 1.0% measured


def test_gadre_overtrained_runs(shared_data):
    """Gadre et al. 2024: fit on 11M-411M models (5-640 tokens/param, C4 eval loss), predict the
    1.4B and 6.9B runs from 6-18x less compute. The paper fits its own reparameterised law on a chosen
    subset; with the plain Chinchilla law on all small runs (non-embedding N) we measure 1.4B errors
    of at most 1.5% and 6.9B errors of -1% to -4.7% (4 model sizes pin the size exponent poorly).
    Tolerances: 2.5% / 6%. The leave-largest-out check must flag this fit: the 411M M=5 runs are
    off by more than 2% when predicted from the three smaller sizes."""
    rows = list(csv.DictReader(open(shared_data / "gadre_overtraining" / "models_loss.csv")))
    for dataset in ("c4_original", "rpj", "rw_original"):
        rs = [r for r in rows if r["dataset"] == dataset]
        N, total, D, L = columns(rs, "params_no_embed", "params", "tokens", "loss_c4_val")
        small = total < 1e9
        res = fit_law("chinchilla", N=N[small], D=D[small], loss=L[small], bootstrap=0, refine=8)
        err = (res.predict(N[~small], D[~small]) - L[~small]) / L[~small]
        big = total[~small] > 5e9
        assert np.abs(err[~big]).max() < 0.025, dataset
        assert np.abs(err[big]).max() < 0.06, dataset
        assert any(w.startswith("leave-largest-out") for w in res.warnings), dataset
