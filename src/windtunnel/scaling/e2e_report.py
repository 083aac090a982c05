"""The end-to-end validation report (scripts/windtunnel_e2e.py): proxies, the fitted prediction for
each emitted target and what the target actually reached, as a table, a CSV of the points (refit with
`windtunnel fit`), a JSON of the targets and a plot."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

POINT_COLUMNS = ("N", "N_total", "D", "C", "loss", "lr", "batch", "run")


def proxy_rows(sweep_dir: Path) -> tuple[list[dict], list[dict]]:
    """(points, runs): one point per run and per WSD branch; one row per proxy run with its compute."""
    points, runs = [], []
    for path in sorted(Path(sweep_dir).glob("*/summary.json")):
        s = json.loads(path.read_text())
        if s.get("status") != "completed":
            continue
        name = path.parent.name
        common = {"N": s["non_embedding_params"], "N_total": s["params"], "lr": s.get("lr"),
                  "batch": s.get("batch_tokens")}
        points.append({**common, "D": s["tokens"], "C": s["flops"], "loss": s["final_val_loss"], "run": name})
        for b in s.get("branches") or []:
            points.append({**common, "D": b["tokens"], "C": b["flops"], "loss": b["val_loss"],
                           "run": f"{name}@{b['tokens']}"})
        # a branch's `flops` is that of a standalone run of its length; what it cost is its decay steps
        decay = sum(b["step"] - b["decay_start_step"] for b in s.get("branches") or [])
        runs.append({"run": name, "N": s["non_embedding_params"], "N_total": s["params"], "D": s["tokens"],
                     "flops": s["flops"] + s["flops_per_token"] * s["batch_tokens"] * decay,
                     "loss": s["final_val_loss"], "wall_s": s.get("wall_time_s")})
    return points, runs


def target_row(name: str, report: dict, run_dir: Path) -> dict:
    t = report["target"]
    e = t.get("emitted") or t
    s = json.loads((run_dir / "summary.json").read_text())
    pred, ci, actual = e.get("loss"), e.get("loss_ci"), s["final_val_loss"]
    return {"target": name, "N": s["non_embedding_params"], "N_total": s["params"], "D": s["tokens"],
            "C_6ND": 6.0 * s["non_embedding_params"] * s["tokens"], "flops": s["flops"],
            "d_model": e.get("d_model"), "n_layers": e.get("n_layers"), "lr": s.get("lr"),
            "batch": s.get("batch_tokens"), "predicted": pred, "ci": ci, "actual": actual,
            "error": actual / pred - 1.0 if pred else None,
            "inside": bool(ci and ci[0] <= actual <= ci[1]), "wall_s": s.get("wall_time_s"), "forms": t.get("forms"),
            "ideal": {"N": t["N"], "D": t["D"], "loss": t.get("loss"), "loss_ci": t.get("loss_ci")}}


def build(cfg: dict, sweep_dir: Path, reports: dict[str, dict], times: dict) -> dict:
    points, runs = proxy_rows(sweep_dir)
    targets = [target_row(name, rep, cfg["out_dir"] / "targets" / name / "run") for name, rep in reports.items()]
    largest = max(r["flops"] for r in runs)
    sweep_flops = sum(r["flops"] for r in runs)
    fit = reports["optimal"]
    return {"config": str(cfg.get("path", "")), "law": fit["law"], "n_kind": fit["n_kind"],
            "params": fit["params"], "ci": fit.get("ci"), "leave_largest_out": fit.get("leave_largest_out"),
            "warnings": fit.get("warnings"), "proxies": runs, "points": points, "targets": targets,
            "largest_proxy_flops": largest, "sweep_flops": sweep_flops,
            "target_vs_largest_proxy": targets[0]["flops"] / largest,
            "sweep_vs_target": sweep_flops / targets[0]["flops"], "optimal_seeds": seed_summary(targets),
            "times": times}


def seed_summary(targets: list[dict]) -> dict | None:
    """The optimal target and its seed repeats (`target.seeds`): mean actual loss, spread, error of the mean."""
    runs = [t for t in targets if t["target"] == "optimal" or t["target"].startswith("optimal_seed")]
    if len(runs) < 2:
        return None
    actual = [t["actual"] for t in runs]
    mean, pred, ci = float(np.mean(actual)), runs[0]["predicted"], runs[0]["ci"]
    sem = float(np.std(actual, ddof=1) / np.sqrt(len(actual)))  # standard error of the mean: the seed noise left
    return {"runs": [t["target"] for t in runs], "actual": actual, "mean": mean, "spread": max(actual) - min(actual),
            "sem": sem, "error": mean / pred - 1.0 if pred else None,
            "inside": bool(ci and ci[0] <= mean <= ci[1])}


def markdown(r: dict) -> str:
    lines = ["| proxy | N (non-emb) | N (total) | D | FLOPs (with branches) | final val loss | wall s |",
             "|---|---|---|---|---|---|---|"]
    for p in r["proxies"]:
        lines.append(f"| {p['run']} | {p['N']:,} | {p['N_total']:,} | {p['D']:,} | {p['flops']:.3g} | "
                     f"{p['loss']:.4f} | {p['wall_s'] or 0:.0f} |")
    lines += ["", "| target | N (non-emb) | D | 6ND | FLOPs | × largest proxy | predicted | 95 % interval | "
              "actual | error | inside | wall s |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for t in r["targets"]:
        ci = f"{t['ci'][0]:.4f}–{t['ci'][1]:.4f}" if t["ci"] else "n/a"
        lines.append(f"| {t['target']} (d {t['d_model']}, {t['n_layers']} layers) | {t['N']:,} | {t['D']:,} | "
                     f"{t['C_6ND']:.3g} | {t['flops']:.3g} | {t['flops'] / r['largest_proxy_flops']:.1f} | "
                     f"{t['predicted']:.4f} | {ci} | {t['actual']:.4f} | {100 * t['error']:+.2f} % | "
                     f"{'yes' if t['inside'] else 'no'} | {t['wall_s'] or 0:.0f} |")
    forms = r["targets"][0].get("forms")
    if forms:  # --law auto: which form, why, and what the other one said at the (ideal) optimal target
        lines += ["", f"--law auto chose {forms['chosen']} (leave-top-compute-out max error: " + ", ".join(
            f"{k} {100 * v:.1f} %" for k, v in forms["scores"].items()) + "); at the ideal N*, D* the forms "
            "predict " + ", ".join(f"{k} {v:.4f}" for k, v in forms["predicted"].items()) + "."]
    seeds = r.get("optimal_seeds")
    if seeds:
        err = f"{100 * seeds['error']:+.2f} %" if seeds["error"] is not None else "n/a"
        lines += ["", f"Optimal target over {len(seeds['runs'])} seeds ({', '.join(seeds['runs'])}): mean actual "
                  f"{seeds['mean']:.4f} (standard error {seeds['sem']:.4f}), spread {seeds['spread']:.4f}; "
                  f"error of the mean {err}, {'inside' if seeds['inside'] else 'outside'} the 95 % interval."]
    st = r["times"]["stages"]
    lines += ["", f"Sweep {r['sweep_flops']:.3g} FLOPs = {r['sweep_vs_target']:.2f} × the target's; "
              f"target = {r['target_vs_largest_proxy']:.1f} × the largest proxy. Wall time: "
              + ", ".join(f"{k} {v / 60:.1f} min" for k, v in st.items()) + f", total {sum(st.values()) / 60:.1f} min."]
    return "\n".join(lines)


def write(r: dict, out_dir: Path, docs: Path | None, stem: str) -> None:
    out_dir = Path(out_dir)
    (out_dir / "report.json").write_text(json.dumps(r, indent=2, default=float) + "\n")
    (out_dir / "report.md").write_text(markdown(r) + "\n")
    dests = [(out_dir / "points.csv", out_dir / "targets.json", out_dir / "e2e.png")]
    if docs is not None:
        (docs / "data").mkdir(parents=True, exist_ok=True)
        dests.append((docs / "data" / f"{stem}_points.csv", docs / "data" / f"{stem}_target.json",
                      docs / f"{stem}.png"))
    for csv_path, json_path, png in dests:
        write_points(r["points"], csv_path)
        json_path.write_text(json.dumps({k: r[k] for k in ("law", "n_kind", "params", "targets",
                                                          "optimal_seeds", "largest_proxy_flops", "sweep_flops")},
                                        indent=2, default=float) + "\n")
        plot(r, png)


def write_points(points: list[dict], path: Path) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=POINT_COLUMNS)
        w.writeheader()
        w.writerows(points)


def plot(r: dict, path: Path) -> None:
    """Loss vs 6ND: proxy points and the fitted law along each proxy size; targets with their
    predicted 95 % interval (bar) and actual loss (star)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .fit import LAWS

    law = LAWS[r["law"]]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    pts = r["points"]
    sizes = sorted({p["N"] for p in pts} | {t["N"] for t in r["targets"]})
    cmap = plt.get_cmap("viridis")
    color = {n: cmap(i / max(1, len(sizes) - 1)) for i, n in enumerate(sizes)}
    for n in sizes:
        mine = [p for p in pts if p["N"] == n]
        d_hi = max([p["D"] for p in mine] + [t["D"] for t in r["targets"] if t["N"] == n])
        d_lo = min([p["D"] for p in mine] + [t["D"] for t in r["targets"] if t["N"] == n])
        D = np.geomspace(d_lo, d_hi * 1.2, 50)
        if law.predict is not None:
            ax.plot(6 * n * D, law.predict(r["params"], n, D), color=color[n], lw=1, alpha=0.7)
        if mine:
            ax.scatter([6 * n * p["D"] for p in mine], [p["loss"] for p in mine], color=color[n], s=18,
                       label=f"N = {n / 1e3:.0f}K")
    seeds = r.get("optimal_seeds")
    labelled = [t for t in r["targets"] if not t["target"].startswith("optimal_seed")]
    for t in r["targets"]:
        c, lo, hi = t["C_6ND"], *(t["ci"] or (t["predicted"], t["predicted"]))
        ax.errorbar([c], [t["predicted"]], yerr=[[t["predicted"] - lo], [hi - t["predicted"]]], fmt="o",
                    color=color[t["N"]], mfc="white", capsize=4)
        ax.scatter([c], [t["actual"]], marker="*", s=140, color="red", zorder=5)
    for k, t in enumerate(labelled):  # seed repeats share one label: the error of their mean
        text = f"{t['target']}: {100 * t['error']:+.1f} %"
        if t["target"] == "optimal" and seeds and seeds["error"] is not None:
            text = f"optimal, mean of {len(seeds['runs'])} seeds: {100 * seeds['error']:+.1f} %"
        ax.annotate(text, (t["C_6ND"], t["actual"]), textcoords="offset points", xytext=(-200, 16 + 11 * k),
                    fontsize=8)
    lows = [t["actual"] for t in r["targets"]] + [(t["ci"] or [t["predicted"]])[0] for t in r["targets"]]
    ax.set_ylim(0.95 * min(lows), 1.05 * max(p["loss"] for p in pts))
    ax.set_xscale("log")
    ax.set_xlabel("training compute 6ND (N non-embedding)")
    ax.set_ylabel("final validation loss (nats/byte)")
    ax.set_title(f"{r['law']} fit on the proxies (dots); targets: predicted (o, 95 % CI) vs actual (*)",
                 fontsize=9)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
