import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from windtunnel import Trainer, mup
from windtunnel.cli import main as cli_main
from windtunnel.export import ExportError, export_run

VOCAB = 258


@pytest.fixture
def recipe(export_recipe):
    """recipe(**model): the export tests' d_model=64 (head dim 16) model."""
    return lambda **model: export_recipe(**{"d_model": 64, **model})


@pytest.mark.parametrize("kv,tie,theta,eps", [(4, True, 1e4, 1e-5), (2, False, 5e5, 1e-6), (1, True, 1e4, 1e-5)])
def test_dense_export_matches_logits(tmp_path, kv, tie, theta, eps, recipe, fake_run, assert_same_logits):
    run, model = fake_run(recipe(n_kv_heads=kv, tie_embeddings=tie, rope_theta=theta, norm_eps=eps))
    out = export_run(run, tmp_path / "hf")
    assert_same_logits(model, out)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["num_key_value_heads"] == kv and cfg["tie_word_embeddings"] == tie
    assert cfg["rms_norm_eps"] == eps and cfg["max_position_embeddings"] == 32
    assert (out / "windtunnel_recipe.yaml").exists()


@pytest.mark.parametrize("prefix", ["_orig_mod.", "module._orig_mod.", "module."])
def test_wrapper_prefixes_are_stripped(tmp_path, prefix, recipe, fake_run, assert_same_logits):
    run, model = fake_run(recipe(n_kv_heads=2), prefix=prefix)
    assert_same_logits(model, export_run(run, tmp_path / "hf"))


@pytest.mark.parametrize("tie", [True, False])
def test_mup_multipliers_are_folded(tmp_path, monkeypatch, tie, recipe, fake_run, assert_same_logits):
    monkeypatch.setattr(mup, "attention_scale", lambda cfg: 2.0 / cfg.head_dim)  # muP's 1/d, not 1/sqrt(d)
    monkeypatch.setattr(mup, "embedding_multiplier", lambda cfg: 3.0)
    monkeypatch.setattr(mup, "logit_multiplier", lambda cfg: 0.25)
    run, model = fake_run(recipe(parameterization="mup", tie_embeddings=tie, n_kv_heads=2))
    assert model.embed_mult == 3.0 and model.blocks[0].attn.scale == 2.0 / 16
    assert_same_logits(model, export_run(run, tmp_path / "hf"))


def test_real_mup_run_matches_logits(tmp_path, recipe, fake_run, assert_same_logits):
    mp = {"base_width": 32, "input_mult": 2.0, "output_mult": 0.5, "attn_mult": 1.5}
    run, model = fake_run(recipe(parameterization="mup", mup=mp, tie_embeddings=False))
    assert model.logit_mult != 1.0  # the real rules are non-trivial at width 2 x base
    assert_same_logits(model, export_run(run, tmp_path / "hf"))


def test_qk_norm_is_refused_with_one_line(tmp_path, capsys, recipe, fake_run):
    run, _ = fake_run(recipe(qk_norm=True))
    with pytest.raises(ExportError, match=r"^model\.qk_norm: Llama cannot express QK-norm; export not possible$"):
        export_run(run, tmp_path / "hf")
    assert cli_main(["export", str(run), str(tmp_path / "hf")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "model.qk_norm" in err
    assert not (tmp_path / "hf").exists()


def test_mtp_heads_are_dropped_with_a_note(tmp_path, capsys, recipe, fake_run, assert_same_logits):
    fake_mtp = {"mtp.0.proj.weight": torch.zeros(64, 128), "mtp.0.norm.weight": torch.ones(64)}
    run, model = fake_run(recipe(mtp={"n_future": 2}), extra=fake_mtp, model_recipe=recipe())
    out = export_run(run, tmp_path / "hf")
    assert "dropping the 1 extra MTP head(s) (2 tensors)" in capsys.readouterr().err
    assert_same_logits(model, out)


def test_unknown_tensor_is_an_error_not_dropped(tmp_path, recipe, fake_run):
    run, _ = fake_run(recipe(), extra={"blocks.0.attn.bias": torch.zeros(3)})
    with pytest.raises(ExportError, match="no HF equivalent, e.g. 'blocks.0.attn.bias'"):
        export_run(run, tmp_path / "hf")


def test_missing_tensor_names_the_key(tmp_path, recipe, fake_run):
    run, _ = fake_run(recipe(n_layers=2), model_recipe=recipe(n_layers=1))
    with pytest.raises(ExportError, match="missing tensor 'blocks.1.attn.wqkv.weight'"):
        export_run(run, tmp_path / "hf")


def test_weights_lookup(tmp_path, recipe, fake_run, assert_same_logits):
    run, model = fake_run(recipe(), ckpt="checkpoints")  # consolidated checkpoints/model.safetensors
    (run / "checkpoints" / "trainer_state.json").unlink()
    sharded = run / "checkpoints" / "step_00000004"  # newer DeepSpeed checkpoint: no model.safetensors
    (sharded / "pytorch_model").mkdir(parents=True)
    (sharded / "trainer_state.json").write_text("{}")
    assert_same_logits(model, export_run(run, tmp_path / "a"))
    assert_same_logits(model, export_run(run, tmp_path / "b", checkpoint=run / "checkpoints" / "model.safetensors"))
    with pytest.raises(FileNotFoundError, match=r"step_00000004: no model.safetensors .*consolidate it"):
        export_run(run, tmp_path / "c", checkpoint=sharded)
    (run / "checkpoints" / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"step_00000004: no model.safetensors"):
        export_run(run, tmp_path / "d")


def test_trained_run_exports_through_cli(tmp_path, recipe):
    r = recipe(n_kv_heads=2, tie_embeddings=False)
    g = torch.Generator().manual_seed(0)
    data = [torch.randint(0, VOCAB, (2, 17), generator=g) for _ in range(2)]
    trainer = Trainer(r, train_data=data, out_dir=tmp_path / "run")
    trainer.fit()
    model = trainer.accelerator.unwrap_model(trainer.model).eval()
    out = tmp_path / "hf"
    assert cli_main(["export", str(tmp_path / "run"), str(out)]) == 0
    hf = AutoModelForCausalLM.from_pretrained(out).eval()
    with torch.no_grad():
        torch.testing.assert_close(hf(data[0]).logits, model(data[0]), atol=1e-5, rtol=0)
    tok = AutoTokenizer.from_pretrained(out)
    assert tok("hi é")["input_ids"] == list("hi é".encode()) and tok.eos_token_id == 256
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["eos_token_id"] == 256 and cfg["pad_token_id"] == 257 and cfg["bos_token_id"] is None
