"""`windtunnel sweep SWEEP.yaml [--dry-run | --status] ...`: plan, run and resume proxy sweeps.

Exit codes: 0 every run completed (or a dry run / status), 1 some run failed or is still queued,
2 bad input (one-line error, printed by the error boundary of `windtunnel.cli`).
"""
from __future__ import annotations

import argparse
import fnmatch
import json
import math
from pathlib import Path

from ..errors import check_writable
from ..recipe import RecipeError
from ..validation import NON_NEGATIVE, POSITIVE, Bound
from . import executors
from .plan import PlannedRun, SweepSpec, expand, load_sweep
from .report import manifest, plan_table


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="windtunnel sweep", description="Plan and run a proxy sweep.")
    p.add_argument("sweep", help="sweep YAML file (format: docs/sweeps.md)")
    p.add_argument("--dry-run", action="store_true", help="print the plan and exit")
    p.add_argument("--status", action="store_true", help="print each run's state and losses and exit")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a key of the base recipe for every run (repeatable)")
    p.add_argument("--out", help="sweep directory (default: the file's out_dir or sweeps/<name>)")
    p.add_argument("--only", action="append", default=[], metavar="GLOB", help="run only matching run names")
    p.add_argument("--executor", choices=["local", "slurm"], help="override executor.kind")
    p.add_argument("--gpus", type=int, help="local: number of GPUs to use (0 = CPU)")
    p.add_argument("--mfu", type=float, help="MFU for the GPU-hour estimate")
    p.add_argument("--gpu", help="GPU name for the peak FLOP/s of the estimate (e.g. H100, A100)")
    p.add_argument("--peak-tflops", type=float, help="peak TFLOP/s for the estimate (overrides --gpu)")
    return p


FLAG_BOUNDS = {"gpus": NON_NEGATIVE, "mfu": Bound(0, 1, low_open=True), "peak_tflops": POSITIVE}


def apply_flags(spec: SweepSpec, args) -> SweepSpec:
    for name, bound in FLAG_BOUNDS.items():
        value = getattr(args, name)
        if value is not None and not (math.isfinite(value) and bound.admits(value)):
            raise RecipeError(f"--{name.replace('_', '-')}: must be {bound}, got {value}")
    if args.out:
        spec.out_dir = Path(args.out)
    if args.executor:
        spec.executor.kind = args.executor
    if args.gpus is not None:
        spec.executor.gpus = args.gpus
    if args.mfu is not None:
        spec.estimate.mfu = args.mfu
    if args.gpu:
        spec.estimate.gpu = args.gpu
    if args.peak_tflops is not None:
        spec.estimate.peak_tflops = args.peak_tflops
    return spec


def select(runs: list[PlannedRun], patterns: list[str]) -> list[PlannedRun]:
    if not patterns:
        return runs
    chosen = [r for r in runs if any(fnmatch.fnmatch(r.name, p) for p in patterns)]
    if not chosen:
        raise RecipeError(f"--only: no run matches {', '.join(patterns)}")
    return chosen


def check_unchanged(sweep_dir: Path, runs: list[PlannedRun]) -> None:
    """Refuse to mix results: a run that already has progress must have the same planned recipe."""
    old_plan = sweep_dir / "plan.json"
    if not old_plan.exists():
        return
    before = {r["name"]: r["fingerprint"] for r in json.loads(old_plan.read_text())["runs"]}
    for run in runs:
        run_dir = sweep_dir / run.name
        old = before.get(run.name)
        if old and old != run.fingerprint and executors.run_state(run_dir) != executors.MISSING:
            raise RecipeError(f"{run_dir}: the sweep now plans a different recipe for this run "
                              f"(fingerprint {old} -> {run.fingerprint}); delete the run directory or use --out")


def status_table(sweep_dir: Path, runs: list[PlannedRun]) -> str:
    lines = []
    for run in runs:
        run_dir = sweep_dir / run.name
        state = executors.run_state(run_dir)
        extra = ""
        if state == executors.COMPLETED:
            s = json.loads((run_dir / "summary.json").read_text())
            extra = f"  train {s.get('final_train_loss')}  val {s.get('final_val_loss')}  " \
                    f"branches {len(s.get('branches') or [])}"
        lines.append(f"{run.name:<40} {state}{extra}")
    return "\n".join(lines)


def run_sweep(spec: SweepSpec, plan: list[PlannedRun], runs: list[PlannedRun] | None = None, echo=print) -> int:
    """Run `runs` (default: the whole `plan`); plan.json always lists the whole plan."""
    sweep_dir, runs = spec.out_dir, plan if runs is None else runs
    check_unchanged(sweep_dir, plan)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    (sweep_dir / "plan.json").write_text(json.dumps(manifest(spec, plan), indent=2, default=str))
    todo = [(r, sweep_dir / r.name) for r in runs if executors.run_state(sweep_dir / r.name) != executors.COMPLETED]
    echo(f"{sweep_dir}: {len(runs) - len(todo)} of {len(runs)} runs already completed; {len(todo)} to run")
    if not todo:
        return 0
    if spec.executor.kind == "slurm":
        executors.run_slurm(todo, spec.executor, sweep_dir, spec.name, echo)
    else:
        executors.run_local(todo, spec.executor, echo)
    left = [r.name for r in runs if executors.run_state(sweep_dir / r.name) != executors.COMPLETED]
    if left:
        echo(f"{len(left)} runs not completed: {', '.join(left)}; re-run the same command to resume them")
        return 1
    echo(f"all {len(runs)} runs completed -> {sweep_dir}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Errors propagate to the boundary in `windtunnel.cli.main` (one line, exit 2)."""
    args = build_parser().parse_args(argv)
    spec = apply_flags(load_sweep(args.sweep, args.overrides), args)
    plan = expand(spec)
    runs = select(plan, args.only)
    if args.status:
        print(status_table(spec.out_dir, runs))
        return 0
    print(plan_table(runs, spec.estimate))
    if args.dry_run:
        return 0
    check_writable(spec.out_dir, "--out" if args.out else "out_dir")
    return run_sweep(spec, plan, runs)
