"""Run directories as the trainer leaves them, with far-from-init weights, and the logits check."""
import pytest
import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM

from windtunnel.models import build_model

VOCAB = 258  # the byte tokenizer's vocabulary, so the exported tokenizer matches the model


@pytest.fixture
def export_recipe(tiny_recipe):
    """export_recipe(**model): a tiny recipe on the byte vocabulary, max_seq_len 32."""
    return lambda **model: tiny_recipe(model={"vocab_size": VOCAB, **model})


def random_model(model_config) -> torch.nn.Module:
    """Weights far from init (norm gains != 1, large matrices) so any mis-mapped tensor shows in the logits."""
    torch.manual_seed(0)
    model = build_model(model_config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.15) if p.ndim > 1 else p.uniform_(0.5, 1.5)
    return model


@pytest.fixture
def fake_run(tmp_path):
    """fake_run(recipe, prefix="", extra=None, ckpt=..., model_recipe=None) -> (run dir, model): the resolved
    recipe.yaml and an accelerate-style checkpoint of a random model (of model_recipe when given)."""
    def make(recipe, prefix="", extra=None, ckpt="checkpoints/step_00000002", model_recipe=None):
        model = random_model((model_recipe or recipe).model)
        run = tmp_path / "run"
        (run / ckpt).mkdir(parents=True)
        recipe.dump(run / "recipe.yaml")
        state = {prefix + k: v for k, v in model.state_dict().items()} | (extra or {})
        save_file(state, run / ckpt / "model.safetensors")
        (run / ckpt / "trainer_state.json").write_text("{}")
        return run, model
    return make


@pytest.fixture
def assert_same_logits():
    """assert_same_logits(model, hf_dir, hf_class) -> the HF model, after checking its logits equal ours."""
    def check(model, out_dir, hf_class="LlamaForCausalLM"):
        hf = AutoModelForCausalLM.from_pretrained(out_dir).eval()
        assert type(hf).__name__ == hf_class
        x = torch.randint(0, VOCAB, (2, 32), generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            ref, got = model(x), hf(x).logits
        assert ref.std() > 0.3  # logits far from uniform: a wrong weight would not hide below the tolerance
        torch.testing.assert_close(got, ref, atol=1e-4, rtol=0)
        return hf
    return check
