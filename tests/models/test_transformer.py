import pytest
import torch
import torch.nn.functional as F

from windtunnel.accounting import count_params, flops_per_token
from windtunnel.models import build_model, register_model
from windtunnel.recipe import Recipe, RecipeError


def cfg(**model):
    base = {"vocab_size": 97, "max_seq_len": 32, "d_model": 64, "n_heads": 4, "n_layers": 2}
    return Recipe.from_dict({"train": {"steps": 1}, "model": {**base, **model}}).model


@pytest.mark.parametrize("kv", [4, 2, 1])  # MHA, GQA, MQA
@pytest.mark.parametrize("tie", [True, False])
def test_param_count_matches_model(kv, tie):
    c = cfg(n_kv_heads=kv, tie_embeddings=tie, qk_norm=kv == 2)
    model = build_model(c)
    counts = count_params(c)
    assert counts.total == sum(p.numel() for p in model.parameters())
    emb = 97 * 64
    assert counts.non_embedding == counts.total - emb - (0 if tie else emb)
    assert model.blocks[0].attn.wqkv.weight.shape[0] == (4 + 2 * kv) * 16


def test_flops_per_token_formula():
    c = cfg(tie_embeddings=False)
    n = count_params(c)
    # 6 * (non-embedding + unembedding matmul) + 12 * L * d * T, as in the H100 baselines.
    assert flops_per_token(c, 32) == 6 * (n.non_embedding + 97 * 64) + 12 * 2 * 64 * 32


def test_causal_no_future_leak():
    torch.manual_seed(0)
    model = build_model(cfg(n_kv_heads=2)).eval()
    x = torch.randint(0, 97, (1, 16))
    y = x.clone()
    y[0, 10:] = (y[0, 10:] + 1) % 97
    la, lb = model(x), model(y)
    assert torch.allclose(la[0, :10], lb[0, :10], atol=1e-6)
    assert not torch.allclose(la[0, 10:], lb[0, 10:])


def test_gqa_equals_mha_with_repeated_kv():
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


def test_loss_is_cross_entropy_and_z_loss_adds():
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


def test_rope_theta_and_qk_norm_change_outputs():
    torch.manual_seed(0)
    a = build_model(cfg())
    torch.manual_seed(0)
    b = build_model(cfg(rope_theta=500.0))
    x = torch.randint(0, 97, (1, 16))
    assert not torch.allclose(a(x), b(x))
    qk = build_model(cfg(qk_norm=True))
    assert qk.blocks[0].attn.q_norm is not None and a.blocks[0].attn.q_norm is None


def test_tied_embeddings_share_storage():
    model = build_model(cfg(tie_embeddings=True))
    assert model.head is None and model.readout_weight is model.embed.weight
    assert build_model(cfg(tie_embeddings=False)).head is not None


def test_registry_custom_arch_and_unknown_name():
    @register_model("tiny_test_arch")
    def build(c):
        return torch.nn.Linear(2, 2)

    assert isinstance(build_model(cfg(arch="tiny_test_arch")), torch.nn.Linear)
    with pytest.raises(RecipeError, match="unknown architecture 'nope'"):
        build_model(cfg(arch="nope"))
