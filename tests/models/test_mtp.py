import weakref

import pytest
import torch
import torch.nn.functional as F

from windtunnel.accounting import count_params, flops_per_token
from windtunnel.models import build_model
from windtunnel.models.loss import lm_loss
from windtunnel.models.mtp import shift_targets

V, D, T = 53, 32, 12


@pytest.fixture
def cfg(tiny_model_config):
    """cfg(n_future=3, style="parallel", **model): a 2-layer MTP ModelConfig (vocab 53)."""
    def make(n_future=3, style="parallel", **model):
        base = {"vocab_size": V, "max_seq_len": 16, "mtp": {"n_future": n_future, "style": style}}
        return tiny_model_config(**{**base, **model})
    return make


@pytest.fixture
def batch(token_batches):
    def make(seed=0):
        ids = token_batches(V, seq_len=T, seed=seed)[0]
        return ids[:, :-1], ids[:, 1:]
    return make


def plain_autograd_loss(model, x, y):
    """Reference: the next-token loss plus every parallel head's weighted loss, in one ordinary graph
    (what the heads' per-head backward inside forward must reproduce)."""
    trunk = model.trunk(x)
    cfg = model.cfg
    loss = lm_loss(model.norm(trunk), model.readout_weight, y, logit_scale=model.logit_mult, z_coef=cfg.z_loss)[1]
    weights = cfg.mtp.weights or [1.0] * cfg.mtp_depths
    for j, head in enumerate(model.mtp.heads):
        h = head(trunk, model.rope_cos, model.rope_sin)
        loss = loss + weights[j] * lm_loss(h, model.readout_weight, shift_targets(y, j + 1),
                                           logit_scale=model.logit_mult, z_coef=cfg.z_loss)[1]
    return loss


@pytest.mark.parametrize("style", ["parallel", "sequential"])
@pytest.mark.parametrize("tie", [True, False])
def test_param_count_and_flops_include_heads(cfg, style, tie):
    c = cfg(style=style, tie_embeddings=tie)
    model = build_model(c)
    counts = count_params(c)
    assert counts.total == sum(p.numel() for p in model.parameters())
    assert counts.mtp == sum(p.numel() for n, p in model.named_parameters() if n.startswith("mtp."))
    plain = cfg(n_future=1, tie_embeddings=tie)
    # Each extra depth: its head's parameters, one more unembedding matmul and one more attention layer.
    extra = flops_per_token(c, T) - flops_per_token(plain, T)
    assert extra == 6 * (counts.mtp + 2 * V * D) + 2 * 12 * D * T


@pytest.mark.parametrize("tie", [True, False])
def test_memory_efficient_backward_equals_plain_autograd(cfg, batch, tie):
    torch.manual_seed(0)
    model = build_model(cfg(n_future=4, tie_embeddings=tie, z_loss=1e-3, mtp={"n_future": 4, "weights": [0.5, 1.0, 0.25]}))
    x, y = batch()
    grads, losses = [], []
    for loss_fn in (lambda: model(x, y)["loss"], lambda: plain_autograd_loss(model, x, y)):
        model.zero_grad()
        loss = loss_fn()
        (2.0 * loss).backward()  # a scaled loss: the stored gradients must follow grad_output
        losses.append(loss.detach())
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    torch.testing.assert_close(losses[0], losses[1])
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], atol=1e-6, rtol=1e-5, msg=name)


@pytest.mark.parametrize("style", ["parallel", "sequential"])
def test_next_token_ce_and_depth_metrics(cfg, batch, style):
    torch.manual_seed(0)
    c = cfg(style=style, mtp={"n_future": 3, "style": style, "weights": [0.5, 0.25]})
    model = build_model(c)
    plain = build_model(cfg(n_future=1))
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("mtp.")})
    x, y = batch()
    out = model(x, y)
    m = out["metrics"]
    assert set(m) == {"ce", "mtp_ce_2", "mtp_acc_2", "mtp_ce_3", "mtp_acc_3"}
    torch.testing.assert_close(m["ce"], plain(x, y)["metrics"]["ce"])  # comparable to a plain model
    torch.testing.assert_close(out["loss"], m["ce"] + 0.5 * m["mtp_ce_2"] + 0.25 * m["mtp_ce_3"])
    assert all(0 <= float(m[f"mtp_acc_{d}"]) <= 1 for d in (2, 3))


def test_parallel_head_targets_and_accuracy(cfg, batch):
    torch.manual_seed(0)
    model = build_model(cfg(n_future=3))
    x, y = batch()
    m = model(x, y)["metrics"]
    h = model.trunk(x)
    for d in (2, 3):
        logits = model.logits(model.mtp.heads[d - 2](h, model.rope_cos, model.rope_sin))
        target = torch.cat([x, y[:, -1:]], dim=1)[:, d:]  # token t+d
        n = target.size(1)
        ce = F.cross_entropy(logits[:, :n].reshape(-1, V), target.reshape(-1))
        acc = (logits[:, :n].argmax(-1) == target).float().mean()
        torch.testing.assert_close(m[f"mtp_ce_{d}"], ce)
        torch.testing.assert_close(m[f"mtp_acc_{d}"], acc)
    assert shift_targets(y, 2)[:, -2:].eq(-100).all()


def test_sequential_depth_reads_exactly_one_token_ahead(cfg, batch):
    """Depth 2 at position t sees tokens <= t+1 (DeepSeek-V3): changing token k changes positions >= k-1 only."""
    torch.manual_seed(0)
    model = build_model(cfg(style="sequential")).eval()
    x, _ = batch()
    k = 7
    x2 = x.clone()
    x2[:, k] = (x2[:, k] + 1) % V
    head = model.mtp.heads[0]
    outs = [head(model.trunk(t), model.embed_tokens(torch.cat([t[:, 1:], t[:, :1]], dim=1)),
                 model.rope_cos, model.rope_sin) for t in (x, x2)]
    torch.testing.assert_close(outs[0][:, : k - 1], outs[1][:, : k - 1])
    assert not torch.allclose(outs[0][:, k - 1], outs[1][:, k - 1])


def test_eval_without_grad_gives_same_metrics(cfg, batch):
    torch.manual_seed(0)
    model = build_model(cfg())
    x, y = batch()
    out = model(x, y)
    with torch.no_grad():
        ev = model(x, y)
    for k in out["metrics"]:
        torch.testing.assert_close(out["metrics"][k], ev["metrics"][k])


def saved_bytes(loss_fn) -> int:
    """Bytes autograd still holds for backward once the forward is done (distinct storages)."""
    packed = []

    def pack(t):
        packed.append(weakref.ref(t))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = loss_fn()
    alive = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for r in packed if (t := r()) is not None}
    del loss
    return sum(alive.values())


def test_parallel_heads_keep_no_head_activations(cfg):
    """The heads' logits and block activations are freed head by head; only their gradients are kept."""
    torch.manual_seed(0)
    c = cfg(n_future=4, vocab_size=512, max_seq_len=64)
    model = build_model(c)
    ids = torch.randint(0, 512, (8, 65))
    x, y = ids[:, :-1], ids[:, 1:]
    efficient = saved_bytes(lambda: model(x, y)["loss"])
    naive = saved_bytes(lambda: plain_autograd_loss(model, x, y))
    logits = 8 * 64 * 512 * 4
    assert naive - efficient > 3 * logits  # at least one [tokens, vocab] fp32 tensor per extra head


@pytest.mark.parametrize("style", ["parallel", "sequential"])
def test_chunked_head_loss_equals_full(cfg, batch, style):
    """model.loss_chunk also applies to the heads (fused chunked CE); loss and gradients are unchanged."""
    x, y = batch()
    results = []
    for chunk in (0, 7):
        torch.manual_seed(0)
        model = build_model(cfg(style=style, z_loss=1e-3, loss_chunk=chunk))
        out = model(x, y)
        out["loss"].backward()
        results.append((out, {n: p.grad for n, p in model.named_parameters()}))
    (full, g_full), (chunked, g_chunked) = results
    torch.testing.assert_close(full["loss"], chunked["loss"])
    torch.testing.assert_close(full["metrics"]["mtp_ce_3"], chunked["metrics"]["mtp_ce_3"])
    for name in g_full:
        torch.testing.assert_close(g_full[name], g_chunked[name], atol=1e-6, rtol=1e-5, msg=name)
