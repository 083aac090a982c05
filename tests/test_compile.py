"""windtunnel.compile: recipe keys -> torch.compile arguments, per-block compilation, graph-break counts."""
from unittest import mock

import pytest
import torch

from windtunnel.compile import apply_compile, compile_kwargs, compiled_blocks, graph_breaks
from windtunnel.models import build_model
from windtunnel.recipe import Recipe, RecipeError

MODEL = {"vocab_size": 97, "max_seq_len": 32, "d_model": 32, "n_heads": 4, "n_kv_heads": 2, "n_layers": 3,
         "loss_chunk": 24, "z_loss": 1e-3, "tie_embeddings": False}


@pytest.fixture(autouse=True)
def fresh_dynamo():
    """Dynamo caches per code object: keep other tests' compiles out of these counts (and ours out of theirs)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()
    torch.set_num_threads(n)


def recipe(model=None, **train) -> Recipe:
    return Recipe.from_dict({"train": {"steps": 1, **train}, "model": {**MODEL, **(model or {})}})


def batch(vocab=97):
    x = torch.randint(0, vocab, (2, 33), generator=torch.Generator().manual_seed(0))
    return x[:, :-1], x[:, 1:]


def test_kwargs_follow_the_recipe():
    assert compile_kwargs(recipe(compile=True)) == {"mode": "default", "dynamic": None}
    assert compile_kwargs(recipe(compile=True, compile_mode="max-autotune")) == {"mode": "max-autotune", "dynamic": None}
    assert compile_kwargs(recipe(compile=True, compile_static=True))["dynamic"] is False
    # CUDA graphs replay fixed shapes: reduce-overhead compiles static shapes too
    assert compile_kwargs(recipe(compile=True, compile_mode="reduce-overhead"))["dynamic"] is False


def test_compile_keys_are_validated():
    with pytest.raises(RecipeError, match="train.compile_mode"):
        recipe(compile=True, compile_mode="fastest")
    with pytest.raises(RecipeError, match="train.compile_scope"):
        recipe(compile=True, compile_scope="layer")
    with pytest.raises(RecipeError, match="train.compile: .*need train.compile: true"):
        recipe(compile_scope="blocks")


def test_model_scope_wraps_the_whole_model_with_the_mode():
    model = build_model(recipe().model)
    with mock.patch("torch.compile", wraps=torch.compile) as spy:
        out = apply_compile(model, recipe(compile=True, compile_mode="max-autotune"))
    spy.assert_called_once_with(model, mode="max-autotune", dynamic=None)
    assert out._orig_mod is model


def test_block_scope_compiles_each_block_in_place_and_matches_eager():
    """Regional compilation: the model object and its state-dict names stay; the 3 identical blocks
    share one traced graph (so warm-up costs one block); loss and gradients equal eager."""
    from torch._dynamo.utils import counters

    torch.manual_seed(0)
    model = build_model(recipe().model)
    names = list(model.state_dict())
    x, y = batch()
    eager = model(x, targets=y)["loss"]
    eager.backward()
    want = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    counters.clear()
    out = apply_compile(model, recipe(compile=True, compile_scope="blocks"), backend="aot_eager")
    assert out is model and list(model.state_dict()) == names
    assert len(compiled_blocks(model)) == 3 and all(b._compiled_call_impl is not None for b in model.blocks)
    loss = model(x, targets=y)["loss"]
    loss.backward()
    assert counters["stats"]["unique_graphs"] == 1
    torch.testing.assert_close(loss, eager)
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, want[n], msg=n)


def test_block_scope_needs_blocks():
    with pytest.raises(RecipeError, match="compile_scope: blocks needs Block"):
        apply_compile(torch.nn.Linear(2, 2), recipe(compile=True, compile_scope="blocks"))


def test_graph_breaks_counts_a_break():
    def broken(x):
        x = x + 1
        torch._dynamo.graph_break()
        return x * 2

    found = graph_breaks(broken, torch.ones(3))
    assert (found["graphs"], found["breaks"]) == (2, 1) and found["reasons"]


@pytest.mark.parametrize("extra", [{}, {"moe": {"num_experts": 4, "top_k": 2, "expert_hidden": 16}}],
                         ids=["dense-fused-ce", "moe"])
def test_training_forward_has_no_graph_breaks(extra):
    """The compiled step's forward (fused linear-cross-entropy with z-loss; MoE routing and experts,
    grouped_mm path forced in bf16, so CPU traces the path CUDA runs) is one graph."""
    torch.manual_seed(0)
    model = build_model(recipe(extra).model)
    for block in model.blocks:
        if block.is_moe:
            block.mlp.impl = "native"
            model.to(torch.bfloat16)  # grouped_mm takes bf16 only
    x, y = batch()
    found = graph_breaks(model, x, targets=y)
    assert found == {"graphs": 1, "breaks": 0, "reasons": []}


def test_trainer_compiles_through_apply_compile(tmp_path):
    """The Trainer hands the recipe to apply_compile; per-block compilation keeps checkpoint names plain."""
    import functools

    from safetensors.torch import load_file

    from windtunnel.compile import apply_compile as real
    from windtunnel.trainer import Trainer

    r = recipe(compile=True, compile_scope="blocks", batch_size=2, seq_len=32, steps=2, threads=1, eval_every=100)
    data = [torch.randint(0, 97, (2, 33), generator=torch.Generator().manual_seed(i)) for i in range(2)]
    with mock.patch("windtunnel.trainer.apply_compile", wraps=functools.partial(real, backend="aot_eager")) as spy:
        summary = Trainer(r, train_data=data, out_dir=tmp_path).fit()
    assert spy.call_args.args[1].train.compile_scope == "blocks" and summary["status"] == "completed"
    names = load_file(str(next(tmp_path.glob("checkpoints/step_*/model.safetensors")))).keys()
    assert "blocks.0.attn_norm.weight" in names and not any("_orig_mod" in n for n in names)
