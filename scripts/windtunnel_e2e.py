"""The wind tunnel end to end: proxy sweep -> `windtunnel fit` -> emitted target recipe -> trained ->
predicted vs actual final validation loss (docs/scaling.md, "End-to-end validation").

    python scripts/windtunnel_e2e.py recipes/sweeps/e2e_cpu.yaml                 # run or resume
    python scripts/windtunnel_e2e.py recipes/sweeps/e2e_cpu.yaml --docs docs     # + write the docs figures

Every stage is resumable: finished runs are skipped, killed runs resume from their checkpoint, the fit
and the emitted recipes are reused once a target has started training (its recipe must not change
under it). Stages: sweep (proxies, `workers` at a time), fit (+ emit the compute-optimal target and
the off-optimal ones at the same compute), train (targets), report (table, CSV, JSON, plot).
"""
from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from functools import partial
from pathlib import Path

import yaml

from windtunnel.errors import run_command
from windtunnel.recipe import RecipeError
from windtunnel.scaling import cli as fit_cli
from windtunnel.scaling import e2e_report
from windtunnel.sweep import executors
from windtunnel.sweep.plan import expand, load_sweep
from windtunnel.sweep.report import manifest


class RunFailed(RuntimeError):
    """A proxy or target run ended without completing (its train.log says why)."""


def load_config(path: Path) -> dict:
    try:
        cfg = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise RecipeError(f"{path}: cannot read e2e config ({e})") from None
    for key in ("proxies", "target"):
        if key not in cfg:
            raise RecipeError(f"{path}: missing key {key}")
    cfg["proxies"] = path.parent / cfg["proxies"]
    cfg["out_dir"] = Path(cfg.get("out_dir") or Path("runs") / path.stem)
    cfg.setdefault("workers", 2)  # CPU processes at once; `gpus: [0, 1]` runs one per GPU instead
    cfg.setdefault("fit", {})
    return cfg


class Progress:
    """Every `every` seconds: one line per running run (step / total from its metrics.jsonl)."""

    def __init__(self, every: float = 60.0):
        self.running: dict[str, tuple[Path, int, float]] = {}
        self.every, self.lock, self.stop = every, threading.Lock(), threading.Event()
        threading.Thread(target=self._loop, daemon=True).start()

    def start(self, name: str, run_dir: Path, steps: int) -> None:
        with self.lock:
            self.running[name] = (run_dir, steps, time.time())

    def end(self, name: str) -> None:
        with self.lock:
            self.running.pop(name, None)

    def _loop(self) -> None:
        while not self.stop.wait(self.every):
            with self.lock:
                items = list(self.running.items())
            for name, (run_dir, steps, t0) in items:
                step = last_step(run_dir / "metrics.jsonl")
                print(f"  .. {name}: step {step}/{steps} ({100 * step / max(steps, 1):.0f} %), "
                      f"{time.time() - t0:.0f} s", flush=True)


def last_step(metrics: Path) -> int:
    try:
        lines = metrics.read_text().strip().splitlines()
        rows = [json.loads(x) for x in lines[-5:]]
        return max(int(r.get("step", 0)) for r in rows if "branch_tokens" not in r)
    except (OSError, ValueError):
        return 0


def train_all(jobs: list[tuple[str, Path, int, callable]], cfg: dict, progress: Progress) -> dict[str, float]:
    """Train (name, run_dir, steps, prepare) jobs, `workers` at a time (CPU: one thread each, GPUs
    hidden) or one per GPU of `gpus`; returns wall seconds per run. Every job runs; then the first
    that did not complete raises RunFailed."""
    walls: dict[str, float] = {}

    def one(job, slot: str, trainers: executors.Trainers) -> str | None:
        name, run_dir, steps, prepare = job
        if executors.run_state(run_dir) == executors.COMPLETED:
            return None
        resume = prepare()
        env = {"CUDA_VISIBLE_DEVICES": slot} if slot else \
            {"CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        print(f"[train] {name}: {'resuming' if resume else 'starting'} ({steps} steps"
              f"{', GPU ' + slot if slot else ''})", flush=True)
        progress.start(name, run_dir, steps)
        t0 = time.time()
        try:
            rc = executors.execute(executors.local_command(run_dir, resume), str(run_dir / "train.log"), env,
                                   started=trainers.started)
        finally:
            progress.end(name)
        walls[name] = time.time() - t0
        state = executors.run_state(run_dir)
        print(f"[train] {name}: {state} (exit {rc}) in {walls[name]:.0f} s", flush=True)
        return None if state == executors.COMPLETED else f"{name} did not complete; see {run_dir / 'train.log'}"

    slots = [str(slot) for slot in cfg.get("gpus") or [""] * cfg["workers"]]
    failures = [f for f in executors.run_on_slots([partial(one, job) for job in jobs], slots) if f]
    if failures:
        raise RunFailed(failures[0])
    return walls


def stage_sweep(cfg: dict, progress: Progress) -> tuple[Path, dict]:
    spec = load_sweep(cfg["proxies"])
    spec.out_dir = Path(cfg.get("sweep_dir") or cfg["out_dir"] / "proxies")  # sweep_dir: reuse finished proxies
    runs = expand(spec)
    spec.out_dir.mkdir(parents=True, exist_ok=True)
    (spec.out_dir / "plan.json").write_text(json.dumps(manifest(spec, runs), indent=2))
    print(f"[sweep] {len(runs)} proxy runs, {sum(r.flops for r in runs):.3g} FLOPs -> {spec.out_dir}", flush=True)
    jobs = [(r.name, spec.out_dir / r.name, r.recipe.total_steps(),
             lambda r=r: executors.prepare_run(r, spec.out_dir / r.name)) for r in runs]
    jobs.sort(key=lambda j: -j[2])  # longest first: the two workers finish together
    return spec.out_dir, train_all(jobs, cfg, progress)


def fit_args(cfg: dict, sweep_dir: Path, out: Path, target: list[str]) -> list[str]:
    fit = cfg["fit"]
    return [str(sweep_dir), "--law", fit.get("law", "chinchilla"), "--n-kind", fit.get("n_kind", "non_embedding"),
            "--bootstrap", str(fit.get("bootstrap", 200)), *map(str, fit.get("extra", [])), *target,
            "--json", str(out / "fit.json"), "--emit", str(out / "recipe.yaml")]


def stage_fit(cfg: dict, sweep_dir: Path) -> dict[str, dict]:
    """The compute-optimal target and the off-optimal ones (same C, tokens/param x factor)."""
    targets_dir = cfg["out_dir"] / "targets"
    reports = {}
    best_dir = targets_dir / "optimal"
    flops = float(cfg["target"]["flops"])
    reports["optimal"] = fit_once(cfg, sweep_dir, best_dir, ["--target-flops", repr(flops),
                                                             "--plots", str(best_dir / "plots")])
    t = reports["optimal"]["target"]
    for name, factor in (cfg["target"].get("off_optimal") or {}).items():
        # same C = 6ND, tokens per parameter multiplied by `factor`: N / sqrt(f), D * sqrt(f)
        n, d = t["N"] / float(factor) ** 0.5, t["D"] * float(factor) ** 0.5
        reports[name] = fit_once(cfg, sweep_dir, targets_dir / name,
                                 ["--target-params", repr(n), "--target-tokens", repr(d)])
    return reports


def fit_once(cfg: dict, sweep_dir: Path, out: Path, target: list[str]) -> dict:
    report_path = out / "fit.json"
    if report_path.exists() and (out / "run").exists():  # training started: keep its recipe and prediction
        return json.loads(report_path.read_text())
    out.mkdir(parents=True, exist_ok=True)
    args = fit_args(cfg, sweep_dir, out, target)
    print(f"[fit] windtunnel fit {' '.join(args)}", flush=True)
    report = fit_cli.run(fit_cli.build_parser().parse_args(args))
    print(fit_cli.format_summary(report), flush=True)
    return report


def stage_train_targets(cfg: dict, reports: dict[str, dict], progress: Progress) -> dict[str, float]:
    from windtunnel.recipe import Recipe

    jobs = []
    for name in reports:
        out = cfg["out_dir"] / "targets" / name
        recipe = Recipe.load(out / "recipe.yaml")
        run_dir = out / "run"

        def prepare(run_dir=run_dir, recipe=recipe) -> bool:
            run_dir.mkdir(parents=True, exist_ok=True)
            if executors.run_state(run_dir) == executors.RESUMABLE:
                return True
            recipe.dump(run_dir / "recipe.yaml")  # the emitted recipe, unmodified
            return False

        jobs.append((f"target/{name}", run_dir, recipe.total_steps(), prepare))
    return train_all(jobs, cfg, progress)


def seed_repeats(cfg: dict, reports: dict[str, dict]) -> dict[str, dict]:
    """`target.seeds`: the optimal target's recipe again with other train.seed values (the seed noise of
    the actual loss); each repeat has its own dir and recipe and is compared with the same prediction."""
    from windtunnel.recipe import Recipe

    repeats = {}
    for seed in cfg["target"].get("seeds") or []:
        out = cfg["out_dir"] / "targets" / f"optimal_seed{int(seed)}"
        out.mkdir(parents=True, exist_ok=True)
        if not (out / "recipe.yaml").exists():
            emitted = Recipe.load(cfg["out_dir"] / "targets" / "optimal" / "recipe.yaml")
            emitted.with_overrides([f"train.seed={int(seed)}"]).dump(out / "recipe.yaml")
        repeats[f"optimal_seed{int(seed)}"] = reports["optimal"]
    return repeats


def record_times(out_dir: Path, stage: str, seconds: float, runs: dict[str, float]) -> dict:
    path = out_dir / "timings.json"
    times = json.loads(path.read_text()) if path.exists() else {"stages": {}, "runs": {}}
    times["stages"][stage] = times["stages"].get(stage, 0.0) + seconds
    times["runs"].update(runs)
    path.write_text(json.dumps(times, indent=2))
    return times


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("config", type=Path)
    p.add_argument("--docs", type=Path, help="also write the figures for docs/ (plot, points CSV, target JSON)")
    p.add_argument("--name", default=None, help="file stem for --docs (default: the config's stem)")
    p.add_argument("--progress-every", type=float, default=60.0)
    p.add_argument("--stop-after", choices=["sweep", "fit"], help="stop after this stage (inspect, then rerun)")
    args = p.parse_args(argv)
    # Bad input (RecipeError/DataError) and file-system errors: one line, exit 2; a bug keeps its traceback.
    try:
        return run_command(lambda: run_stages(args), prog="windtunnel_e2e")
    except RunFailed as e:
        print(f"windtunnel_e2e: error: {e}", file=sys.stderr)
        return 2


def run_stages(args) -> int:
    """sweep -> fit -> train the targets -> report (each stage resumes what is done)."""
    cfg = load_config(args.config)
    cfg["out_dir"].mkdir(parents=True, exist_ok=True)
    progress = Progress(args.progress_every)
    t0 = time.time()
    sweep_dir, walls = stage_sweep(cfg, progress)
    record_times(cfg["out_dir"], "sweep", time.time() - t0, walls)
    if args.stop_after == "sweep":
        return 0
    t0 = time.time()
    reports = stage_fit(cfg, sweep_dir)
    record_times(cfg["out_dir"], "fit", time.time() - t0, {})
    if args.stop_after == "fit":
        return 0
    t0 = time.time()
    reports.update(seed_repeats(cfg, reports))
    walls = stage_train_targets(cfg, reports, progress)
    times = record_times(cfg["out_dir"], "targets", time.time() - t0, walls)
    result = e2e_report.build(cfg, sweep_dir, reports, times)
    print(e2e_report.markdown(result), flush=True)
    e2e_report.write(result, cfg["out_dir"], args.docs, args.name or args.config.stem)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
