"""muP rules (windtunnel.mup): roles by name, SP unchanged, muP == SP at the base width, each rule's scaling,
names through wrappers, and the effective per-group LR with schedules and after resume."""
import dataclasses
import math

import pytest
import torch
from torch import nn

from windtunnel import Recipe, Trainer, mup
from windtunnel.consolidate import canonical_name
from windtunnel.models import build_model
from windtunnel.optim import build_optimizer, param_groups, set_lr
from windtunnel.schedules import Schedule
from windtunnel.trainer import Callback

BASE = 32


def recipe(d_model=BASE, par="mup", tie=True, **extra):
    model = {"vocab_size": 64, "max_seq_len": 16, "d_model": d_model, "n_heads": 2, "n_kv_heads": 1,
             "n_layers": 2, "tie_embeddings": tie, "qk_norm": True, "parameterization": par,
             "init_std": 0.02, "mup": {"base_width": BASE, **extra.pop("mup", {})}, **extra.pop("model", {})}
    return Recipe.from_dict({"model": model, "optim": {"lr": 0.01, "weight_decay": 0.1},
                             "train": {"steps": 12, "batch_size": 4, "seq_len": 16, "eval_every": 100,
                                       "ckpt_every": 4, "threads": 1, **extra.pop("train", {})},
                             "schedule": extra.pop("schedule", {"name": "wsd", "warmup_steps": 2}),
                             "logging": {"log_every": 1, "progress": False}})


def seeded_model(r):
    torch.manual_seed(0)
    return build_model(r.model)


def group_of(opt, model):
    """name -> the optimizer group (dict) holding that parameter."""
    by_id = {id(p): g for g in opt.param_groups for p in g["params"]}
    return {n: by_id[id(p)] for n, p in model.named_parameters()}


# ----------------------------------------------------------------------------- names and roles


@pytest.mark.parametrize("wrapped", [
    "module._orig_mod.blocks.0.attn.wqkv.weight", "_orig_mod.module.blocks.0.attn.wqkv.weight",
    "module.blocks.0._fsdp_wrapped_module._checkpoint_wrapped_module.attn.wqkv.weight",
    "blocks.0._orig_mod.attn.wqkv.weight"])
def test_canonical_name_strips_wrapper_prefixes(wrapped):
    assert canonical_name(wrapped) == "blocks.0.attn.wqkv.weight"


def test_roles_of_every_transformer_parameter():
    roles = {n: mup.param_role(n, tuple(p.shape)) for n, p in seeded_model(recipe(tie=False)).named_parameters()}
    assert roles["embed.weight"] == "input" and roles["head.weight"] == "readout"
    vectors = {n for n, r in roles.items() if r == "vector"}
    assert vectors == {n for n in roles if n.endswith("norm.weight")}  # includes q_norm / k_norm gains
    hidden = {n for n, r in roles.items() if r == "hidden"}
    assert hidden == {f"blocks.{i}.{m}.weight" for i in range(2)
                      for m in ("attn.wqkv", "attn.wo", "mlp.w_gate_up", "mlp.w_down")}


@pytest.mark.parametrize("style", ["parallel", "sequential"])
def test_roles_of_every_moe_and_mtp_parameter(style):
    """Every parameter an MoE + MTP model creates: routers fixed-fan-out, experts/heads/projections hidden,
    gains vector; the untied head is the only readout (the MTP heads read out through it)."""
    r = recipe(tie=False, model={"moe": {"num_experts": 4, "top_k": 2, "shared_experts": 1},
                                 "mtp": {"n_future": 3, "style": style}})
    roles = {n: mup.param_role(n, tuple(p.shape)) for n, p in seeded_model(r).named_parameters()}
    by_role = {role: {n for n, x in roles.items() if x == role} for role in set(roles.values())}
    assert by_role["router"] == {"blocks.0.mlp.router.weight", "blocks.1.mlp.router.weight"}
    assert by_role["readout"] == {"head.weight"} and by_role["input"] == {"embed.weight"}
    assert by_role["vector"] == {n for n in roles if n.endswith("norm.weight")}
    hidden = by_role["hidden"]
    assert {"blocks.0.mlp.experts.w_gate_up", "blocks.1.mlp.experts.w_down", "blocks.0.mlp.shared.w_down.weight",
            "mtp.heads.1.block.attn.wqkv.weight", "mtp.heads.0.block.mlp.w_down.weight"} <= hidden
    assert ("mtp.heads.0.proj.weight" in hidden) == (style == "sequential")
    assert mup.param_role("blocks.1.mlp.router.bias", (8,)) == mup.param_role("head.bias", (64,)) == "vector"


def test_rules_on_a_real_moe_model():
    r = recipe(d_model=4 * BASE, model={"moe": {"num_experts": 8, "top_k": 2, "shared_experts": 1}})
    model = seeded_model(r)
    rows = {row["name"]: row for row in mup.describe(model, r.model)}
    assert rows["blocks.0.mlp.router.weight"]["role"] == "router"
    for name in ("blocks.0.mlp.experts.w_gate_up", "blocks.0.mlp.shared.w_down.weight"):
        assert rows[name]["role"] == "hidden"
    assert rows["blocks.0.mlp.experts.w_down"]["lr_mult"] == 0.25
    router = model.blocks[0].mlp.router.weight
    assert router.std().item() == pytest.approx(0.02 / 4, rel=0.1)


# ----------------------------------------------------------------------------- SP and the base width


def test_sp_rules_are_standard_and_ignore_mup_knobs():
    knobs = {"input_mult": 3.0, "output_mult": 5.0, "attn_mult": 2.0, "base_head_dim": 4}
    cfg = recipe(d_model=128, par="sp", mup=knobs).model
    assert mup.attention_scale(cfg) == 1 / math.sqrt(64)
    assert mup.embedding_multiplier(cfg) == mup.logit_multiplier(cfg) == 1.0
    for name, shape in [("blocks.0.attn.wqkv.weight", (256, 128)), ("embed.weight", (64, 128)),
                        ("blocks.0.mlp.router.weight", (4, 128)), ("norm.weight", (128,))]:
        assert mup.lr_multiplier(name, shape, cfg) == mup.eps_multiplier(name, shape, cfg) == 1.0
        assert mup.weight_decay_multiplier(name, shape, cfg) == 1.0
    assert mup.init_std("blocks.0.attn.wqkv.weight", (256, 128), cfg) == 0.02
    assert mup.init_std("blocks.0.attn.wo.weight", (128, 128), cfg) == 0.02 / 2  # 1/sqrt(2L), L=2
    assert mup.init_std("norm.weight", (128,), cfg) is None


@pytest.mark.parametrize("tie", [True, False])
def test_mup_at_base_width_reproduces_sp_exactly(tie):
    sp, mu = recipe(par="sp", tie=tie), recipe(par="mup", tie=tie)
    m_sp, m_mu = seeded_model(sp), seeded_model(mu)
    assert m_sp.blocks[0].attn.scale == m_mu.blocks[0].attn.scale
    for (n, a), (_, b) in zip(m_sp.state_dict().items(), m_mu.state_dict().items()):
        assert torch.equal(a, b), n
    x = torch.randint(0, 64, (2, 16))
    assert torch.equal(m_sp(x), m_mu(x))
    g_sp, g_mu = param_groups(m_sp, sp), param_groups(m_mu, mu)
    strip = [[{k: v for k, v in g.items() if k != "params"} for g in gs] for gs in (g_sp, g_mu)]
    assert strip[0] == strip[1]
    assert [len(g["params"]) for g in g_sp] == [len(g["params"]) for g in g_mu]


# ----------------------------------------------------------------------------- each rule at 4x width


def test_hidden_init_variance_scales_as_base_over_width():
    r_base, r_wide = recipe(d_model=BASE * 8), recipe(d_model=BASE * 8, par="sp")
    std_mup = seeded_model(r_base).blocks[0].attn.wqkv.weight.std().item()
    std_sp = seeded_model(r_wide).blocks[0].attn.wqkv.weight.std().item()
    assert std_mup == pytest.approx(0.02 / math.sqrt(8), rel=0.03)
    assert std_sp == pytest.approx(0.02, rel=0.03)
    wide = seeded_model(r_base)
    assert wide.embed.weight.std().item() == pytest.approx(0.02, rel=0.03)  # input weights: unscaled
    assert torch.equal(wide.norm.weight, torch.ones(BASE * 8))


def test_multipliers_at_four_times_base_width():
    cfg = recipe(d_model=4 * BASE).model
    hidden, router = ("blocks.0.mlp.w_down.weight", (128, 384)), ("blocks.0.mlp.router.weight", (8, 128))
    assert mup.width_mult(cfg) == 4.0
    assert mup.lr_multiplier(*hidden, cfg) == 0.25 and mup.eps_multiplier(*hidden, cfg) == 0.25
    assert mup.weight_decay_multiplier(*hidden, cfg) == 4.0
    for name in ("embed.weight", "head.weight", "norm.weight"):
        shape = (128,) if name == "norm.weight" else (64, 128)
        assert mup.lr_multiplier(name, shape, cfg) == 1.0 and mup.weight_decay_multiplier(name, shape, cfg) == 1.0
        assert mup.eps_multiplier(name, shape, cfg) == 0.25
    assert mup.init_std("head.weight", (64, 128), cfg) == 0.02  # readout: constant init, 1/width multiplier
    assert mup.init_std(*router, cfg) == 0.02 / 4  # router (Table 3 form): init ~ 1/width
    assert mup.lr_multiplier(*router, cfg) == 0.25 and mup.eps_multiplier(*router, cfg) == 1.0
    assert mup.init_std(*hidden, cfg) == pytest.approx(0.02 / 2 / 2)  # 1/sqrt(2L) and 1/sqrt(width_mult)


def test_forward_multipliers_reach_the_model():
    r = recipe(d_model=4 * BASE, mup={"output_mult": 2.0, "input_mult": 3.0, "attn_mult": 0.5})
    model = seeded_model(r)
    assert model.logit_mult == 2.0 / 4 and model.embed_mult == 3.0
    # heads fixed: head dim 16 -> 64; scale = attn_mult * sqrt(16) / 64 (1/d, equal to SP at the base)
    assert model.blocks[0].attn.scale == pytest.approx(0.5 * 4 / 64)
    x = torch.randint(0, 64, (2, 16))
    h = model.norm(model.trunk(x))
    assert torch.allclose(model(x), (h @ model.embed.weight.t()) * 0.5)  # tied readout shares embed.weight


def test_base_head_dim_for_fixed_head_dim_scaling():
    cfg = recipe(d_model=4 * BASE, mup={"base_head_dim": 64}).model  # heads grew, head dim stayed 64
    assert mup.attention_scale(cfg) == pytest.approx(1 / math.sqrt(64))


@pytest.mark.parametrize("key,value", [("output_mult", 0.0), ("attn_mult", -1.0), ("base_head_dim", -4)])
def test_bad_mup_values_name_the_key(key, value):
    with pytest.raises(ValueError, match=f"model.mup.{key}"):  # the recipe (a RecipeError) ...
        recipe(d_model=64, mup={key: value})
    cfg = dataclasses.replace(recipe(d_model=64).model)
    setattr(cfg.mup, key, value)
    with pytest.raises(ValueError, match=f"model.mup.{key}"):  # ... and a hand-built ModelConfig
        mup.width_mult(cfg)


# ----------------------------------------------------------------------------- wrappers, schedules, resume


class DDPLike(nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.module = inner


def test_wrapped_names_give_the_same_groups():
    r = recipe(d_model=4 * BASE, tie=False)
    model = seeded_model(r)
    plain = [(g["lr_mult"], g["eps"], g["weight_decay"], len(g["params"])) for g in param_groups(model, r)]
    for wrapped in (torch.compile(model), DDPLike(model), DDPLike(torch.compile(model))):
        names = [n for n, _ in wrapped.named_parameters()]
        assert names[0].startswith(("_orig_mod.", "module."))
        got = [(g["lr_mult"], g["eps"], g["weight_decay"], len(g["params"])) for g in param_groups(wrapped, r)]
        assert got == plain
    assert {m for m, *_ in plain} == {1.0, 0.25}


@pytest.mark.parametrize("schedule", [
    {"name": "wsd", "warmup_steps": 2, "wsd": {"decay_frac": 0.5, "decay_shape": "1-sqrt"}},
    {"name": "power", "warmup_steps": 2, "power": {"a": 4.6, "b": -0.51, "lr_max": 0.02, "decay_frac": 0.3}}])
def test_schedule_multiplies_each_groups_scaled_lr(schedule):
    r = recipe(d_model=4 * BASE, schedule=schedule)
    model = seeded_model(r)
    opt = build_optimizer(model, r)
    sched = Schedule.from_recipe(r)
    groups = group_of(opt, model)
    seen = set()
    for step in range(r.train.steps):
        set_lr(opt, sched(step))
        for name, p in model.named_parameters():
            mult = mup.lr_multiplier(name, tuple(p.shape), r.model)
            assert groups[name]["lr"] == pytest.approx(sched(step) * mult, rel=1e-12)
            seen.add(mult)
    assert seen == {1.0, 0.25} and sched(0) != sched(r.train.steps - 1)


class RecordLRs(Callback):
    def __init__(self, crash_at=None):
        self.crash_at, self.rows = crash_at, {}

    def on_step_end(self, trainer, step, row):
        groups = group_of(trainer.optimizer, trainer.model)
        self.rows[step] = {n: (g["lr"], g["lr_mult"], g["eps"], g["weight_decay"]) for n, g in groups.items()}
        if step == self.crash_at:
            raise KeyboardInterrupt


def token_batches(n=12):
    g = torch.Generator().manual_seed(0)
    return [torch.randint(0, 64, (4, 17), generator=g) for _ in range(n)]


def test_effective_group_lr_after_resume(tmp_path):
    r = recipe(d_model=2 * BASE, schedule={"name": "wsd", "warmup_steps": 2, "wsd": {"decay_frac": 0.5}})
    first, second = RecordLRs(crash_at=6), RecordLRs()
    with pytest.raises(KeyboardInterrupt):
        Trainer(r, train_data=token_batches(), out_dir=tmp_path, callbacks=[first]).fit()
    trainer = Trainer(r, train_data=token_batches(), out_dir=tmp_path, resume=True, callbacks=[second])
    trainer.fit()
    assert min(second.rows) == 5  # resumed from the step-4 checkpoint
    sched = Schedule.from_recipe(r)
    for step, rows in second.rows.items():
        for name, (lr, lr_mult, eps, wd) in rows.items():
            shape = tuple(dict(trainer.model.named_parameters())[name].shape)
            assert lr_mult == mup.lr_multiplier(name, shape, r.model)
            assert lr == pytest.approx(sched(step - 1) * lr_mult, rel=1e-12)
            assert eps == pytest.approx(r.optim.eps * mup.eps_multiplier(name, shape, r.model))
            if step in first.rows:
                assert (lr, lr_mult, eps, wd) == first.rows[step][name]
    assert {v[1] for v in second.rows[12].values()} == {1.0, 0.5}


# ----------------------------------------------------------------------------- tunable constants, depth, init


@pytest.mark.parametrize("rule", ["none", "completep", "sqrt"])
@pytest.mark.parametrize("init_std", [0.02, None])
def test_base_width_and_base_depth_equal_sp_bitwise_for_every_depth_rule(rule, init_std):
    sp = recipe(par="sp", tie=False, model={"init_std": init_std})
    mu = recipe(par="mup", tie=False, model={"init_std": init_std}, mup={"depth_rule": rule, "base_depth": 2})
    m_sp, m_mu = seeded_model(sp), seeded_model(mu)
    x = torch.randint(0, 64, (2, 16))
    assert torch.equal(m_sp(x), m_mu(x))
    o_sp, o_mu = build_optimizer(m_sp, sp), build_optimizer(m_mu, mu)
    keys = ("lr", "eps", "weight_decay")
    assert [[g[k] for k in keys] for g in o_sp.param_groups] == [[g[k] for k in keys] for g in o_mu.param_groups]


@pytest.mark.parametrize("rule,branch,depth_lr", [("completep", 0.25, 1.0), ("sqrt", 0.5, 0.5), ("none", 1.0, 1.0)])
def test_depth_rule_scales_residual_branches_lr_eps_and_freezes_residual_init(rule, branch, depth_lr):
    r = recipe(d_model=2 * BASE, tie=False, model={"n_layers": 8}, mup={"depth_rule": rule, "base_depth": 2})
    cfg, model = r.model, seeded_model(r)
    block = model.blocks[3]
    assert block.branch_mult == mup.residual_multiplier(cfg) == branch
    x = torch.randn(2, 16, 2 * BASE)
    cos, sin = model.rope_cos[:16], model.rope_sin[:16]
    h = x + branch * block.attn(block.attn_norm(x), cos, sin)
    assert torch.allclose(block(x, cos, sin)[0], h + branch * block.mlp(block.mlp_norm(h)), atol=1e-6)
    wqkv, norm = ("blocks.3.attn.wqkv.weight", (96, 64)), ("blocks.3.attn_norm.weight", (64,))
    assert mup.lr_multiplier(*wqkv, cfg) == pytest.approx(depth_lr / 2)  # width 2x base: 1/2
    assert mup.lr_multiplier(*norm, cfg) == pytest.approx(depth_lr)
    assert mup.lr_multiplier("embed.weight", (64, 64), cfg) == 1.0  # outside the blocks: no depth rule
    assert mup.eps_multiplier(*wqkv, cfg) == pytest.approx(branch / 2)
    assert mup.eps_multiplier("head.weight", (64, 64), cfg) == 0.5
    frozen = 2 if rule != "none" else 8  # the branch multiplier, not the init, does the depth scaling
    assert mup.init_std("blocks.3.attn.wo.weight", (64, 64), cfg) == pytest.approx(0.02 / math.sqrt(2 * frozen)
                                                                                   / math.sqrt(2))


def test_sp_ignores_depth_rule():
    cfg = recipe(par="sp", model={"n_layers": 8}, mup={"depth_rule": "completep", "base_depth": 2}).model
    assert mup.residual_multiplier(cfg) == 1.0 and seeded_model(recipe(par="sp")).blocks[0].branch_mult == 1.0
    assert mup.lr_multiplier("blocks.0.attn_norm.weight", (32,), cfg) == 1.0


def test_group_lr_multipliers_reach_the_optimizer_groups():
    consts = {"embed_lr_mult": 2.0, "hidden_lr_mult": 3.0, "readout_lr_mult": 5.0, "vector_lr_mult": 7.0}
    r = recipe(d_model=4 * BASE, tie=False, mup=consts)
    model = seeded_model(r)
    groups = group_of(build_optimizer(model, r), model)
    expect = {"embed.weight": 2.0, "blocks.0.attn.wqkv.weight": 3.0 / 4, "blocks.1.mlp.w_down.weight": 3.0 / 4,
              "head.weight": 5.0, "norm.weight": 7.0, "blocks.0.attn.q_norm.weight": 7.0}
    for name, mult in expect.items():
        assert groups[name]["lr"] == pytest.approx(0.01 * mult), name
    assert groups["blocks.0.attn.wqkv.weight"]["weight_decay"] == pytest.approx(0.1 * 4)  # width rule only
    sp = recipe(d_model=4 * BASE, par="sp", tie=False, mup=consts)
    assert {g["lr"] for g in build_optimizer(seeded_model(sp), sp).param_groups} == {0.01}  # ignored under SP


def test_width_aware_default_init_std():
    from windtunnel.recipe import INIT_GAIN

    sp = seeded_model(recipe(d_model=8 * BASE, par="sp", model={"init_std": None}))
    mu = seeded_model(recipe(d_model=8 * BASE, model={"init_std": None}))
    fan_in = 8 * BASE
    for model in (sp, mu):  # hidden matrices: INIT_GAIN / sqrt(fan_in) in both (muP: the width-scaled form)
        assert model.blocks[0].attn.wqkv.weight.std().item() == pytest.approx(INIT_GAIN / math.sqrt(fan_in),
                                                                               rel=0.03)
    assert sp.embed.weight.std().item() == pytest.approx(INIT_GAIN / math.sqrt(fan_in), rel=0.03)
    assert mu.embed.weight.std().item() == pytest.approx(INIT_GAIN / math.sqrt(BASE), rel=0.03)  # base width
    explicit = recipe(d_model=8 * BASE, par="sp", model={"init_std": 0.1}).model
    assert explicit.base_init_std == 0.1 and mup.init_std("embed.weight", (64, 256), explicit) == 0.1


@pytest.mark.parametrize("key,value", [("mup.hidden_lr_mult", 0.0), ("mup.embed_lr_mult", -1.0),
                                       ("mup.base_depth", 0), ("init_std", -0.02)])
def test_bad_constants_name_the_key(key, value):
    from windtunnel.recipe import RecipeError

    with pytest.raises(RecipeError, match=f"model.{key}"):
        if key.startswith("mup."):
            recipe(mup={key.split(".")[1]: value})
        else:
            recipe(model={key: value})
