"""muP learning-rate transfer: run width / depth x LR x {sp, mup} sweep files with the Trainer, write a CSV, plot.

    python scripts/mup_lr_transfer.py recipes/sweeps/mup_width.yaml recipes/sweeps/mup_depth.yaml \
        recipes/sweeps/mup_seed.yaml --csv docs/data/mup_transfer_cpu.csv --png docs/mup_transfer_cpu.png
    python scripts/mup_lr_transfer.py SWEEP.yaml ... --collect-only   # plot runs `windtunnel sweep` finished

Runs are planned by windtunnel.sweep.plan (the same names and run dirs as `windtunnel sweep`) and run one
after another in this process; a run dir with a completed summary.json is reused, so re-running resumes.
Writes <out_dir>/transfer.json per sweep file, one CSV row per run (parameterization, width, depth, lr,
seed, final val loss, and the other grid keys as `variant`), and one figure: loss vs LR per width (depth
fixed) and per depth (width fixed), one panel per parameterization.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import shutil
import sys
import time
from pathlib import Path

from windtunnel.recipe import RecipeError
from windtunnel.sweep.plan import PlannedRun, expand, load_sweep

CSV_FIELDS = ("sweep", "parameterization", "depth_rule", "width", "depth", "lr", "seed", "variant", "base_width",
              "steps", "final_val_loss", "status", "params", "tokens", "wall_time_s")
AXIS_KEYS = ("optim.lr", "model.parameterization", "train.seed", "model.n_layers", "model.d_model", "model.n_heads",
             "model.n_kv_heads", "model.ffn_hidden")  # columns of their own, or set by the width family


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


def row_for(sweep: str, run: PlannedRun, summary: dict | None) -> dict:
    r = run.recipe
    loss = summary.get("final_val_loss") if summary and summary.get("status") == "completed" else None
    variant = ";".join(f"{k}={v}" for k, v in sorted(run.overrides.items())
                       if k not in AXIS_KEYS and k != "model")
    return {"sweep": sweep, "parameterization": r.model.parameterization,
            "depth_rule": r.model.mup.depth_rule if r.model.parameterization == "mup" else "none",
            "width": r.model.d_model, "depth": r.model.n_layers, "lr": r.optim.lr, "seed": r.train.seed,
            "base_width": r.model.mup.base_width, "steps": r.train.steps,
            "variant": variant, "final_val_loss": loss if loss is not None and math.isfinite(loss) else None,
            "status": summary.get("status") if summary else "missing", "params": run.params.total,
            "tokens": run.tokens, "wall_time_s": (summary or {}).get("wall_time_s")}


def best_lrs(rows: list[dict], axis: str) -> dict[str, dict[str, dict]]:
    """{par: {axis value: {"lr", "final_val_loss"}}} at the lowest validation loss (mean over seeds); par is
    the parameterization, followed by the run's other grid keys in brackets when it has any."""
    means: dict[tuple, list[float]] = {}
    for row in rows:
        if row["final_val_loss"] is not None:
            par = row["parameterization"] + (f" [{row['variant']}]" if row["variant"] else "")
            means.setdefault((par, row[axis], row["lr"]), []).append(row["final_val_loss"])
    out: dict[str, dict[str, dict]] = {}
    for (par, value, lr), losses in sorted(means.items()):
        loss = sum(losses) / len(losses)
        cur = out.setdefault(par, {}).get(str(value))
        if cur is None or loss < cur["final_val_loss"]:
            out[par][str(value)] = {"lr": lr, "final_val_loss": round(loss, 4), "seeds": len(losses)}
    return out


def _curves(ax, rows: list[dict], axis: str, label: str) -> None:
    values = sorted({r[axis] for r in rows})
    import matplotlib.pyplot as plt

    colors = plt.cm.viridis([i / max(1, len(values) - 1) for i in range(len(values))])
    for color, v in zip(colors, values):
        per_lr: dict[float, list[float]] = {}
        for r in rows:
            if r[axis] == v and r["final_val_loss"] is not None:
                per_lr.setdefault(r["lr"], []).append(r["final_val_loss"])
        if not per_lr:
            continue
        pts = sorted((lr, sum(ls) / len(ls)) for lr, ls in per_lr.items())
        ax.plot(*zip(*pts), marker="o", color=color, label=f"{label} {v}")
        lr, loss = min(pts, key=lambda p: p[1])
        ax.plot([lr], [loss], marker="*", ms=14, color=color, markeredgecolor="k")
    ax.set_xscale("log")
    ax.set_xlabel("base learning rate (optim.lr)")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)


def plot(panels: list[tuple[str, list[dict], str]], png: str | Path, title: str) -> None:
    """One row per (sweep axis); one column per parameterization; mean over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pars = [p for p in ("sp", "mup") if any(r["parameterization"] == p for _, rows, _ in panels for r in rows)]
    fig, axes = plt.subplots(len(panels), len(pars), figsize=(5.2 * len(pars), 3.8 * len(panels)),
                             squeeze=False)
    for i, (name, rows, axis) in enumerate(panels):
        finite = [r["final_val_loss"] for r in rows if r["final_val_loss"] is not None]
        for ax, par in zip(axes[i], pars):
            if not any(r["parameterization"] == par for r in rows):
                ax.set_axis_off()
                continue
            _curves(ax, [r for r in rows if r["parameterization"] == par], axis, axis)
            ax.set_title(f"{name}: {par.upper()}", fontsize=10)
            if finite:  # keep the basin readable: diverged / very bad runs fall off the top
                lo = min(finite)
                ax.set_ylim(lo - 0.03, min(max(finite), lo + 0.8) + 0.03)
        axes[i][0].set_ylabel("final val loss (nats/byte)")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


def markdown_table(rows: list[dict], axis: str) -> str:
    """Loss (mean over seeds) per LR, one line per (parameterization, width or depth); * marks the best."""
    lrs = sorted({r["lr"] for r in rows})
    cells: dict[tuple, list[float]] = {}
    for r in rows:
        if r["final_val_loss"] is not None:
            cells.setdefault((r["parameterization"], r[axis], r["lr"]), []).append(r["final_val_loss"])
    lines = [f"| par | {axis} | " + " | ".join(f"{lr:g}" for lr in lrs) + " | best LR |",
             "|---" * (len(lrs) + 3) + "|"]
    for par, value in sorted({(k[0], k[1]) for k in cells}, key=lambda k: (k[0] != "sp", k[1])):
        means = {lr: sum(v) / len(v) for (p, a, lr), v in cells.items() if (p, a) == (par, value)}
        best = min(means, key=means.get)
        row = [f"**{means[lr]:.3f}**" if lr == best else (f"{means[lr]:.3f}" if lr in means else "–") for lr in lrs]
        seeds = max(len(v) for (p, a, _), v in cells.items() if (p, a) == (par, value))
        lines.append(f"| {par} | {value}{f' ({seeds} seeds)' if seeds > 1 else ''} | " + " | ".join(row)
                     + f" | {best:g} |")
    return "\n".join(lines)


def sweep_axis(rows: list[dict]) -> str:
    """The axis a sweep file varies besides the LR: width or depth."""
    return "depth" if len({r["depth"] for r in rows}) > 1 else "width"


def run_sweep(path: str, overrides: list[str], out: str | None, collect_only: bool) -> tuple[str, list[dict]]:
    spec = load_sweep(path, overrides)
    runs = expand(spec)
    out_dir = Path(out or spec.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows, start = [], time.time()
    for i, run in enumerate(runs):
        rows.append(row_for(spec.name, run, run_or_load(run, out_dir / run.name, collect_only)))
        print(f"[{spec.name} {i + 1}/{len(runs)}] {run.name}: val loss {rows[-1]['final_val_loss']} "
              f"({rows[-1]['status']}), {time.time() - start:.0f} s so far", flush=True)
    axis = sweep_axis(rows)
    (out_dir / "transfer.json").write_text(json.dumps({"runs": rows, "best": best_lrs(rows, axis)}, indent=1))
    return spec.name, rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("sweeps", nargs="+", help="sweep files, e.g. recipes/sweeps/mup_width.yaml")
    p.add_argument("--out", help="sweep directory (one sweep file only; default: its out_dir)")
    p.add_argument("--png", help="plot path (default: <first out_dir>/transfer.png)")
    p.add_argument("--csv", help="write every run as a CSV row here")
    p.add_argument("--collect-only", action="store_true", help="plot finished runs only; train nothing")
    p.add_argument("--markdown", action="store_true", help="also print a loss table per width / depth")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a key of every base recipe (repeatable)")
    args = p.parse_args(argv)
    if args.out and len(args.sweeps) > 1:
        p.error("--out takes one sweep file")
    panels, all_rows = [], []
    try:
        for path in args.sweeps:
            name, rows = run_sweep(path, args.overrides, args.out, args.collect_only)
            panels.append((name, rows, sweep_axis(rows)))
            all_rows += rows
    except RecipeError as e:
        print(f"mup_lr_transfer: error: {e}", file=sys.stderr)
        return 2
    if args.csv:
        Path(args.csv).parent.mkdir(parents=True, exist_ok=True)
        with open(args.csv, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
            writer.writeheader()
            writer.writerows(all_rows)
    png = args.png or Path(load_sweep(args.sweeps[0], args.overrides).out_dir) / "transfer.png"
    by_axis = [(f"{axis} sweep", [r for _, rows, ax in panels if ax == axis for r in rows], axis)
               for axis in ("width", "depth") if any(ax == axis for *_, ax in panels)]
    plot(by_axis, png, "final validation loss after WSD decay; stars: best LR (mean over seeds)")
    if args.markdown:
        for axis in ("width", "depth"):
            rows = [r for _, rs, ax in panels if ax == axis for r in rs]
            if rows:
                print(markdown_table(rows, axis) + "\n")
    for name, rows, axis in panels:
        for par, per in best_lrs(rows, axis).items():
            ordered = sorted(per.items(), key=lambda item: int(item[0]))
            print(f"{name} {par}: best LR by {axis} "
                  + ", ".join(f"{v}: {b['lr']:g} ({b['final_val_loss']:.3f})" for v, b in ordered))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
