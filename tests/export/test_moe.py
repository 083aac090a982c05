import pytest
import torch
from transformers import AutoModelForCausalLM

from windtunnel import Trainer
from windtunnel.cli import main as cli_main
from windtunnel.export import ExportError, export_run
from windtunnel.export.moe import family

VOCAB = 258


@pytest.fixture
def recipe(export_recipe):
    """recipe(moe, **model): a 3-layer GQA model with 4 experts (top-2, width 16)."""
    def make(moe=None, **model):
        experts = {"num_experts": 4, "top_k": 2, "expert_hidden": 16, **(moe or {})}
        return export_recipe(**{"n_kv_heads": 2, "n_layers": 3, "moe": experts, **model})
    return make


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
def test_moe_export_matches_logits(tmp_path, recipe, fake_run, assert_same_logits, case):
    moe, model_kw, hf_class = CASES[case]
    run, model = fake_run(recipe(moe, **model_kw))
    assert_same_logits(model, export_run(run, tmp_path / "hf"), hf_class)


@pytest.mark.parametrize("moe,model_kw,key", [
    ({"router": "sigmoid"}, {}, "model.moe.router"),
    ({"aux_free": True}, {}, "model.moe.aux_free"),
    ({"shared_experts": 1}, {"qk_norm": True}, "model.qk_norm"),
])
def test_inexpressible_features_are_refused(recipe, moe, model_kw, key):
    with pytest.raises(ExportError, match=key) as err:
        family(recipe(moe, **model_kw).model)
    assert "\n" not in str(err.value)


def test_trained_moe_mtp_run_exports_through_cli(tmp_path, capsys, recipe, token_batches):
    """A real (2-step) training run with shared experts and MTP heads: heads dropped, logits match."""
    r = recipe({"shared_experts": 1}, mtp={"n_future": 2})
    data = token_batches(256, n=2)
    trainer = Trainer(r, train_data=data, out_dir=tmp_path / "run")
    trainer.fit()
    assert cli_main(["export", str(tmp_path / "run"), str(tmp_path / "hf")]) == 0
    assert "MTP head" in capsys.readouterr().err
    model = trainer.accelerator.unwrap_model(trainer.model).eval()
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    x = torch.randint(0, VOCAB, (1, 16))
    with torch.no_grad():
        torch.testing.assert_close(hf(x).logits, model(x), atol=1e-4, rtol=0)
