"""Correctness and step-hygiene checks that need no run directory: graph breaks, host syncs, MoE grouped_mm.

Host syncs are counted two ways: on every device, by wrapping the Tensor methods that copy a value to
the host (`.item()`, `float(t)`, `int(t)`, `bool(t)`, `.tolist()`, `.numpy()`) around one forward and
backward; on CUDA also with `torch.cuda.set_sync_debug_mode("warn")` around one whole train step
(forward, backward, clipping, fused AdamW), which catches syncs inside kernels' launch code too.
"""
from __future__ import annotations

import contextlib
import time
import warnings
from collections import Counter

from .context import Context

SYNC_METHODS = ("item", "tolist", "numpy", "__float__", "__int__", "__bool__", "__index__")
SHAPES = {  # (model overrides, batch, seq): the fused loss gets 2+ chunks, MoE the GPU bench's experts
    True: ({"d_model": 768, "n_heads": 12, "n_kv_heads": 4, "ffn_hidden": 2048, "vocab_size": 32000,
            "loss_chunk": 2048}, 2, 2048),
    False: ({"d_model": 32, "n_heads": 4, "n_kv_heads": 2, "ffn_hidden": 64, "vocab_size": 97, "loss_chunk": 24}, 2, 32),
}
KINDS = {"dense": {}, "moe": {"moe": {"num_experts": 8, "top_k": 2, "expert_hidden": None}},
         "mtp4": {"mtp": {"n_future": 4}}}


@contextlib.contextmanager
def count_host_syncs():
    """Count calls of Tensor methods that read a value back to the host, while the block runs."""
    import torch

    calls: Counter = Counter()
    saved = {name: getattr(torch.Tensor, name) for name in SYNC_METHODS}

    def wrap(name, method):
        def counted(self, *args, **kwargs):
            calls[name] += 1
            return method(self, *args, **kwargs)
        return counted

    try:
        for name, method in saved.items():
            setattr(torch.Tensor, name, wrap(name, method))
        yield calls
    finally:
        for name, method in saved.items():
            setattr(torch.Tensor, name, method)


def check_recipe(gpu: bool, kind: str, layers: int = 2):
    """The recipe of the step-check model of `kind` (validated here, so a bad shape fails on CPU too)."""
    from windtunnel.recipe import Recipe

    base, batch, seq = SHAPES[gpu]
    extra = KINDS[kind]
    if "moe" in extra:
        extra = {"moe": {**extra["moe"], "expert_hidden": 1024 if gpu else 16}}
    model_cfg = {**base, **extra, "n_layers": layers, "max_seq_len": seq, "tie_embeddings": False}
    return Recipe.from_dict({"train": {"steps": 1, "batch_size": batch, "seq_len": seq}, "model": model_cfg})


def tiny_model(gpu: bool, kind: str, layers: int = 2):
    """A model of the kind at the step-check shapes, on the device, with the CUDA MoE path forced."""
    import torch

    from windtunnel.models import build_model

    recipe = check_recipe(gpu, kind, layers)
    device = "cuda" if gpu else "cpu"
    torch.manual_seed(0)
    with torch.device(device):
        model = build_model(recipe.model)
    t = recipe.train
    ids = torch.randint(0, recipe.model.vocab_size, (t.batch_size, t.seq_len + 1), device=device)
    return model, recipe, ids[:, :-1], ids[:, 1:]


@contextlib.contextmanager
def moe_path(path: str):
    """Force the MoE experts' path: "native" = torch's grouped_mm (CUDA bf16; fp32 on CPU), "fallback" =
    the per-expert custom op (it reads its offsets on the host once per matmul, by design)."""
    from windtunnel.models import moe

    original = moe.fast_path_dtype
    moe.fast_path_dtype = (lambda x: None) if path == "fallback" else (lambda x: original(x) or x.dtype)
    try:
        yield
    finally:
        moe.fast_path_dtype = original


def dense_reference(moe, x_ND):
    """Every expert on every token, then the router's top-k mix: shares nothing with the grouped path."""
    import torch
    import torch.nn.functional as F

    _, _, idx, weights = moe.route(x_ND)
    gate, up = torch.einsum("nd,eod->neo", x_ND, moe.experts.w_gate_up).chunk(2, dim=-1)
    y_all = torch.einsum("neh,edh->ned", F.silu(gate) * up, moe.experts.w_down)  # [N, E, D]
    picked = y_all.gather(1, idx[..., None].expand(-1, -1, x_ND.size(-1)))  # [N, k, D]
    out = (picked * weights[..., None]).sum(1)
    return out + moe.shared(x_ND) if moe.shared is not None else out


def autocast(gpu: bool):
    import torch

    return torch.autocast("cuda", dtype=torch.bfloat16) if gpu else contextlib.nullcontext()


def step_checks(ctx: Context) -> None:
    import torch

    from windtunnel.compile import graph_breaks

    layers = 2 if ctx.gpu else 1  # tracing cost grows with depth; breaks do not
    for kind in KINDS:
        model, _, x, y = tiny_model(ctx.gpu, kind, layers)
        if not ctx.gpu and kind == "moe":
            model.to(torch.bfloat16)  # dynamo's grouped_mm meta function takes bf16 only
        with autocast(ctx.gpu):
            found = graph_breaks(model, x, targets=y)
        ctx.figure(f"graph_breaks_{kind}", found)
        if kind == "mtp4":  # by design the parallel heads' forward+backward run eagerly (mtp.py)
            ctx.check("graph breaks mtp4", found["breaks"], "heads eager by design (report only)", None)
        else:
            ctx.check(f"graph breaks {kind}", found["breaks"], "0", found["breaks"] == 0)
    for kind in KINDS:
        model, recipe, x, y = tiny_model(ctx.gpu, kind, layers)
        with moe_path("native"):
            syncs = host_syncs(model, recipe, x, y, ctx.gpu)
        ctx.figure(f"host_syncs_{kind}", syncs)
        ctx.check(f"host syncs {kind}", syncs["total"], "0", syncs["total"] == 0)


def host_syncs(model, recipe, x, y, gpu: bool) -> dict:
    """Host reads in one train step after a warm-up step: Tensor-method calls in forward and backward
    (the model's code), and on CUDA the sync warnings of the whole step (clipping and fused AdamW too;
    CPU AdamW reads its step counters with .item(), which is why the optimizer is outside the count)."""
    import torch

    from windtunnel.optim import build_optimizer

    opt = build_optimizer(model, recipe, "cuda" if gpu else "cpu")

    def step(calls_cm):
        with calls_cm as calls:
            with autocast(gpu):
                loss = model(x, targets=y)["loss"]
            loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0, foreach=True)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return calls

    step(contextlib.nullcontext())  # warm-up: optimizer moments, library handles are created outside the count
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if gpu:
            torch.cuda.synchronize()
            torch.cuda.set_sync_debug_mode("warn")
        try:
            calls = step(count_host_syncs())
        finally:
            if gpu:
                torch.cuda.set_sync_debug_mode("default")
    cuda = [str(w.message).splitlines()[0][:160] for w in caught if "synchroniz" in str(w.message)]
    return {"tensor_reads": dict(calls), "cuda_sync_warnings": len(cuda), "examples": sorted(set(cuda))[:3],
            "total": sum(calls.values()) + len(cuda)}


def moe_grouped(ctx: Context) -> None:
    """Grouped GEMM and the per-expert fallback vs a dense fp32 reference: outputs and gradients."""
    import torch

    model, _, x_ids, _ = tiny_model(ctx.gpu, "moe", layers=1)
    moe = model.blocks[0].mlp
    d = model.cfg.d_model
    x = torch.randn(x_ids.numel() * (2 if ctx.gpu else 1), d, device=x_ids.device)
    grad_out = torch.randn_like(x)
    ref, ref_grads = run_moe(moe, x, grad_out, dense_reference, torch.float32)
    tol = 2e-2 if ctx.gpu else 1e-5  # bf16 operands land between 1e-3 and 1e-2
    for impl in ("native", "fallback"):
        with moe_path(impl), autocast(ctx.gpu):
            out, grads = run_moe(moe, x, grad_out, lambda m, v: m(v[None])[0][0], None)
        err = rel_err(out, ref)
        gerr = max(rel_err(grads[k], ref_grads[k]) for k in grads)
        ctx.figure(f"{impl}_out_rel_err", err)
        ctx.figure(f"{impl}_grad_rel_err", gerr)
        ctx.check(f"{impl} vs reference", max(err, gerr), f"<= {tol:g}", max(err, gerr) <= tol)
        with moe_path(impl):
            ctx.figure(f"{impl}_ms_fwd_bwd", time_moe(moe, x, grad_out, ctx.gpu))
    ctx.figure("tokens", x.size(0))
    ctx.figure("dtype", "bf16 autocast" if ctx.gpu else "fp32")


def run_moe(moe, x, grad_out, fn, _dtype):
    moe.zero_grad(set_to_none=True)
    out = fn(moe, x)
    (out.float() * grad_out).sum().backward()
    grads = {n: p.grad.detach().float().clone() for n, p in moe.named_parameters() if p.grad is not None}
    return out.detach().float(), grads


def rel_err(a, b) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm().clamp(min=1e-30))


def time_moe(moe, x, grad_out, gpu: bool, reps: int = 5) -> float:
    import torch

    def once():
        with autocast(gpu):
            out = moe(x[None])[0][0]
        (out.float() * grad_out).sum().backward()

    once()
    if gpu:
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(reps):
        once()
    if gpu:
        torch.cuda.synchronize()
    return (time.perf_counter() - t) / reps * 1e3
