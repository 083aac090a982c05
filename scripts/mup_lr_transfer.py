"""muP learning-rate transfer: run a widths x LRs x {sp, mup} sweep file with the Trainer and plot loss vs LR.

    python scripts/mup_lr_transfer.py recipes/sweeps/mup_lr_transfer.yaml --png docs/mup_lr_transfer_cpu.png
    python scripts/mup_lr_transfer.py SWEEP.yaml --collect-only   # plot runs `windtunnel sweep` finished

Runs are planned by windtunnel.sweep.plan (the same names and run dirs as `windtunnel sweep`) and run one
after another in this process; a run dir with a completed summary.json is reused, so re-running resumes.
Writes <out_dir>/transfer.json (one row per run, and the best LR per parameterization and width) and the PNG.
"""
from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from pathlib import Path

from windtunnel.recipe import RecipeError
from windtunnel.sweep.plan import PlannedRun, expand, load_sweep


def run_or_load(run: PlannedRun, run_dir: Path, collect_only: bool) -> dict | None:
    """The run's summary: read if completed, else trained now (None when missing under --collect-only)."""
    summary = run_dir / "summary.json"
    if summary.exists() and json.loads(summary.read_text()).get("status") == "completed":
        return json.loads(summary.read_text())
    if collect_only:
        return json.loads(summary.read_text()) if summary.exists() else None
    from windtunnel.trainer import Trainer, TrainingHalted

    shutil.rmtree(run_dir, ignore_errors=True)  # a half-written attempt: start it again
    try:
        return Trainer(run.recipe, out_dir=run_dir).fit()
    except TrainingHalted as e:  # diverged: a point of the plot too (loss = inf)
        return {"status": "failed", "error": str(e)}


def row_for(run: PlannedRun, summary: dict | None) -> dict:
    r = run.recipe
    loss = summary.get("final_val_loss") if summary and summary.get("status") == "completed" else None
    return {"name": run.name, "parameterization": r.model.parameterization, "width": r.model.d_model,
            "lr": r.optim.lr, "val_loss": loss if loss is not None and math.isfinite(loss) else None,
            "status": summary.get("status") if summary else "missing",
            "params": run.params.total, "wall_time_s": (summary or {}).get("wall_time_s")}


def best_lrs(rows: list[dict]) -> dict[str, dict[str, dict]]:
    """{par: {width: {"lr", "val_loss"}}} at the lowest validation loss of each (par, width)."""
    out: dict[str, dict[str, dict]] = {}
    for row in rows:
        if row["val_loss"] is None:
            continue
        cur = out.setdefault(row["parameterization"], {}).get(str(row["width"]))
        if cur is None or row["val_loss"] < cur["val_loss"]:
            out[row["parameterization"]][str(row["width"])] = {"lr": row["lr"], "val_loss": row["val_loss"]}
    return out


def plot(rows: list[dict], png: str | Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pars = [p for p in ("sp", "mup") if any(r["parameterization"] == p for r in rows)]
    widths = sorted({r["width"] for r in rows})
    colors = plt.cm.viridis([i / max(1, len(widths) - 1) for i in range(len(widths))])
    finite = [r["val_loss"] for r in rows if r["val_loss"] is not None]
    fig, axes = plt.subplots(1, len(pars), figsize=(5.2 * len(pars), 4), sharey=True, squeeze=False)
    for ax, par in zip(axes[0], pars):
        for color, w in zip(colors, widths):
            pts = sorted((r["lr"], r["val_loss"]) for r in rows
                         if r["parameterization"] == par and r["width"] == w and r["val_loss"] is not None)
            if not pts:
                continue
            ax.plot(*zip(*pts), marker="o", color=color, label=f"d_model {w}")
            lr, loss = min(pts, key=lambda p: p[1])
            ax.plot([lr], [loss], marker="*", ms=14, color=color, markeredgecolor="k")
        ax.set_xscale("log")
        ax.set_title(f"{par.upper()}", fontsize=11)
        ax.set_xlabel("base learning rate (optim.lr)")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("final validation loss (nats/token)")
    if finite:  # keep the basin readable: diverged / very bad runs fall off the top
        lo = min(finite)
        axes[0][0].set_ylim(lo - 0.05, min(max(finite), lo + 1.5) + 0.05)
    axes[0][-1].legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("sweep", help="sweep file, e.g. recipes/sweeps/mup_lr_transfer.yaml")
    p.add_argument("--out", help="sweep directory (default: the sweep file's out_dir)")
    p.add_argument("--png", help="plot path (default: <out>/transfer.png)")
    p.add_argument("--collect-only", action="store_true", help="plot finished runs only; train nothing")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a key of the base recipe (repeatable)")
    args = p.parse_args(argv)
    try:
        spec = load_sweep(args.sweep, args.overrides)
        runs = expand(spec)
    except RecipeError as e:
        print(f"mup_lr_transfer: error: {e}", file=sys.stderr)
        return 2
    out = Path(args.out or spec.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows, start = [], time.time()
    for i, run in enumerate(runs):
        summary = run_or_load(run, out / run.name, args.collect_only)
        rows.append(row_for(run, summary))
        r = rows[-1]
        print(f"[{i + 1}/{len(runs)}] {run.name}: val loss {r['val_loss']} ({r['status']}), "
              f"{time.time() - start:.0f} s so far", flush=True)
    best = best_lrs(rows)
    (out / "transfer.json").write_text(json.dumps({"runs": rows, "best": best}, indent=1))
    t = runs[0].recipe.train if runs else None
    title = (f"{spec.name}: {t.steps} steps x {t.batch_size}x{t.seq_len} tokens, loss after WSD decay"
             if t else spec.name)
    plot(rows, args.png or out / "transfer.png", title)
    for par, per_width in best.items():
        ordered = sorted(per_width.items(), key=lambda item: int(item[0]))
        print(f"{par}: best LR by width " + ", ".join(f"{w}: {v['lr']:g} ({v['val_loss']:.3f})" for w, v in ordered))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
