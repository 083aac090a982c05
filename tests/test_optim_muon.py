"""optim.name=muon: which parameters Muon takes, agreement with torch.optim.Muon / AdamW, per-matrix
orthogonalisation of fused QKV and MoE experts, every knob, muP width scaling, exact resume, recipe checks."""
import copy as copy_module
import json
import math

import pytest
import torch

from windtunnel import Recipe, Trainer
from windtunnel.coord_check import coord_check, spread
from windtunnel.models import build_model
from windtunnel.optim import MuonAdamW, build_optimizer, param_groups, set_lr
from windtunnel.recipe import RecipeError
from windtunnel.trainer import Callback


def recipe(model=None, muon=None, **optim):
    return Recipe.from_dict({
        "train": {"steps": 1},
        "optim": {"name": "muon", "lr": 0.01, "weight_decay": 0.1, "muon": muon or {}, **optim},
        "model": {"vocab_size": 50, "max_seq_len": 16, "d_model": 32, "n_heads": 4, "n_kv_heads": 2,
                  "n_layers": 1, "tie_embeddings": False, **(model or {})}})


def routed(r):
    model = build_model(r.model)
    ids = {id(p): n for n, p in model.named_parameters()}
    return model, {ids[id(p)]: g for g in param_groups(model, r) for p in g["params"]}


def test_muon_takes_hidden_matrices_and_experts_adamw_the_rest():
    _, groups = routed(recipe(model={"moe": {"num_experts": 4, "top_k": 2}}))
    muon = {n for n, g in groups.items() if g["muon"]}
    assert muon == {"blocks.0.attn.wqkv.weight", "blocks.0.attn.wo.weight",
                    "blocks.0.mlp.experts.w_gate_up", "blocks.0.mlp.experts.w_down"}
    for name in ("embed.weight", "head.weight", "norm.weight", "blocks.0.mlp.router.weight"):
        assert not groups[name]["muon"], name
    assert groups["blocks.0.attn.wqkv.weight"]["split"] == [32, 16, 16]  # Q, K, V with 2 of 4 kv heads
    hidden = groups["blocks.0.mlp.experts.w_gate_up"]["split"]
    assert len(hidden) == 2 and hidden[0] == hidden[1]  # gate and up halves
    assert groups["blocks.0.attn.wo.weight"]["split"] == []


def test_adamw_recipe_groups_are_unchanged():
    _, groups = routed(recipe(name="adamw"))
    assert all("muon" not in g and "split" not in g for g in groups.values())


def twin(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = torch.nn.Parameter(torch.randn(*shape, generator=g))
    return a, torch.nn.Parameter(a.detach().clone())


def test_plain_matrix_matches_torch_muon_and_rest_matches_adamw():
    w, w_ref = twin(24, 40)
    b, b_ref = twin(8)
    opt = MuonAdamW([{"params": [w], "muon": True}, {"params": [b]}], lr=0.02, weight_decay=0.1)
    ref = torch.optim.Muon([w_ref], lr=0.02, weight_decay=0.1, adjust_lr_fn="match_rms_adamw")
    ref_adam = torch.optim.AdamW([b_ref], lr=0.02, weight_decay=0.1)
    for step in range(4):
        for p, q in ((w, w_ref), (b, b_ref)):
            p.grad = torch.randn(p.shape, generator=torch.Generator().manual_seed(step))
            q.grad = p.grad.clone()
        for o in (opt, ref, ref_adam):
            o.step()
    torch.testing.assert_close(w, w_ref, rtol=0, atol=1e-6)  # torch adds the bf16 update unscaled
    assert torch.equal(b, b_ref)
    assert set(opt.state[w]) == {"momentum_buffer"} and "exp_avg" in opt.state[b]


def test_fused_qkv_and_experts_are_orthogonalised_per_matrix():
    fused, _ = twin(2, 12, 8)  # two experts, each [q 6 | k 3 | v 3] rows
    blocks = [(e, a, b) for e in range(2) for a, b in ((0, 6), (6, 9), (9, 12))]
    parts = [torch.nn.Parameter(fused.detach()[e, a:b].clone()) for e, a, b in blocks]
    opt = MuonAdamW([{"params": [fused], "muon": True, "split": [6, 3, 3]}], lr=0.05, weight_decay=0.1)
    ref = torch.optim.Muon(parts, lr=0.05, weight_decay=0.1, adjust_lr_fn="match_rms_adamw")
    for step in range(3):
        fused.grad = torch.randn(fused.shape, generator=torch.Generator().manual_seed(step))
        for p, (e, a, b) in zip(parts, blocks):
            p.grad = fused.grad[e, a:b].clone()
        opt.step()
        ref.step()
    whole = torch.stack([torch.cat(parts[e * 3:e * 3 + 3]) for e in range(2)])
    torch.testing.assert_close(fused.detach(), whole.detach(), rtol=0, atol=1e-6)


def one_update(**kw):
    w, _ = twin(16, 48)
    opt = MuonAdamW([{"params": [w], "muon": True}], lr=0.1, weight_decay=0.0, **kw)
    before = w.detach().clone()
    for step in range(2):
        w.grad = torch.randn(w.shape, generator=torch.Generator().manual_seed(step))
        opt.step()
    return w.detach() - before


@pytest.mark.parametrize("knob", [{"momentum": 0.5}, {"nesterov": False}, {"ns_steps": 2},
                                  {"adjust_lr": "original"}])
def test_every_muon_knob_changes_the_update(knob):
    assert not torch.allclose(one_update(**knob), one_update())


def test_match_rms_adamw_gives_update_rms_near_point_two_times_lr():
    for shape in ((16, 48), (64, 64), (96, 24)):
        w, _ = twin(*shape)
        opt = MuonAdamW([{"params": [w], "muon": True}], lr=1.0, weight_decay=0.0, momentum=0.0)
        before = w.detach().clone()
        w.grad = torch.randn(shape)
        opt.step()
        rms = (w.detach() - before).pow(2).mean().sqrt().item()
        assert 0.15 < rms < 0.25, (shape, rms)  # Newton-Schulz leaves singular values in ~[0.7, 1.2]


def test_adamw_lr_mult_and_set_lr_reach_the_right_groups():
    r = recipe(muon={"adamw_lr_mult": 0.25})
    opt = build_optimizer(build_model(r.model), r)
    set_lr(opt, 0.2)
    lrs = {(g["muon"], g["lr"]) for g in opt.param_groups}
    assert lrs == {(True, 0.2), (False, 0.05)}


def test_state_dict_round_trip_continues_identically():
    r = recipe(model={"moe": {"num_experts": 4, "top_k": 2}})  # 3-D expert weights through the real model
    torch.manual_seed(0)
    model = build_model(r.model)
    x = torch.randint(0, 50, (2, 17))

    def step(m, o):
        m(x[:, :-1], x[:, 1:])["loss"].backward()
        o.step()
        o.zero_grad()

    opt = build_optimizer(model, r)
    step(model, opt)
    copy = build_model(r.model)
    copy.load_state_dict(model.state_dict())
    opt2 = build_optimizer(copy, r)
    opt2.load_state_dict(copy_module.deepcopy(opt.state_dict()))  # as if read back from disk
    step(model, opt)
    step(copy, opt2)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), copy.parameters()))


class StopAt(Callback):
    def on_step_end(self, trainer, step, row):
        if step == 6:
            raise KeyboardInterrupt


def test_resume_reproduces_uninterrupted_losses_with_muon(tmp_path):
    g = torch.Generator().manual_seed(0)
    data = [torch.randint(0, 50, (4, 17), generator=g) for _ in range(12)]
    r = recipe(lr=3e-3).with_overrides(["train.steps=12", "train.batch_size=4", "train.seq_len=16",
                                 "train.ckpt_every=4", "train.eval_every=6", "train.threads=1",
                                 "logging.log_every=1", "logging.progress=false"])

    def fit(out, **kw):
        Trainer(r, train_data=data, out_dir=tmp_path / out, **kw).fit()
        rows = (tmp_path / out / "metrics.jsonl").read_text().splitlines()
        return [(row["step"], row["loss"]) for row in map(json.loads, rows) if "loss" in row]

    full = fit("full")
    with pytest.raises(KeyboardInterrupt):
        fit("part", callbacks=[StopAt()])
    assert fit("part", resume=True) == full  # exact: same floats, as for AdamW


# ----------------------------------------------------------------------------- muP


def hidden_update_spectral_norms(par: str, adjust: str) -> list[float]:
    """||dW||_2 of blocks.0.attn.wo after one Muon step on the same loss, at widths 64, 128, 256."""
    out = []
    for width in (64, 128, 256):
        r = recipe(model={"d_model": width, "n_heads": 4, "n_kv_heads": 4, "parameterization": par,
                          "mup": {"base_width": 64}}, muon={"adjust_lr": adjust}, weight_decay=0.0)
        torch.manual_seed(0)
        model = build_model(r.model)
        opt = build_optimizer(model, r)
        w = model.blocks[0].attn.wo.weight
        before = w.detach().clone()
        x = torch.randint(0, 50, (4, 17), generator=torch.Generator().manual_seed(0))
        model(x[:, :-1], x[:, 1:])["loss"].backward()
        opt.step()
        out.append(torch.linalg.matrix_norm(w.detach() - before, ord=2).item())
    return out


@pytest.mark.parametrize("adjust", ["match_rms_adamw", "original"])
def test_mup_keeps_muon_hidden_update_spectral_norm_flat_in_width(adjust):
    mup = hidden_update_spectral_norms("mup", adjust)
    assert max(mup) / min(mup) < 1.3, mup  # spectral condition: Theta(sqrt(fan_out/fan_in)) = Theta(1)
    if adjust == "match_rms_adamw":
        sp = hidden_update_spectral_norms("sp", adjust)
        assert sp[-1] / sp[0] > 1.6, sp  # SP: 0.2 * sqrt(width) grows 2x over 4x width


def test_coordinate_check_with_muon_mup_flat_sp_grows():
    torch.set_num_threads(1)
    r = Recipe.from_dict({
        "model": {"vocab_size": 64, "max_seq_len": 32, "d_model": 32, "n_heads": 2, "n_layers": 2,
                  "mup": {"base_width": 32}, "init_std": 0.02},  # SP's classic fixed init, as in Tensor Programs V
        "optim": {"name": "muon", "lr": 3e-2}, "train": {"steps": 5, "batch_size": 4, "seq_len": 32}})
    g = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, 64, (4, 33), generator=g) for _ in range(2)]
    table = coord_check(r, [32, 64, 256], steps=4, batches=batches)
    for layer in ("blocks.1", "logits", "blocks.0.attn"):
        assert spread(table, "mup", layer) < 1.5, (layer, table["mup"])
        assert spread(table, "sp", layer) > 2.5, (layer, table["sp"])  # SP: Muon updates ~ sqrt(width)


# ----------------------------------------------------------------------------- recipe checks


@pytest.mark.parametrize("key,value", [("optim.muon.momentum", 1.0), ("optim.muon.ns_steps", 0),
                                       ("optim.muon.adamw_lr_mult", 0.0), ("optim.muon.adjust_lr", "rms")])
def test_bad_muon_values_name_the_key(key, value):
    with pytest.raises(RecipeError, match=key.replace(".", r"\.")):
        recipe().with_overrides([f"{key}={value}"])


def test_deepspeed_refused_naming_optim_name():
    with pytest.raises(RecipeError, match=r"optim\.name: muon .*deepspeed"):
        recipe().with_overrides(["distributed.strategy=deepspeed", "distributed.zero_stage=2"])
    assert math.isfinite(recipe(name="adamw").with_overrides(["distributed.strategy=deepspeed"]).optim.lr)
