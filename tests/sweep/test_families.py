import math

import pytest

from windtunnel.accounting import count_params, training_flops
from windtunnel.recipe import ModelConfig, RecipeError
from windtunnel.sweep.families import model_params, shape_for_params, shape_for_width, tokens_for

BASE = {"d_model": 256, "n_layers": 4, "n_heads": 4, "n_kv_heads": 2, "qk_norm": True, "tie_embeddings": False}


@pytest.mark.parametrize("target", [3e6, 1e7, 1e8, 1e9, 3e9])
def test_shape_for_params_hits_target_with_stated_rules(target):
    shape = shape_for_params(target, BASE, aspect=64, head_dim=64)
    n = count_params(ModelConfig(**{**shape, "vocab_size": 1000})).non_embedding
    assert abs(math.log(n / target)) < 0.25  # widths step by one head dim
    assert shape["d_model"] % 64 == 0 and shape["n_heads"] == shape["d_model"] // 64
    assert shape["n_layers"] == max(1, round(shape["d_model"] / 64))
    assert shape["n_heads"] % shape["n_kv_heads"] == 0
    assert shape["qk_norm"] is True and shape["tie_embeddings"] is False  # other base keys kept


def test_shape_for_params_is_closest_width_and_monotonic():
    sizes = [shape_for_params(t, BASE)["d_model"] for t in (1e6, 1e7, 1e8, 1e9)]
    assert sizes == sorted(sizes) and len(set(sizes)) == 4
    shape = shape_for_params(5e7, BASE)
    n = model_params(shape)
    for d in (shape["d_model"] - 64, shape["d_model"] + 64):  # the neighbours are no closer
        assert abs(math.log(model_params(shape_for_width(d, BASE)) / 5e7)) >= abs(math.log(n / 5e7))


def test_defaults_keep_base_aspect_and_head_dim():
    shape = shape_for_width(512, BASE)  # base: aspect 256/4 = 64, head dim 64
    assert (shape["n_layers"], shape["n_heads"], shape["n_kv_heads"]) == (8, 8, 4)
    assert shape_for_width(512, BASE, depth=3)["n_layers"] == 3


def test_ffn_ratio_kept_when_base_sets_it():
    shape = shape_for_width(512, {**BASE, "ffn_hidden": 1024, "ffn_multiple_of": 128})
    assert shape["ffn_hidden"] == 2048
    assert "ffn_hidden" not in shape_for_width(512, BASE)  # 8/3 rule applies


def test_active_count_for_moe():
    moe = {**BASE, "moe": {"num_experts": 8, "top_k": 2}}
    total = shape_for_params(2e7, moe, count="non_embedding")
    active = shape_for_params(2e7, moe, count="active_non_embedding")
    assert active["d_model"] > total["d_model"]
    assert abs(math.log(model_params(active, "active_non_embedding") / 2e7)) < 0.3


def test_bad_inputs_raise_one_line_errors():
    with pytest.raises(RecipeError, match="sweep.scale.widths: 100 is not a positive multiple of head_dim=64"):
        shape_for_width(100, BASE)
    with pytest.raises(RecipeError, match="sweep.scale.params"):
        shape_for_params(-1, BASE)
    with pytest.raises(RecipeError, match="sweep.scale.head_dim"):
        shape_for_width(96, BASE, head_dim=3)
    with pytest.raises(RecipeError, match="unknown key model.d_modle"):
        shape_for_width(128, {"d_modle": 3})


def test_token_budgets_use_accounting():
    model = {**BASE, "vocab_size": 1000}
    n = count_params(ModelConfig(**model)).non_embedding
    assert tokens_for(model, 128, tokens_per_param=20) == round(20 * n)
    d = tokens_for(model, 128, flops=1e15)
    assert training_flops(ModelConfig(**model), 128, d) == pytest.approx(1e15, rel=1e-6)
    with pytest.raises(RecipeError, match="exactly one"):
        tokens_for(model, 128)
