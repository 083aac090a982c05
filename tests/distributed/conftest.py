"""Launch helpers for the multi-process tests.

DeepSpeed JIT-compiles its C++ ops on first use (minutes on a CI machine). All launches share one
TORCH_EXTENSIONS_DIR: $TORCH_EXTENSIONS_DIR if set, else a folder in pytest's cache (.pytest_cache/), so the
build happens once per checkout (once per CI run; once per session under -p no:cacheprovider) and later
inits take seconds. The build uses -march=native: do not carry that folder to another machine.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("worker.py")
TIMEOUT_S = 1200  # generous: the first DeepSpeed launch includes the JIT build


@pytest.fixture(scope="session")
def launch_env(request, tmp_path_factory) -> dict:
    env = dict(os.environ)
    cache = getattr(request.config, "cache", None)  # absent under -p no:cacheprovider
    ext_dir = cache.mkdir("torch_extensions") if cache else tmp_path_factory.mktemp("torch_extensions")
    env.setdefault("TORCH_EXTENSIONS_DIR", str(ext_dir))
    env["DS_ACCELERATOR"] = "cpu"
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"), env.get("PYTHONPATH")]))
    env.pop("ACCELERATE_USE_DEEPSPEED", None)
    env.pop("ACCELERATE_USE_FSDP", None)
    return env


class Launcher:
    root = ROOT

    def __init__(self, env: dict):
        self.env = env

    @staticmethod
    def torchrun(nproc: int) -> list[str]:
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]

    def run(self, cmd: list[str], check: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run(cmd, env=self.env, cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT_S)
        if check and proc.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stdout[-3000:]}"
                                 f"\n{proc.stderr[-6000:]}")
        return proc

    def worker(self, out: Path, *overrides: str, nproc: int = 2, prefix: list[str] | None = None,
               extra: tuple[str, ...] = (), check: bool = True) -> dict | subprocess.CompletedProcess:
        """Run tests/distributed/worker.py; returns its result.json (or the process when check=False)."""
        launch = prefix if prefix is not None else (self.torchrun(nproc) if nproc > 1 else [sys.executable])
        args = [a for o in overrides for a in ("--set", o)]
        proc = self.run([*launch, str(WORKER), str(out), *args, *extra], check=check)
        if not check:
            return proc
        return json.loads((out / "result.json").read_text())


@pytest.fixture(scope="session")
def launcher(launch_env) -> Launcher:
    return Launcher(launch_env)
