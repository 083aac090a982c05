"""A miniature of the CPU end-to-end experiment (recipes/sweeps/e2e_cpu6.yaml, scripts/windtunnel_e2e.py):
proxy sweep -> fit -> emitted recipe -> trained unmodified -> report. It checks that each stage's output
feeds the next, not the accuracy (the real experiment's figures are in docs/scaling.md)."""
import importlib.util
import json
from pathlib import Path

import pytest
import yaml

from windtunnel.recipe import Recipe

ROOT = Path(__file__).resolve().parents[2]


def load_script():
    spec = importlib.util.spec_from_file_location("windtunnel_e2e", ROOT / "scripts" / "windtunnel_e2e.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def miniature(tmp_path: Path) -> Path:
    """The real sweep file, shrunk: 3 tiny widths at depth 1, 64-token sequences, 150 documents; the
    FLOP cap shortens the two wider proxies (a ladder, as in the real one)."""
    sweep = yaml.safe_load((ROOT / "recipes" / "sweeps" / "e2e_cpu5_proxies.yaml").read_text())
    sweep["recipe"]["data"]["max_documents"] = 150
    sweep["recipe"]["train"].update(batch_size=4, seq_len=64, eval_batches=2, ckpt_every=0)
    sweep["recipe"]["schedule"]["warmup_steps"] = 4
    sweep["sweep"]["scale"].update(widths=[16, 24, 32], depth=1, tokens=[12000], max_flops=1.0e9, branch_fracs=[0.5])
    sweep["out_dir"] = None
    (tmp_path / "mini_proxies.yaml").write_text(yaml.safe_dump(sweep))
    config = yaml.safe_load((ROOT / "recipes" / "sweeps" / "e2e_cpu6.yaml").read_text())
    config.pop("sweep_dir")  # the real one reuses attempt 5's proxies
    config.update(proxies="mini_proxies.yaml", out_dir=str(tmp_path / "out"), workers=2)
    # the real filter (>= 3,000 steps) would leave no mini point; --law auto's choice on 6 toy points can be a
    # degenerate allocation (a model below the smallest shape, millions of tokens): chinchilla keeps it quick
    config["fit"].update(bootstrap=4, extra=[], law="chinchilla")
    config["target"] = {"flops": 3.0e9, "off_optimal": {"undertrained_4x": 0.25}, "seeds": [1]}
    path = tmp_path / "mini.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_sweep_fit_emit_train_report(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the tokenized-data cache goes here
    script = load_script()
    config = miniature(tmp_path)
    assert script.main([str(config), "--docs", str(tmp_path / "docs"), "--name", "mini"]) == 0
    out = tmp_path / "out"
    # 1. the sweep: 3 completed proxies, each with its decay branch
    summaries = [json.loads(p.read_text()) for p in sorted((out / "proxies").glob("*/summary.json"))]
    assert len(summaries) == 3 and all(s["status"] == "completed" and len(s["branches"]) == 1 for s in summaries)
    assert [s["tokens"] for s in summaries] == [11776, 10240, 6656]  # w16 (12K tokens), w24/w32 capped
    # 2. the fit read all 6 points and emitted a recipe of the same family (depth 1, head dim 8)
    fit = json.loads((out / "targets" / "optimal" / "fit.json").read_text())
    assert fit["data"]["points"] == 6 and fit["emitted_recipe"].endswith("recipe.yaml")
    emitted = Recipe.load(out / "targets" / "optimal" / "recipe.yaml")
    assert emitted.model.n_layers == 1 and emitted.model.head_dim == 8
    assert emitted.model.parameterization == "mup" and emitted.model.mup.base_width == 64  # the LR transfers
    assert emitted.schedule.wsd.branches == []  # the proxies' decay branches are not the target's
    # 3. the target trained that recipe unmodified, for the emitted N and D
    run = out / "targets" / "optimal" / "run"
    assert Recipe.load(run / "recipe.yaml").to_dict() == emitted.to_dict()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["tokens"] == fit["target"]["emitted"]["D"]
    assert summary["non_embedding_params"] == fit["target"]["emitted"]["N"]
    # 4. the report compares the prediction for that run with its actual loss, for both targets
    report = json.loads((out / "report.json").read_text())
    assert [t["target"] for t in report["targets"]] == ["optimal", "undertrained_4x", "optimal_seed1"]
    best = report["targets"][0]
    assert best["actual"] == summary["final_val_loss"] and best["predicted"] == fit["target"]["emitted"]["loss"]
    # the seed repeat: the emitted recipe with train.seed=1 only, compared with the same prediction
    repeat = Recipe.load(out / "targets" / "optimal_seed1" / "run" / "recipe.yaml").to_dict()
    assert repeat["train"].pop("seed") == 1 and emitted.to_dict()["train"].pop("seed") == 0
    assert {k: v for k, v in repeat.items() if k != "train"} == {k: v for k, v in emitted.to_dict().items()
                                                                 if k != "train"}
    seeds = report["optimal_seeds"]
    assert seeds["runs"] == ["optimal", "optimal_seed1"] and report["targets"][2]["predicted"] == best["predicted"]
    assert seeds["mean"] == (best["actual"] + report["targets"][2]["actual"]) / 2
    assert seeds["sem"] == pytest.approx(abs(best["actual"] - report["targets"][2]["actual"]) / 2)
    assert seeds["inside"] == (best["ci"][0] <= seeds["mean"] <= best["ci"][1])
    under = report["targets"][1]
    assert under["D"] < best["D"] and under["N"] >= best["N"]  # 2N*, D*/2 (tiny shapes round to the same N)
    assert (tmp_path / "docs" / "mini.png").read_bytes()[:4] == b"\x89PNG"
    points = (tmp_path / "docs" / "data" / "mini_points.csv").read_text().splitlines()
    assert points[0] == "N,N_total,D,C,loss,lr,batch,run" and len(points) == 7
    # 5. resumable: a second call trains nothing and reuses the fit
    before = (run / "summary.json").stat().st_mtime
    assert script.main([str(config)]) == 0
    assert (run / "summary.json").stat().st_mtime == before
