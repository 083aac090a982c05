import pytest
import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM

from windtunnel import Recipe, Trainer
from windtunnel.cli import main as cli_main
from windtunnel.export import ExportError, export_run
from windtunnel.export.moe import family
from windtunnel.models import build_model

VOCAB = 258


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def recipe(moe=None, **model) -> Recipe:
    base = {"vocab_size": VOCAB, "max_seq_len": 32, "d_model": 32, "n_heads": 4, "n_kv_heads": 2, "n_layers": 3,
            "moe": {"num_experts": 4, "top_k": 2, "expert_hidden": 16, **(moe or {})}}
    return Recipe.from_dict({"model": {**base, **model},
                             "train": {"steps": 2, "batch_size": 2, "seq_len": 16, "threads": 1},
                             "logging": {"log_every": 1, "progress": False}})


def fake_run(tmp_path, r: Recipe):
    """Run dir with a random far-from-init model (norm gains != 1) so a mis-mapped tensor shows."""
    torch.manual_seed(0)
    model = build_model(r.model).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.normal_(0.0, 0.15) if p.ndim > 1 else p.uniform_(0.5, 1.5)
    run, ckpt = tmp_path / "run", tmp_path / "run/checkpoints/step_00000002"
    ckpt.mkdir(parents=True)
    r.dump(run / "recipe.yaml")
    save_file(dict(model.state_dict()), ckpt / "model.safetensors")
    (ckpt / "trainer_state.json").write_text("{}")
    return run, model


CASES = {  # recipe -> expected HF class
    "mixtral": ({}, {}, "MixtralForCausalLM"),
    "top1": ({"top_k": 1}, {"tie_embeddings": False}, "Qwen2MoeForCausalLM"),
    "shared+dense": ({"shared_experts": 2, "first_dense": 1, "every": 2}, {}, "Qwen2MoeForCausalLM"),
    "qk_norm": ({"every": 2}, {"qk_norm": True}, "Qwen3MoeForCausalLM"),
    "mup": ({"shared_experts": 1}, {"parameterization": "mup", "mup": {"base_width": 16, "input_mult": 2.0,
                                                                       "attn_mult": 1.5}}, "Qwen2MoeForCausalLM"),
    "mup+qk_norm": ({}, {"qk_norm": True, "parameterization": "mup",
                         "mup": {"base_width": 16, "attn_mult": 1.5}}, "Qwen3MoeForCausalLM"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_moe_export_matches_logits(tmp_path, case):
    moe, model_kw, hf_class = CASES[case]
    run, model = fake_run(tmp_path, recipe(moe, **model_kw))
    out = export_run(run, tmp_path / "hf")
    hf = AutoModelForCausalLM.from_pretrained(out).eval()
    assert type(hf).__name__ == hf_class
    x = torch.randint(0, VOCAB, (2, 32), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref, got = model(x), hf(x).logits
    assert ref.std() > 0.3
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=0)


@pytest.mark.parametrize("moe,model_kw,key", [
    ({"router": "sigmoid"}, {}, "model.moe.router"),
    ({"aux_free": True}, {}, "model.moe.aux_free"),
    ({"shared_experts": 1}, {"qk_norm": True}, "model.qk_norm"),
])
def test_inexpressible_features_are_refused(moe, model_kw, key):
    with pytest.raises(ExportError, match=key) as err:
        family(recipe(moe, **model_kw).model)
    assert "\n" not in str(err.value)


def test_trained_moe_mtp_run_exports_through_cli(tmp_path, capsys):
    """A real (2-step) training run with shared experts and MTP heads: heads dropped, logits match."""
    r = recipe({"shared_experts": 1}, mtp={"n_future": 2})
    data = [torch.randint(0, 256, (2, 17)) for _ in range(2)]
    trainer = Trainer(r, train_data=data, out_dir=tmp_path / "run")
    trainer.fit()
    assert cli_main(["export", str(tmp_path / "run"), str(tmp_path / "hf")]) == 0
    assert "MTP head" in capsys.readouterr().err
    model = trainer.accelerator.unwrap_model(trainer.model).eval()
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    x = torch.randint(0, VOCAB, (1, 16))
    with torch.no_grad():
        torch.testing.assert_close(hf(x).logits, model(x), atol=1e-4, rtol=0)
