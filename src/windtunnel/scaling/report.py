"""The JSON report of a fit and its one-screen text summary."""
from __future__ import annotations

import json
from pathlib import Path

from .result import FitResult, _plain


def build_report(result: FitResult, source: str | None = None, target: dict | None = None,
                 hparams: FitResult | None = None, plots: list | None = None, emitted: str | None = None) -> dict:
    report = {"source": source, **result.to_dict()}
    if hparams is not None:
        report["hparams_law"] = hparams.to_dict()
    if target is not None:
        report["target"] = _plain(target)
    report["warnings"] = list(result.warnings) + (target or {}).get("warnings", [])
    if hparams is not None:
        report["warnings"] += [f"lr-bs: {w}" if not w.startswith("lr-bs") else w for w in hparams.warnings]
    report["plots"] = [str(p) for p in plots or []]
    report["emitted_recipe"] = emitted
    return report


def write_report(report: dict, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_plain(report), indent=2) + "\n")
    return path


def format_summary(report: dict) -> str:
    lines = [f"law {report['law']} on {report['data']['points']} points "
             f"({report['data']['distinct_N']} model sizes, N = {report['n_kind']})"]
    lines += [f"  data: {n}" for n in report["data"].get("notes", []) + report.get("details", {}).get("notes", [])]
    ci = report.get("ci", {})
    for name, value in {**report["params"], **report.get("derived", {})}.items():
        band = f"  [{ci[name][0]:.4g}, {ci[name][1]:.4g}]" if name in ci else ""
        lines.append(f"  {name:>10} = {value:.4g}{band}" if value is not None else f"  {name:>10} = n/a")
    hold = report.get("leave_largest_out") or {}
    if "skipped" in hold:
        lines.append(f"leave-largest-out: skipped ({hold['skipped']})")
    elif hold:
        errs = ", ".join(f"{k.removesuffix('_max_abs_rel_error')} {100 * v:.2f}%"
                         for k, v in hold.items() if k.endswith("_max_abs_rel_error"))
        lines.append(f"leave-largest-out ({hold['held_out']}): max error {errs}")
    top = report.get("details", {}).get("leave_top_compute_out") or {}
    if "items" in top:
        lines.append(f"leave-top-compute-out ({top['held_out']}): max error loss "
                     f"{100 * top['loss_max_abs_rel_error']:.2f}%")
    t = report.get("target")
    if t:
        loss = f"{t['loss']:.4f}" if t.get("loss") is not None else "n/a"
        band = f" [{t['loss_ci'][0]:.4f}, {t['loss_ci'][1]:.4f}]" if t.get("loss_ci") else ""
        lines.append(f"target: N = {t['N']:.4g}, D = {t['D']:.4g} ({t['tokens_per_param']:.1f} tokens/param), "
                     f"C = {t['C']:.3g} ({t['extrapolation']:.1f}x the largest run): loss {loss}{band}")
        e = t.get("emitted")
        if e:
            band = f" [{e['loss_ci'][0]:.4f}, {e['loss_ci'][1]:.4f}]" if e.get("loss_ci") else ""
            loss = f": loss {e['loss']:.4f}{band}" if e.get("loss") is not None else ""
            lines.append(f"emitted recipe: N = {e['N']:.4g}, D = {e['D']:.4g} (d_model {e['d_model']}, "
                         f"{e['n_layers']} layers, {e['n_heads']}q/{e['n_kv_heads']}kv heads){loss}")
        hp = t.get("hparams") or {}
        if hp:
            lines.append("  suggested " + ", ".join(f"{k} = {hp[k]:.4g}" for k in ("lr", "batch") if k in hp))
        lines += drift_lines(t.get("min_steps_drift"))
    lines += [f"warning: {w}" for w in report.get("warnings", [])]
    return "\n".join(lines)


def drift_lines(drift: dict | None) -> list[str]:
    """The target's loss refitted on runs of >= K steps, K doubling (checks.min_steps_drift)."""
    if not drift:
        return []
    if "skipped" in drift:
        return [f"min-steps drift: skipped ({drift['skipped']})"]
    rows = drift["thresholds"]
    first, rest = rows[0], rows[1:]
    cells = [f"{first['loss']:.4f} at K = {first['min_steps']} ({first['points']} points, {first['sizes']} sizes)"]
    cells += [f"{r['loss']:.4f} at {r['min_steps']} ({r['points']}, {r['sizes']})" for r in rest]
    return [f"min-steps drift (target loss fitted on runs of >= K steps): {', '.join(cells)}; "
            f"spread {100 * drift['spread']:.1f}%"]
