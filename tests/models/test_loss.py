"""lm_loss: the chunked (fused linear + CE) path equals the plain one in value and gradient."""
import pytest
import torch
import torch.nn.functional as F

from windtunnel.models.loss import lm_loss


def reference(h, w, y, scale, z_coef):
    """Plain autograd: full fp32 logits, CE over non-ignored targets, z-loss = mean logsumexp^2."""
    logits = (h @ w.t()).float() * scale
    valid = y != -100
    ce = F.cross_entropy(logits, y, ignore_index=-100)
    z = (torch.logsumexp(logits, -1).square() * valid).sum() / valid.sum().clamp(min=1)
    return ce, ce + z_coef * z


def inputs(n=37, d=16, v=53, ignore=(3, 4, 20), seed=0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(n, d, generator=g, dtype=torch.float64, requires_grad=True)
    w = (0.3 * torch.randn(v, d, generator=g, dtype=torch.float64)).requires_grad_()
    y = torch.randint(0, v, (n,), generator=g)
    y[list(ignore)] = -100
    return h, w, y


def grads(ce, loss, h, w, ce_weight=0.0):
    (loss + ce_weight * ce).backward()
    out = h.grad.clone(), w.grad.clone()
    h.grad = w.grad = None
    return out


@pytest.mark.parametrize("chunk", [0, 5, 16, 37, 100])
@pytest.mark.parametrize("z_coef,scale", [(0.0, 1.0), (1e-2, 1.0), (1e-2, 0.5)])
def test_chunked_equals_plain_value_and_gradient(chunk, z_coef, scale):
    h, w, y = inputs()
    ref_ce, ref_loss = reference(h, w, y, scale, z_coef)
    ref_grads = grads(ref_ce, ref_loss, h, w)
    ce, loss = lm_loss(h, w, y, logit_scale=scale, z_coef=z_coef, chunk=chunk)
    assert torch.allclose(ce, ref_ce.float(), atol=1e-6) and torch.allclose(loss, ref_loss.float(), atol=1e-6)
    for got, want in zip(grads(ce, loss, h, w), ref_grads):
        assert torch.allclose(got, want, atol=1e-6)


def test_gradient_through_ce_output_and_upstream_scale():
    """Both outputs stay differentiable: d(2*loss + 3*ce) matches plain autograd (z-loss on)."""
    h, w, y = inputs()
    ref_ce, ref_loss = reference(h, w, y, 1.0, 0.1)
    want = grads(ref_ce * 3, ref_loss * 2, h, w)
    ce, loss = lm_loss(h, w, y, z_coef=0.1, chunk=8)
    got = grads(ce * 3, loss * 2, h, w)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(got, want))


def test_ignored_rows_get_no_gradient_and_do_not_count():
    h, w, y = inputs(ignore=range(10))
    ce, loss = lm_loss(h, w, y, chunk=4)
    loss.backward()
    assert torch.all(h.grad[:10] == 0) and h.grad[10:].abs().sum() > 0
    assert torch.allclose(ce, F.cross_entropy((h[10:] @ w.t()), y[10:]).float(), atol=1e-6)


def test_all_targets_ignored_gives_zero_not_nan():
    h, w, y = inputs(n=6, ignore=range(6))
    ce, loss = lm_loss(h, w, y, z_coef=1e-3, chunk=4)
    loss.backward()
    assert ce.item() == 0.0 and torch.all(h.grad == 0)


def test_no_grad_path_is_chunked_and_equal():
    h, w, y = inputs()
    ref_ce, ref_loss = reference(h, w, y, 1.0, 1e-2)
    with torch.no_grad():
        ce, loss = lm_loss(h, w, y, z_coef=1e-2, chunk=7)
    assert not loss.requires_grad
    assert torch.allclose(loss, ref_loss.float(), atol=1e-6)


def test_float32_and_bf16_autocast_match_plain():
    """The training dtypes: fp32 weights, bf16 autocast matmuls; fused equals unfused within bf16 noise."""
    torch.manual_seed(0)
    h = torch.randn(64, 32, requires_grad=True)
    w = (0.2 * torch.randn(300, 32)).requires_grad_()
    y = torch.randint(0, 300, (64,))
    for autocast in (False, True):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            ref = lm_loss(h, w, y, z_coef=1e-3, chunk=0)[1]
            ref_grads = grads(ref, ref, h, w)
            fused = lm_loss(h, w, y, z_coef=1e-3, chunk=16)[1]
            got = grads(fused, fused, h, w)
        tol = 2e-2 if autocast else 1e-5
        assert torch.allclose(fused, ref, atol=tol)
        assert got[1].dtype == torch.float32
        for a, b in zip(got, ref_grads):
            assert b.abs().max() > 0 and torch.allclose(a, b, atol=tol * b.abs().max().item())
