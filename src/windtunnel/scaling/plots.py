"""PNG plots of a fit (matplotlib Figure objects on the Agg canvas: no pyplot global state).

loss_vs_compute.png   runs, loss frontier, fitted L*(C) with CI band out to the target
isoflop.png           loss against N per compute budget, with the law's curve and optimum
residuals.png         relative residuals of the fitted points against compute
predicted_vs_actual.png  fitted points and the leave-largest-out prediction (red)
lr_bs.png             (lr-bs law) per-cell optimal LR and batch against the law
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.ticker import FormatStrFormatter

from .frontier import group_by_compute, pareto_frontier
from .result import FitResult

HOLDOUT_STYLE = {"color": "red", "marker": "*", "s": 160, "zorder": 5}


def make_plots(result: FitResult, out_dir: str | Path, target: dict | None = None) -> list[Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if result.impl.kind == "hparams":
        makers = {"lr_bs.png": plot_lr_bs, "predicted_vs_actual.png": plot_predicted_vs_actual}
    else:
        makers = {"loss_vs_compute.png": plot_loss_vs_compute, "isoflop.png": plot_isoflop,
                  "residuals.png": plot_residuals, "predicted_vs_actual.png": plot_predicted_vs_actual}
    written = []
    for name, maker in makers.items():
        fig = Figure(figsize=(7.5, 5.5), layout="constrained")
        FigureCanvasAgg(fig)
        if maker(result, fig.add_subplot(), target) is not False:
            fig.savefig(out_dir / name, dpi=110)
            written.append(out_dir / name)
    return written


def _title(result: FitResult, what: str) -> str:
    errs = [f"{k.removesuffix('_max_abs_rel_error')} {100 * v:.1f}%"
            for k, v in (result.holdout or {}).items() if k.endswith("_max_abs_rel_error")]
    tail = f"\nleave-largest-out error: {', '.join(errs)}" if errs else ""
    return f"{result.law}: {what} (N = {result.points.n_kind}){tail}"


def _scatter_by_N(ax, result: FitResult, x, y):
    p = result.points
    sc = ax.scatter(x, y, c=p.N, norm=LogNorm(), cmap="viridis", s=18, alpha=0.8)
    ax.figure.colorbar(sc, ax=ax, label=f"N ({p.n_kind})")


def plot_loss_vs_compute(result: FitResult, ax, target: dict | None) -> None:
    p = result.points
    _scatter_by_N(ax, result, p.C, p.loss)
    f = pareto_frontier(p)
    ax.step(p.C[f], p.loss[f], where="post", color="black", lw=1, label="loss frontier (runs)")
    c_max = result.max_fitted_compute
    c_hi = max(c_max, target["C"] if target else 0) * 2
    C = np.geomspace(p.C.min() / 2, c_hi, 200)
    L = result.compute_optimal(C)[2]
    inside = C <= c_max
    ax.plot(C[inside], L[inside], color="C3", label="fitted compute-optimal loss")
    ax.plot(C[~inside], L[~inside], color="C3", ls="--", label="extrapolation")
    band = result.interval(lambda q: result.impl.optimal(q, C)[2])
    if band:
        ax.fill_between(C, band[0], band[1], color="C3", alpha=0.15, label=f"{int(100 * result.level)}% CI")
    ax.axvline(c_max, color="gray", ls=":", label="largest fitted run")
    if target and target.get("loss") is not None:
        ci = target.get("loss_ci") or [target["loss"]] * 2
        # a percentile interval of few or biased refits need not contain the point estimate
        below, above = max(target["loss"] - ci[0], 0.0), max(ci[1] - target["loss"], 0.0)
        ax.errorbar([target["C"]], [target["loss"]], yerr=[[below], [above]],
                    fmt="*", ms=14, color="C1", capsize=4, label="target")
    _holdout_marks(ax, result, x="C")
    ax.set(xscale="log", yscale="log", xlabel="training compute C (FLOPs)", ylabel="loss",
           title=_title(result, "loss vs compute"))
    for axis in (ax.yaxis.set_major_formatter, ax.yaxis.set_minor_formatter):  # 2.5, not 2.5x10^0
        axis(FormatStrFormatter("%.3g"))
    ax.legend(fontsize=8)


def plot_isoflop(result: FitResult, ax, target: dict | None):
    p = result.points
    groups = [g for g in group_by_compute(p.C, result.details.get("tolerance", 0.25)) if len(np.unique(p.N[g])) >= 3]
    if not groups:
        return False  # no budget holds three model sizes: nothing to draw
    colors = LogNorm(p.C.min(), p.C.max())
    for g in groups:
        C = float(np.exp(np.mean(np.log(p.C[g]))))
        color = colormaps["plasma"](0.85 * float(colors(C)))
        ax.scatter(p.N[g], p.loss[g], color=color, s=20, label=f"C = {C:.2g}")
        N = np.geomspace(p.N[g].min() / 1.5, p.N[g].max() * 1.5, 100)
        if result.law == "isoflop":
            opt = min(result.details["groups"], key=lambda o: abs(np.log(o["C"] / C)))
            if abs(np.log(opt["C"] / C)) < np.log1p(result.details.get("tolerance", 0.25)):
                q2, q1, q0 = opt["parabola"]
                x = np.log(N)
                ax.plot(N, q0 + q1 * x + q2 * x * x, color=color, lw=1)
                ax.plot(opt["N"], opt["loss"], "kx")
        elif result.impl.predict is not None:
            ax.plot(N, result.predict(N, C / (6.0 * N)), color=color, lw=1)
            n_opt, _, l_opt = result.compute_optimal(C)
            ax.plot(n_opt, l_opt, "kx")
    ax.set(xscale="log", xlabel=f"N ({p.n_kind})", ylabel="loss", title=_title(result, "isoFLOP profiles"))
    ax.legend(fontsize=7, ncol=2)


def fitted_pairs(result: FitResult) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """(x for residual plots, actual, predicted, quantity) over what the law was fitted to."""
    p = result.points
    if result.impl.kind == "loss":
        return p.C, p.loss, result.predict(p.N, p.D), "loss"
    if result.impl.kind == "frontier":
        rows = result.details.get("groups") or result.details.get("frontier")
        C = np.array([r["C"] for r in rows])
        return C, np.array([r["loss"] for r in rows]), result.compute_optimal(C)[2], "optimal loss"
    cells = result.details["cells"]
    N, D = np.array([c["N"] for c in cells]), np.array([c["D"] for c in cells])
    return 6 * N * D, np.array([c["lr"] for c in cells]), result.suggest(N, D)["lr"], "optimal lr"


def plot_residuals(result: FitResult, ax, target: dict | None) -> None:
    x, actual, predicted, what = fitted_pairs(result)
    ax.axhline(0, color="gray", lw=1)
    ax.scatter(x, 100 * (actual - predicted) / predicted, s=18, color="C0", label="fitted")
    hold = [i for i in (result.holdout or {}).get("items", []) if i["quantity"] == "loss"]
    if hold:
        ax.scatter([i["C"] for i in hold], [100 * (i["actual"] - i["predicted"]) / i["predicted"] for i in hold],
                   label="held out (largest scale)", **HOLDOUT_STYLE)
    ax.set(xscale="log", xlabel="training compute C (FLOPs)", ylabel=f"{what}: (actual - fit) / fit  [%]",
           title=_title(result, "residuals"))
    ax.legend(fontsize=8)


def plot_predicted_vs_actual(result: FitResult, ax, target: dict | None) -> None:
    _, actual, predicted, what = fitted_pairs(result)
    ax.scatter(actual, predicted, s=18, color="C0", label="fitted points")
    quantity = "lr" if result.impl.kind == "hparams" else "loss"
    hold = [i for i in (result.holdout or {}).get("items", []) if i["quantity"] == quantity]
    if hold:
        ax.scatter([i["actual"] for i in hold], [i["predicted"] for i in hold],
                   label="largest scale, predicted by a fit without it", **HOLDOUT_STYLE)
    values = np.concatenate([actual, predicted, [i["actual"] for i in hold], [i["predicted"] for i in hold]])
    lim = [values.min() * 0.98, values.max() * 1.02]
    ax.plot(lim, lim, color="gray", ls="--", lw=1, label="y = x")
    if result.impl.kind == "hparams":
        ax.set(xscale="log", yscale="log")
    ax.set(xlabel=f"actual {what}", ylabel=f"predicted {what}", title=_title(result, "predicted vs actual"))
    ax.legend(fontsize=8)


def plot_lr_bs(result: FitResult, ax, target: dict | None) -> None:
    cells = result.details["cells"]
    N, D = np.array([c["N"] for c in cells]), np.array([c["D"] for c in cells])
    lr = np.array([c["lr"] for c in cells])
    sc = ax.scatter(N, lr, c=D, norm=LogNorm(), cmap="viridis", s=30, label="per-cell optimum")
    ax.figure.colorbar(sc, ax=ax, label="D (tokens)")
    grid = np.geomspace(N.min() / 1.5, N.max() * 1.5, 50)
    for d in np.unique(D):
        color = sc.cmap(sc.norm(d))
        ax.plot(grid, result.suggest(grid, d)["lr"], color=color, lw=1)
    text = f"lr = {result.params['lr_coef']:.3g} N^{result.params['lr_N']:.3f} D^{result.params['lr_D']:.3f}"
    if "bs_coef" in result.params:
        text += f"\nbatch = {result.params['bs_coef']:.3g} D^{result.params['bs_D']:.3f} tokens"
    ax.text(0.02, 0.02, text, transform=ax.transAxes, fontsize=9)
    _holdout_marks(ax, result, x="N", quantity="lr")
    ax.set(xscale="log", yscale="log", xlabel=f"N ({result.points.n_kind})", ylabel="optimal peak LR",
           title=_title(result, "optimal learning rate"))
    ax.legend(fontsize=8)


def _holdout_marks(ax, result: FitResult, x: str, quantity: str = "loss") -> None:
    items = [i for i in (result.holdout or {}).get("items", []) if i["quantity"] == quantity]
    if items:
        ax.scatter([i[x] for i in items], [i["predicted"] for i in items],
                   label="held-out largest scale: predicted", **HOLDOUT_STYLE)
