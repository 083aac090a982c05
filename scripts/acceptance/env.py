"""Setup step: what is installed, what the carried wheels add, and the device (with a measured matmul ceiling).

The GPU image lacked deepspeed, datasets, wandb and submitit before. scripts/gpu_wheels.sh downloads
them (and their missing dependencies) into wheels/; here every wheel whose distribution is not
installed goes into <work>/site with `pip install --no-index --no-deps --target`, and the driver puts
that folder on PYTHONPATH for the later steps. windtunnel itself runs from this checkout's src/ (also on
PYTHONPATH), which is what a `--no-deps` install would give, without a build step.
"""
from __future__ import annotations

import importlib
import importlib.metadata as md
import re
import subprocess
import sys
from pathlib import Path

from .context import ROOT, Context

WANTED = ["torch", "transformers", "accelerate", "tokenizers", "safetensors", "deepspeed", "datasets", "wandb",
          "submitit", "triton"]
NEEDED_BY_STEPS = {"deepspeed": "dist_zero2_offload, dist_zero3, offload_capacity"}


def normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def installed(name: str) -> str | None:
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return None


def importable(name: str) -> bool:
    try:
        importlib.import_module(name)
        return True
    except Exception as e:  # a broken optional package must not end the setup step
        print(f"import {name}: {type(e).__name__}: {e}", flush=True)
        return False


def install_wheels(ctx: Context, folder: Path = ROOT / "wheels") -> list[str]:
    """Install the carried wheels whose distributions are missing; returns their file names."""
    wheels = sorted(folder.glob("*.whl"))
    todo = [w for w in wheels if installed(normal(w.name.split("-")[0])) is None]
    if not todo:
        return []
    site = ctx.work / "site"
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
           "--disable-pip-version-check", "--target", str(site), *map(str, todo)]
    rc = ctx.run(cmd, timeout=max(10.0, ctx.left() - 5))
    if rc != 0:
        ctx.note(f"pip install of carried wheels exited {rc}")
        return []
    sys.path.insert(0, str(site))
    importlib.invalidate_caches()
    return [w.name for w in todo]


def env(ctx: Context) -> None:
    before = {n: installed(n) for n in WANTED}
    ctx.figure("missing_before", [n for n, v in before.items() if v is None])
    ctx.figure("installed_from_wheels", install_wheels(ctx))
    versions = {n: installed(n) for n in WANTED}
    ctx.figure("packages", versions)
    ctx.figure("python", sys.version.split()[0])
    missing = [n for n in ("deepspeed", "datasets", "wandb", "submitit") if versions[n] is None]
    if ctx.gpu:  # importable, not only installed (a carried wheel may lack a dependency); seconds each
        missing += [n for n in ("deepspeed", "datasets", "wandb", "submitit") if n not in missing and not importable(n)]
    ctx.check("optional packages present", missing or "all", "none missing", not missing)
    if "deepspeed" in missing:
        ctx.note(f"deepspeed missing: {NEEDED_BY_STEPS['deepspeed']} will be skipped or fail")
    import torch

    ctx.figure("torch_cuda", torch.version.cuda)
    if not ctx.gpu:
        ctx.figure("device", "cpu (dry run)")
        ctx.figure("torch_threads", torch.get_num_threads())
        return
    props = torch.cuda.get_device_properties(0)
    ctx.figure("device", props.name)
    ctx.figure("device_mem_gib", props.total_memory / 2**30)
    ctx.figure("matmul_bf16_tflops", matmul_tflops(torch))
    smi = subprocess.run(["nvidia-smi", "--query-gpu=driver_version,clocks.sm,temperature.gpu",
                          "--format=csv,noheader"], capture_output=True, text=True)
    ctx.figure("nvidia_smi", smi.stdout.strip() or smi.stderr.strip()[:200])


def matmul_tflops(torch, n: int = 8192, reps: int = 10) -> float:
    """The bf16 matmul ceiling as measured here (random data: zeros run faster), median of `reps`."""
    a, b = (torch.randn(n, n, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    for _ in range(3):
        a @ b
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        a @ b
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return 2 * n**3 / sorted(times)[len(times) // 2] / 1e12
