"""Run a planned sweep: one run directory per run, each trained by `windtunnel train` in a subprocess.

A run's state is read from its directory alone (the trainer's contract), so re-running a sweep is
safe at any time: completed runs (summary.json status completed) are skipped, runs with a checkpoint
resume from it (--resume), failed or missing runs start again from scratch.
- local: runs one after another; with GPUs, one run per GPU in parallel (CUDA_VISIBLE_DEVICES). Each
  trainer dies with the sweep (sweep/child.py), and a run whose directory is locked by a trainer still
  running (rundir.RunLock) is skipped, not started twice.
- slurm: one submitit job per run, `accelerate launch -m windtunnel train ...` on gpus_per_run GPUs.
"""
from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Callable, TypeVar

from .. import checkpoint
from ..rundir import is_locked
from .plan import ExecutorConfig, PlannedRun

T = TypeVar("T")

COMPLETED, RESUMABLE, FAILED, MISSING = "completed", "resumable", "failed", "missing"
BUSY_EXIT = 2  # what a second trainer on a locked run would exit with


def run_state(run_dir: Path) -> str:
    summary = run_dir / "summary.json"
    if summary.exists():
        try:
            status = json.loads(summary.read_text()).get("status")
        except (ValueError, AttributeError):  # cut short or not an object: not a completed run
            status = None
        if status == COMPLETED:
            return COMPLETED
    if checkpoint.latest_checkpoint(run_dir) is not None:
        return RESUMABLE
    return FAILED if summary.exists() else MISSING


def prepare_run(run: PlannedRun, run_dir: Path) -> bool:
    """Get a run directory ready to (re)start; True when the run resumes from a checkpoint."""
    run_dir.mkdir(parents=True, exist_ok=True)
    if run_state(run_dir) == RESUMABLE:
        (run_dir / "summary.json").unlink(missing_ok=True)  # a halted run's "failed" summary
        return True
    for stale in ("summary.json", "metrics.jsonl"):  # left by a failed attempt with no checkpoint
        (run_dir / stale).unlink(missing_ok=True)
    run.recipe.dump(run_dir / "recipe.yaml")
    return False


def train_args(run_dir: Path, resume: bool) -> list[str]:
    args = ["train", str(run_dir / "recipe.yaml"), "--out", str(run_dir)]
    return args + ["--resume"] if resume else args


def local_command(run_dir: Path, resume: bool) -> list[str]:
    """`windtunnel train` under sweep/child.py, so the trainer dies with this process."""
    return [sys.executable, "-m", "windtunnel.sweep.child", str(os.getpid()),
            sys.executable, "-m", "windtunnel", *train_args(run_dir, resume)]


def slurm_command(run_dir: Path, resume: bool, processes: int) -> list[str]:
    launch = ["accelerate", "launch", "--num_processes", str(processes), "--num_machines", "1"]
    if processes > 1:
        launch.append("--multi_gpu")
    return [*launch, "-m", "windtunnel", *train_args(run_dir, resume)]


def execute(command: list[str], log_path: str, env: dict[str, str] | None = None,
            started: Callable[[subprocess.Popen], None] | None = None) -> int:
    """Run one training command, appending its output to log_path; returns the exit code.
    `started` gets the process (to stop it with the sweep). A plain module-level function so submitit
    can pickle it for cluster jobs."""
    with open(log_path, "a") as log:
        log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(command)}\n")
        log.flush()
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
        if started is not None:
            started(proc)
        return proc.wait()


def visible_gpus(requested: int | None) -> list[str]:
    """GPU ids to spread local runs over: CUDA_VISIBLE_DEVICES order, else 0..count-1."""
    if requested == 0:
        return []
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        ids = [x.strip() for x in env.split(",") if x.strip()]
    else:
        import torch

        ids = [str(i) for i in range(torch.cuda.device_count())]
    return ids if requested is None else ids[:requested]


class Trainers:
    """The trainer processes a local sweep started. `stop()` terminates them, and any that registers
    afterwards: a SIGINT can land between a trainer's Popen and its registration, and the sweep would
    then wait for a trainer it never stopped."""

    def __init__(self):
        self.procs: list[subprocess.Popen] = []
        self.lock = threading.Lock()
        self.stopped = False

    def started(self, proc: subprocess.Popen) -> None:
        with self.lock:
            self.procs.append(proc)
            if self.stopped:
                proc.terminate()

    def stop(self) -> None:
        with self.lock:
            self.stopped = True
            for proc in self.procs:
                proc.terminate()


def run_on_slots(tasks: list[Callable[[str, Trainers], T]], slots: list[str]) -> list[T]:
    """Run the tasks, one per slot at a time (a slot is a GPU id, or "" for a CPU run); each is called
    with its slot and the Trainers to register its processes with. On an exception in this thread
    (e.g. SIGINT to the sweep alone) the tasks not started are cancelled and the running trainers stopped."""
    free: queue.Queue = queue.Queue()
    for slot in slots:
        free.put(slot)
    trainers = Trainers()

    def take_slot(task: Callable[[str, Trainers], T]) -> T:
        slot = free.get()
        try:
            return task(slot, trainers)
        finally:
            free.put(slot)

    with ThreadPoolExecutor(max_workers=len(slots)) as pool:
        futures = [pool.submit(take_slot, task) for task in tasks]
        try:
            return [f.result() for f in futures]
        except BaseException:
            for f in futures:
                f.cancel()
            trainers.stop()
            raise


def run_local(todo: list[tuple[PlannedRun, Path]], cfg: ExecutorConfig, echo=print) -> dict[str, int]:
    """Train the runs as subprocesses; returns {run name: exit code}."""
    total = len(todo)

    def one(index: int, run: PlannedRun, run_dir: Path, slot: str, trainers: Trainers) -> int:
        if is_locked(run_dir):
            echo(f"[{index}/{total}] {run.name}: skipped, a trainer is still running in {run_dir}")
            return BUSY_EXIT
        resume = prepare_run(run, run_dir)
        where = f"GPU {slot}" if slot else "CPU"
        echo(f"[{index}/{total}] {run.name}: {'resuming' if resume else 'starting'} on {where}")
        start = time.time()
        rc = execute(local_command(run_dir, resume), str(run_dir / "train.log"), {"CUDA_VISIBLE_DEVICES": slot},
                     started=trainers.started)
        state = run_state(run_dir)
        echo(f"[{index}/{total}] {run.name}: {state} (exit {rc}) in {time.time() - start:.0f} s"
             + ("" if state == COMPLETED else f"; log: {run_dir / 'train.log'}"))
        return rc

    tasks = [partial(one, i + 1, run, d) for i, (run, d) in enumerate(todo)]
    codes = run_on_slots(tasks, visible_gpus(cfg.gpus) or [""])  # "" hides every GPU: CPU runs
    return {run.name: rc for (run, _), rc in zip(todo, codes)}


def slurm_executor(sweep_dir: Path, name: str, cfg: ExecutorConfig):
    import submitit

    cluster = None if cfg.cluster == "slurm" else cfg.cluster
    ex = submitit.AutoExecutor(folder=str(sweep_dir / "slurm" / "%j"), cluster=cluster)
    params = dict(name=f"wt-{name}", timeout_min=cfg.time_min, nodes=1, tasks_per_node=1,
                  cpus_per_task=cfg.cpus_per_task, gpus_per_node=cfg.gpus_per_run,
                  slurm_array_parallelism=cfg.max_parallel, slurm_setup=list(cfg.setup))
    if cfg.mem_gb:
        params["mem_gb"] = cfg.mem_gb
    for key in ("partition", "account", "qos"):
        if getattr(cfg, key):
            params[f"slurm_{key}"] = getattr(cfg, key)
    ex.update_parameters(**params)
    return ex


def run_slurm(todo: list[tuple[PlannedRun, Path]], cfg: ExecutorConfig, sweep_dir: Path, name: str,
              echo=print) -> dict[str, int | None]:
    """Submit one job per run; record job ids in jobs.json. Waits when cfg.wait or off-cluster."""
    jobs_file = sweep_dir / "jobs.json"
    known = json.loads(jobs_file.read_text()) if jobs_file.exists() else {}
    queued = _still_queued(sweep_dir, known) if cfg.cluster == "slurm" else set()
    ex = slurm_executor(sweep_dir, name, cfg)
    submitted = {}
    with ex.batch():
        for run, run_dir in todo:
            if run.name in queued or is_locked(run_dir):
                echo(f"{run.name}: job {known.get(run.name, '?')} still queued or running; not resubmitted")
                continue
            resume = prepare_run(run, run_dir)
            cmd = slurm_command(run_dir.resolve(), resume, cfg.gpus_per_run)
            submitted[run.name] = ex.submit(execute, cmd, str((run_dir / "train.log").resolve()))
    for run_name, job in submitted.items():
        known[run_name] = job.job_id
        echo(f"{run_name}: submitted job {job.job_id}")
    jobs_file.write_text(json.dumps(known, indent=2))
    if not (cfg.wait or cfg.cluster != "slurm"):
        return {n: None for n in submitted}
    return {n: job.result() for n, job in submitted.items()}


def _still_queued(sweep_dir: Path, known: dict[str, str]) -> set[str]:
    """Runs whose recorded Slurm job is pending or running (asks sacct through submitit)."""
    import submitit

    active = {"PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "RESIZING", "SUSPENDED"}
    out = set()
    for run_name, job_id in known.items():
        try:
            state = submitit.SlurmJob(folder=str(sweep_dir / "slurm" / "%j"), job_id=str(job_id)).state
        except Exception:  # no sacct here or job unknown: treat as not running
            continue
        if state.split(" ")[0] in active:
            out.add(run_name)
    return out
