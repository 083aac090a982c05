"""Throughput and scale steps: `windtunnel bench` rows against HF (through the CLI, as a user runs it),
compile warm-up per compile scope, the offload capacity search and a short muP LR-transfer sweep."""
from __future__ import annotations

import json
import re
import statistics
import time

import yaml

from .checks import tiny_model
from .context import ROOT, Context
from .plan import BENCH, MEM_RATIO, MFU_TARGETS, MTP_MFU_RATIO

GPU_BENCH = ["--steps", "10", "--warmup", "3"]
CPU_BENCH = ["--steps", "2", "--warmup", "1", "--threads", "1", "--batch", "2", "--seq", "32", "--no-isolate"]
ROW_LINE = re.compile(r"^(\S+) (\S+)( compiled)?: (.*)$")


def run_bench(ctx: Context, presets: list[str], compile_flag: str, name: str) -> list[dict]:
    """`windtunnel bench` for the presets; each row's summary line is recorded as it is printed."""
    out = ctx.work / f"{name}.json"

    def on_line(line: str) -> None:
        m = ROW_LINE.match(line)
        if m and ("tok/s" in line or "error" in line or "skipped" in line):
            ctx.figure(f"{m.group(1)} {m.group(2)}{m.group(3) or ''}", m.group(4))

    args = [*presets, "--compile", compile_flag, "--json", out, *(GPU_BENCH if ctx.gpu else CPU_BENCH)]
    if ctx.windtunnel("bench", *args, on_line=on_line) != 0:
        raise RuntimeError("windtunnel bench exited non-zero")
    return ctx.figure("rows", json.loads(out.read_text()))


def _row(rows: list[dict], impl: str) -> dict | None:
    return next((r for r in rows if r["impl"] == impl and r.get("status") == "ok"), None)


def bench_step(ctx: Context) -> None:
    """One preset compiled (eager in the dry run), judged against the MFU and memory targets."""
    step = ctx.step
    gpu_preset, cpu_preset = BENCH[step]
    if not ctx.gpu and gpu_preset in ("350m", "1b"):
        return ctx.skip("dry run: the same tiny preset and code path as bench_125m")
    if not ctx.gpu:
        ctx.note("dry run: eager rows of the tiny CPU preset; inductor's CPU compile (~40 s) is left to the GPU")
    rows = run_bench(ctx, [gpu_preset if ctx.gpu else cpu_preset], "on" if ctx.gpu else "off", step)
    ours = _row(rows, "windtunnel")
    for row in rows:
        if row.get("status") == "error":
            ctx.note(f"{row['impl']} row failed: {row.get('reason')}")
    ctx.check("windtunnel row measured", "yes" if ours else "no", "yes", ours is not None)
    mfu = ours.get("mfu") if ours else None
    judge = ctx.gpu and ours is not None
    if gpu_preset == "mtp4":
        ref = _row(rows, "mtp1")
        ratio = mfu / ref["mfu"] if judge and ref and mfu and ref.get("mfu") else None
        ctx.check("MFU mtp4 / mtp1", ratio, f">= {MTP_MFU_RATIO}", None if ratio is None else ratio >= MTP_MFU_RATIO)
        return None
    target = MFU_TARGETS[gpu_preset]
    ctx.check(f"MFU {gpu_preset}", mfu, f">= {target:.0%}", (mfu >= target) if judge and mfu is not None else None)
    mem = ours.get("mem_ratio") if ours else None
    ctx.check(f"peak memory {gpu_preset} vs HF compiled", mem, f"<= {MEM_RATIO}",
              (mem <= MEM_RATIO) if judge and mem is not None else None)
    return None


def bench_eager(ctx: Context) -> None:
    if not ctx.gpu:
        return ctx.skip("dry run: bench_125m, bench_moe and bench_mtp4 already ran eager rows")
    run_bench(ctx, ["125m", "350m", "1b", "moe", "mtp4"], "off", "bench_eager")
    return None


# ----------------------------------------------------------------------------- compile warm-up


def compile_warmup(ctx: Context) -> None:
    """Seconds to the first compiled train step, whole model vs per block (and CUDA graphs per block on GPU).
    Dry run: dynamo + AOT autograd only (backend aot_eager), so the figures show the plan works, not speed."""
    import torch

    from windtunnel.compile import apply_compile
    from windtunnel.optim import build_optimizer

    backend = "inductor" if ctx.gpu else "aot_eager"
    variants = [("blocks", "default"), ("model", "default")] + ([("blocks", "reduce-overhead")] if ctx.gpu else [])
    for scope, mode in variants:
        if ctx.left() < 20 and ctx.gpu:
            ctx.note(f"not enough time left for scope={scope} mode={mode}")
            break
        torch._dynamo.reset()
        model, recipe, x, y = tiny_model(ctx.gpu, "dense", layers=12 if ctx.gpu else 2)
        recipe = recipe.with_overrides(["train.compile=true", f"train.compile_scope={scope}", f"train.compile_mode={mode}"])
        opt = build_optimizer(model, recipe, x.device.type)
        fwd = apply_compile(model, recipe, backend=backend)
        times = [timed_step(fwd, opt, x, y, ctx.gpu) for _ in range(4)]
        key = f"{scope}_{mode}"
        ctx.figure(f"{key}_first_step_s", times[0])
        ctx.figure(f"{key}_steady_step_ms", statistics.median(times[1:]) * 1e3)
    ctx.figure("backend", backend)


def timed_step(model, opt, x, y, gpu: bool) -> float:
    import torch

    from .checks import autocast

    if gpu:
        torch.cuda.synchronize()
        torch.compiler.cudagraph_mark_step_begin()
    t = time.perf_counter()
    with autocast(gpu):
        loss = model(x, targets=y)["loss"]
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    if gpu:
        torch.cuda.synchronize()
    return time.perf_counter() - t


# ----------------------------------------------------------------------------- offload and muP


def offload_capacity(ctx: Context) -> None:
    """scripts/bench_offload.py cut to fit: each probe's verdict is recorded as it lands."""
    probe = re.compile(r"^\s+(\S+) layers=(\d+) params=([\d.]+)M -> (.*)$")

    def on_line(line: str) -> None:
        m = probe.match(line)
        if m:
            ctx.figure(f"{m.group(1)} layers={m.group(2)} ({m.group(3)}M)", m.group(4))

    table = ctx.work / "offload.md"
    args = (["--configs", "none,zero2_cpu", "--layers-max", "48", "--steps", "2"] if ctx.gpu
            else ["--cpu", "--configs", "none", "--layers-max", "1", "--steps", "1"])
    if ctx.python(ROOT / "scripts/bench_offload.py", *args, "--out", table, on_line=on_line) != 0:
        raise RuntimeError("bench_offload.py exited non-zero")
    ctx.figure("table", table.read_text().strip())


def mup_sweep(gpu: bool, out_dir) -> dict:
    """recipes/sweeps/mup_lr_transfer.yaml at GPU widths (or tiny for the dry run)."""
    sweep = yaml.safe_load((ROOT / "recipes/sweeps/mup_lr_transfer.yaml").read_text())
    r, s = sweep["recipe"], sweep["sweep"]
    if gpu:
        r["model"].update(n_layers=4, n_heads=4, ffn_hidden=1024, d_model=256, mup={"base_width": 256, "base_head_dim": 64})
        r["train"].update(steps=150, batch_size=32, seq_len=256, eval_every=150, eval_batches=8, threads=None)
        s["scale"] = {"widths": [256, 512, 1024], "head_dim": 64, "depth": 4}
        s["grid"]["optim.lr"] = [3e-3, 1e-2, 3e-2]
    else:
        r["data"]["max_documents"] = 200
        r["train"].update(steps=5, batch_size=2, seq_len=32, eval_every=5, eval_batches=2)
        s["scale"] = {"widths": [16, 32], "head_dim": 16, "depth": 2}
        r["model"].update(d_model=16, n_heads=1, ffn_hidden=64, mup={"base_width": 16, "base_head_dim": 16})
        s["grid"] = {"model.parameterization": ["mup"], "optim.lr": [1e-2, 3e-2]}
    sweep["out_dir"] = str(out_dir)
    return sweep


def mup_transfer(ctx: Context) -> None:
    out = ctx.work / "mup"
    sweep_file = ctx.work / "mup_sweep.yaml"
    sweep_file.write_text(yaml.safe_dump(mup_sweep(ctx.gpu, out)))
    line = re.compile(r"^\[(\d+)/(\d+)\] (\S+): val loss (\S+)")

    def on_line(text: str) -> None:
        m = line.match(text)
        if m:
            ctx.figure(m.group(3), m.group(4))

    png = ctx.out / f"mup_lr_transfer_{'gpu' if ctx.gpu else 'dryrun'}.png"
    if ctx.python(ROOT / "scripts/mup_lr_transfer.py", sweep_file, "--png", png, on_line=on_line) != 0:
        raise RuntimeError("mup_lr_transfer.py exited non-zero")
    best = json.loads((out / "transfer.json").read_text())["best"]
    ctx.figure("best_lr", best)
    mup_lrs = {v["lr"] for v in best.get("mup", {}).values()}
    ctx.check("muP best LR equal across widths", sorted(mup_lrs), "one LR", (len(mup_lrs) == 1) if ctx.gpu else None)
