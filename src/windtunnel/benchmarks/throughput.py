"""Throughput benchmark: windtunnel next to the equivalent HF transformers model, same shapes and step.

    windtunnel bench 125m 350m 1b moe mtp4 --compile both --docs docs/benchmarks.md   (one GPU)
    windtunnel bench tiny 10m --docs docs/benchmarks.md                                (CPU)

For each preset (or recipe YAML) it times the windtunnel Trainer (`--model-only`: the bare model in the
reference loop) and a reference: HF LlamaForCausalLM / MixtralForCausalLM built from config with random
init (no download), or for MTP presets windtunnel with one future token. Both sides get the same batch,
the same AdamW (windtunnel.optim: fused on CUDA), the same clipping and autocast. Tokens/s is timed over
`--steps` steps after `--warmup` (compilation happens there): on CUDA the window's mean, synced only
at its ends; on CPU the fastest step (the least disturbed by other processes on shared cores). FLOPs come from
windtunnel.accounting.flops_per_token, for both sides. Each row runs in a fresh process so peak memory is its own (CUDA: max allocated; CPU: peak RSS growth over the idle process).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import resource
import shlex
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from multiprocessing import get_context
from pathlib import Path

from ..recipe import Recipe, RecipeError
from .report import add_ratios, report, summary_line, write_docs

GPT_125M = {"d_model": 768, "n_layers": 12, "n_heads": 12, "n_kv_heads": 4, "ffn_hidden": 2048,
            "vocab_size": 32000, "tie_embeddings": False, "loss_chunk": 8192}
TINY = {"d_model": 128, "n_layers": 4, "n_heads": 4, "ffn_hidden": 512, "vocab_size": 256,
        "tie_embeddings": False}


@dataclass(frozen=True)
class Preset:
    model: dict  # windtunnel ModelConfig fields
    batch: int
    seq: int
    gpu_only: bool = False


# Shapes of the H100 anchors in shared/bench (hf_baseline.py, lean_ref.py) and small CPU ones.
PRESETS = {
    "125m": Preset(GPT_125M, 32, 2048, gpu_only=True),
    "350m": Preset({**GPT_125M, "d_model": 1024, "n_layers": 24, "n_heads": 16, "ffn_hidden": 2816}, 16, 2048, True),
    "1b": Preset({**GPT_125M, "d_model": 2048, "n_layers": 16, "n_heads": 32, "n_kv_heads": 8,
                  "ffn_hidden": 5632}, 8, 2048, True),
    "moe": Preset({**GPT_125M, "moe": {"num_experts": 8, "top_k": 2, "expert_hidden": 1024}}, 16, 2048, True),
    "mtp4": Preset({**GPT_125M, "mtp": {"n_future": 4}}, 32, 2048, True),
    "tiny": Preset(TINY, 16, 256),  # the smoke recipe's model, byte vocabulary
    "10m": Preset({"d_model": 384, "n_layers": 6, "n_heads": 6, "ffn_hidden": 1024, "vocab_size": 4096,
                   "tie_embeddings": False}, 8, 256),
    "tiny-moe": Preset({**TINY, "moe": {"num_experts": 4, "top_k": 2, "expert_hidden": 256}}, 16, 256),
    "tiny-mtp4": Preset({**TINY, "mtp": {"n_future": 4}}, 16, 256),
}


@dataclass
class Spec:
    """One row to measure; plain data so it can cross into the worker process."""
    name: str
    impl: str  # windtunnel (Trainer) | hf | mtp1 (windtunnel, 1 future token); "-model": the bare loop
    model: dict
    batch: int
    seq: int
    device: str
    precision: str  # bf16 | fp32
    compile: bool
    steps: int
    warmup: int
    clip: float
    threads: int | None = None
    isolated: bool = True


# ----------------------------------------------------------------------------- building


def bench_recipe(spec: Spec) -> Recipe:
    model = dict(spec.model, max_seq_len=spec.seq)
    if spec.impl.startswith("mtp1"):
        model["mtp"] = {"n_future": 1}
    return Recipe.from_dict({
        "model": model,
        "train": {"batch_size": spec.batch, "seq_len": spec.seq, "steps": spec.warmup + spec.steps + 1,
                  "precision": spec.precision, "compile": spec.compile, "clip": spec.clip,
                  "eval_every": 10**9, "ckpt_every": 0, "threads": spec.threads},
        "schedule": {"name": "constant", "warmup_steps": 0},
        # the Trainer's default log interval (a host sync each), or one row at the window's end
        "logging": {"progress": False, "log_every": min(10, spec.warmup + spec.steps)},
    }, source=f"bench {spec.name}")


def hf_model(cfg):
    """The transformers model with windtunnel's shapes (Llama, or Mixtral for MoE), randomly initialised."""
    import transformers

    common = dict(vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, num_hidden_layers=cfg.n_layers,
                  num_attention_heads=cfg.n_heads, num_key_value_heads=cfg.kv_heads,
                  max_position_embeddings=cfg.max_seq_len, rms_norm_eps=cfg.norm_eps,
                  rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta},
                  tie_word_embeddings=cfg.tie_embeddings, attn_implementation="sdpa", use_cache=False)
    if cfg.mtp.n_future > 1:
        raise ValueError("transformers has no multi-token-prediction model; MTP presets compare to mtp1")
    if cfg.moe.num_experts:
        m = cfg.moe
        if m.shared_experts or m.first_dense or m.every != 1:
            raise ValueError("Mixtral has no shared experts or dense layers; bench MoE presets need neither")
        config = transformers.MixtralConfig(intermediate_size=cfg.expert_dim,
                                            num_local_experts=m.num_experts, num_experts_per_tok=m.top_k,
                                            **common)
        return transformers.MixtralForCausalLM(config)
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(intermediate_size=cfg.ffn_dim, **common))


def random_batches(vocab: int, batch: int, seq: int, n: int = 2) -> list:
    import torch

    g = torch.Generator().manual_seed(0)
    return [torch.randint(0, vocab, (batch, seq + 1), generator=g) for _ in range(n)]


# ----------------------------------------------------------------------------- timing


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


class _Clock:
    """Seconds per step. CUDA: the window's total / steps, synced only at its two ends (a sync per step
    would stall the launch queue). CPU: the fastest step, the least disturbed by other processes on
    shared cores (timeit's advice); the median swung tenfold between runs on a busy 2-core machine."""

    def __init__(self, device):
        self.device, self.marks = device, []

    def mark(self) -> None:
        if not self.marks or self.device.type != "cuda":
            _sync(self.device)
            self.marks.append(time.perf_counter())

    def finish(self, steps: int) -> float:
        _sync(self.device)
        end = time.perf_counter()
        if self.device.type == "cuda":
            return (end - self.marks[0]) / steps
        return min(b - a for a, b in zip(self.marks, self.marks[1:] + [end]))


def _rss_bytes() -> int | None:
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


class _Memory:
    """Peak memory of one row: CUDA max allocated, or (isolated CPU rows) peak RSS over the start."""

    def __init__(self, device, isolated: bool):
        import torch

        self.device, self.isolated = device, isolated
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        self.start = _rss_bytes()

    def peak_gib(self) -> float | None:
        import torch

        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated() / 2**30
        if not self.isolated or self.start is None:
            return None  # ru_maxrss covers the whole process, earlier rows included
        scale = 1 if sys.platform == "darwin" else 1024
        return max(0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale - self.start) / 2**30


def time_loop(spec: Spec, recipe: Recipe, device) -> tuple[float, float]:
    """The reference loop (as shared/bench/hf_baseline.py): returns (seconds per step, last loss)."""
    import torch

    from ..models import build_model
    from ..optim import build_optimizer

    torch.manual_seed(0)
    is_hf = spec.impl == "hf"
    with torch.device(device):
        model = hf_model(recipe.model) if is_hf else build_model(recipe.model)
    model.train()
    opt = build_optimizer(model, recipe, device.type)
    fwd = torch.compile(model) if spec.compile else model
    # the Trainer's two batches, already on the device (as shared/bench/hf_baseline.py)
    batches = [(b[:, :-1].contiguous().to(device), b[:, 1:].contiguous().to(device))
               for b in random_batches(recipe.model.vocab_size, spec.batch, spec.seq)]
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=spec.precision == "bf16")

    def step(i: int) -> torch.Tensor:
        x, y = batches[i % len(batches)]
        with autocast:
            loss = fwd(input_ids=x, labels=y, shift_labels=y).loss if is_hf else fwd(x, targets=y)["loss"]
        loss.backward()
        if spec.clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), spec.clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach()

    for i in range(spec.warmup):
        step(i)
    clock = _Clock(device)
    for i in range(spec.warmup, spec.warmup + spec.steps):
        clock.mark()
        loss = step(i)
    return clock.finish(spec.steps), float(loss)


def time_trainer(spec: Spec, recipe: Recipe, device) -> tuple[float, float]:
    """The real windtunnel Trainer on random batches; timed by a callback between two syncs."""
    from ..trainer import Callback, Trainer

    class Window(Callback):
        clock, seconds = _Clock(device), None

        def post_step(self, state):
            if state.step == spec.warmup + spec.steps:
                self.seconds = self.clock.finish(spec.steps)
                state.should_stop = True  # ckpt_every=0: no checkpoint on the way out
            elif state.step >= spec.warmup:
                self.clock.mark()

    window = Window()
    batches = random_batches(recipe.model.vocab_size, spec.batch, spec.seq)
    with tempfile.TemporaryDirectory() as out:
        Trainer(recipe, train_data=batches, callbacks=[window], out_dir=out).fit()
        rows = [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    return window.seconds, [r["loss"] for r in rows if "loss" in r][-1]


@contextlib.contextmanager
def environment(**values: str):
    """Set environment variables for the duration of the block, then put the old values back."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _prime(spec: Spec, timer, device) -> None:
    """One step of a minute model through the same path, so lazy imports and library start-up (oneDNN,
    accelerate, transformers) are not counted in the CPU memory of the row that follows."""
    small = {**spec.model, "d_model": 32, "n_heads": 2, "n_kv_heads": None, "n_layers": 1, "ffn_hidden": 64,
             "vocab_size": 64, "loss_chunk": 0}
    if "moe" in small:
        small["moe"] = {**small["moe"], "expert_hidden": 32}
    tiny = replace(spec, model=small, batch=1, seq=8, steps=1, warmup=1, compile=False)
    timer(tiny, bench_recipe(tiny), device)


def measure(spec: Spec) -> dict:
    """Time one row; errors become a row with status "error" (the table still gets written)."""
    import torch

    from .. import accounting

    row = {"preset": spec.name, "impl": spec.impl, "compile": spec.compile, "precision": spec.precision,
           "batch": spec.batch, "seq": spec.seq, "steps": spec.steps, "status": "ok"}
    try:
        if spec.threads:
            torch.set_num_threads(spec.threads)
        recipe = bench_recipe(spec)
        cfg = recipe.model
        device = torch.device(spec.device)
        timer = time_trainer if spec.impl in ("windtunnel", "mtp1") else time_loop
        # the Trainer's accelerator follows distributed.use_cuda(): make it agree with --device
        with environment(**({"WINDTUNNEL_CPU": "1"} if device.type == "cpu" else {})):
            if device.type == "cpu" and spec.isolated:
                _prime(spec, timer, device)
            memory = _Memory(device, spec.isolated)
            step_seconds, loss = timer(spec, recipe, device)
        if not math.isfinite(loss):
            raise FloatingPointError(f"loss is {loss}")
        tokens_per_s = spec.batch * spec.seq / step_seconds
        flops = accounting.flops_per_token(cfg, spec.seq)
        peak = accounting.peak_flops(torch.cuda.get_device_name(device) if device.type == "cuda" else None)
        row.update(params_m=accounting.count_params(cfg).total / 1e6, loss=loss, tokens_per_s=tokens_per_s,
                   tflops=tokens_per_s * flops / 1e12, mfu=tokens_per_s * flops / peak if peak else None,
                   peak_mem_gib=memory.peak_gib(), flops_per_token=flops)
    except Exception as e:  # one broken row (missing module, OOM, compile failure) must not sink the table
        row.update(status="error", reason=f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:200])
    return row


def run_isolated(spec: Spec) -> dict:
    try:
        with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
            return pool.submit(measure, spec).result()
    except Exception as e:  # the worker died (out of memory, segfault)
        return {"preset": spec.name, "impl": spec.impl, "compile": spec.compile, "status": "error",
                "reason": f"worker process failed: {type(e).__name__}: {e}"[:200]}


# ----------------------------------------------------------------------------- rows and report


def specs_for(name: str, preset: Preset, args, device: str) -> list[Spec]:
    """The windtunnel row and its reference row(s), eager and/or compiled."""
    precision = args.precision if args.precision != "auto" else ("bf16" if device == "cuda" else "fp32")
    loop = "-model" if args.model_only else ""
    ref = f"mtp1{loop}" if preset.model.get("mtp", {}).get("n_future", 1) > 1 else "hf"
    compiles = {"off": [False], "on": [True], "both": [False, True]}[args.compile]
    return [Spec(name, impl, preset.model, args.batch or preset.batch, args.seq or preset.seq, device,
                 precision, comp, args.steps, args.warmup, args.clip, args.threads, not args.no_isolate)
            for comp in compiles for impl in (f"windtunnel{loop}", ref)]


def load_preset(name: str) -> Preset:
    """A named preset, or a recipe YAML (its model, batch_size and seq_len)."""
    if name in PRESETS:
        return PRESETS[name]
    if name.endswith((".yaml", ".yml")):
        r = Recipe.load(name, ["train.steps=1", "train.tokens=null"])
        if not r.model.vocab_size:
            raise RecipeError(f"{name}: model.vocab_size must be set to benchmark a recipe")
        model = {k: v for k, v in r.to_dict()["model"].items() if k != "max_seq_len"}
        return Preset(model, r.train.batch_size, r.train.seq_len)
    raise RecipeError(f"bench: unknown preset {name!r} (known: {', '.join(PRESETS)}, or a recipe .yaml)")


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def build_parser(prog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n")[0])
    p.add_argument("presets", nargs="*", help=f"presets ({', '.join(PRESETS)}) or recipe YAMLs; default: all")
    p.add_argument("--compile", nargs="?", const="on", default="off", choices=["off", "on", "both"],
                   help="torch.compile both sides (both = eager and compiled rows)")
    p.add_argument("--steps", type=_positive, default=None, help="timed steps (default 20 GPU, 5 CPU)")
    p.add_argument("--warmup", type=_positive, default=None, help="untimed steps first (default 5 GPU, 2 CPU)")
    p.add_argument("--batch", type=_positive, help="sequences per step (default: the preset's)")
    p.add_argument("--seq", type=_positive, help="sequence length (default: the preset's)")
    p.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"],
                   help="auto = bf16 autocast on GPU, fp32 on CPU")
    p.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    p.add_argument("--clip", type=float, default=1.0, help="gradient clipping on both sides (0 = off)")
    p.add_argument("--threads", type=_positive, help="torch CPU threads")
    p.add_argument("--model-only", action="store_true",
                   help="time the windtunnel model in the reference loop instead of the Trainer")
    p.add_argument("--no-isolate", action="store_true",
                   help="run rows in this process (faster; CPU peak memory is then not reported)")
    p.add_argument("--docs", type=Path, help="update this markdown file's bench block for the device")
    p.add_argument("--json", type=Path, help="write the rows as JSON")
    return p


def main(argv: list[str] | None = None, prog: str = "windtunnel bench") -> int:
    import torch

    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(prog).parse_args(argv)
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        print(f"{prog}: error: --device cuda: no CUDA device", file=sys.stderr)
        return 2
    gpu = device == "cuda"
    if args.threads:
        torch.set_num_threads(args.threads)  # the rows set it too; this makes the report say so
    args.steps = args.steps or (20 if gpu else 5)
    args.warmup = args.warmup or (5 if gpu else 2)
    try:
        presets = {name: load_preset(name) for name in args.presets or PRESETS}
    except RecipeError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    rows = []
    for name, preset in presets.items():
        if preset.gpu_only and not gpu:
            rows.append({"preset": name, "impl": "all", "compile": False, "status": "skipped",
                         "reason": "GPU-only preset (no CUDA device)"})
            print(f"{name}: skipped (GPU-only preset, no CUDA device)", flush=True)
            continue
        for spec in specs_for(name, preset, args, device):
            row = run_isolated(spec) if spec.isolated else measure(spec)
            rows.append(row)
            print(summary_line(row), flush=True)
    add_ratios(rows)
    text = report(rows, device, f"{prog} {shlex.join(argv)}".strip())
    print("\n" + text)
    if args.docs:
        write_docs(args.docs, "gpu" if gpu else "cpu", text)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0
