"""Data-mixture evidence on CPU: proxy sweep -> `fit --law mixture` -> a >= 10x larger run with the
chosen mix against the same run with a uniform mix (issue 15, item 4). Everything local, no download.

    python scripts/mixture_e2e.py            # about 30 min on one CPU thread; rerun resumes
    python scripts/mixture_e2e.py --out DIR  # default runs/mixture_e2e

Steps: write the two domains (stdlib code, its docstrings+comments as prose) under
.windtunnel_cache/stdlib_domains; `windtunnel sweep recipes/sweeps/mixture_cpu.yaml` (8 proxies, d=48,
2 layers, 384 steps); the target (d=128, 4 layers, 384 steps: >= 10x a proxy's FLOPs) with a uniform
mix; then per objective (prose val loss, mean val loss) `windtunnel fit --law mixture --objective ...`
(emits the target recipe) and the target with the chosen mix. Writes results.json and, per objective,
fit-<objective>/{fit.json, table.md, mixture_fit.png} into the output folder.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from windtunnel.data.stdlib_domains import write_stdlib_domains

SWEEP = "recipes/sweeps/mixture_cpu.yaml"
BASE = "recipes/mixture-cpu.yaml"
# prose: one target domain (as RegMix targets one validation domain); mean: the run's val_loss
OBJECTIVES = ("prose", "mean")
TARGET = ["model.d_model=128", "model.n_layers=4", "model.n_heads=4", "model.ffn_hidden=512",
          "train.batch_size=8", "train.seq_len=128", "train.steps=384", "train.eval_every=100000",
          "train.eval_batches=16", "logging.progress=false", "logging.log_every=50"]


def windtunnel(*args: str) -> None:
    print("+ windtunnel", " ".join(args), flush=True)
    subprocess.run([sys.executable, "-m", "windtunnel", *args], check=True)


def train(name: str, out: Path, mix: dict[str, float]) -> dict:
    run = out / name
    if not (run / "summary.json").exists():
        mix_text = "{" + ", ".join(f"{k}: {v}" for k, v in mix.items()) + "}"
        resume = ["--resume"] if (run / "checkpoints").exists() else []
        windtunnel("train", BASE, *[a for s in TARGET for a in ("--set", s)], "--set", f"data.mix={mix_text}",
                   "--out", str(run), *resume)
    return json.loads((run / "summary.json").read_text())


def objective(summary: dict, weights: dict[str, float]) -> float:
    return sum(w * summary["val_loss_by_source"][n] for n, w in weights.items())


def table(proxies: list[tuple[str, dict]], targets: dict[str, dict], fit: dict) -> str:
    names = fit["sources"]
    head = "| run | " + " | ".join(f"w_{n}" for n in names) + " | " + \
           " | ".join(f"val_loss/{n}" for n in names) + " | objective | FLOPs |"
    rows = [head, "|" + "---|" * (2 * len(names) + 3)]
    for label, s in [*proxies, *targets.items()]:
        w = s["mixture"]["weights"]
        rows.append(f"| {label} | " + " | ".join(f"{w[n]:.3f}" for n in names) + " | "
                    + " | ".join(f"{s['val_loss_by_source'][n]:.4f}" for n in names)
                    + f" | {objective(s, fit['objective']):.4f} | {s['flops']:.2e} |")
    return "\n".join(rows) + "\n"


def fit_and_train(out: Path, objective_text: str) -> tuple[dict, dict]:
    """`fit --law mixture` on the proxies for one objective, then the target with the chosen mix."""
    folder = out / f"fit-{objective_text}"
    folder.mkdir(exist_ok=True)
    windtunnel("fit", str(out / "proxies"), "--law", "mixture", "--objective", objective_text, "--bootstrap", "500",
               "--json", str(folder / "fit.json"), "--plots", str(folder), "--emit", str(folder / "target.yaml"))
    fit = json.loads((folder / "fit.json").read_text())
    return fit, train(f"target-{objective_text}", out, fit["chosen"])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="data-mixture evidence on CPU")
    p.add_argument("--out", default="runs/mixture_e2e")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_stdlib_domains(".windtunnel_cache/stdlib_domains")  # the paths recipes/mixture-cpu.yaml reads
    windtunnel("sweep", SWEEP, "--out", str(out / "proxies"))
    proxies = sorted(((f"proxy {d.name}", json.loads((d / "summary.json").read_text()))
                      for d in (out / "proxies").iterdir() if (d / "summary.json").exists()),
                     key=lambda x: -x[1]["mixture"]["weights"]["prose"])
    uniform = train("target-uniform", out, {"code": 0.5, "prose": 0.5})
    results, ok = {}, True
    for objective_text in OBJECTIVES:
        fit, chosen_run = fit_and_train(out, objective_text)
        ratio = chosen_run["flops"] / max(s["flops"] for _, s in proxies)
        chosen, flat = objective(chosen_run, fit["objective"]), objective(uniform, fit["objective"])
        results[objective_text] = {"chosen_mix": fit["chosen"], "ci": fit.get("ci"), "loo_rmse": fit["loo_rmse"],
                                   "target_objective": {"chosen": chosen, "uniform": flat},
                                   "compute_ratio": ratio, "chosen_wins": chosen < flat}
        targets = {f"target, mix chosen for {objective_text}": chosen_run, "target, uniform mix": uniform}
        (out / f"fit-{objective_text}" / "table.md").write_text(table(proxies, targets, fit))
        print(f"objective {fit['objective']}: chosen {chosen:.4f} vs uniform {flat:.4f} "
              f"({'chosen wins' if chosen < flat else 'UNIFORM WINS'}); target/proxy compute {ratio:.1f}x")
        ok = ok and chosen < flat and ratio >= 10
    (out / "results.json").write_text(json.dumps(results, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
