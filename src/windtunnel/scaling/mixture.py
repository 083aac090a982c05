"""`windtunnel fit SWEEP --law mixture --objective prose`: choose a data mixture from proxy runs.

RegMix (Liu et al. 2024) style: each proxy run of a mixture sweep (sweep.mixture) trains on weights w
and reports every source's val loss (summary.json: mixture.weights, val_loss_by_source). Each source's
loss is regressed on the weights by least squares with a small ridge: `linear` (loss = b0 + b.w) or
`quadratic` (adds the pairwise products w_i w_j, so an interior optimum is possible); `auto` takes
quadratic when there are at least twice as many runs as its coefficients. The objective is one source's
loss or a weighted sum of them (`--objective code=0.3,prose=0.7`, `mean`). The proposal minimises the
predicted objective over random mixes (and the simplex's corners) inside the box of weights the sweep
sampled: a regression is not trusted outside the range it saw. Uncertainty: a bootstrap over runs
(refit, re-minimise) gives intervals for the chosen weights and the predicted objective, and the
leave-one-out error says how well the regression predicts a run it did not see.
Decay branches are not used: their mix changes inside the run.
"""
from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from ..errors import DataError, RecipeError
from ..recipe import Recipe, load_yaml_tree

MODELS = ("auto", "linear", "quadratic")
CANDIDATES = 20000
RIDGE = 1e-6


@dataclass
class MixturePoints:
    names: list[str]  # sources, in the order of the weight columns
    weights: np.ndarray  # [runs, sources], rows sum to 1
    losses: dict[str, np.ndarray]  # source -> [runs] final val loss
    labels: list[str] = field(default_factory=list)
    recipes: dict[str, str] = field(default_factory=dict)  # label -> recipe.yaml

    def subset(self, idx: np.ndarray) -> "MixturePoints":
        return MixturePoints(self.names, self.weights[idx], {k: v[idx] for k, v in self.losses.items()},
                             [self.labels[i] for i in idx], self.recipes)


def collect_mixture_points(root: str | Path) -> MixturePoints:
    """One point per completed mixture run (summary.json with mixture weights and per-source losses)."""
    root = Path(root)
    rows = []
    for path in sorted(root.rglob("summary.json")):
        try:
            s = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise DataError(f"{path}: not a JSON summary ({e.msg} at line {e.lineno})") from None
        if s.get("status") == "completed" and s.get("mixture") and s.get("val_loss_by_source"):
            rows.append((path.parent, s["mixture"]["weights"], s["val_loss_by_source"]))
    if len(rows) < 3:
        raise DataError(f"{root}: --law mixture needs >= 3 completed mixture runs, found {len(rows)}")
    names = list(rows[0][1])
    if any(list(w) != names or sorted(v) != sorted(names) for _, w, v in rows):
        raise DataError(f"{root}: mixture runs disagree on their sources (first: {', '.join(names)})")
    labels = [str(d.relative_to(root)) for d, _, _ in rows]
    return MixturePoints(names=names, weights=np.array([[w[n] for n in names] for _, w, _ in rows]),
                         losses={n: np.array([v[n] for _, _, v in rows]) for n in names}, labels=labels,
                         recipes={lab: str(d / "recipe.yaml") for lab, (d, _, _) in zip(labels, rows)})


def parse_objective(text: str, names: list[str]) -> dict[str, float]:
    """'prose' -> {prose: 1}; 'code=0.3,prose=0.7'; 'mean' -> equal weights."""
    if text == "mean":
        return {n: 1.0 / len(names) for n in names}
    out = {}
    for part in text.split(","):
        name, sep, value = part.partition("=")
        if name.strip() not in names:
            raise RecipeError(f"--objective: unknown source {name.strip()!r} (sources: {', '.join(names)})")
        try:
            out[name.strip()] = float(value) if sep else 1.0
        except ValueError:
            raise RecipeError(f"--objective: {part!r} is not name=weight") from None
    return out


# ----------------------------------------------------------------------------- regression


def features(weights: np.ndarray, model: str) -> np.ndarray:
    """Design matrix: intercept, the first k-1 weights (the last is implied), and for quadratic their
    pairwise products (squares included)."""
    free = weights[:, :-1]
    cols = [np.ones(len(weights)), *free.T]
    if model == "quadratic":
        cols += [free[:, i] * free[:, j] for i, j in itertools.combinations_with_replacement(range(free.shape[1]), 2)]
    return np.stack(cols, axis=1)


def choose_model(points: MixturePoints, model: str) -> str:
    if model != "auto":
        return model
    n_quad = features(points.weights[:1], "quadratic").shape[1]
    return "quadratic" if len(points.weights) >= 2 * n_quad else "linear"


def fit_objective(points: MixturePoints, objective: dict[str, float], model: str) -> np.ndarray:
    """Coefficients of the objective's regression (a weighted sum of per-source fits is one fit)."""
    X = features(points.weights, model)
    y = sum(w * points.losses[n] for n, w in objective.items())
    penalty = RIDGE * np.eye(X.shape[1])
    penalty[0, 0] = 0.0  # no shrinkage of the intercept
    return np.linalg.solve(X.T @ X + penalty, X.T @ y)


def candidates(points: MixturePoints, n: int, seed: int) -> np.ndarray:
    """Random mixes, the corners and the observed mixes, kept inside the box the sweep sampled."""
    k = len(points.names)
    cand = np.vstack([np.random.default_rng(seed).dirichlet(np.ones(k), size=n), np.eye(k), points.weights])
    lo, hi = points.weights.min(axis=0) - 1e-9, points.weights.max(axis=0) + 1e-9
    return cand[((cand >= lo) & (cand <= hi)).all(axis=1)]


def propose(points: MixturePoints, objective: dict[str, float], model: str = "auto", bootstrap: int = 200,
            seed: int = 0, level: float = 0.95) -> dict:
    """The mixture minimising the predicted objective, with bootstrap intervals and the LOO error."""
    model = choose_model(points, model)
    cand = candidates(points, CANDIDATES, seed)
    X_cand = features(cand, model)
    coef = fit_objective(points, objective, model)
    best = int(np.argmin(X_cand @ coef))
    observed = sum(w * points.losses[n] for n, w in objective.items())
    top = int(np.argmin(observed))
    report = {
        "law": "mixture", "model": model, "objective": objective, "sources": points.names,
        "runs": len(observed), "chosen": dict(zip(points.names, np.round(cand[best], 4).tolist())),
        "predicted_objective": float(X_cand[best] @ coef),
        "best_observed": {"run": points.labels[top], "objective": float(observed[top]),
                          "weights": dict(zip(points.names, points.weights[top].tolist()))},
        "loo_rmse": loo_rmse(points, objective, model), "level": level, "coefficients": coef.tolist(),
    }
    report["warnings"] = fit_warnings(report, observed)
    chosen, at_best = bootstrap_choices(points, objective, model, X_cand, best, bootstrap, seed)
    if len(chosen) >= 2:
        q = 100 * (1 - level) / 2
        w = cand[chosen]
        band = [float(np.percentile(at_best, q)), float(np.percentile(at_best, 100 - q))]
        report["ci"] = {"predicted_objective": band,
                        **{n: [float(np.percentile(w[:, i], q)), float(np.percentile(w[:, i], 100 - q))]
                           for i, n in enumerate(points.names)}}
    return report


def bootstrap_choices(points: MixturePoints, objective: dict[str, float], model: str, X_cand: np.ndarray,
                      best: int, resamples: int, seed: int) -> tuple[list[int], list[float]]:
    """Refit on runs resampled with replacement: (the candidate each refit chooses, its prediction at `best`)."""
    rng = np.random.default_rng(seed)
    chosen, at_best = [], []
    for _ in range(resamples):
        idx = rng.integers(0, len(points.weights), len(points.weights))
        c = fit_objective(points.subset(idx), objective, model)
        chosen.append(int(np.argmin(X_cand @ c)))
        at_best.append(float(X_cand[best] @ c))
    return chosen, at_best


def fit_warnings(report: dict, observed: np.ndarray) -> list[str]:
    """A regression that predicts held-out runs no better than their spread says nothing about the mix."""
    spread = float(np.std(observed))
    if report["loo_rmse"] is not None and report["loo_rmse"] >= spread:
        return [f"leave-one-out RMSE {report['loo_rmse']:.4f} >= the objective's spread over runs {spread:.4f}: "
                "the proxies do not resolve this objective (train them longer, or add runs)"]
    return []


def loo_rmse(points: MixturePoints, objective: dict[str, float], model: str) -> float | None:
    """Root mean square error of leave-one-out predictions of the objective."""
    n = len(points.weights)
    if n <= features(points.weights[:1], model).shape[1]:
        return None
    y = sum(w * points.losses[s] for s, w in objective.items())
    errors = []
    for i in range(n):
        keep = np.array([j for j in range(n) if j != i])
        c = fit_objective(points.subset(keep), objective, model)
        errors.append(float((features(points.weights[i:i + 1], model) @ c)[0]) - y[i])
    return float(np.sqrt(np.mean(np.square(errors))))


# ----------------------------------------------------------------------------- outputs


def emit_mixture_recipe(report: dict, points: MixturePoints, base: str | None, out: str) -> str:
    """The base recipe (default: the best observed run's) with data.mix set to the chosen weights."""
    base = base or points.recipes[report["best_observed"]["run"]]
    tree = load_yaml_tree(Path(base))
    tree.setdefault("data", {})["mix"] = report["chosen"]
    tree.pop("out_dir", None)
    Recipe.from_dict(tree, source=out)  # the emitted recipe must load
    header = f"# windtunnel fit --law mixture: objective {report['objective']}, from {len(points.labels)} runs\n"
    Path(out).write_text(header + yaml.safe_dump(tree, sort_keys=False))
    return out


def plot_mixture(report: dict, points: MixturePoints, folder: str) -> list[str]:
    """Two sources: the objective against the first source's weight, runs and fit. Else predicted vs observed."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    Path(folder).mkdir(parents=True, exist_ok=True)
    coef, model = np.array(report["coefficients"]), report["model"]
    y = sum(w * points.losses[n] for n, w in report["objective"].items())
    fig, ax = plt.subplots(figsize=(5, 3.5))
    if len(points.names) == 2:
        grid = np.linspace(points.weights[:, 0].min(), points.weights[:, 0].max(), 200)
        W = np.stack([grid, 1 - grid], axis=1)
        ax.plot(grid, features(W, model) @ coef, label=f"{model} fit")
        ax.scatter(points.weights[:, 0], y, color="k", s=12, label="proxy runs")
        ax.axvline(report["chosen"][points.names[0]], ls="--", color="C3", label="chosen")
        ax.set_xlabel(f"weight of {points.names[0]}")
    else:
        ax.scatter(features(points.weights, model) @ coef, y, s=12)
        ax.set_xlabel("predicted objective")
    ax.set_ylabel("objective (val loss)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = str(Path(folder) / "mixture_fit.png")
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return [path]


def run_mixture(args) -> dict:
    """The `fit --law mixture` command: points -> proposal -> json / plots / recipe."""
    points = collect_mixture_points(args.source)
    objective = parse_objective(args.objective, points.names)
    report = propose(points, objective, args.mix_model, args.bootstrap, args.seed, args.level)
    report["plots"] = plot_mixture(report, points, args.plots) if args.plots else []
    report["emitted_recipe"] = emit_mixture_recipe(report, points, args.base, args.emit) if args.emit else None
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return report


def format_mixture(report: dict) -> str:
    ci = report.get("ci", {})
    weights = ", ".join(f"{n}={w:.3f}" + (f" [{ci[n][0]:.2f}, {ci[n][1]:.2f}]" if n in ci else "")
                        for n, w in report["chosen"].items())
    lines = [f"law mixture ({report['model']}) on {report['runs']} runs, objective {report['objective']}",
             f"  chosen mix: {weights}",
             f"  predicted objective: {report['predicted_objective']:.4f}"
             + (" [{:.4f}, {:.4f}]".format(*ci["predicted_objective"]) if "predicted_objective" in ci else ""),
             f"  best proxy run: {report['best_observed']['run']} ({report['best_observed']['objective']:.4f})"]
    if report["loo_rmse"] is not None:
        lines.append(f"  leave-one-out RMSE: {report['loo_rmse']:.4f}")
    lines += [f"  warning: {w}" for w in report.get("warnings", [])]
    lines += [f"wrote {path}" for path in [*report["plots"], report["emitted_recipe"]] if path]
    return "\n".join(lines)
