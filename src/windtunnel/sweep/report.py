"""The plan as a table (`--dry-run`) and as plan.json: params, tokens, FLOPs and GPU-hours per run.

GPU-hours = training FLOPs / (MFU x peak FLOP/s) / 3600, with peak from accounting.PEAK_TFLOPS.
"""
from __future__ import annotations

from ..accounting import peak_flops
from ..recipe import RecipeError
from .plan import EstimateConfig, PlannedRun, SweepSpec, human


def peak_for(est: EstimateConfig) -> float:
    peak = peak_flops(est.gpu, est.peak_tflops)
    if peak is None:
        raise RecipeError(f"estimate.gpu: unknown GPU {est.gpu!r}; set estimate.peak_tflops")
    return peak


def gpu_hours(run: PlannedRun, est: EstimateConfig) -> float:
    return run.flops / (est.mfu * peak_for(est)) / 3600.0


def plan_rows(runs: list[PlannedRun], est: EstimateConfig) -> list[dict]:
    return [{"name": r.name, "overrides": r.overrides, "params": r.params.total,
             "non_embedding_params": r.params.non_embedding, "active_params": r.params.active,
             "active_non_embedding_params": r.params.active_non_embedding, "tokens": r.tokens,
             "steps": r.recipe.total_steps(r.world), "flops": r.flops, "gpu_hours": gpu_hours(r, est),
             "world": r.world, "fingerprint": r.fingerprint} for r in runs]


def plan_table(runs: list[PlannedRun], est: EstimateConfig) -> str:
    head = ("run", "params", "non-emb", "active", "tokens", "tok/N", "steps", "FLOPs", "GPU-h")
    rows = [head]
    for r, row in zip(runs, plan_rows(runs, est)):
        rows.append((r.name, human(r.params.total), human(r.params.non_embedding), human(r.params.active),
                     human(r.tokens), f"{r.tokens / r.params.non_embedding:.1f}", str(row["steps"]),
                     f"{r.flops:.2e}", f"{row['gpu_hours']:.3g}"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
             for row in rows]
    total_flops = sum(r.flops for r in runs)
    total_h = sum(gpu_hours(r, est) for r in runs)
    lines.append(f"{len(runs)} runs, {total_flops:.2e} FLOPs, {total_h:.3g} GPU-hours at "
                 f"{est.mfu:.0%} MFU of {est.gpu} ({peak_for(est) / 1e12:.0f} TFLOP/s peak); "
                 f"FLOPs include WSD decay branches, not evaluation")
    return "\n".join(lines)


def manifest(spec: SweepSpec, runs: list[PlannedRun]) -> dict:
    return {"name": spec.name, "sweep_file": str(spec.path.resolve()), "estimate": vars(spec.estimate),
            "executor": spec.executor.kind, "runs": plan_rows(runs, spec.estimate),
            "total_flops": sum(r.flops for r in runs),
            "total_gpu_hours": sum(gpu_hours(r, spec.estimate) for r in runs) if runs else 0.0}


