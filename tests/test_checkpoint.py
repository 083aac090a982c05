import errno
import json
import shutil
from collections import namedtuple

import pytest
import torch
from accelerate import Accelerator

from windtunnel import checkpoint
from windtunnel.checkpoint import (CheckpointError, CheckpointWarning, checkpoint_dirs, load_newest_intact, make_room,
                                   newest_intact, resume_point, save_checkpoint, verify, write_manifest)

Usage = namedtuple("Usage", "total used free")


@pytest.fixture
def acc():
    return Accelerator(cpu=True)


@pytest.fixture
def trained(acc):
    torch.manual_seed(0)
    model = torch.nn.Linear(8, 8)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    model, opt = acc.prepare(model, opt)
    return model, opt


def step(model, opt):
    model(torch.randn(4, 8)).square().mean().backward()
    opt.step()
    opt.zero_grad()


def save_steps(acc, trained, run_dir, steps, keep=3):
    model, opt = trained
    weights = {}
    for s in steps:
        step(model, opt)
        save_checkpoint(acc, run_dir, s, {"step": s, "tokens": 10 * s, "skipped": 0}, keep=keep)
        weights[s] = model.weight.detach().clone()
    return weights


def names(run_dir):
    return sorted(p.name for p in (run_dir / "checkpoints").iterdir())


def test_save_writes_manifest_and_rotates(acc, trained, tmp_path):
    save_steps(acc, trained, tmp_path, [1, 2, 3, 4], keep=2)
    assert names(tmp_path) == ["step_00000003", "step_00000004"]
    ckpt = tmp_path / "checkpoints" / "step_00000004"
    manifest = json.loads((ckpt / "manifest.json").read_text())
    assert {"model.safetensors", "optimizer.bin", "trainer_state.json"} <= manifest["files"].keys()
    assert manifest["files"]["model.safetensors"]["size"] == (ckpt / "model.safetensors").stat().st_size
    assert json.loads((ckpt / "trainer_state.json").read_text()) == {"step": 4, "tokens": 40, "skipped": 0, "world": 1}
    assert verify(ckpt) is None


@pytest.mark.parametrize("damage, reason", [
    (lambda c: (c / "model.safetensors").write_bytes((c / "model.safetensors").read_bytes()[:-100]), "truncated"),
    (lambda c: (c / "optimizer.bin").write_bytes((c / "optimizer.bin").read_bytes()[:50]), "truncated"),
    (lambda c: (c / "trainer_state.json").write_text('{"step": 2, "tok'), "bytes"),
    (lambda c: flip_byte(c / "model.safetensors"), "checksum"),
    (lambda c: (c / "manifest.json").unlink(), "no manifest.json"),
    (lambda c: (c / "optimizer.bin").unlink(), "missing"),
])
def test_corrupt_newest_falls_back_with_a_warning(acc, trained, tmp_path, damage, reason):
    weights = save_steps(acc, trained, tmp_path, [1, 2])
    newest = tmp_path / "checkpoints" / "step_00000002"
    damage(newest)
    assert reason in verify(newest)
    with pytest.warns(CheckpointWarning, match="step_00000002 is corrupt"):
        first = resume_point(acc, tmp_path)
    assert first.name == "step_00000001"
    assert names(tmp_path) == [".corrupt_step_00000002", "step_00000001"]  # kept for inspection, out of rotation
    path, state = load_newest_intact(acc, tmp_path, first)
    assert state["step"] == 1 and torch.equal(trained[0].weight.detach(), weights[1])


def flip_byte(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_unloadable_checkpoint_that_matches_its_manifest_falls_back(acc, trained, tmp_path):
    weights = save_steps(acc, trained, tmp_path, [1, 2])
    newest = tmp_path / "checkpoints" / "step_00000002"
    (newest / "optimizer.bin").write_bytes(b"not a torch file")
    write_manifest(newest)  # e.g. written by a buggy writer: consistent but unreadable
    first = resume_point(acc, tmp_path)
    assert first == newest
    with pytest.warns(CheckpointWarning, match="cannot be loaded"):
        path, state = load_newest_intact(acc, tmp_path, first)
    assert path.name == "step_00000001" and torch.equal(trained[0].weight.detach(), weights[1])


def test_no_intact_checkpoint_is_a_one_line_error(acc, trained, tmp_path):
    save_steps(acc, trained, tmp_path, [1])
    flip_byte(tmp_path / "checkpoints" / "step_00000001" / "model.safetensors")
    with pytest.warns(CheckpointWarning):
        assert resume_point(acc, tmp_path) is None
    assert newest_intact(tmp_path) is None


def test_stale_temp_dir_is_cleaned_and_failed_write_leaves_none(acc, trained, tmp_path, monkeypatch):
    save_steps(acc, trained, tmp_path, [1])
    (tmp_path / "checkpoints" / ".tmp_step_00000005").mkdir()  # left by a kill -9 mid-write
    save_steps(acc, trained, tmp_path, [2])
    assert names(tmp_path) == ["step_00000001", "step_00000002"]

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(acc, "save_state", full_disk)
    with pytest.raises(CheckpointError, match=r"^no space left on device: .*checkpoints \(needs ~\d+ MB\)$"):
        save_steps(acc, trained, tmp_path, [3])
    assert names(tmp_path) == ["step_00000001", "step_00000002"]  # no .tmp_step_*, nothing lost


def test_short_space_deletes_only_what_rotation_would(acc, trained, tmp_path, monkeypatch):
    save_steps(acc, trained, tmp_path, [1, 2, 3])
    size = checkpoint.dir_size(tmp_path / "checkpoints" / "step_00000003")
    removed = []
    real_rmtree = shutil.rmtree

    def disk_usage(path):  # free space grows by what was deleted: two checkpoints' worth are needed
        return Usage(10**12, 0, int(size * 0.5) + len(removed) * size)

    def rmtree(path, **kwargs):
        removed.append(path.name)
        real_rmtree(path, **kwargs)

    monkeypatch.setattr(checkpoint.shutil, "disk_usage", disk_usage)
    monkeypatch.setattr(checkpoint.shutil, "rmtree", rmtree)
    make_room(tmp_path, keep=2, estimate=0)  # keep-1 = 1 old checkpoint may stay: 1 and 2 go
    assert names(tmp_path) == ["step_00000003"] and removed == ["step_00000001", "step_00000002"]
    monkeypatch.setattr(checkpoint.shutil, "disk_usage", lambda p: Usage(10**12, 0, int(size * 0.5)))
    with pytest.raises(CheckpointError, match="no space left on device"):
        make_room(tmp_path, keep=1, estimate=0)  # would need the only (newest intact) one deleted
    assert names(tmp_path) == ["step_00000003"]


def test_short_space_never_deletes_the_newest_intact(acc, trained, tmp_path, monkeypatch):
    save_steps(acc, trained, tmp_path, [1, 2])
    flip_byte(tmp_path / "checkpoints" / "step_00000002" / "model.safetensors")
    monkeypatch.setattr(checkpoint.shutil, "disk_usage", lambda p: Usage(10**12, 0, 0))
    with pytest.raises(CheckpointError, match="no space left on device"):
        make_room(tmp_path, keep=1, estimate=0)
    assert names(tmp_path) == ["step_00000001"]  # the corrupt newer one went, the intact one stayed


def test_plenty_of_space_deletes_nothing_before_the_write(acc, trained, tmp_path, monkeypatch):
    save_steps(acc, trained, tmp_path, [1, 2])
    monkeypatch.setattr(checkpoint.shutil, "disk_usage", lambda p: Usage(10**12, 0, 10**12))
    make_room(tmp_path, keep=1, estimate=0)
    assert len(checkpoint_dirs(tmp_path)) == 2


def test_missing_rank_rng_state_reseeds_reproducibly(acc, trained, tmp_path):
    save_steps(acc, trained, tmp_path, [1])
    ckpt = tmp_path / "checkpoints" / "step_00000001"
    (ckpt / "random_states_0.pkl").unlink()  # as for a rank that did not exist when it was saved
    write_manifest(ckpt)
    draws = []
    for _ in range(2):
        torch.manual_seed(123 + len(draws))
        checkpoint.load_checkpoint(acc, ckpt, seed=7)
        draws.append(torch.rand(3))
    assert torch.equal(draws[0], draws[1])


def test_readers_skip_a_corrupt_newest_checkpoint_with_a_warning(acc, trained, tmp_path):
    save_steps(acc, trained, tmp_path, [1, 2])
    flip_byte(tmp_path / "checkpoints" / "step_00000002" / "model.safetensors")
    with pytest.warns(CheckpointWarning, match="step_00000002 is corrupt .*using step_00000001"):
        assert checkpoint.readable_checkpoint(tmp_path).name == "step_00000001"
    assert names(tmp_path) == ["step_00000001", "step_00000002"]  # a reader moves nothing
