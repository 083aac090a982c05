"""Fitter options found missing while refitting published data (issue 12, item 6), each checked on the
real data in ../shared/data where the case comes from."""
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from windtunnel.errors import DataError, RecipeError
from windtunnel.recipe import Recipe
from windtunnel.scaling import critical_batch, read_csv
from windtunnel.scaling.filters import Condition

from .conftest import base_recipe_dict, run_fit, write_run


def epoch(shared_data) -> list[str]:
    return [str(shared_data / "epoch_chinchilla" / "svg_extracted_data.csv"), "--columns",
            "N=Model Size,C=Training FLOP", "--n-kind", "total"]


def report(tmp_path, name="r.json") -> dict:
    return json.loads((tmp_path / name).read_text())


def test_emit_keeps_the_gqa_group_and_says_lr_batch_were_not_fitted(shared_data, tmp_path, capsys):
    """A 32q/8kv base (head dim 128) sized for Chinchilla's 5.76e23-FLOP budget: the heads stay a
    multiple of the group, with kv = q / 4 (it used to become a 167-head MHA model)."""
    base = tmp_path / "base.yaml"
    base.write_text(yaml.safe_dump(base_recipe_dict(d_model=4096, n_layers=32, n_heads=32, n_kv_heads=8)))
    out = tmp_path / "t.yaml"
    assert run_fit(epoch(shared_data) + ["--target-flops", "5.76e23", "--bootstrap", "0", "--emit", str(out),
                                         "--base", str(base), "--json", str(tmp_path / "r.json")]) == 0
    model = Recipe.load(out).model
    assert model.n_heads % 4 == 0 and model.n_kv_heads == model.n_heads // 4 and model.head_dim == 128
    text = capsys.readouterr().out
    assert "optim.lr = " in text and "NOT fitted" in text and "data (" in text and "muP" not in text
    emitted = report(tmp_path)["target"]["emitted"]
    assert emitted["n_kv_heads"] == model.n_kv_heads and 0.8 < emitted["N_vs_target"] < 1.25
    assert emitted["loss"] == pytest.approx(report(tmp_path)["target"]["loss"], rel=0.01)


def test_emit_keeps_a_mup_base_and_says_the_lr_transfers(shared_data, tmp_path, capsys):
    """A muP family: the target keeps the parameterization and base width, so the proxies' LR is the
    target's; the warning says so instead of the plain "transfer to N*"."""
    base = tmp_path / "base.yaml"
    base.write_text(yaml.safe_dump(base_recipe_dict(d_model=256, n_layers=4, n_heads=4, parameterization="mup",
                                                    mup={"base_width": 256, "depth_rule": "completep"})))
    out = tmp_path / "t.yaml"
    assert run_fit(epoch(shared_data) + ["--target-flops", "1e20", "--bootstrap", "0", "--emit", str(out),
                                         "--base", str(base), "--json", str(tmp_path / "r.json")]) == 0
    model = Recipe.load(out).model
    assert model.parameterization == "mup" and model.mup.base_width == 256 and model.d_model > 256
    assert model.mup.depth_rule == "completep"
    assert "the LR does under muP, base width 256" in capsys.readouterr().out


def test_emit_follows_the_sweeps_depth_rule(tmp_path):
    """Proxies at a fixed depth: the target keeps that depth (not the largest run's aspect ratio)."""
    root = tmp_path / "sweep"
    for i, (d, n) in enumerate([(64, 1e5), (128, 4e5), (192, 9e5)]):
        for j, tokens in enumerate([2e6, 8e6, 3e7]):
            run = write_run(root, f"w{d}_{j}", n, tokens, 1.0 + 20 / n ** 0.3 + 30 / tokens ** 0.3)
            tree = base_recipe_dict(d_model=d, n_heads=d // 32, n_layers=2)
            (run / "recipe.yaml").write_text(yaml.safe_dump(tree))
    assert run_fit([str(root), "--target-flops", "3e15", "--bootstrap", "0", "--emit", str(tmp_path / "t.yaml")]) == 0
    model = Recipe.load(tmp_path / "t.yaml").model
    assert model.n_layers == 2 and model.head_dim == 32 and model.d_model > 192


def test_numeric_where_and_exclude(shared_data, tmp_path, sweep_dir):
    args = epoch(shared_data) + ["--bootstrap", "0", "--json", str(tmp_path / "r.json")]
    assert run_fit(args + ["--where", "Model Size>=1e8", "--where", "Model Size<5e9"]) == 0
    data = report(tmp_path)["data"]
    assert 1e8 <= data["N_range"][0] and data["N_range"][1] < 5e9 and data["points"] < 245
    assert run_fit(args + ["--exclude", "loss>3.5"]) == 0
    assert report(tmp_path)["data"]["loss_range"][1] <= 3.5
    # sweep directories: the run name and the canonical columns
    sweep = [str(sweep_dir), "--bootstrap", "0", "--json", str(tmp_path / "s.json")]
    assert run_fit(sweep) == 0
    n_all = report(tmp_path, "s.json")["data"]["points"]
    assert run_fit(sweep + ["--exclude", "run=run01"]) == 0  # a run with one decay branch: 2 points
    assert report(tmp_path, "s.json")["data"]["points"] == n_all - 2
    assert run_fit(sweep + ["--where", "N>2e8"]) == 0
    assert report(tmp_path, "s.json")["data"]["N_range"][0] > 2e8
    assert run_fit(sweep + ["--where", "size>1"]) == 2


def test_huber_delta_and_tied_exponents(shared_data, tmp_path):
    """Gadre et al. (2024) fit one exponent for N and D; the tied law has alpha == beta, 4 free
    parameters, and a larger objective than the free law on the same data. The Huber delta reaches
    the fit."""
    src = [str(shared_data / "gadre_overtraining" / "models_loss.csv"), "--columns",
           "N=params_no_embed,D=tokens,loss=loss_c4_val", "--where", "dataset=c4_original", "--where",
           "params<1e9", "--bootstrap", "0", "--json", str(tmp_path / "r.json")]
    assert run_fit(src) == 0
    free = report(tmp_path)
    assert run_fit(src + ["--tie-exponents"]) == 0
    tied = report(tmp_path)
    assert tied["params"]["alpha"] == tied["params"]["beta"] != free["params"]["alpha"]
    assert tied["details"]["tied_exponents"] and tied["details"]["objective"] > free["details"]["objective"]
    assert run_fit(src + ["--huber-delta", "0.1"]) == 0
    loose = report(tmp_path)
    assert loose["details"]["delta"] == 0.1 and loose["params"]["alpha"] != free["params"]["alpha"]
    assert run_fit(src + ["--tie-exponents", "--law", "kaplan"]) == 2


def test_batch_unit_and_smooth_loss_on_the_steplaw_grid(shared_data, tmp_path, capsys):
    """Step Law's grid has `loss` and `smooth loss`, and a batch column in sequences of 2048 tokens."""
    path = shared_data / "steplaw" / "dense_lr_bs_loss.csv"
    raw = read_csv(path, {"loss": "loss", "batch": "bs"})
    pts = read_csv(path, {"batch": "bs"}, batch_unit="sequences", seq_len=2048)
    assert not np.allclose(pts.loss, raw.loss)  # found `smooth loss` by itself
    assert np.allclose(pts.batch, raw.batch * 2048)
    assert any("not the raw 'loss' column" in n for n in pts.notes)
    assert run_fit([str(path), "--law", "lr-bs", "--columns", "batch=bs", "--bootstrap", "0"]) == 0
    assert "read as tokens per step; if it counts sequences pass --batch-unit" in capsys.readouterr().out
    with pytest.raises(RecipeError, match="needs --seq-len or a seq_len column"):
        read_csv(path, {"batch": "bs"}, batch_unit="sequences")
    moe = read_csv(shared_data / "steplaw" / "moe_lr_bs_loss.csv", {"N": "Na", "batch": "bs"},
                   batch_unit="sequences", where=[Condition("topk", "=", "1")])
    assert moe.batch.min() >= 2048  # multiplied by the file's own seq_len column


def test_critical_batch_law_on_zhang_et_al(shared_data, tmp_path, capsys):
    """Zhang et al. (2024): steps to a target C4 loss for 85M-1.2B models at 9 batch sizes. The paper's
    finding is that B_crit grows with scale (through the data of the Chinchilla-optimal target); with
    McCandlish's S(B) = S_min (1 + B_crit/B) per size we measure B_crit from 1.1M tokens (85M) to 5.7M
    (1.2B), i.e. a = 0.62; the test allows 0.45-0.8."""
    path = shared_data / "critical_batch_size" / "steps_to_target_loss.csv"
    assert run_fit([str(path), "--law", "critical-batch", "--columns", "N=N_millions", "--bootstrap", "30",
                    "--target-params", "3000", "--target-tokens", "1", "--json", str(tmp_path / "r.json")]) == 0
    r = report(tmp_path)
    assert 0.45 < r["params"]["a"] < 0.8 and r["ci"]["a"][0] < r["params"]["a"] < r["ci"]["a"][1]
    b = [s["B_crit"] for s in r["sizes"]]
    assert b == sorted(b) and 5e5 < b[0] < 3e6
    assert r["target"]["B_crit"] > b[-1]
    assert "law critical-batch" in capsys.readouterr().out
    N, batch, steps = critical_batch.load(path, {"N": "N_millions"}, [Condition("N_millions", "<", "200")], [])
    assert sorted(set(N)) == [85, 151]
    with pytest.raises(DataError, match="1 model size"):
        critical_batch.fit_power(N[N < 100], batch[N < 100], steps[N < 100])


def test_group_split_warning_on_porian(shared_data, capsys):
    src = [str(shared_data / "porian_resolving" / "isoflop_runs.csv"), "--columns", "N=N,D=T_tokens,C=flops",
           "--law", "isoflop", "--bootstrap", "0"]
    assert run_fit(src) == 0
    out = capsys.readouterr().out
    assert "columns split the rows into distinct groups" in out and "config_id (15:" in out
    assert run_fit(src + ["--where", "config_id=rw|tuned|short|const|standard|val"]) == 0
    assert "distinct groups" not in capsys.readouterr().out


DOCS_DATA = Path(__file__).resolve().parents[2] / "docs" / "data"


@pytest.mark.parametrize("points, where, chosen", [
    ("e2e_cpu5_points.csv", ["--min-steps", "3000"], "kaplan-e"),  # muP proxies (attempt 5)
    ("e2e_cpu_points.csv", ["--where", "D>=3e6"], "chinchilla"),  # SP proxies (attempts 3-4)
])
def test_law_auto_on_the_end_to_end_proxies(points, where, chosen, tmp_path, capsys):
    """The committed CPU end-to-end points: --law auto picks the form that predicted the trained targets
    (docs/scaling.md), reports both forms at the target, and warns about their spread."""
    assert run_fit([str(DOCS_DATA / points), *where, "--law", "auto", "--bootstrap", "0",
                    "--target-flops", "3.4e13", "--json", str(tmp_path / "r.json")]) == 0
    rep = report(tmp_path)
    forms = rep["target"]["forms"]
    assert rep["law"] == forms["chosen"] == chosen
    assert forms["scores"][chosen] == min(forms["scores"].values())
    assert forms["predicted"][chosen] == pytest.approx(rep["target"]["loss"])
    assert forms["spread"] > 0.02 and "--law auto: the forms disagree by" in capsys.readouterr().out
