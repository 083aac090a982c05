"""Steps that train through the CLI as a user does (`accelerate launch -m windtunnel train ...`):
the 125m run (loss falls), resume from its mid-run checkpoint, HF export, and the distributed strategies
on one device compared with plain DDP."""
from __future__ import annotations

import json
import math
import os
import shutil
import statistics
import time
from pathlib import Path

from .context import ROOT, Context
from .plan import DIST, DIST_STEPS, TRAIN


def sets(items: list[str]) -> list[str]:
    return [arg for item in items for arg in ("--set", item)]


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]


def train_args(ctx: Context, run: Path, extra: list[str] = ()) -> list[str]:
    cfg = TRAIN[ctx.gpu]
    overrides = cfg["set"] + [f"train.steps={cfg['steps']}", f"train.ckpt_every={cfg['ckpt']}",
                              f"train.eval_every={cfg['ckpt']}", "logging.progress=false", *extra]
    return ["-m", "windtunnel", "train", str(ROOT / cfg["recipe"]), *sets(overrides), "--out", str(run)]


def train(ctx: Context) -> None:
    """The GPU recipe through accelerate launch (bf16 autocast, compile): the loss must fall."""
    run = ctx.work / "train"
    shutil.rmtree(run, ignore_errors=True)
    t = time.time()
    rc = ctx.accelerate(*train_args(ctx, run))
    ctx.figure("wall_s", time.time() - t)
    if rc != 0:
        raise RuntimeError(f"windtunnel train exited {rc}")
    rows = [r for r in metrics(run) if "loss" in r]
    first, last = rows[0]["loss"], rows[-1]["loss"]
    ctx.figure("losses", [round(r["loss"], 4) for r in rows])
    ctx.figure("val_losses", [round(r["val_loss"], 4) for r in metrics(run) if "val_loss" in r])
    ctx.check("loss falls", round(last / first, 4), "last/first window < 0.9", last < 0.9 * first)
    steady = rows[1:] or rows
    ctx.figure("tokens_per_s", statistics.median(r["tokens_per_s"] for r in steady))
    if steady[0].get("mfu") is not None:
        ctx.figure("mfu", statistics.median(r["mfu"] for r in steady))
    ctx.figure("peak_mem_gib", max(r.get("mem_gb", 0) for r in rows))
    # the first window holds the compile warm-up: its time minus a steady window's
    window = [r["tokens"] - p["tokens"] for p, r in zip([{"tokens": 0}] + rows, rows)]
    seconds = [w / r["tokens_per_s"] for w, r in zip(window, rows)]
    ctx.figure("first_window_s", seconds[0])
    ctx.figure("compile_warmup_s", seconds[0] - statistics.median(seconds[1:] or seconds))


def resume(ctx: Context) -> None:
    """The state on disk after a kill between the two checkpoints (later checkpoints and the summary gone),
    resumed with --resume: the losses after the checkpoint must equal the uninterrupted run's."""
    cfg, src, run = TRAIN[ctx.gpu], ctx.work / "train", ctx.work / "resume"
    shutil.rmtree(run, ignore_errors=True)
    shutil.copytree(src, run)
    for ckpt in (run / "checkpoints").glob("step_*"):
        if int(ckpt.name.split("_")[1]) > cfg["ckpt"]:
            shutil.rmtree(ckpt)
    (run / "summary.json").unlink()
    rc = ctx.accelerate(*train_args(ctx, run), "--resume")
    if rc != 0:
        raise RuntimeError(f"windtunnel train --resume exited {rc}")
    want = {r["step"]: r["loss"] for r in metrics(src) if "loss" in r and r["step"] > cfg["ckpt"]}
    got = {r["step"]: r["loss"] for r in metrics(run) if "loss" in r and r["step"] > cfg["ckpt"]}
    if set(want) != set(got):
        raise RuntimeError(f"logged steps differ after resume: {sorted(want)} vs {sorted(got)}")
    diff = max(abs(want[s] - got[s]) for s in want)
    tol = 2e-2 if ctx.gpu else 1e-6  # GPU: compiled bf16 kernels with atomics are not bitwise repeatable
    ctx.figure("steps_compared", sorted(want))
    ctx.figure("max_abs_loss_diff", diff)
    ctx.check("resume matches", diff, f"<= {tol:g}", diff <= tol)


def export(ctx: Context) -> None:
    """export_run (`windtunnel export`) -> AutoModelForCausalLM: logits against the windtunnel model on the same input."""
    import torch
    import transformers

    from windtunnel.export import export_run, find_weights, load_state
    from windtunnel.models import build_model
    from windtunnel.recipe import Recipe

    run, out = ctx.work / "train", ctx.work / "hf"
    shutil.rmtree(out, ignore_errors=True)
    export_run(run, out)  # what `windtunnel export RUN OUT` calls (in-process: one interpreter start less)
    device = "cuda" if ctx.gpu else "cpu"
    recipe = Recipe.load(run / "recipe.yaml")
    model = build_model(recipe.model)
    model.load_state_dict(load_state(find_weights(run)))
    model.to(device).eval()
    ids = torch.randint(0, recipe.model.vocab_size, (2, min(256, recipe.train.seq_len)), device=device)
    with torch.no_grad():
        want = model(ids).float()
        dtypes = [torch.float32, torch.bfloat16] if ctx.gpu else [torch.float32]
        for dtype in dtypes:
            hf = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=dtype).to(device).eval()
            got = hf(ids).logits.float()
            err = float((got - want).norm() / want.norm())
            agree = float((got.argmax(-1) == want.argmax(-1)).float().mean())
            name = "fp32" if dtype == torch.float32 else "bf16"
            tol = 1e-3 if dtype == torch.float32 else 5e-2
            ctx.figure(f"{name}_top1_agreement", agree)
            ctx.check(f"HF {name} logits vs windtunnel fp32", err, f"rel err <= {tol:g}", err <= tol)
            del hf
    ctx.figure("hf_class", json.loads((out / "config.json").read_text()).get("architectures"))


# ----------------------------------------------------------------------------- distributed on one device

STRATEGIES = {  # step -> (accelerate config, recipe overrides)
    "dist_ddp": (None, []),
    "dist_zero2_offload": ("recipes/accelerate/deepspeed-zero2-offload.yaml",
                           ["distributed.strategy=deepspeed", "distributed.zero_stage=2",
                            "distributed.offload_optimizer=cpu"]),
    "dist_zero3": ("recipes/accelerate/deepspeed-zero3.yaml",
                   ["distributed.strategy=deepspeed", "distributed.zero_stage=3"]),
    "dist_fsdp2": ("recipes/accelerate/fsdp2.yaml", ["distributed.strategy=fsdp"]),
}


def deepspeed_ops_built() -> bool:
    """On CPU DeepSpeed JIT-builds cpu_adam and shm_comm (minutes): run only if a cache already has them."""
    base = Path(os.environ.get("TORCH_EXTENSIONS_DIR", Path.home() / ".cache/torch_extensions"))
    built = {p.parent.name for p in base.rglob("*.so")} if base.exists() else set()
    return {"cpu_adam", "deepspeed_shm_comm"} <= built


def distributed_run(ctx: Context) -> None:
    """A few steps with the step's strategy on one process; losses compared with dist_ddp's."""
    step = ctx.step
    config, overrides = STRATEGIES[step]
    if not ctx.gpu and step == "dist_fsdp2":
        return ctx.skip("accelerate's FSDP2 path needs CUDA (on CPU it leaves the model unwrapped); "
                        "CPU FSDP2 is tested through native fully_shard in tests/distributed")
    if not ctx.gpu and config and "deepspeed" in config and not deepspeed_ops_built():
        return ctx.skip("DeepSpeed's C++ ops (cpu_adam, shm_comm) are not built on this CPU (a ~2 min JIT "
                        "build); they run on the GPU")
    run = ctx.work / step
    shutil.rmtree(run, ignore_errors=True)
    n = DIST_STEPS[ctx.gpu]
    extra = DIST[ctx.gpu] + overrides + [f"train.steps={n}", "logging.log_every=1", "train.eval_every=1000000",
                                         "train.ckpt_every=0"]
    cfg = TRAIN[ctx.gpu]
    args = ["-m", "windtunnel", "train", str(ROOT / cfg["recipe"]), *sets(cfg["set"] + ["logging.progress=false"]
                                                                          + extra), "--out", str(run)]
    t = time.time()
    if ctx.accelerate(*args, config=config) != 0:
        raise RuntimeError(f"{step}: windtunnel train exited non-zero")
    ctx.figure("wall_s", time.time() - t)
    losses = [r["loss"] for r in metrics(run) if "loss" in r]
    ctx.figure("losses", [round(v, 5) for v in losses])
    rows = [r for r in metrics(run) if "tokens_per_s" in r][1:]
    if rows:
        ctx.figure("tokens_per_s", statistics.median(r["tokens_per_s"] for r in rows))
        ctx.figure("peak_mem_gb", max(r.get("mem_gb") or 0 for r in rows))
    if step == "dist_ddp":
        ctx.check("loss finite", losses[-1], "finite", all(math.isfinite(v) for v in losses))
        return None
    ref = [r["loss"] for r in metrics(ctx.work / "dist_ddp") if "loss" in r]
    diff = max(abs(a - b) / abs(b) for a, b in zip(losses, ref))
    tol = 3e-2 if ctx.gpu else 1e-4  # DeepSpeed/FSDP bf16 keeps bf16 weights in forward; DDP autocasts
    ctx.check("loss matches DDP", diff, f"max rel diff <= {tol:g}", diff <= tol and len(losses) == len(ref))
    return None
