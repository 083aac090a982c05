"""Resume on another number of processes: a run saved by 2 processes (DDP, gloo on CPU) continues with 1,
and one saved by 1 continues with 2, on the same data (built-in pipeline and sampler) with the same
global batch (batch_size 4 x grad_accum 2 x 1 process == 4 x 1 x 2). Losses of the resumed steps
match the uninterrupted run within float tolerance (measured: identical to 6 decimals).
"""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow

TOL = 1e-5
ONE = ("--set", "train.grad_accum=2")
TWO = ("--set", "train.grad_accum=1")


@pytest.fixture(scope="module")
def recipe(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("resume_world")
    docs = root / "docs"
    docs.mkdir()
    words = "alpha beta gamma delta epsilon zeta eta theta".split()
    for i in range(40):  # 40 documents: a few of them (val_fraction) become the held-out split
        docs.joinpath(f"d{i}.txt").write_text("\n".join(" ".join(words[(i * 7 + j * k) % 8] for k in range(12))
                                                        for j in range(20)))
    path = root / "r.yaml"
    path.write_text(yaml.safe_dump({
        "model": {"d_model": 32, "n_layers": 1, "n_heads": 2, "ffn_hidden": 64},
        "data": {"source": "files", "paths": [str(docs)], "cache_dir": str(root / "cache"), "val_fraction": 0.1},
        "tokenizer": {"kind": "byte"},
        "train": {"steps": 8, "batch_size": 4, "grad_accum": 2, "seq_len": 32, "eval_every": 4, "eval_batches": 2,
                  "ckpt_every": 4, "keep_ckpts": 3, "threads": 1},
        "schedule": {"name": "wsd", "warmup_steps": 2},
        "logging": {"log_every": 1, "progress": False},
    }))
    return path


def train(launcher, recipe: Path, out: Path, nproc: int, *extra: str, check: bool = True):
    launch = launcher.torchrun(nproc) if nproc > 1 else [sys.executable]
    return launcher.run([*launch, "-m", "windtunnel", "train", str(recipe), "--out", str(out), *extra], check=check)


def losses(run_dir: Path) -> tuple[list[float], list[float]]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r], [r["val_loss"] for r in rows if "val_loss" in r]


def cut_back_to_step_4(src: Path, dst: Path) -> Path:
    """A copy of a finished run as it was when killed after its step-4 checkpoint."""
    shutil.copytree(src, dst)
    shutil.rmtree(dst / "checkpoints" / "step_00000008")
    (dst / "summary.json").unlink()
    return dst


def assert_close(run: Path, ref: Path) -> None:
    (train_a, val_a), (train_b, val_b) = losses(run), losses(ref)
    assert len(train_a) == len(train_b) == 8 and len(val_a) == len(val_b) == 2
    assert max(abs(a - b) for a, b in zip(train_a + val_a, train_b + val_b)) < TOL


@pytest.fixture(scope="module")
def references(launcher, recipe, tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("refs")
    train(launcher, recipe, root / "one", 1, *ONE)
    train(launcher, recipe, root / "two", 2, *TWO)
    return root / "one", root / "two"


def test_two_processes_match_one_with_the_same_global_batch(references):
    one, two = references
    assert_close(two, one)
    state = json.loads((two / "checkpoints" / "step_00000004" / "trainer_state.json").read_text())
    assert state["world"] == 2


def test_saved_with_two_resumes_with_one(launcher, recipe, references, tmp_path):
    one, two = references
    run = cut_back_to_step_4(two, tmp_path / "run")
    train(launcher, recipe, run, 1, *ONE, "--resume")
    assert_close(run, one)
    assert json.loads((run / "summary.json").read_text())["steps"] == 8


def test_saved_with_one_resumes_with_two(launcher, recipe, references, tmp_path):
    one, _ = references
    run = cut_back_to_step_4(one, tmp_path / "run")  # no random_states_1.pkl: rank 1 is reseeded
    train(launcher, recipe, run, 2, *TWO, "--resume")
    assert_close(run, one)


def test_a_changed_global_batch_is_refused(launcher, recipe, references, tmp_path):
    _, two = references
    run = cut_back_to_step_4(two, tmp_path / "run")
    before = (run / "recipe.yaml").read_text()
    proc = train(launcher, recipe, run, 1, *TWO, "--resume", check=False)  # 4 x 1 x 1: half the global batch
    assert proc.returncode == 2
    assert "global batch" in proc.stderr.strip().splitlines()[-1] and "Traceback" not in proc.stderr
    assert (run / "recipe.yaml").read_text() == before
