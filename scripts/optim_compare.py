"""AdamW vs Muon on CPU: per-optimizer LR sweeps, a second seed at the best LR, shorter-horizon Muon runs
and the step-time overhead measured in one process. Writes docs/data/optim_*.csv and docs/optim_*.png
(read by docs/optimizers.md).

    python scripts/optim_compare.py [--out runs/optim_compare] [--jobs 2] [--models smoke,10m]

Each run is `windtunnel train recipes/smoke.yaml --set ...` in its own process (1 thread, at most --jobs at
once); a run dir with a completed summary.json is reused, so re-running the command resumes.
Tokens-to-match: the fewest tokens at which Muon's training loss (window mean, seeds averaged) is at or
below AdamW's final one, read (a) off Muon's full-horizon curve and (b) from the Muon runs with a shorter
horizon (the whole WSD schedule compressed), interpolating their final validation losses.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BASE = ROOT / "recipes" / "smoke.yaml"
COMMON = ["train.threads=1", "train.ckpt_every=0", "logging.log_every=5", "logging.progress=false",
          "train.eval_batches=8",
          # the smoke recipe as it was when docs/optimizers.md was measured (it has been retuned since)
          "model.init_std=0.02", "train.batch_size=16", "schedule.warmup_frac=0.1",
          "schedule.wsd.decay_frac=0.25", "schedule.wsd.decay_shape=1-sqrt"]
MODELS = {  # name -> (overrides, steps); smoke = recipes/smoke.yaml's 1.1M model, 10m = ~10.6M params
    "smoke": ([], 80),
    "10m": (["model.d_model=384", "model.n_layers=6", "model.n_heads=6", "model.ffn_hidden=1024",
             "train.batch_size=8"], 40),
}
LRS = {"adamw": [1e-3, 3e-3, 1e-2], "muon": [1e-3, 3e-3, 1e-2]}  # half-decade steps
EXTRA_LRS = {("smoke", "muon"): [3e-2]}  # the smoke Muon sweep's best was its top point: one more above


def sweep_lrs(model: str, opt: str) -> list[float]:
    return LRS[opt] + EXTRA_LRS.get((model, opt), [])
HORIZONS = [0.5]  # Muon at its best LR with the schedule compressed to this fraction of the steps


# ----------------------------------------------------------------------------- runs


def run_name(model: str, opt: str, lr: float, seed: int, steps: int) -> str:
    return f"{model}-{opt}-lr{lr:g}-s{seed}-n{steps}"


def train(out: Path, model: str, opt: str, lr: float, seed: int, steps: int) -> Path:
    run_dir = out / run_name(model, opt, lr, seed, steps)
    summary = run_dir / "summary.json"
    if summary.exists() and json.loads(summary.read_text()).get("status") == "completed":
        return run_dir
    overrides = COMMON + MODELS[model][0] + [f"optim.name={opt}", f"optim.lr={lr}", f"train.seed={seed}",
                                             f"train.steps={steps}", f"train.eval_every={steps}"]
    shutil.rmtree(run_dir, ignore_errors=True)  # a half-written attempt: start it again
    cmd = [sys.executable, "-m", "windtunnel", "train", str(BASE), "--out", str(run_dir)]
    cmd += [a for o in overrides for a in ("--set", o)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    t0 = time.time()
    proc = subprocess.run(cmd, cwd=out, env=env, capture_output=True, text=True)
    print(f"{run_dir.name}: exit {proc.returncode} in {time.time() - t0:.0f} s", flush=True)
    if proc.returncode:
        print(proc.stderr[-2000:], flush=True)
    return run_dir


def run_all(out: Path, specs: list[tuple], jobs: int) -> None:
    specs = sorted(specs, key=lambda s: -MODELS[s[0]][1] * (10 if s[0] == "10m" else 1))  # long runs first
    with ThreadPoolExecutor(jobs) as pool:
        list(pool.map(lambda s: train(out, *s), specs))


def read_run(run_dir: Path) -> dict | None:
    """Summary plus the curve [(step, tokens, wall_s, loss)]; wall time from each window's tokens/s."""
    if not (run_dir / "summary.json").exists():
        return None
    summary = json.loads((run_dir / "summary.json").read_text())
    curve, wall, prev_tokens = [], 0.0, 0
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        if "loss" in row:
            wall += (row["tokens"] - prev_tokens) / row["tokens_per_s"]
            prev_tokens = row["tokens"]
            curve.append((row["step"], row["tokens"], wall, row["loss"]))
    return {**summary, "curve": curve}


def best_lr(out: Path, model: str, opt: str) -> float:
    steps = MODELS[model][1]
    losses = {}
    for lr in sweep_lrs(model, opt):
        run = read_run(out / run_name(model, opt, lr, 0, steps))
        if run and run.get("final_val_loss") is not None:
            losses[lr] = run["final_val_loss"]
    return min(losses, key=losses.get)


# ----------------------------------------------------------------------------- step-time overhead


def overhead(model: str, reps: int = 6) -> list[dict]:
    """Median step time (forward, backward, optimizer) of AdamW and Muon, interleaved in this process."""
    import torch

    from windtunnel.models import build_model
    from windtunnel.optim import build_optimizer
    from windtunnel.recipe import Recipe

    torch.set_num_threads(1)
    recipe = Recipe.load(BASE, COMMON + MODELS[model][0] + ["model.vocab_size=256", "model.max_seq_len=256"])
    t = recipe.train
    x = torch.randint(0, 256, (t.batch_size, t.seq_len + 1), generator=torch.Generator().manual_seed(0))
    setups = {}
    for opt in ("adamw", "muon"):
        torch.manual_seed(0)
        net = build_model(recipe.model)
        setups[opt] = (net, build_optimizer(net, recipe.with_overrides([f"optim.name={opt}"])))
    times: dict[str, dict[str, list[float]]] = {o: {"step": [], "opt": []} for o in setups}
    for rep in range(reps + 1):  # rep 0 warms up
        for opt, (net, optimizer) in setups.items():
            t0 = time.perf_counter()
            net(x[:, :-1], x[:, 1:])["loss"].backward()
            t1 = time.perf_counter()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            t2 = time.perf_counter()
            if rep:
                times[opt]["step"].append(t2 - t0)
                times[opt]["opt"].append(t2 - t1)
    rows = [{"model": model, "optimizer": o, "step_ms": 1e3 * statistics.median(v["step"]),
             "optimizer_step_ms": 1e3 * statistics.median(v["opt"]), "reps": reps} for o, v in times.items()]
    for row in rows:
        row["step_ratio_vs_adamw"] = row["step_ms"] / rows[0]["step_ms"]
    return rows


# ----------------------------------------------------------------------------- analysis


def mean_curve(runs: list[dict]) -> list[tuple]:
    """Seeds averaged point by point: (tokens, wall_s, loss)."""
    n = min(len(r["curve"]) for r in runs)
    return [(runs[0]["curve"][i][1], statistics.mean(r["curve"][i][2] for r in runs),
             statistics.mean(r["curve"][i][3] for r in runs)) for i in range(n)]


def first_below(curve: list[tuple], target: float) -> float | None:
    """Tokens at which the curve first reaches `target` (linear between logged points)."""
    for (t0, _, l0), (t1, _, l1) in zip(curve, curve[1:]):
        if l1 <= target:
            return t1 if l0 <= target else t0 + (t1 - t0) * (l0 - target) / (l0 - l1)
    return None


def horizon_match(points: list[tuple[float, float]], target: float) -> float | None:
    """Tokens at which final val loss vs horizon (tokens, loss; sorted) crosses `target` (interpolated)."""
    for (t0, l0), (t1, l1) in zip(points, points[1:]):
        if l0 > target >= l1:
            return t0 + (t1 - t0) * (l0 - target) / (l0 - l1)
    return points[0][0] if points and points[0][1] <= target else None


def summarise(out: Path, model: str, over: list[dict]) -> tuple[dict, list[dict]]:
    steps = MODELS[model][1]
    best = {o: best_lr(out, model, o) for o in LRS}
    runs = {o: [r for s in (0, 1) if (r := read_run(out / run_name(model, o, best[o], s, steps)))] for o in LRS}
    curves = {o: mean_curve(runs[o]) for o in LRS}
    adam_final_train = statistics.mean(r["final_train_loss"] for r in runs["adamw"])
    adam_final_val = statistics.mean(r["final_val_loss"] for r in runs["adamw"])
    muon_val = statistics.mean(r["final_val_loss"] for r in runs["muon"])
    tokens = runs["adamw"][0]["tokens"]
    horizon = [(h * tokens, read_run(out / run_name(model, "muon", best["muon"], 0, int(h * steps))))
               for h in HORIZONS]
    points = [(t, r["final_val_loss"]) for t, r in horizon if r] + [(tokens, runs["muon"][0]["final_val_loss"])]
    curve_tokens = first_below(curves["muon"], adam_final_train)
    horizon_tokens = horizon_match(points, adam_final_val)
    ratio = {r["optimizer"]: r for r in over}
    row = {"model": model, "params": runs["adamw"][0]["params"], "steps": steps, "tokens": tokens,
           "best_lr_adamw": best["adamw"], "best_lr_muon": best["muon"],
           "adamw_val_loss": adam_final_val, "muon_val_loss": muon_val,
           "adamw_final_train_loss": adam_final_train,
           "muon_tokens_to_match_curve": curve_tokens,
           "ratio_curve": curve_tokens / tokens if curve_tokens else None,
           "muon_tokens_to_match_horizon": horizon_tokens,
           "ratio_horizon": horizon_tokens / tokens if horizon_tokens else None,
           "step_time_ratio": ratio["muon"]["step_ms"] / ratio["adamw"]["step_ms"],
           # same forward/backward work: the optimizer-step difference over AdamW's whole step (less noisy)
           "step_time_ratio_from_optimizer": 1 + (ratio["muon"]["optimizer_step_ms"]
                                                  - ratio["adamw"]["optimizer_step_ms"]) / ratio["adamw"]["step_ms"],
           "optimizer_step_ratio": ratio["muon"]["optimizer_step_ms"] / ratio["adamw"]["optimizer_step_ms"],
           "adamw_wall_s": statistics.mean(r["wall_time_s"] for r in runs["adamw"]),
           "muon_wall_s": statistics.mean(r["wall_time_s"] for r in runs["muon"])}
    curve_rows = [{"model": model, "optimizer": o, "lr": best[o], "seed": s, "step": st, "tokens": tk,
                   "wall_s": round(w, 2), "loss": lo}
                  for o in LRS for s, r in enumerate(runs[o]) for st, tk, w, lo in r["curve"]]
    return row, curve_rows


def write_csv(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def sweep_rows(out: Path, model: str) -> list[dict]:
    steps = MODELS[model][1]
    rows = []
    for opt in LRS:
        for lr in sweep_lrs(model, opt):
            for seed in (0, 1):
                run = read_run(out / run_name(model, opt, lr, seed, steps))
                if run:
                    rows.append({"model": model, "optimizer": opt, "lr": lr, "seed": seed, "steps": steps,
                                 "tokens": run["tokens"], "final_train_loss": run["final_train_loss"],
                                 "final_val_loss": run["final_val_loss"], "wall_s": round(run["wall_time_s"], 1)})
        for h in HORIZONS if opt == "muon" else []:
            run = read_run(out / run_name(model, opt, best_lr(out, model, opt), 0, int(h * steps)))
            if run:
                rows.append({"model": model, "optimizer": opt, "lr": run["lr"], "seed": 0, "steps": run["steps"],
                             "tokens": run["tokens"], "final_train_loss": run["final_train_loss"],
                             "final_val_loss": run["final_val_loss"], "wall_s": round(run["wall_time_s"], 1)})
    return rows


def plot(models: list[str], curves: list[dict], sweeps: list[dict], png_dir: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(models), 3, figsize=(15, 4.2 * len(models)), squeeze=False)
    colors = {"adamw": "tab:blue", "muon": "tab:red"}
    for row, model in zip(axes, models):
        for opt, color in colors.items():
            for seed in (0, 1):
                pts = [c for c in curves if c["model"] == model and c["optimizer"] == opt and c["seed"] == seed]
                if not pts:
                    continue
                label = f"{opt} lr={pts[0]['lr']:g}" if seed == 0 else None
                row[0].plot([p["tokens"] / 1e3 for p in pts], [p["loss"] for p in pts], color=color,
                            alpha=1 if seed == 0 else 0.5, label=label)
                row[1].plot([p["wall_s"] for p in pts], [p["loss"] for p in pts], color=color,
                            alpha=1 if seed == 0 else 0.5, label=label)
            pts = sorted((s["lr"], s["final_val_loss"]) for s in sweeps
                         if s["model"] == model and s["optimizer"] == opt and s["seed"] == 0
                         and s["steps"] == MODELS[model][1])
            row[2].plot([p[0] for p in pts], [p[1] for p in pts], "o-", color=color, label=opt)
        row[0].set(xlabel="tokens (k)", ylabel="train loss (window mean)", title=f"{model}: loss vs tokens")
        row[1].set(xlabel="wall time (s, 1 thread)", ylabel="train loss", title=f"{model}: loss vs wall time")
        row[2].set(xscale="log", xlabel="peak LR", ylabel="final val loss", title=f"{model}: LR sweep (seed 0)")
        for ax in row:
            ax.legend()
            ax.grid(alpha=0.3)
        lo = min(p["loss"] for p in curves if p["model"] == model)
        for ax in row[:2]:
            ax.set_ylim(lo - 0.05, lo + 1.0)
    fig.tight_layout()
    fig.savefig(png_dir / "optim_compare_cpu.png", dpi=110)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/optim_compare")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--models", default="smoke,10m")
    p.add_argument("--docs", default=str(ROOT / "docs"))
    args = p.parse_args(argv)
    out, docs, models = Path(args.out).resolve(), Path(args.docs), args.models.split(",")
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    run_all(out, [(m, o, lr, 0, MODELS[m][1]) for m in models for o in LRS for lr in sweep_lrs(m, o)], args.jobs)
    second = [(m, o, best_lr(out, m, o), 1, MODELS[m][1]) for m in models for o in LRS]
    second += [(m, "muon", best_lr(out, m, "muon"), 0, int(h * MODELS[m][1])) for m in models for h in HORIZONS]
    run_all(out, second, args.jobs)
    over = [r for m in models for r in overhead(m)]  # after the runs: no training process of ours competes
    write_csv(docs / "data" / "optim_overhead.csv", over)
    summary, curves, sweeps = [], [], []
    for m in models:
        row, c = summarise(out, m, [r for r in over if r["model"] == m])
        summary.append(row)
        curves += c
        sweeps += sweep_rows(out, m)
    write_csv(docs / "data" / "optim_summary.csv", summary)
    write_csv(docs / "data" / "optim_curves.csv", curves)
    write_csv(docs / "data" / "optim_runs.csv", sweeps)
    plot(models, curves, sweeps, docs)
    print(json.dumps(summary, indent=1))
    print(f"total wall time {time.time() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
