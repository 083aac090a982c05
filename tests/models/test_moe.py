import json

import pytest
import torch
import torch.nn.functional as F

from windtunnel import Trainer
from windtunnel.accounting import count_params, flops_per_token
from windtunnel.models import build_model
from windtunnel.models import moe as moe_module
from windtunnel.models.moe import MoE, router_loss

D = 32


@pytest.fixture
def cfg(tiny_model_config):
    """cfg(model=None, **moe): a 3-layer MoE ModelConfig (4 experts, top-2, expert width 16)."""
    def make(model=None, **moe):
        m = {"num_experts": 4, "top_k": 2, "expert_hidden": 16, **moe}
        return tiny_model_config(max_seq_len=16, n_layers=3, moe=m, **(model or {}))
    return make


@pytest.fixture
def layer(cfg):
    def make(seed=0, **moe) -> MoE:
        torch.manual_seed(seed)
        return MoE(cfg(**moe))
    return make


def reference_moe(moe: MoE, x_BTD: torch.Tensor) -> torch.Tensor:
    """Slow, obvious per-expert loop over the same router decisions."""
    x = x_BTD.reshape(-1, x_BTD.size(-1))
    _, _, idx, weights = moe.route(x)
    out = torch.zeros_like(x)
    for e in range(moe.n_experts):
        tok, slot = (idx == e).nonzero(as_tuple=True)
        if tok.numel():
            gate, up = F.linear(x[tok], moe.experts.w_gate_up[e]).chunk(2, dim=-1)
            y = F.linear(F.silu(gate) * up, moe.experts.w_down[e])
            out = out.index_add(0, tok, y * weights[tok, slot, None])
    if moe.shared is not None:
        out = out + moe.shared(x)
    return out.view_as(x_BTD)


def skew_router(moe: MoE, x: torch.Tensor, strength: float = 4.0) -> None:
    """Make every token prefer expert 0 (then 1): a collapsed router to balance."""
    direction = x.reshape(-1, D).mean(0)
    with torch.no_grad():
        moe.router.weight.mul_(0.1)
        moe.router.weight[0] += strength * direction / direction.norm() ** 2
        moe.router.weight[1] += 0.5 * strength * direction / direction.norm() ** 2


def imbalance(moe: MoE, x: torch.Tensor) -> float:
    load = moe(x)[1]["load"]
    return float(load.max() / load.mean())


def aux_loss(moe: MoE, cfg, x: torch.Tensor) -> torch.Tensor:
    return router_loss(cfg, {0: moe(x)[1]})[0]


@pytest.mark.parametrize("moe", [
    {"shared_experts": 1, "first_dense": 1},
    {"every": 2, "expert_hidden": None},
    {"num_experts": 8, "top_k": 1, "shared_experts": 2, "every": 2, "first_dense": 1},
])
def test_param_counts_total_and_active(cfg, moe):
    c = cfg(**moe)
    model = build_model(c)
    counts = count_params(c)
    assert counts.total == sum(p.numel() for p in model.parameters())
    n_moe = len(c.moe_layers)
    assert n_moe == sum(b.is_moe for b in model.blocks) > 0
    expert = 3 * D * c.expert_dim
    assert counts.total - counts.active == n_moe * (c.moe.num_experts - c.moe.top_k) * expert


def test_flops_per_token_counts_active_experts_only(cfg, measured_flops_per_token):
    """Against torch's FLOP counter over one training step: the top-k experts' matmuls, not all experts'."""
    c = cfg(shared_experts=1, first_dense=1)
    measured = measured_flops_per_token(build_model(c), torch.randint(0, c.vocab_size, (2, 17)))
    assert measured == pytest.approx(flops_per_token(c, 16), rel=0.01)


@pytest.mark.parametrize("native", [False, True])
@pytest.mark.parametrize("moe", [{"shared_experts": 1}, {"top_k": 1, "router": "sigmoid"}, {"top_k": 3}])
def test_grouped_path_equals_per_expert_loop(layer, monkeypatch, native, moe):
    """The sorted grouped-GEMM path (custom-op fallback, or torch._grouped_mm which runs on CPU in fp32
    when rows are 16-byte aligned) equals an obvious per-expert loop, forward and backward."""
    if native:
        monkeypatch.setattr(moe_module, "fast_path_dtype", lambda x: x.dtype)
    m = layer(**moe)
    x = torch.randn(3, 7, D, requires_grad=True)
    skew_router(m, x, 1.0)  # uneven loads, some experts may be empty
    params = [x, m.router.weight, m.experts.w_gate_up, m.experts.w_down]
    y, ref = m(x)[0], reference_moe(m, x)
    torch.testing.assert_close(y, ref, atol=1e-5, rtol=1e-5)
    g = torch.randn_like(y)
    for a, b in zip(torch.autograd.grad(y, params, g), torch.autograd.grad(ref, params, g)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_router_scores_topk_and_fp32(layer):
    x = torch.randn(2, 5, D)
    for moe, norm in [({"top_k": 2}, True), ({"top_k": 1}, False), ({"router": "sigmoid", "top_k": 2}, True)]:
        m = layer(**moe)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits, scores, idx, w = m.route(x.reshape(-1, D).bfloat16())
        assert logits.dtype == w.dtype == torch.float32  # router kept in fp32 under autocast
        assert torch.equal(idx, scores.topk(m.top_k, -1).indices)
        if norm:
            torch.testing.assert_close(w.sum(-1), torch.ones(10))
        else:  # top-1 keeps the raw score so the router still gets a gradient from the LM loss
            torch.testing.assert_close(w, scores.gather(-1, idx))
    sig = layer(router="sigmoid")
    _, s, _, _ = sig.route(x.reshape(-1, D))
    assert (s > 0).all() and (s < 1).all() and not torch.allclose(s.sum(-1), torch.ones(10))


def test_load_balancing_loss_spreads_tokens(cfg, layer):
    torch.manual_seed(1)
    x = torch.randn(4, 16, D) + 1.0
    results = {}
    for coef in (0.0, 1.0):
        m = layer(load_balance_coef=coef, router_z_coef=0.0)
        skew_router(m, x)
        before = imbalance(m, x)
        opt = torch.optim.Adam(m.router.parameters(), lr=0.05)
        for _ in range(40):
            loss = aux_loss(m, cfg(load_balance_coef=coef, router_z_coef=0.0), x)
            if loss.requires_grad:
                loss.backward()
                opt.step()
                opt.zero_grad()
        results[coef] = (before, imbalance(m, x))
    assert results[0.0][0] == results[0.0][1]  # coef 0: no aux gradient, router unchanged
    assert results[1.0][0] == 2.0 and results[1.0][1] < 0.85 * results[1.0][0]  # 2.0: all on 2 of 4


def test_z_loss_shrinks_router_logits(cfg, layer):
    torch.manual_seed(1)
    x = torch.randn(4, 16, D)
    c = cfg(load_balance_coef=0.0, router_z_coef=0.1)
    m = layer(load_balance_coef=0.0, router_z_coef=0.1)
    with torch.no_grad():
        m.router.weight.mul_(20)
    z0 = float(m(x)[1]["z"])
    opt = torch.optim.Adam(m.router.parameters(), lr=0.05)
    for _ in range(20):
        aux_loss(m, c, x).backward()
        opt.step()
        opt.zero_grad()
    assert float(m(x)[1]["z"]) < 0.5 * z0
    off = cfg(load_balance_coef=0.0, router_z_coef=0.0)
    assert float(aux_loss(layer(), off, x)) == 0.0


def test_aux_free_bias_balances_without_gradient(layer):
    torch.manual_seed(1)
    x = torch.randn(4, 16, D) + 1.0
    m = layer(aux_free=True, bias_update_rate=0.02, load_balance_coef=0.0, router_z_coef=0.0)
    skew_router(m, x, strength=1.0)
    before = imbalance(m, x)
    m.load_counts.zero_()
    weights_before = m.router.weight.clone()
    for _ in range(60):
        with torch.no_grad():
            m(x)
        m.update_bias()
    assert torch.equal(m.router.weight, weights_before)  # outside the gradient
    assert imbalance(m, x) < 0.8 * before  # 2.0 (all on 2 of 4 experts) -> ~1.4
    assert abs(float(m.router_bias.mean())) < 1e-6  # mean-centred
    assert "router_bias" in m.state_dict() and "load_counts" not in m.state_dict()
    # The bias picks the experts; the combine weights are the unbiased scores of the picked ones.
    _, scores, idx, w = m.route(x.reshape(-1, D))
    assert torch.equal(idx, (scores + m.router_bias).topk(2, -1).indices)
    picked = scores.gather(-1, idx)
    torch.testing.assert_close(w, picked / picked.sum(-1, keepdim=True))
    # Loads are counted on device in training only, and reset by the update.
    m.update_bias()
    m.eval()
    m(x)
    assert float(m.load_counts.sum()) == 0
    m.train()
    m(x)
    assert float(m.load_counts.sum()) == x.shape[0] * x.shape[1] * 2


def test_model_loss_and_metrics(cfg):
    c = cfg(load_balance_coef=0.1, router_z_coef=0.01, first_dense=1)
    torch.manual_seed(0)
    model = build_model(c)
    ids = torch.randint(0, 61, (2, 13))
    out = model(ids[:, :-1], ids[:, 1:])
    m = out["metrics"]
    assert set(m) == {"ce", "moe_imbalance_1", "moe_imbalance_2", "moe_lb_loss", "moe_z_loss"}
    assert all(not v.requires_grad for v in m.values())
    _, router = model.run_blocks(ids[:, :-1])  # the statistics each MoE block returns
    assert sorted(router) == c.moe_layers == [1, 2]
    lb = sum(s["lb"] for s in router.values())
    z = sum(s["z"] for s in router.values())
    torch.testing.assert_close(out["loss"], m["ce"] + 0.1 * lb + 0.01 * z)
    torch.testing.assert_close(m["moe_lb_loss"], lb / 2)
    assert float(m["moe_imbalance_1"]) >= 1.0


def test_trainer_logs_moe_metrics_and_updates_bias(tmp_path, tiny_recipe, token_batches):
    recipe = tiny_recipe(model={"moe": {"num_experts": 4, "top_k": 2, "expert_hidden": 16, "aux_free": True}},
                         train={"steps": 3, "seq_len": 12, "eval_every": 3})
    data = token_batches(61, n=3, seq_len=12)
    trainer = Trainer(recipe, train_data=data, val_data=data[:1], out_dir=tmp_path)
    summary = trainer.fit()
    model = trainer.accelerator.unwrap_model(trainer.model)
    assert all(float(b.mlp.router_bias.abs().sum()) > 0 for b in model.blocks)  # after_optimizer_step ran
    assert all(float(b.mlp.load_counts.sum()) == 0 for b in model.blocks)
    row = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])
    assert {"moe_imbalance_0", "moe_imbalance_1", "moe_lb_loss", "moe_z_loss"} <= row.keys()
    assert summary["active_params"] < summary["params"]


@pytest.fixture
def fresh_dynamo():
    """Dynamo caches per code object (and turns dims dynamic on recompiles): keep other tests unaffected."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.slow
def test_compiles_without_graph_breaks(cfg, fresh_dynamo):
    """One full training step (forward + backward) traces as a single graph (aot_eager: no C++ build)."""
    torch.manual_seed(0)
    model = build_model(cfg(shared_experts=1, first_dense=1, aux_free=True))
    ids = torch.randint(0, 61, (2, 9))
    explained = torch._dynamo.explain(model)(ids[:, :-1], ids[:, 1:])
    assert explained.graph_break_count == 0 and explained.graph_count == 1
    model.blocks[1].mlp.load_counts.zero_()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    out = compiled(ids[:, :-1], ids[:, 1:])
    out["loss"].backward()
    assert float(model.blocks[1].mlp.load_counts.sum()) == 2 * 8 * 2  # buffer update survives compile
    ref = model(ids[:, :-1], ids[:, 1:])
    torch.testing.assert_close(out["loss"], ref["loss"])
    assert model.blocks[1].mlp.experts.w_down.grad is not None
