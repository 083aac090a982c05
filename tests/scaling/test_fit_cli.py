"""`windtunnel fit` end to end: sweep dir / CSV in; report, plots and target recipe out."""
import json

import numpy as np
import pytest
import yaml

from windtunnel.accounting import count_params
from windtunnel.recipe import Recipe
from windtunnel.scaling.laws import chinchilla_optimal

from .conftest import CHINCHILLA_TRUE, base_recipe_dict, run_fit, write_run
from .test_hparams import lr_grid

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_sweep_to_report_plots_and_recipe(sweep_dir, tmp_path, capsys):
    out = tmp_path / "out"
    code = run_fit([str(sweep_dir), "--law", "chinchilla", "--target-flops", "1e23", "--bootstrap", "10",
                    "--json", str(out / "fit.json"), "--plots", str(out / "plots"), "--emit", str(out / "target.yaml")])
    assert code == 0
    report = json.loads((out / "fit.json").read_text())
    assert report["params"]["alpha"] == pytest.approx(CHINCHILLA_TRUE["alpha"], rel=1e-3)
    assert report["data"]["points"] == 30 and any("crashed" in s for s in report["data"]["skipped"])
    assert report["leave_largest_out"]["loss_max_abs_rel_error"] < 1e-3
    n_true, d_true, l_true = chinchilla_optimal(CHINCHILLA_TRUE, 1e23)
    target = report["target"]
    assert target["N"] == pytest.approx(n_true, rel=1e-2) and target["loss"] == pytest.approx(l_true, rel=1e-3)
    assert target["loss_ci"][0] <= target["loss"] <= target["loss_ci"][1]
    assert any("extrapolating 208x" in w for w in report["warnings"])  # largest run: 6 * 1e9 * 8e10
    names = sorted(p.rsplit("/", 1)[-1] for p in report["plots"])  # no budget has 3 sizes: no isoflop.png
    assert names == ["loss_vs_compute.png", "predicted_vs_actual.png", "residuals.png"]
    for p in report["plots"]:
        assert open(p, "rb").read(8) == PNG
    recipe = Recipe.load(out / "target.yaml")  # a valid recipe, sized for N*, D*
    assert recipe.train.tokens == round(target["D"]) and recipe.train.steps is None
    assert recipe.out_dir is None and recipe.logging.run_name is None
    assert count_params(recipe.model).non_embedding == pytest.approx(target["N"], rel=0.1)
    assert recipe.optim.lr == Recipe.from_dict(base_recipe_dict()).optim.lr  # no lr law in this sweep
    text = (out / "target.yaml").read_text()
    assert text.startswith("# written by `windtunnel fit`") and "# warning: extrapolating" in text
    assert "law chinchilla" in capsys.readouterr().out


def test_emit_uses_the_lr_bs_law_and_the_n_kind(tmp_path, monkeypatch):
    g = lr_grid()
    # the loss also falls with N and D, so that the loss law has something to fit
    loss = g["loss"] - 1.3 + 400 / g["N"] ** 0.34 + 400 / g["D"] ** 0.28
    path = tmp_path / "runs.csv"
    path.write_text("n,d,loss,lr,batch\n" + "\n".join(
        ",".join(map(str, r)) for r in zip(g["N"], g["D"], loss, g["lr"], g["batch"])))
    base = tmp_path / "base.yaml"
    base.write_text(yaml.safe_dump(base_recipe_dict()))
    calls = []

    def stand_in(target, model, **kw):
        calls.append((target, kw))
        return {**model, "d_model": 128, "n_heads": 4, "n_layers": 3}

    monkeypatch.setattr("windtunnel.scaling.predict.default_shape_fn", lambda: stand_in)
    code = run_fit([str(path), "--columns", "N=n,D=d", "--target-params", "1e9", "--target-tokens", "2e10",
                    "--bootstrap", "0", "--emit", str(tmp_path / "t.yaml"), "--base", str(base), "--n-kind", "total",
                    "--json", str(tmp_path / "r.json")])
    assert code == 0
    assert calls == [(1e9, {"count": "total", "keep_group": True})]
    report = json.loads((tmp_path / "r.json").read_text())
    assert "hparams_law" in report and report["details"]["notes"][0].endswith("(N, D) cells by best loss")
    hp = report["target"]["hparams"]
    assert hp["lr"] == pytest.approx(1.79 * 1e9 ** -0.713 * 2e10 ** 0.307, rel=1e-6)
    recipe = Recipe.load(tmp_path / "t.yaml")
    assert recipe.optim.lr == pytest.approx(hp["lr"])
    assert recipe.train.batch_size == round(hp["batch"] / (recipe.train.seq_len * recipe.train.grad_accum))
    assert recipe.model.d_model == 128 and recipe.train.tokens == 20_000_000_000


def test_lr_bs_law_plots(tmp_path):
    g = lr_grid()
    path = tmp_path / "grid.csv"
    path.write_text("N,D,loss,lr,batch\n" + "\n".join(
        ",".join(map(str, r)) for r in zip(*(g[k] for k in ("N", "D", "loss", "lr", "batch")))))
    assert run_fit([str(path), "--law", "lr-bs", "--bootstrap", "5", "--plots", str(tmp_path / "p"),
                    "--target-params", "1e9", "--target-tokens", "1e11", "--json", str(tmp_path / "r.json")]) == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["target"]["loss"] is None and "lr" in report["target"]["hparams"]
    assert sorted(p.rsplit("/", 1)[-1] for p in report["plots"]) == ["lr_bs.png", "predicted_vs_actual.png"]


def test_number_suffixes():
    from windtunnel.scaling.cli import number

    assert number("1.3B") == 1.3e9 and number("350M") == 3.5e8 and number("2e21") == 2e21


def test_isoflop_plots_show_groups(tmp_path):
    from .conftest import isoflop_points

    N, D, loss = isoflop_points()
    path = tmp_path / "iso.csv"
    path.write_text("N,D,loss\n" + "\n".join(f"{n},{d},{l}" for n, d, l in zip(N, D, loss)))
    assert run_fit([str(path), "--law", "isoflop", "--bootstrap", "10", "--target-flops", "1e21",
                    "--plots", str(tmp_path / "p"), "--json", str(tmp_path / "r.json")]) == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert len(report["details"]["groups"]) == 4 and report["target"]["N_ci"][0] < report["target"]["N"]
    assert (tmp_path / "p" / "isoflop.png").stat().st_size > 10_000
    assert np.isfinite(report["target"]["loss"])


def test_min_steps_drift_is_printed_and_min_steps_quiets_it(tmp_path, capsys):
    from .test_checks import stepped_points

    p = stepped_points(0.05)  # runs shorter than 1,000 steps 5 % above the law
    for i, (n, d, loss, batch) in enumerate(zip(p["N"], p["D"], p["loss"], p["batch"])):
        write_run(tmp_path / "sweep", f"r{i:02d}", n, d, float(loss), batch=float(batch))
    args = [str(tmp_path / "sweep"), "--target-flops", "2e19", "--bootstrap", "0", "--json", str(tmp_path / "r.json")]
    assert run_fit(args) == 0
    out = capsys.readouterr().out
    assert "min-steps drift (target loss fitted on runs of >= K steps): " in out
    assert "at K = 250 (30 points, 5 sizes), " in out and "warning: min-steps drift: " in out
    drift = json.loads((tmp_path / "r.json").read_text())["target"]["min_steps_drift"]
    assert drift["settled_from"] == 1000
    assert run_fit(args + ["--min-steps", "1000"]) == 0
    out = capsys.readouterr().out
    assert "kept 20 of 30 points (steps >= 1000)" in out and "at K = 1000 (20 points" in out
    assert "warning: min-steps drift" not in out
