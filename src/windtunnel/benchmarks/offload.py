"""Offload capacity: the largest dense model that trains on one device per memory strategy.

    python scripts/bench_offload.py                        # one GPU, seq 2048: none, zero2_cpu, zero3_cpu
    python scripts/bench_offload.py --nvme-path /local_nvme --configs zero3_nvme
    python scripts/bench_offload.py --cpu --max-mem-gb 3   # tiny CPU version (RSS limit instead of OOM)
    python scripts/bench_offload.py --dry-run              # print the plan and DeepSpeed configs only

For each config it bisects the number of layers of a fixed-aspect family (d_model = width_per_layer *
layers, head_dim fixed) for the largest model whose training steps fit: CUDA out-of-memory, a process
killed by the kernel, or a peak above --max-mem-gb count as "does not fit". Every probe runs the real
Trainer (batch 1 x seq_len) in a fresh process, so memory is not carried over. Per config it reports
tokens/s, peak device memory, peak host RSS and the share of step time spent in the optimizer step
(DeepSpeedCPUAdam on the host with offload), and writes a markdown table into --out between markers.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ..callbacks import Callback

SRC = Path(__file__).resolve().parents[2]  # the directory holding the windtunnel package
CONFIGS = {  # name -> recipe distributed block
    "none": {"strategy": "ddp"},
    "zero2_cpu": {"strategy": "deepspeed", "zero_stage": 2, "offload_optimizer": "cpu"},
    "zero3_cpu": {"strategy": "deepspeed", "zero_stage": 3, "offload_optimizer": "cpu", "offload_params": "cpu"},
    "zero3_nvme": {"strategy": "deepspeed", "zero_stage": 3, "offload_optimizer": "nvme", "offload_params": "nvme"},
}
BEGIN, END = "<!-- bench_offload:begin -->", "<!-- bench_offload:end -->"


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--configs", default="none,zero2_cpu,zero3_cpu")
    ap.add_argument("--cpu", action="store_true", help="tiny CPU mode (width 16/layer, seq 64, vocab 256)")
    ap.add_argument("--dry-run", action="store_true", help="print the plan, run nothing")
    ap.add_argument("--seq-len", type=int)
    ap.add_argument("--layers-max", type=int, help="upper end of the bisection (default 64 GPU, 4 CPU)")
    ap.add_argument("--width-per-layer", type=int, help="d_model per layer (default 128 GPU, 16 CPU)")
    ap.add_argument("--head-dim", type=int, help="default 128 GPU, 8 CPU")
    ap.add_argument("--steps", type=int, default=4, help="timed steps per probe (after one warm-up step)")
    ap.add_argument("--max-mem-gb", type=float, help="a probe whose peak (device or host) exceeds this fails")
    ap.add_argument("--nvme-path", help="needed by zero3_nvme")
    ap.add_argument("--out", default="docs/benchmarks.md", help="markdown file to update")
    ap.add_argument("--probe", help=argparse.SUPPRESS)  # internal: run one probe and print JSON
    ap.add_argument("--layers", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    gpu = not args.cpu
    args.seq_len = args.seq_len or (2048 if gpu else 64)
    args.layers_max = args.layers_max or (64 if gpu else 4)
    args.width_per_layer = args.width_per_layer or (128 if gpu else 16)
    args.head_dim = args.head_dim or (128 if gpu else 8)
    return args


def recipe_dict(args, config: str, layers: int) -> dict:
    d = args.width_per_layer * layers
    dist = dict(CONFIGS[config])
    if "nvme" in config:
        dist["nvme_path"] = args.nvme_path
    return {
        "model": {"vocab_size": 256 if args.cpu else 32000, "d_model": d, "n_layers": layers,
                  "n_heads": max(1, d // args.head_dim), "tie_embeddings": False,
                  "loss_chunk": 0 if args.cpu else 8192},
        "train": {"batch_size": 1, "seq_len": args.seq_len, "steps": args.steps + 2, "eval_every": 10 ** 9,
                  "threads": 2 if args.cpu else None, "precision": "fp32" if args.cpu else "bf16",
                  "ckpt_every": 0},
        "schedule": {"name": "constant", "warmup_steps": 0},
        "logging": {"log_every": 1, "progress": False},
        "distributed": dist,
    }


# ----------------------------------------------------------------------------- one probe (child process)


def run_probe(args) -> dict:
    import torch

    from .. import accounting
    from ..recipe import Recipe
    from ..trainer import Trainer

    recipe = Recipe.from_dict(recipe_dict(args, args.probe, args.layers))
    vocab, seq = recipe.model.vocab_size, args.seq_len
    data = [torch.randint(0, vocab, (1, seq + 1), generator=torch.Generator().manual_seed(i))
            for i in range(args.steps + 1)]
    timer = OptimizerTimer(stop_after=args.steps + 1)  # one warm-up step, the timed steps, then stop
    out = {"config": args.probe, "layers": args.layers, "d_model": recipe.model.d_model,
           "params": accounting.count_params(recipe.model).total}
    with tempfile.TemporaryDirectory() as run_dir:
        try:
            Trainer(recipe, train_data=data, callbacks=[timer], out_dir=run_dir).fit()
        except torch.OutOfMemoryError:
            return out | {"ok": False, "reason": "cuda out of memory"}
        rows = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    step_s = [seq / r["tokens_per_s"] for r in rows if "tokens_per_s" in r][1:]  # drop the warm-up step
    out |= {"ok": True, "tokens_per_s": seq / statistics.median(step_s),
            "optimizer_share": timer.seconds / max(sum(step_s), 1e-9) if timer.steps else None,
            "host_peak_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20,
            "device_peak_gb": torch.cuda.max_memory_allocated() / 2 ** 30 if torch.cuda.is_available() else None}
    return out


class OptimizerTimer(Callback):
    """Times the innermost optimizer's step (DeepSpeedCPUAdam under offload), skipping the warm-up step, and
    stops the run before its final checkpoint (a capacity probe keeps nothing on disk)."""

    def __init__(self, stop_after: int):
        self.seconds, self.steps, self.seen, self.stop_after = 0.0, 0, 0, stop_after

    def post_step(self, state):
        self.seen += 1
        # before the run's last step, whose end-of-run checkpoint a probe must not write (ckpt_every=0:
        # a stopped run writes none)
        state.should_stop = state.step == self.stop_after
        if self.seen == 1:
            opt = state.trainer.optimizer
            while hasattr(opt, "optimizer"):
                opt = opt.optimizer
            for name in ("step", "step_subgroup"):  # ZeRO-3 offload steps per sub-group
                if hasattr(opt, name):
                    setattr(opt, name, self._timed(getattr(opt, name)))

    def _timed(self, fn):
        def timed(*a, **k):
            t = time.perf_counter()
            result = fn(*a, **k)
            self.seconds += time.perf_counter() - t
            self.steps += 1
            return result
        return timed


# ----------------------------------------------------------------------------- bisection (parent process)


def largest_fitting(fits, hi: int) -> tuple[int, dict | None]:
    """Largest n in [1, hi] with fits(n) -> (ok, info), assuming monotonicity; 0 if even 1 fails."""
    lo, best = 0, None
    hi += 1  # hi is an exclusive bound that is assumed not to fit
    while hi - lo > 1:
        mid = (lo + hi) // 2
        ok, info = fits(mid)
        if ok:
            lo, best = mid, info
        else:
            hi = mid
    return lo, best


def probe_subprocess(args, config: str, layers: int) -> tuple[bool, dict]:
    cmd = [sys.executable, "-m", "windtunnel.benchmarks.offload", "--probe", config, "--layers", str(layers),
           "--seq-len", str(args.seq_len),
           "--steps", str(args.steps), "--width-per-layer", str(args.width_per_layer),
           "--head-dim", str(args.head_dim)] + (["--cpu"] if args.cpu else [])
    if args.nvme_path:
        cmd += ["--nvme-path", args.nvme_path]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")])))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        return False, {"reason": f"exit {proc.returncode}: {proc.stderr.strip().splitlines()[-1:] or ''}"}
    info = json.loads(lines[-1])
    peak = max(v for v in (info.get("device_peak_gb"), info.get("host_peak_gb") if args.cpu else None, 0) if v)
    if info["ok"] and args.max_mem_gb and peak > args.max_mem_gb:
        info |= {"ok": False, "reason": f"peak {peak:.2f} GB > --max-mem-gb {args.max_mem_gb}"}
    print(f"  {config} layers={layers} params={info['params'] / 1e6:.1f}M -> "
          f"{'fits' if info['ok'] else 'does not fit: ' + info.get('reason', '')}", flush=True)
    return info["ok"], info


def table(results: dict, args) -> str:
    head = (f"Batch 1 x seq {args.seq_len}, d_model = {args.width_per_layer} x layers, head dim {args.head_dim}, "
            f"{'CPU, fp32' if args.cpu else 'bf16'}; optimizer share = optimizer step time / step time.\n\n"
            "| config | largest model | layers x d_model | tokens/s | peak device GiB | peak host GiB | "
            "optimizer share |\n|---|---|---|---|---|---|---|\n")
    rows = []
    for config, (layers, info) in results.items():
        if not info:
            rows.append(f"| {config} | none fits (up to {args.layers_max} layers tried) | | | | | |")
            continue
        fmt = lambda v, f: "-" if v is None else format(v, f)  # noqa: E731
        rows.append(f"| {config} | {info['params'] / 1e6:,.2f}M | {layers} x {info['d_model']} | "
                    f"{info['tokens_per_s']:,.0f} | {fmt(info['device_peak_gb'], '.1f')} | "
                    f"{info['host_peak_gb']:.1f} | {fmt(info['optimizer_share'], '.0%')} |")
    return head + "\n".join(rows) + "\n"


def write_section(path: Path, text: str) -> None:
    """Replace the text between the markers in `path` (append the markers if absent)."""
    doc = path.read_text() if path.exists() else ""
    block = f"{BEGIN}\n{text}{END}"
    if BEGIN in doc and END in doc:
        doc = doc[:doc.index(BEGIN)] + block + doc[doc.index(END) + len(END):]
    else:
        doc = doc.rstrip("\n") + f"\n\n{block}\n"
    path.write_text(doc)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.probe:
        print(json.dumps(run_probe(args)), flush=True)
        return 0
    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    for c in configs:
        if c not in CONFIGS:
            raise SystemExit(f"--configs: unknown {c!r} (known: {', '.join(CONFIGS)})")
        if "nvme" in c and not args.nvme_path:
            raise SystemExit(f"--configs {c}: needs --nvme-path")
    if args.dry_run:
        from ..distributed import deepspeed_config
        from ..recipe import Recipe

        for c in configs:
            r = Recipe.from_dict(recipe_dict(args, c, args.layers_max))
            ds = deepspeed_config(r)["zero_optimization"] if r.distributed.strategy == "deepspeed" else None
            print(json.dumps({"config": c, "layers": f"1..{args.layers_max}", "distributed": CONFIGS[c],
                              "zero_optimization": ds}))
        return 0
    results = {}
    for c in configs:
        print(f"{c}: bisecting 1..{args.layers_max} layers", flush=True)
        results[c] = largest_fitting(lambda n, c=c: probe_subprocess(args, c, n), args.layers_max)
    text = table(results, args)
    print(text)
    write_section(Path(args.out), text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
