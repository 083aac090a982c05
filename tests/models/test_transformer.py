import pytest
import torch
import torch.nn.functional as F

from windtunnel.accounting import count_params, flops_per_token
from windtunnel.models import BlockModel, build_model
from windtunnel.recipe import RecipeError


@pytest.fixture
def cfg(tiny_model_config):
    """cfg(**model): a 2-layer d=64 ModelConfig with vocabulary 97."""
    return lambda **model: tiny_model_config(**{"vocab_size": 97, "d_model": 64, **model})


@pytest.mark.parametrize("kv", [4, 2, 1])  # MHA, GQA, MQA
@pytest.mark.parametrize("tie", [True, False])
def test_param_count_matches_model(cfg, kv, tie):
    c = cfg(n_kv_heads=kv, tie_embeddings=tie, qk_norm=kv == 2)
    model = build_model(c)
    counts = count_params(c)
    assert counts.total == sum(p.numel() for p in model.parameters())
    emb = 97 * 64
    assert counts.non_embedding == counts.total - emb - (0 if tie else emb)
    assert model.blocks[0].attn.wqkv.weight.shape[0] == (4 + 2 * kv) * 16


@pytest.mark.parametrize("model", [{"tie_embeddings": False}, {"n_kv_heads": 2, "qk_norm": True}])
def test_flops_per_token_matches_counted_matmuls(cfg, measured_flops_per_token, model):
    """accounting's 6N + 12 L d T against torch's FLOP counter over one real training step."""
    c = cfg(**model)
    measured = measured_flops_per_token(build_model(c), torch.randint(0, 97, (2, 33)))
    assert measured == pytest.approx(flops_per_token(c, 32), rel=0.01)


def test_causal_no_future_leak(cfg):
    torch.manual_seed(0)
    model = build_model(cfg(n_kv_heads=2)).eval()
    x = torch.randint(0, 97, (1, 16))
    y = x.clone()
    y[0, 10:] = (y[0, 10:] + 1) % 97
    la, lb = model(x), model(y)
    assert torch.allclose(la[0, :10], lb[0, :10], atol=1e-6)
    assert not torch.allclose(la[0, 10:], lb[0, 10:])


def test_gqa_equals_mha_with_repeated_kv(cfg):
    """GQA through SDPA equals MHA where each kv head is repeated for its query group."""
    torch.manual_seed(0)
    gqa = build_model(cfg(n_kv_heads=2)).eval()
    mha = build_model(cfg(n_kv_heads=4)).eval()
    sd = gqa.state_dict()
    for i in range(2):
        w = sd[f"blocks.{i}.attn.wqkv.weight"]
        q, k, v = w.split([64, 32, 32])
        rep = lambda t: t.view(2, 16, 64).repeat_interleave(2, dim=0).reshape(64, 64)
        sd[f"blocks.{i}.attn.wqkv.weight"] = torch.cat([q, rep(k), rep(v)])
    mha.load_state_dict(sd)
    x = torch.randint(0, 97, (2, 12))
    assert torch.allclose(gqa(x), mha(x), atol=1e-5)


def test_loss_is_cross_entropy_and_z_loss_adds(cfg):
    torch.manual_seed(0)
    model = build_model(cfg())
    x = torch.randint(0, 97, (2, 17))
    out = model(x[:, :-1], x[:, 1:])
    ref = F.cross_entropy(model(x[:, :-1]).reshape(-1, 97), x[:, 1:].reshape(-1))
    assert torch.allclose(out["loss"], ref, atol=1e-5) and torch.allclose(out["metrics"]["ce"], ref, atol=1e-5)
    model.cfg = cfg(z_loss=1e-2)
    z = model(x[:, :-1], x[:, 1:])
    lse = torch.logsumexp(model(x[:, :-1]), -1)
    assert torch.allclose(z["loss"], ref + 1e-2 * lse.square().mean(), atol=1e-5)


def test_rope_theta_and_qk_norm_change_outputs(cfg):
    torch.manual_seed(0)
    a = build_model(cfg())
    torch.manual_seed(0)
    b = build_model(cfg(rope_theta=500.0))
    x = torch.randint(0, 97, (1, 16))
    assert not torch.allclose(a(x), b(x))
    qk = build_model(cfg(qk_norm=True))
    assert qk.blocks[0].attn.q_norm is not None and a.blocks[0].attn.q_norm is None


def test_tied_embeddings_share_storage(cfg):
    model = build_model(cfg(tie_embeddings=True))
    assert model.head is None and model.readout_weight is model.embed.weight
    assert build_model(cfg(tie_embeddings=False)).head is not None


def test_transformer_declares_its_blocks(cfg):
    model = build_model(cfg())
    assert isinstance(model, BlockModel) and all(isinstance(b, model.block_types) for b in model.blocks)


def test_registry_custom_arch_and_unknown_name(cfg, model_registry):
    @model_registry("tiny_test_arch")
    def build(c):
        return torch.nn.Linear(2, 2)

    assert isinstance(build_model(cfg(arch="tiny_test_arch")), torch.nn.Linear)
    with pytest.raises(RecipeError, match="unknown architecture 'nope'"):
        build_model(cfg(arch="nope"))


def test_structure_rules_live_on_the_model_config(cfg):
    c = cfg(n_layers=5, moe={"num_experts": 4, "first_dense": 1, "every": 2})
    assert c.moe_layers == [1, 3] and [b.is_moe for b in build_model(c).blocks] == [False, True, False, True, False]
    assert c.expert_dim == c.ffn_dim == 192  # 8/3 * 64 rounded up to a multiple of 64
    assert cfg(moe={"num_experts": 4, "expert_hidden": 16}).expert_dim == 16
    assert c.dense().moe_layers == [] and c.moe_layers == [1, 3]  # a copy; the original keeps its experts
    assert (c.kv_heads, cfg(n_kv_heads=1).kv_heads, c.mtp_depths) == (4, 1, 0)
