import torch

from windtunnel.models import build_model
from windtunnel.optim import build_optimizer, param_groups, set_lr
from windtunnel.recipe import Recipe


def recipe(**optim):
    return Recipe.from_dict({"train": {"steps": 1}, "optim": {"lr": 0.01, "weight_decay": 0.1, **optim},
                             "model": {"vocab_size": 50, "max_seq_len": 16, "d_model": 32, "n_heads": 2,
                                       "n_layers": 1, "tie_embeddings": False}})


def names_by_decay(r):
    model = build_model(r.model)
    ids = {id(p): n for n, p in model.named_parameters()}
    return {g["weight_decay"]: sorted(ids[id(p)] for p in g["params"]) for g in param_groups(model, r)}


def test_no_decay_for_norms_and_embeddings():
    groups = names_by_decay(recipe())
    assert "embed.weight" in groups[0.0] and "norm.weight" in groups[0.0]
    assert "blocks.0.attn_norm.weight" in groups[0.0]
    assert "head.weight" in groups[0.1] and "blocks.0.attn.wqkv.weight" in groups[0.1]


def test_decay_embeddings_knob():
    assert "embed.weight" in names_by_decay(recipe(decay_embeddings=True))[0.1]


def test_set_lr_applies_group_multiplier():
    r = recipe()
    opt = build_optimizer(build_model(r.model), r)
    opt.param_groups[0]["lr_mult"] = 0.5
    set_lr(opt, 0.2)
    assert opt.param_groups[0]["lr"] == 0.1 and all(g["lr"] == 0.2 for g in opt.param_groups[1:])


def test_weight_decay_really_applied():
    r = recipe(lr=0.1, weight_decay=0.5)
    model = build_model(r.model)
    opt = build_optimizer(model, r)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    after = dict(model.named_parameters())
    assert torch.allclose(after["head.weight"], before["head.weight"] * (1 - 0.1 * 0.5))
    assert torch.equal(after["embed.weight"], before["embed.weight"])
