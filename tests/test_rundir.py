import json
import math
import os
import signal
import subprocess
import sys

import pytest

from windtunnel.checkpoint import CheckpointError
from windtunnel.recipe import Recipe
from windtunnel.rundir import (RunDirectory, RunDirError, RunLock, check_resume, is_locked, last_logged,
                               resume_conflicts, write_summary)


def recipe(*overrides):
    base = Recipe.from_dict({"model": {"vocab_size": 64, "d_model": 32, "n_heads": 2, "n_layers": 1},
                             "train": {"steps": 8, "batch_size": 4, "seq_len": 16}})
    return base.with_overrides(list(overrides))


# ----------------------------------------------------------------------------- lock


def test_lock_refuses_a_second_holder_and_frees_on_release(tmp_path):
    with RunLock(tmp_path / "run"):
        assert is_locked(tmp_path / "run")
        with pytest.raises(RunDirError, match=r"run: another trainer is running in this run directory"):
            RunLock(tmp_path / "run").acquire()
    assert not is_locked(tmp_path / "run")
    RunLock(tmp_path / "run").acquire().release()


def test_lock_dies_with_its_process_even_on_kill_9(tmp_path):
    code = ("import sys, time; from windtunnel.rundir import RunLock; lock = RunLock(sys.argv[1]).acquire(); "
            "print('held', flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    try:
        assert proc.stdout.readline().strip() == "held"
        with pytest.raises(RunDirError, match="another trainer"):
            RunLock(tmp_path).acquire()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert not is_locked(tmp_path)


# ----------------------------------------------------------------------------- resume compatibility


def test_harmless_changes_resume():
    new = recipe("logging.log_every=1", "train.eval_every=3", "train.steps=20", "train.keep_ckpts=5",
                 "train.threads=1", "train.max_skips=3", "data.cache_dir=/tmp/c", "distributed.pin_memory=false")
    assert resume_conflicts(recipe(), new, 1, 1) == []


def test_breaking_changes_are_named():
    conflicts = resume_conflicts(recipe(), recipe("model.d_model=64", "train.seq_len=32", "optim.lr=0.1"), 1, 1)
    assert [c.split(":")[0] for c in conflicts] == ["model.d_model", "optim.lr", "train.seq_len"]
    assert conflicts[0] == "model.d_model: 32 -> 64"


@pytest.mark.parametrize("saved, new, saved_world, world, ok", [
    ((), (), 2, 1, False),  # same per-device batch on fewer processes: the global batch halves
    ((), ("train.grad_accum=2",), 2, 1, True),  # 4 x 2 x 1 == 4 x 1 x 2
    ((), ("train.batch_size=8",), 2, 1, True),
    ((), ("train.batch_size=2",), 1, 2, True),
    ((), ("train.batch_size=8",), 1, 1, False),
    (("distributed.strategy=fsdp",), ("distributed.strategy=fsdp", "train.grad_accum=2"), 2, 1, False),
])
def test_global_batch_decides_world_and_batch_changes(saved, new, saved_world, world, ok):
    conflicts = resume_conflicts(recipe(*saved), recipe(*new), saved_world, world)
    assert (conflicts == []) is ok, conflicts


def test_check_resume_is_one_line_naming_the_keys(tmp_path):
    recipe().dump(tmp_path / "recipe.yaml")
    check_resume(tmp_path, recipe("train.steps=16"), 1, 1)
    with pytest.raises(RunDirError) as e:
        check_resume(tmp_path, recipe("model.n_layers=2", "model.n_heads=4"), 1, 1)
    msg = str(e.value)
    assert "\n" not in msg and "model.n_layers: 1 -> 2" in msg and "model.n_heads: 2 -> 4" in msg
    assert str(tmp_path / "recipe.yaml") in msg and "--out" in msg


def test_check_resume_with_unreadable_saved_recipe(tmp_path):
    (tmp_path / "recipe.yaml").write_bytes(b"\xff\xfe\x00binary")
    with pytest.raises(RunDirError, match="saved recipe unreadable"):
        check_resume(tmp_path, recipe(), 1, 1)


# ----------------------------------------------------------------------------- records


def test_summary_is_strict_json(tmp_path):
    out = write_summary(tmp_path, {"status": "completed", "final_train_loss": math.nan, "x": [math.inf, 1.5],
                                   "nested": {"v": -math.inf}})
    text = (tmp_path / "summary.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    parsed = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))
    assert parsed == out == {"status": "completed", "final_train_loss": None, "x": [None, 1.5], "nested": {"v": None}}
    assert not list(tmp_path.glob("*.tmp"))


def test_last_logged_reads_up_to_a_step_and_skips_a_cut_line(tmp_path):
    rows = [{"step": 4, "loss": 2.0}, {"step": 4, "val_loss": 2.5}, {"step": 8, "loss": 1.5}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 9, "lo')
    assert last_logged(tmp_path, "loss", 8) == 1.5 and last_logged(tmp_path, "loss", 7) == 2.0
    assert last_logged(tmp_path, "val_loss", 8) == 2.5 and last_logged(tmp_path, "mfu", 8) is None


# ----------------------------------------------------------------------------- RunDirectory


@pytest.fixture
def acc():
    from accelerate import Accelerator

    return Accelerator(cpu=True)


def fake_checkpoint(run_dir, step=4, world=1):
    from windtunnel.checkpoint import write_manifest

    ckpt = run_dir / "checkpoints" / f"step_{step:08d}"
    ckpt.mkdir(parents=True)
    (ckpt / "trainer_state.json").write_text(json.dumps({"step": step, "world": world}))
    write_manifest(ckpt)
    return ckpt


def test_open_writes_the_recipe_only_once_accepted(acc, tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss": 4.0}\n')  # killed before its first checkpoint
    (tmp_path / "checkpoints" / ".tmp_step_00000004").mkdir(parents=True)
    run = RunDirectory(acc, tmp_path)
    assert run.open(recipe(), resume=False) is None
    assert Recipe.load(tmp_path / "recipe.yaml") == recipe()
    assert not (tmp_path / "metrics.jsonl").exists() and not list((tmp_path / "checkpoints").iterdir())
    with pytest.raises(RunDirError, match="another trainer"):
        RunDirectory(acc, tmp_path).open(recipe("model.d_model=64"), resume=False)
    assert Recipe.load(tmp_path / "recipe.yaml") == recipe()
    run.finish({"status": "completed", "final_train_loss": math.nan})
    assert json.loads((tmp_path / "summary.json").read_text())["final_train_loss"] is None
    assert not is_locked(tmp_path)


def test_a_refused_resume_leaves_the_run_as_it_was(acc, tmp_path):
    recipe().dump(tmp_path / "recipe.yaml")
    ckpt = fake_checkpoint(tmp_path)
    saved = (tmp_path / "recipe.yaml").read_text()
    with pytest.raises(RunDirError, match=r"model.n_layers: 1 -> 3"):
        RunDirectory(acc, tmp_path).open(recipe("model.n_layers=3"), resume=True)
    assert (tmp_path / "recipe.yaml").read_text() == saved and not is_locked(tmp_path)
    with pytest.raises(RunDirError, match="already holds a run; pass --resume"):
        RunDirectory(acc, tmp_path).open(recipe(), resume=False)
    run = RunDirectory(acc, tmp_path)
    assert run.open(recipe("train.steps=16"), resume=True) == ckpt  # extending the run is fine
    assert Recipe.load(tmp_path / "recipe.yaml").train.steps == 16
    run.close()


def test_resume_with_only_corrupt_checkpoints_is_refused(acc, tmp_path):
    recipe().dump(tmp_path / "recipe.yaml")
    ckpt = fake_checkpoint(tmp_path)
    (ckpt / "trainer_state.json").write_text("{}")
    (tmp_path / "checkpoints" / ".tmp_step_00000008").mkdir()
    with pytest.warns(UserWarning, match="corrupt"), pytest.raises(CheckpointError, match="no intact checkpoint"):
        RunDirectory(acc, tmp_path).open(recipe(), resume=True)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [".corrupt_step_00000004"]
