"""What a step's child process gets: its mode, folders, environment, and a recorder that writes as it goes.

Every figure and check is appended to <work>/<step>.jsonl the moment it is known, so a step killed at its
timeout still hands its earlier figures to the driver (which merges them into the step's record).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[2]
_CHILDREN: set[subprocess.Popen] = set()  # commands running now (ended on the driver's SIGTERM)


def _kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


def kill_children(*_) -> None:
    """SIGTERM handler of a step process: end the commands it started (their own process groups), then exit."""
    for proc in list(_CHILDREN):
        _kill(proc)
    os._exit(124)


@dataclass
class Context:
    step: str
    gpu: bool  # False = the CPU dry run (tiny shapes, fp32, no inductor compile)
    work: Path  # scratch space shared by the steps (run dirs, caches); not returned
    out: Path  # what comes back: results.jsonl, results.md, steps.log, plots
    deadline: float  # time.time() at which the driver kills this step

    @property
    def partial(self) -> Path:
        return self.work / f"{self.step}.jsonl"

    def left(self) -> float:
        return self.deadline - time.time()

    # ------------------------------------------------------------------ recording
    def _append(self, entry: dict) -> None:
        with self.partial.open("a") as f:
            f.write(json.dumps(entry, default=_plain) + "\n")

    def figure(self, key: str, value: Any) -> Any:
        """A measured number (or short text) under `key` in the step's record."""
        self._append({"figure": key, "value": value})
        print(f"[{self.step}] {key} = {_show(value)}", flush=True)
        return value

    def check(self, name: str, measured: Any, target: str, ok: bool | None) -> bool | None:
        """A pass/fail line: `target` in words (e.g. ">= 0.50"); ok=None when it cannot be judged here."""
        self._append({"check": name, "measured": measured, "target": target, "pass": ok})
        verdict = {True: "PASS", False: "FAIL", None: "n/a"}[ok]
        print(f"[{self.step}] check {name}: {_show(measured)} (target {target}) {verdict}", flush=True)
        return ok

    def skip(self, reason: str) -> None:
        """End the step as skipped, saying why (the record's status becomes "skipped")."""
        self._append({"skip": reason})
        print(f"[{self.step}] skipped: {reason}", flush=True)

    def note(self, text: str) -> None:
        self._append({"note": text})
        print(f"[{self.step}] {text}", flush=True)

    # ------------------------------------------------------------------ commands
    def run(self, cmd: list[str], *, cwd: Path | None = None, on_line: Callable[[str], None] | None = None,
            env: dict | None = None, timeout: float | None = None) -> int:
        """Run a command, echoing its output into this step's log; returns the exit code (-9: timed out).
        It gets its own process group, so a timeout ends all of it (accelerate's workers too); on the
        driver's SIGTERM `kill_children` ends it the same way."""
        print(f"[{self.step}] $ {' '.join(map(str, cmd))}", flush=True)
        proc = subprocess.Popen([str(c) for c in cmd], cwd=cwd or self.work, env=env or os.environ.copy(),
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
        _CHILDREN.add(proc)

        def pump() -> None:
            for line in proc.stdout:
                sys.stdout.write(line)
                if on_line:
                    on_line(line.rstrip("\n"))

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        try:
            rc = proc.wait(timeout=max(1.0, timeout if timeout is not None else self.left()))
        except subprocess.TimeoutExpired:
            print(f"[{self.step}] command timed out; killed", flush=True)
            rc = -9
        finally:
            _kill(proc)
            _CHILDREN.discard(proc)
        reader.join(timeout=5)
        sys.stdout.flush()
        return rc

    def python(self, *args: str | Path, **kw) -> int:
        return self.run([sys.executable, *args], **kw)

    def windtunnel(self, *args: str | Path, **kw) -> int:
        """The CLI as a user runs it (`windtunnel ...`), from this checkout's src/."""
        return self.python("-m", "windtunnel", *args, **kw)

    def accelerate(self, *args: str | Path, config: str | None = None, **kw) -> int:
        """`accelerate launch` on one process: bf16 on GPU, --cpu in the dry run."""
        launch = ["-m", "accelerate.commands.launch", "--num_processes", "1", "--num_machines", "1",
                  "--dynamo_backend", "no"]
        if config:
            launch += ["--config_file", str(ROOT / config)]
        launch += ["--mixed_precision", "bf16"] if self.gpu else ["--cpu", "--mixed_precision", "no"]
        return self.python(*launch, *args, **kw)


def _plain(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    return str(value)


def _show(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)[:300]


def read_partial(path: Path | None) -> dict:
    """The figures, checks and notes a step recorded (possibly cut off mid-way)."""
    out: dict = {"figures": {}, "checks": [], "notes": [], "skip": None}
    if path is None or not path.exists():
        return out
    for line in path.read_text().splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue  # a line cut off by the kill
        if "figure" in entry:
            out["figures"][entry["figure"]] = entry["value"]
        elif "check" in entry:
            out["checks"].append({"name": entry["check"], "measured": entry["measured"],
                                  "target": entry["target"], "pass": entry["pass"]})
        elif "note" in entry:
            out["notes"].append(entry["note"])
        elif "skip" in entry:
            out["skip"] = entry["skip"]
    return out
