import json

import pytest
import yaml

from windtunnel.accounting import count_params, flops_per_token
from windtunnel.recipe import RecipeError
from windtunnel.sweep.plan import expand, human, load_sweep
from windtunnel.sweep.report import gpu_hours, manifest, plan_table

BASE = {
    "model": {"d_model": 64, "n_layers": 2, "n_heads": 2},
    "tokenizer": {"kind": "byte"},
    "train": {"steps": 10, "batch_size": 4, "seq_len": 32},
}


def write(tmp_path, sweep, base=BASE, name="s.yaml"):
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    path = tmp_path / name
    path.write_text(yaml.safe_dump({"base": "base.yaml", **sweep}))
    return path


def test_axes_multiply_and_apply(tmp_path):
    path = write(tmp_path, {
        "overrides": {"optim.weight_decay": 0.0, "train": {"seq_len": 16}},
        "sweep": {"grid": {"optim.lr": [1e-3, 3e-3], "train.seed": [0, 1, 2]},
                  "zip": {"optim.betas": [[0.9, 0.95], [0.9, 0.99]], "optim.eps": [1e-8, 1e-10]},
                  "list": [{"model.qk_norm": True}, {"model.qk_norm": False, "train.clip": 0.5}]}})
    runs = expand(load_sweep(path))
    assert len(runs) == 2 * 3 * 2 * 2
    assert len({r.name for r in runs}) == len(runs)
    r = runs[-1]
    assert r.recipe.optim.lr == 3e-3 and r.recipe.train.seed == 2 and r.recipe.optim.eps == 1e-10
    assert r.recipe.optim.betas == [0.9, 0.99] and r.recipe.train.clip == 0.5 and not r.recipe.model.qk_norm
    assert r.recipe.optim.weight_decay == 0.0 and r.recipe.train.seq_len == 16  # overrides
    assert r.recipe.model.d_model == 64  # nested override merged, not replaced
    assert r.name.startswith("lr0.003_seed2_betas") and r.name.endswith("qk_normFalse_clip0.5")
    assert [x.name for x in expand(load_sweep(path))] == [x.name for x in runs]  # stable


def test_counts_and_flops_come_from_accounting(tmp_path):
    runs = expand(load_sweep(write(tmp_path, {"sweep": {"grid": {"model.n_layers": [1, 3]}}})))
    for run in runs:
        model = run.recipe.model
        resolved = type(model)(**{**vars(model), "vocab_size": 258})  # byte tokenizer
        assert run.params == count_params(resolved)
        assert run.tokens == 10 * 4 * 32
        assert run.flops == flops_per_token(resolved, 32) * run.tokens
    assert runs[1].params.non_embedding > runs[0].params.non_embedding


def test_scale_family_tokens_per_param_and_branches(tmp_path):
    path = write(tmp_path, {"sweep": {"scale": {"params": [2e5, 1e6], "head_dim": 32, "aspect": 32,
                                                "tokens_per_param": [10, 20], "branch_fracs": [0.5]}}})
    runs = expand(load_sweep(path))
    assert [r.name for r in runs] == ["N200K_r10", "N200K_r20", "N1M_r10", "N1M_r20"]
    for r, ratio in zip(runs, [10, 20, 10, 20]):
        assert r.recipe.model.d_model % 32 == 0 and r.recipe.model.head_dim == 32
        assert r.recipe.train.steps is None
        assert abs(r.tokens - ratio * r.params.non_embedding) <= 4 * 32  # within one step
        assert r.recipe.schedule.wsd.branches == [int(0.5 * r.recipe.train.tokens)]
        branch_tokens = round(0.2 * r.recipe.schedule.wsd.branches[0] / 128) * 128
        assert r.flops == pytest.approx(flops_per_token(
            type(r.recipe.model)(**{**vars(r.recipe.model), "vocab_size": 258}), 32) * (r.tokens + branch_tokens))


def test_max_flops_caps_the_widest_runs_of_a_token_grid(tmp_path):
    path = write(tmp_path, {"sweep": {"scale": {"widths": [32, 64, 128], "head_dim": 32, "tokens": [2e6, 4e6],
                                                "max_flops": 2e12, "branch_fracs": [0.5]}}})
    runs = expand(load_sweep(path))

    def main_run_flops(r):  # counted FLOPs of the main run (the decay branch costs extra)
        model = type(r.recipe.model)(**{**vars(r.recipe.model), "vocab_size": 258})
        return flops_per_token(model, r.recipe.train.seq_len) * r.tokens

    widths = [r.recipe.model.d_model for r in runs]
    # width 32 fits both budgets; 64 keeps the smaller one and caps the larger; 128 collapses onto one capped run
    assert widths == [32, 32, 64, 64, 128]
    assert [r.tokens for r in runs[:2]] == [2_000_000 // 128 * 128, 4_000_000 // 128 * 128]
    assert runs[2].tokens == runs[0].tokens and runs[3].tokens < 4e6 and runs[4].tokens < runs[3].tokens
    for r in runs:
        assert main_run_flops(r) <= 2e12 and r.name.endswith(f"D{human(r.recipe.train.tokens)}")
        assert r.recipe.schedule.wsd.branches == [int(0.5 * r.recipe.train.tokens)]
    for r in (runs[3], runs[4]):  # capped: as many tokens as the cap allows, to within one step
        assert main_run_flops(r) > 2e12 * (1 - 2 * 128 / r.tokens)


def test_isoflop_grid(tmp_path):
    path = write(tmp_path, {"sweep": {"grid": {"optim.lr": [1e-3]},
                                      "scale": {"widths": [64, 128, 192], "head_dim": 32, "flops": [1e13, 3e13]}}})
    runs = expand(load_sweep(path))
    assert len(runs) == 6
    for r in runs:
        budget = 1e13 if "C1e+13" in r.name else 3e13
        step_flops = r.flops / r.recipe.total_steps()
        assert abs(r.flops - budget) <= step_flops  # D rounded down to whole steps
    small, big = runs[0], runs[4]
    assert small.tokens > big.tokens  # same budget: smaller model sees more tokens


def test_inline_recipe_with_extends(tmp_path):
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(BASE))
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"recipe": {"extends": "base.yaml", "optim": {"lr": 1e-2}}, "name": "x"}))
    spec = load_sweep(path)
    (run,) = expand(spec)
    assert run.name == "run" and run.recipe.optim.lr == 1e-2 and run.recipe.model.d_model == 64
    assert str(spec.out_dir) == "sweeps/x"


def test_table_and_manifest(tmp_path):
    spec = load_sweep(write(tmp_path, {"sweep": {"grid": {"optim.lr": [1e-3, 2e-3]}},
                                       "estimate": {"mfu": 0.5, "gpu": "A100"}}))
    runs = expand(spec)
    hours = runs[0].flops / (0.5 * 312e12) / 3600
    assert gpu_hours(runs[0], spec.estimate) == pytest.approx(hours)
    table = plan_table(runs, spec.estimate)
    assert "lr0.001" in table and "2 runs" in table and "50% MFU of A100 (312 TFLOP/s peak)" in table
    m = json.loads(json.dumps(manifest(spec, runs)))
    assert [r["name"] for r in m["runs"]] == ["lr0.001", "lr0.002"]
    assert m["runs"][0]["non_embedding_params"] == runs[0].params.non_embedding
    assert m["total_gpu_hours"] == pytest.approx(2 * hours)


def test_every_sweep_bound_names_a_real_key():
    import dataclasses

    from windtunnel.sweep.plan import SWEEP_BOUNDS, EstimateConfig, ExecutorConfig, ScaleAxis

    keys = {f"{prefix}{f.name}" for prefix, cls in (("executor.", ExecutorConfig), ("estimate.", EstimateConfig),
                                                     ("sweep.scale.", ScaleAxis)) for f in dataclasses.fields(cls)}
    assert set(SWEEP_BOUNDS) <= keys, set(SWEEP_BOUNDS) - keys


@pytest.mark.parametrize("sweep, message", [
    ({"sweeps": {}}, "unknown key sweeps (did you mean sweep?)"),
    ({"sweep": {"gird": {}}}, "unknown axis sweep.gird (did you mean sweep.grid?)"),
    ({"sweep": {"grid": {"optim.lr": 1e-3}}}, "sweep.grid.optim.lr: expected a non-empty list"),
    ({"sweep": {"zip": {"optim.lr": [1, 2], "train.seed": [1]}}}, "sweep.zip: lists differ in length"),
    ({"sweep": {"grid": {"optim.lr": [1]}, "list": [{"optim.lr": 2}]}}, "optim.lr is set by both"),
    ({"sweep": {"grid": {"optim.lrr": [1e-3]}}}, "[run lrr0.001]: unknown key optim.lrr (did you mean optim.lr?)"),
    ({"sweep": {"grid": {"optim.lr": [-1.0]}}}, "[run lr-1]: optim.lr: must be positive"),
    ({"sweep": {"scale": {"widths": [64], "params": [1e6]}}}, "set exactly one of widths and params"),
    ({"sweep": {"scale": {"widths": [64], "flops": [1e12], "tokens_per_param": 20}}}, "set at most one"),
    ({"sweep": {"scale": {"widths": [64], "flops": [1e12], "max_flops": 1e12}}}, "sweep.scale.max_flops: caps a tokens"),
    ({"sweep": {"scale": {"widths": [64], "tokens": [1e6], "max_flops": -1}}}, "sweep.scale.max_flops"),
    ({"sweep": {"scale": {"widths": [64], "branch_fracs": [1.5]}}}, "sweep.scale.branch_fracs[0]: must be in (0, 1), got 1.5"),
    ({"sweep": {"scale": {"widths": [64, -8]}}}, "sweep.scale.widths[1]: must be positive, got -8"),
    ({"sweep": {"scale": {"widths": [64], "aspect": 0}}}, "sweep.scale.aspect: must be positive, got 0.0"),
    ({"sweep": {"scale": {"widths": [64], "tokens_per_param": float("nan")}}}, "sweep.scale.tokens_per_param[0]: must be finite"),
    ({"sweep": {"scale": {"widths": [64], "aspect": "wide"}}}, "sweep.scale.aspect: expected float"),
    ({"estimate": {"mfu": 2}}, "estimate.mfu: must be in (0, 1]"),
    ({"executor": {"kind": "k8s"}}, "executor.kind: 'k8s' is not one of local, slurm"),
    ({"out_dir": 5}, "out_dir: expected a string, got 5"),
    ({"executor": {"gpus": -3}}, "executor.gpus: must be >= 0, got -3"),
    ({"executor": {"kind": "slurm", "gpus_per_run": 0}}, "executor.gpus_per_run: must be positive, got 0"),
    ({"executor": {"time_min": -60}}, "executor.time_min: must be positive, got -60"),
    ({"executor": {"mem_gb": float("inf")}}, "executor.mem_gb: must be finite, got inf"),
    ({"estimate": {"peak_tflops": -1}}, "estimate.peak_tflops: must be positive, got -1"),
])
def test_bad_sweeps_fail_with_one_line(tmp_path, sweep, message):
    with pytest.raises(RecipeError) as err:
        expand(load_sweep(write(tmp_path, sweep)))
    assert message in str(err.value) and "\n" not in str(err.value)


def test_base_and_recipe_are_exclusive_and_base_must_exist(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("recipe: {}\nbase: b.yaml\n")
    with pytest.raises(RecipeError, match="exactly one of base"):
        load_sweep(path)
    path.write_text("base: missing.yaml\n")
    with pytest.raises(RecipeError, match="missing.yaml: cannot read recipe"):
        load_sweep(path)
