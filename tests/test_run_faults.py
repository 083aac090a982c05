"""Fault injection on whole runs (issue 11, part C): a run's records survive a kill before the summary,
non-finite steps, a refused resume, a corrupt checkpoint, a full disk and a second trainer, and what
they say about tokens and FLOPs is what was trained."""
import itertools
import json
import math
import shutil
from collections import namedtuple
from dataclasses import replace

import pytest
import torch

from windtunnel import accounting, checkpoint
from windtunnel.checkpoint import CheckpointError, CheckpointWarning
from windtunnel.cli import main as cli
from windtunnel.export import export_run
from windtunnel.recipe import Recipe
from windtunnel.rundir import RunDirError, RunLock
from windtunnel.sweep.executors import COMPLETED, run_state
from windtunnel.trainer import Trainer, TrainingHalted

Usage = namedtuple("Usage", "total used free")


@pytest.fixture
def corpus_recipe(tmp_path, word_corpus):
    """Built-in data pipeline on a small local corpus (byte tokenizer): what `windtunnel train` runs."""
    docs = word_corpus(n_docs=30, words=150)

    def make(*overrides):
        return Recipe.from_dict({
            "model": {"d_model": 32, "n_layers": 1, "n_heads": 2, "ffn_hidden": 64},
            "data": {"source": "files", "paths": [str(docs)], "cache_dir": str(tmp_path / "cache"),
                     "val_fraction": 0.1},
            "train": {"steps": 8, "batch_size": 4, "seq_len": 32, "eval_every": 4, "eval_batches": 2,
                      "ckpt_every": 4, "keep_ckpts": 2, "threads": 1},
            "logging": {"log_every": 1, "progress": False},
        }).with_overrides(list(overrides))
    return make


def user_data_recipe(**train):
    return Recipe.from_dict({
        "model": {"vocab_size": 64, "d_model": 32, "n_heads": 2, "n_layers": 1},
        "train": {"steps": 8, "batch_size": 4, "seq_len": 16, "eval_every": 100, "ckpt_every": 4, "threads": 1,
                  **train},
        "logging": {"log_every": 1, "progress": False},
    })


def batches(n=8, rows=4, width=17, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 64, (rows, width), generator=g) for _ in range(n)]


def nan_model(r, bad_calls):
    """The recipe's model, with a NaN loss on the given forward calls (1-based), by a forward hook."""
    from windtunnel.models import build_model

    model = build_model(replace(r.model, max_seq_len=r.train.seq_len))
    calls = itertools.count(1)

    def poison(module, args, out):
        return {**out, "loss": out["loss"] * float("nan")} if next(calls) in bad_calls else None

    model.register_forward_hook(poison)
    return model


def rows(run_dir, key):
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [(r["step"], r[key]) for r in map(json.loads, lines) if key in r]


def strict_summary(run_dir) -> dict:
    return json.loads((run_dir / "summary.json").read_text(), parse_constant=lambda c: pytest.fail(f"{c} in JSON"))


def flip_byte(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def ckpt_names(run_dir):
    return sorted(p.name for p in (run_dir / "checkpoints").iterdir())


# ----------------------------------------------------------------------------- C1


def test_resume_of_a_finished_but_unsummarised_run_writes_the_true_summary(corpus_recipe, tmp_path):
    run = tmp_path / "run"
    Trainer(corpus_recipe(), out_dir=run).fit()
    before = strict_summary(run)
    (run / "summary.json").unlink()  # kill -9 after the last checkpoint, before summary.json
    assert run_state(run) != COMPLETED
    after = Trainer(corpus_recipe(), out_dir=run, resume=True).fit()
    written = strict_summary(run)
    assert written["status"] == "completed" and written["steps"] == 8 and written["tokens"] == before["tokens"]
    assert written["final_train_loss"] == before["final_train_loss"] == rows(run, "loss")[-1][1]
    assert written["final_val_loss"] == pytest.approx(before["final_val_loss"], abs=1e-6)
    assert after["final_train_loss"] == written["final_train_loss"] and run_state(run) == COMPLETED


# ----------------------------------------------------------------------------- C2


def test_max_skips_counts_consecutive_bad_steps(tmp_path):
    r = user_data_recipe(nan_policy="skip", max_skips=2)
    s = Trainer(r, model=nan_model(r, {2, 3, 5, 6}), train_data=batches(), out_dir=tmp_path / "ok").fit()
    assert s["status"] == "completed" and s["skipped_steps"] == 4  # never more than 2 in a row


def test_max_skips_exceeded_halts_with_a_summary(tmp_path):
    r = user_data_recipe(nan_policy="skip", max_skips=2)
    with pytest.raises(TrainingHalted, match=r"max_skips=2"):
        Trainer(r, model=nan_model(r, {5, 6, 7}), train_data=batches(), out_dir=tmp_path).fit()
    summary = strict_summary(tmp_path)
    assert summary["status"] == "halted" and "max_skips" in summary["error"]
    assert "step_00000004" in summary["error"]  # the last good checkpoint, named


def test_nan_halt_summary_is_strict_json_and_names_an_intact_checkpoint(tmp_path):
    r = user_data_recipe()
    with pytest.raises(TrainingHalted, match="last good checkpoint: .*step_00000004"):
        Trainer(r, model=nan_model(r, {6}), train_data=batches(), out_dir=tmp_path).fit()
    summary = strict_summary(tmp_path)
    assert summary["status"] == "halted" and checkpoint.verify(tmp_path / "checkpoints" / "step_00000004") is None


# ----------------------------------------------------------------------------- C3


def test_refused_resume_keeps_the_recipe_and_export_still_works(corpus_recipe, tmp_path):
    run, recipe_file = tmp_path / "run", tmp_path / "r.yaml"
    corpus_recipe("train.steps=4").dump(recipe_file)
    assert cli(["train", str(recipe_file), "--out", str(run)]) == 0
    saved = (run / "recipe.yaml").read_bytes()
    with pytest.raises(RunDirError, match=r"model.n_layers: 1 -> 2"):
        Trainer(corpus_recipe("train.steps=4", "model.n_layers=2"), out_dir=run, resume=True).fit()
    assert cli(["train", str(recipe_file), "--out", str(run), "--resume", "--set", "model.d_model=64"]) == 2
    assert (run / "recipe.yaml").read_bytes() == saved
    assert (export_run(run, tmp_path / "hf") / "config.json").exists()


# ----------------------------------------------------------------------------- C4


def test_corrupt_newest_checkpoint_falls_back_to_the_previous_one(corpus_recipe, tmp_path):
    run = tmp_path / "run"
    Trainer(corpus_recipe(), out_dir=run).fit()
    reference = rows(run, "loss")
    flip_byte(run / "checkpoints" / "step_00000008" / "model.safetensors")
    (run / "summary.json").unlink()
    with pytest.warns(CheckpointWarning, match="step_00000008 is corrupt"):
        Trainer(corpus_recipe(), out_dir=run, resume=True).fit()
    assert rows(run, "loss") == reference  # steps 5-8 redone from step 4, exactly
    assert ckpt_names(run) == [".corrupt_step_00000008", "step_00000004", "step_00000008"]
    assert checkpoint.verify(run / "checkpoints" / "step_00000008") is None


def test_truncated_optimizer_and_bad_trainer_state_fall_back(corpus_recipe, tmp_path):
    run = tmp_path / "run"
    Trainer(corpus_recipe("train.ckpt_every=2", "train.keep_ckpts=3"), out_dir=run).fit()
    (run / "summary.json").unlink()
    opt = run / "checkpoints" / "step_00000008" / "optimizer.bin"
    opt.write_bytes(opt.read_bytes()[:100])
    (run / "checkpoints" / "step_00000006" / "trainer_state.json").write_text("{not json")
    with pytest.warns(CheckpointWarning):
        s = Trainer(corpus_recipe("train.ckpt_every=2", "train.keep_ckpts=3"), out_dir=run, resume=True).fit()
    assert s["steps"] == 8 and min(step for step, _ in rows(run, "loss") if step > 4) == 5


# ----------------------------------------------------------------------------- C5


def test_full_disk_stops_with_one_line_and_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    real = shutil.disk_usage

    def disk_usage(path):  # room for the first checkpoint only
        return Usage(1, 1, 0) if checkpoint.checkpoint_dirs(tmp_path) else real(path)

    monkeypatch.setattr(checkpoint.shutil, "disk_usage", disk_usage)
    r = user_data_recipe(keep_ckpts=1)
    with pytest.raises(CheckpointError, match=r"^no space left on device: .*checkpoints \(needs ~\d+ MB\)$"):
        Trainer(r, train_data=batches(), out_dir=tmp_path).fit()
    assert ckpt_names(tmp_path) == ["step_00000004"]  # no .tmp_step_*, the only intact one kept
    summary = strict_summary(tmp_path)
    assert summary["status"] == "failed" and "no space left on device" in summary["error"]
    monkeypatch.setattr(checkpoint.shutil, "disk_usage", real)
    assert Trainer(r, train_data=batches(), out_dir=tmp_path, resume=True).fit()["steps"] == 8


# ----------------------------------------------------------------------------- C6


def test_a_second_trainer_on_a_run_exits_2(corpus_recipe, tmp_path, capsys):
    recipe_file = tmp_path / "r.yaml"
    corpus_recipe().dump(recipe_file)
    with RunLock(tmp_path / "run"):
        assert cli(["train", str(recipe_file), "--out", str(tmp_path / "run")]) == 2
        with pytest.raises(RunDirError, match="another trainer"):
            Trainer(user_data_recipe(), train_data=batches(), out_dir=tmp_path / "run").fit()
    err = capsys.readouterr().err.strip().splitlines()
    assert "another trainer is running" in err[-1]
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [".lock"]  # nothing written


# ----------------------------------------------------------------------------- C7


def test_user_batches_are_counted_as_trained(tmp_path):
    """Recipe says 16 x 64 per step; the batches are 4 x 33 (32 targets per row): 128 tokens per step."""
    r = user_data_recipe(batch_size=16, seq_len=64, ckpt_every=0)
    r = replace(r, logging=replace(r.logging, peak_tflops=1.0))
    s = Trainer(r, train_data=batches(rows=4, width=33), out_dir=tmp_path).fit()
    fpt = accounting.flops_per_token(replace(r.model, max_seq_len=64), 32)
    assert s["tokens"] == 8 * 128 and s["batch_tokens"] == 128
    assert s["flops"] == pytest.approx(fpt * 8 * 128) and s["seq_len"] == 32
    logged = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [row["tokens"] for row in logged if "loss" in row] == [128 * k for k in range(1, 9)]
    for row in logged:
        if "loss" in row:
            assert row["mfu"] == pytest.approx(fpt * row["tokens_per_s"] / 1e12)
    assert math.isfinite(s["final_train_loss"])


def test_halt_names_the_newest_intact_checkpoint_not_a_corrupt_one(tmp_path):
    from windtunnel.callbacks import Callback

    class CorruptAt8(Callback):
        def on_checkpoint(self, state):
            if state.step == 8:
                flip_byte(state.checkpoint / "model.safetensors")

    r = user_data_recipe(steps=12)
    with pytest.raises(TrainingHalted, match=r"last good checkpoint: \S*step_00000004$"):
        Trainer(r, model=nan_model(r, {10}), train_data=batches(12), out_dir=tmp_path,
                callbacks=[CorruptAt8()]).fit()
