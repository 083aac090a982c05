"""Throughput harness (windtunnel.benchmarks.throughput) and the CPU fallbacks of its optimisations (compile)."""
import json
import math

import pytest
import torch

from windtunnel import accounting
from windtunnel.benchmarks import throughput as bench
from windtunnel.benchmarks.throughput import PRESETS, Spec, bench_recipe, hf_model, measure
from windtunnel.models import build_model
from windtunnel.recipe import Recipe, RecipeError


def spec(name="tiny", impl="windtunnel", **kw):
    base = dict(name=name, impl=impl, model=PRESETS[name].model, batch=2, seq=16, device="cpu",
                precision="fp32", compile=False, steps=2, warmup=1, clip=1.0, isolated=False)
    return Spec(**{**base, **kw})


@pytest.mark.parametrize("name", [n for n, p in PRESETS.items() if not p.model.get("mtp")])
def test_hf_reference_has_exactly_windtunnels_parameters(name):
    """The reference is the same network: same parameter count as accounting (built on meta, no memory)."""
    cfg = bench_recipe(spec(name, "hf", batch=PRESETS[name].batch, seq=PRESETS[name].seq)).model
    with torch.device("meta"):
        model = hf_model(cfg)
    assert sum(p.numel() for p in model.parameters()) == accounting.count_params(cfg).total
    kind = "Mixtral" if cfg.moe.num_experts else "Llama"
    assert type(model).__name__ == f"{kind}ForCausalLM"
    assert model.config.num_key_value_heads == cfg.kv_heads and model.config.tie_word_embeddings is False


def test_mtp_presets_compare_to_one_future_token():
    assert bench_recipe(spec("tiny-mtp4", "mtp1")).model.mtp.n_future == 1
    assert bench_recipe(spec("tiny-mtp4", "windtunnel")).model.mtp.n_future == 4
    with pytest.raises(ValueError, match="multi-token"):
        hf_model(bench_recipe(spec("tiny-mtp4", "hf")).model)


@pytest.mark.parametrize("impl", ["windtunnel", "windtunnel-model", "hf"])
def test_measure_times_a_real_step_and_reports_consistent_figures(impl):
    row = measure(spec(impl=impl))
    assert row["status"] == "ok", row.get("reason")
    cfg = bench_recipe(spec()).model
    flops = accounting.flops_per_token(cfg, 16)
    assert row["flops_per_token"] == flops
    assert row["tflops"] == pytest.approx(row["tokens_per_s"] * flops / 1e12)
    assert row["tokens_per_s"] > 0 and row["mfu"] is None  # no known CPU peak
    assert 2.0 < row["loss"] < math.log(256) + 0.1  # a few steps from random init, byte vocabulary
    assert row["peak_mem_gib"] is None  # in-process CPU rows cannot isolate their peak


@pytest.fixture
def fresh_accelerate_state():
    """accelerate keeps one mixed-precision setting per process; let this test pick its own."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state()
    yield
    AcceleratorState._reset_state()


@pytest.mark.parametrize("impl", ["windtunnel", "hf"])
def test_bf16_autocast_with_chunked_loss_runs_on_cpu(impl, fresh_accelerate_state):
    """The GPU configuration (bf16 autocast, fused chunked loss) through both paths, on CPU."""
    row = measure(spec(impl=impl, precision="bf16", model={**PRESETS["tiny"].model, "loss_chunk": 8}))
    assert row["status"] == "ok", row.get("reason")
    assert 2.0 < row["loss"] < math.log(256) + 0.1


def test_broken_row_is_reported_not_raised():
    row = measure(spec(model={**PRESETS["tiny"].model, "n_heads": 3}))
    assert row["status"] == "error" and "n_heads" in row["reason"]


def test_ratios_pair_rows_by_preset_and_compile():
    rows = [{"preset": "a", "impl": "windtunnel", "compile": c, "status": "ok", "tokens_per_s": 30.0 * (1 + c),
             "peak_mem_gib": 1.0} for c in (0, 1)]
    rows += [{"preset": "a", "impl": "hf", "compile": c, "status": "ok", "tokens_per_s": 10.0, "peak_mem_gib": 4.0}
             for c in (0, 1)]
    bench.add_ratios(rows)
    assert [r.get("speed_ratio") for r in rows] == [3.0, 6.0, None, None]
    assert rows[0]["mem_ratio"] == 0.25


def test_main_writes_docs_block_in_place_and_skips_gpu_presets(tmp_path):
    """End to end on CPU: both rows measured, GPU presets skipped, the docs block replaced in place
    (twice) with the rest of the file kept."""
    docs = tmp_path / "benchmarks.md"
    docs.write_text("# Benchmarks\n\n## Throughput\n\n<!-- bench:cpu:begin -->\nold\n<!-- bench:cpu:end -->\n\n"
                    "## Offload capacity\n\nkept\n")
    out = tmp_path / "rows.json"
    args = ["tiny", "125m", "--steps", "2", "--warmup", "1", "--batch", "2", "--seq", "16", "--no-isolate",
            "--docs", str(docs), "--json", str(out)]
    assert bench.main(args) == 0
    rows = json.loads(out.read_text())
    ok = [r for r in rows if r["status"] == "ok"]
    assert [r["impl"] for r in ok] == ["windtunnel", "hf"] and ok[0]["speed_ratio"] > 0
    assert rows[-1] == {"preset": "125m", "impl": "all", "compile": False, "status": "skipped",
                        "reason": "GPU-only preset (no CUDA device)"}
    text = docs.read_text()
    assert "old" not in text and text.count("| tiny | windtunnel |") == 1 and text.endswith("kept\n")
    assert "windtunnel bench tiny 125m --steps 2" in text and torch.__version__ in text
    bench.write_docs(docs, "cpu", "new\n")
    text = docs.read_text()
    assert text.count("bench:cpu:begin") == 1 and "new" in text and "| tiny |" not in text


@pytest.mark.slow  # a bench row in a subprocess (~20 s)
def test_isolated_row_reports_its_own_peak_memory():
    """A worker process per row: its CPU peak RSS growth is measured. Training the tiny model on 16x256
    tokens keeps >100 MB of activations (the FFN's gate/up output alone is 4096 x 1024 x 4 B per layer)."""
    row = bench.run_isolated(spec(impl="windtunnel-model", isolated=True, batch=16, seq=256, steps=1))
    assert row["status"] == "ok", row
    assert 0.1 < row["peak_mem_gib"] < 1.0


def test_unknown_preset_is_one_line_error(capsys):
    assert bench.main(["nope"]) == 2
    err = capsys.readouterr().err.strip()
    assert "'nope'" in err and "\n" not in err
    with pytest.raises(SystemExit):
        bench.main(["tiny", "--steps", "0"])


def test_recipe_yaml_as_preset(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("model: {d_model: 64, n_layers: 2, n_heads: 4, vocab_size: 97}\n"
                    "train: {batch_size: 3, seq_len: 32, tokens: 1000}\n")
    preset = bench.load_preset(str(path))
    assert (preset.batch, preset.seq, preset.model["vocab_size"]) == (3, 32, 97)
    path.write_text("model: {d_model: 64}\ntrain: {steps: 1}\n")
    with pytest.raises(RecipeError, match="vocab_size"):
        bench.load_preset(str(path))


@pytest.mark.slow
def test_dense_transformer_compiles_fullgraph_and_matches_eager():
    """No graph breaks (fullgraph=True) through GQA attention, qk-norm and the fused chunked loss;
    loss and every gradient match eager. About 40 s on 2 CPU cores (one compile)."""
    model_cfg = {"vocab_size": 97, "max_seq_len": 32, "d_model": 64, "n_heads": 4, "n_kv_heads": 2,
                 "n_layers": 2, "qk_norm": True, "loss_chunk": 24, "z_loss": 1e-3, "tie_embeddings": False}
    cfg = Recipe.from_dict({"train": {"steps": 1}, "model": model_cfg}).model
    torch.manual_seed(0)
    model = build_model(cfg)
    x = torch.randint(0, 97, (2, 33))
    eager = model(x[:, :-1], targets=x[:, 1:])["loss"]
    eager.backward()
    want = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    compiled = torch.compile(model, fullgraph=True)(x[:, :-1], targets=x[:, 1:])["loss"]
    compiled.backward()
    assert torch.allclose(compiled, eager, atol=1e-5)
    for name, p in model.named_parameters():
        assert torch.allclose(p.grad, want[name], atol=1e-5, rtol=1e-4), name
