"""GPU acceptance run: one command that proves the GPU paths and measures the owed figures in minutes.

    python3 scripts/gpu_acceptance.py --out $OUT                  # one H100/H200, at most --budget 540 s
    python3 scripts/gpu_acceptance.py --dry-run --out /tmp/acc    # the same plan on CPU, tiny shapes, < 2 min
    python3 scripts/gpu_acceptance.py --only bench_350m,bench_1b  # a later window: the steps still owed

Steps run in order of value (acceptance/plan.py): setup, (a) correctness, (b) throughput against HF,
(c) distributed on one GPU, (d) muP transfer. Each runs in its own process with its own timeout; a step
starts only if the time left covers what it needs, else it is recorded as skipped with the reason.
As each step ends its record is appended to <out>/results.jsonl and <out>/results.md is rewritten
(figures, checks with targets and pass/fail, the docs/benchmarks.md blocks), so a run cut off at any
point still leaves every figure measured so far. All output is in <out>/steps.log.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from acceptance.context import ROOT, Context, kill_children, read_partial  # noqa: E402
from acceptance.plan import PLAN, STEPS  # noqa: E402
from acceptance.report import render, summary_lines, write_docs  # noqa: E402

RECORD_FIELDS = ("step", "group", "title", "mode", "status", "reason", "started_s", "wall_s", "cpu_s",
                 "budget_left_s", "figures", "checks", "notes")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dry-run", action="store_true", help="CPU, tiny shapes, fp32, no inductor compile")
    p.add_argument("--budget", type=float, help="wall-clock seconds for the whole run (default 540 GPU, 110 dry run)")
    p.add_argument("--out", type=Path, default=Path("runs/gpu_acceptance"), help="results folder")
    p.add_argument("--work", type=Path, help="scratch folder (default: a new temporary one)")
    p.add_argument("--only", help="comma-separated steps to run (plan order is kept)")
    p.add_argument("--skip", help="comma-separated steps to leave out")
    p.add_argument("--docs", type=Path, help="also write the results block into this markdown file")
    p.add_argument("--run-step", help=argparse.SUPPRESS)  # internal: run one step in this process
    p.add_argument("--deadline", type=float, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.budget = args.budget or (110.0 if args.dry_run else 540.0)
    for flag in ("only", "skip"):
        names = [n.strip() for n in (getattr(args, flag) or "").split(",") if n.strip()]
        unknown = [n for n in names if n not in STEPS]
        if unknown:
            p.error(f"--{flag}: unknown step(s) {', '.join(unknown)} (known: {', '.join(STEPS)})")
        setattr(args, flag, set(names))
    return args


def child_env(args, work: Path) -> dict:
    """Environment of every step: this checkout's src/ and the carried wheels first, nothing online."""
    env = dict(os.environ)
    paths = [str(ROOT / "src"), str(work / "site"), env.get("PYTHONPATH", "")]
    env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    env.update(PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               WANDB_MODE="disabled")
    env.setdefault("TORCH_EXTENSIONS_DIR", str(work / "torch_extensions"))
    if args.dry_run:
        env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", WINDTUNNEL_CPU="1", CUDA_VISIBLE_DEVICES="",
                   TOKENIZERS_PARALLELISM="false")  # on the GPU machine the BPE training uses every core
    return env


def run_one_step(args) -> int:
    """Child process: run one step's function; its figures go to <work>/<step>.jsonl as they come."""
    signal.signal(signal.SIGTERM, kill_children)
    step = STEPS[args.run_step]
    ctx = Context(step.name, not args.dry_run, args.work, args.out, args.deadline)
    module = importlib.import_module(f"acceptance.{step.module}")
    try:
        getattr(module, step.func or step.name)(ctx)
    except Exception as e:  # the traceback goes to steps.log; the record gets its last line
        traceback.print_exc()
        ctx.note(f"error: {type(e).__name__}: {str(e).strip().splitlines()[-1] if str(e).strip() else ''}"[:300])
        return 1
    return 0


def blocked_by(step, records: dict) -> str | None:
    if step.after and records.get(step.after, {}).get("status") not in ("ok", "fail"):
        status = records.get(step.after, {}).get("status", "not run")
        return f"needs {step.after}, which is {status}"
    return None


def launch(step, args, env, log, deadline: float) -> tuple[int | None, bool]:
    """Run the step in a child process until it ends or its deadline; (exit code, timed out)."""
    cmd = [sys.executable, __file__, "--run-step", step.name, "--work", str(args.work), "--out", str(args.out),
           "--deadline", str(deadline)] + (["--dry-run"] if args.dry_run else [])
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=ROOT)
    try:
        return proc.wait(timeout=max(1.0, deadline - time.time())), False
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)  # the step ends the commands it started, then exits
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        return proc.returncode, True


def status_of(rc: int | None, timed_out: bool, partial: dict) -> tuple[str, str | None]:
    skip = partial.pop("skip", None)
    if skip and rc == 0:
        return "skipped", skip
    if timed_out:
        return "timeout", "cut off at its timeout (figures up to then are kept)"
    if rc != 0:
        errors = [n for n in partial["notes"] if n.startswith("error: ")]
        return "error", errors[-1] if errors else f"exit code {rc} (see steps.log)"
    if any(c["pass"] is False for c in partial["checks"]):
        return "fail", "a check failed"
    return "ok", None


def children_cpu_s() -> float:
    """User + system CPU seconds of all finished child processes (their children included): a step's cost
    that does not depend on how busy a shared machine is, unlike its wall time."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def record(step, args, status: str, reason: str | None, started: float, t0: float, end: float, partial: dict,
           cpu_s: float) -> dict:
    rec = {"step": step.name, "group": step.group, "title": step.title, "mode": "dry-run" if args.dry_run else "gpu",
           "status": status, "reason": reason, "started_s": round(started - t0, 2), "wall_s": round(end - started, 2),
           "cpu_s": round(cpu_s, 2), "budget_left_s": round(args.budget - (end - t0), 2), **partial}
    return {k: rec.get(k) for k in RECORD_FIELDS}


def drive(args) -> list[dict]:
    t0 = time.time()
    args.out.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    env = child_env(args, args.work)
    results, log_path = args.out / "results.jsonl", args.out / "steps.log"
    results.write_text("")
    records: dict[str, dict] = {}
    with log_path.open("a") as log:
        for step in PLAN:
            if (args.only and step.name not in args.only) or step.name in args.skip:
                continue
            now, left, cpu = time.time(), args.budget - (time.time() - t0), children_cpu_s()
            partial, status, reason = read_partial(None), "skipped", blocked_by(step, records)
            if reason is None and left < step.need(not args.dry_run):
                reason = f"budget: needs ~{step.need(not args.dry_run):.0f} s, {max(left, 0):.0f} s left"
            if reason is None:
                print(f"== {step.name}: {step.title} (up to {min(step.cap(not args.dry_run), left):.0f} s)", flush=True)
                log.write(f"\n===== {step.name} =====\n")
                log.flush()
                (args.work / f"{step.name}.jsonl").unlink(missing_ok=True)  # a reused --work keeps old ones
                rc, timed_out = launch(step, args, env, log, now + min(step.cap(not args.dry_run), left))
                partial = read_partial(args.work / f"{step.name}.jsonl")
                status, reason = status_of(rc, timed_out, partial)
            rec = record(step, args, status, reason, now, t0, time.time(), partial, children_cpu_s() - cpu)
            records[step.name] = rec
            with results.open("a") as f:
                f.write(json.dumps(rec) + "\n")
            (args.out / "results.md").write_text(render(list(records.values()), args))
            if args.docs:
                write_docs(args.docs, list(records.values()), args)
            print(f"   {step.name}: {status}{f' ({reason})' if reason else ''} in {rec['wall_s']:.1f} s", flush=True)
    return list(records.values())


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.run_step:
        return run_one_step(args)
    if args.work is None:
        args.work = Path(tempfile.mkdtemp(prefix="wt_acceptance_"))
    args.out, args.work = args.out.resolve(), args.work.resolve()
    records = drive(args)
    print("\n".join(summary_lines(records)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
