import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from windtunnel import Recipe, Trainer
from windtunnel.trainer import Callback, TrainingHalted


def tiny_recipe(**train):
    return Recipe.from_dict({
        "model": {"vocab_size": 64, "d_model": 32, "n_heads": 2, "n_layers": 1},
        "train": {"steps": 12, "batch_size": 4, "seq_len": 16, "eval_every": 6, "ckpt_every": 4,
                  "threads": 1, **train},
        "logging": {"log_every": 1, "progress": False},
    })


def token_batches(n=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 64, (4, 17), generator=g) for _ in range(n)]


def losses(run_dir):
    rows = [json.loads(l) for l in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in rows if "loss" in r]


def test_fit_writes_run_dir_and_loss_falls(tmp_path):
    data = token_batches(4)  # repeated data: the model must memorise it
    s = Trainer(tiny_recipe(steps=40, ckpt_every=20), train_data=data, val_data=data[:1], out_dir=tmp_path).fit()
    assert {"recipe.yaml", "metrics.jsonl", "summary.json", "checkpoints"} <= {p.name for p in tmp_path.iterdir()}
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps"] == 40 and summary["tokens"] == 40 * 64
    assert summary["params"] > summary["non_embedding_params"] > 0 and summary["flops"] > 0
    ls = losses(tmp_path)
    assert ls[-1][1] < ls[0][1] - 0.3
    assert s["final_val_loss"] < math.log(64)
    row = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])
    assert {"step", "tokens", "loss", "lr", "grad_norm", "tokens_per_s", "mfu"} <= row.keys()
    assert Recipe.load(tmp_path / "recipe.yaml").model.max_seq_len == 16  # resolved recipe written


def test_refuses_to_overwrite_a_run(tmp_path):
    Trainer(tiny_recipe(steps=4), train_data=token_batches(), out_dir=tmp_path).fit()
    with pytest.raises(Exception, match="already holds a run"):
        Trainer(tiny_recipe(steps=4), train_data=token_batches(), out_dir=tmp_path).fit()


def test_resume_reproduces_uninterrupted_losses(tmp_path, crash_at):
    full, part = tmp_path / "full", tmp_path / "part"
    Trainer(tiny_recipe(), train_data=token_batches(), out_dir=full).fit()
    with pytest.raises(KeyboardInterrupt):
        Trainer(tiny_recipe(), train_data=token_batches(), out_dir=part, callbacks=[crash_at(6)]).fit()
    Trainer(tiny_recipe(), train_data=token_batches(), out_dir=part, resume=True).fit()
    assert losses(part) == losses(full)  # exact: same floats, and the rows after the checkpoint were redone


def test_checkpoints_rotate_and_are_complete(tmp_path):
    Trainer(tiny_recipe(keep_ckpts=2), train_data=token_batches(), out_dir=tmp_path).fit()
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["step_00000008", "step_00000012"]
    assert all((tmp_path / "checkpoints" / n / "trainer_state.json").exists() for n in names)


KILL_SCRIPT = """
import sys, time, torch
from windtunnel import Recipe, Trainer
from windtunnel.trainer import Callback
sys.path.insert(0, {here!r})
from test_trainer import tiny_recipe, token_batches
class Hang(Callback):
    def on_checkpoint(self, state):
        if state.step == 8 and not {resume}:
            open({marker!r}, "w").write("x"); time.sleep(600)
Trainer(tiny_recipe(), train_data=token_batches(), out_dir={out!r}, resume={resume}, callbacks=[Hang()]).fit()
"""


def run_script(tmp_path, out, resume):
    marker = str(tmp_path / "marker")
    code = KILL_SCRIPT.format(here=str(Path(__file__).parent), out=str(out), resume=resume, marker=marker)
    return subprocess.Popen([sys.executable, "-c", code], env={**os.environ, "OMP_NUM_THREADS": "1"})


@pytest.mark.slow  # a real process, killed with SIGKILL (~25 s on the shared 2-core box)
def test_resume_after_kill(tmp_path):
    full, killed = tmp_path / "full", tmp_path / "killed"
    Trainer(tiny_recipe(), train_data=token_batches(), out_dir=full).fit()
    proc = run_script(tmp_path, killed, resume=False)
    deadline = time.time() + 120
    while not (tmp_path / "marker").exists():
        assert time.time() < deadline and proc.poll() is None
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "summary.json").exists()
    assert run_script(tmp_path, killed, resume=True).wait() == 0
    assert losses(killed) == losses(full)


class NaNAt(torch.nn.Module):
    """Wraps a model; its loss is NaN on the given calls (counted per forward)."""

    def __init__(self, model, bad_calls):
        super().__init__()
        self.model, self.bad, self.calls = model, set(bad_calls), 0

    def forward(self, input_ids, targets=None):
        self.calls += 1
        out = self.model(input_ids, targets)
        if self.calls in self.bad:
            out["loss"] = out["loss"] * float("nan")
        return out


def model_for(r):
    from dataclasses import replace

    from windtunnel.models import build_model

    return build_model(replace(r.model, max_seq_len=16))


def test_nan_halt_keeps_last_good_checkpoint(tmp_path):
    r = tiny_recipe(eval_every=100)
    with pytest.raises(TrainingHalted, match="loss is nan.*last good checkpoint: .*step_00000004"):
        Trainer(r, model=NaNAt(model_for(r), {6}), train_data=token_batches(), out_dir=tmp_path).fit()
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "halted"
    ckpts = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert ckpts == ["step_00000004"]


def test_nan_skip_continues(tmp_path):
    r = tiny_recipe(nan_policy="skip", eval_every=100)
    s = Trainer(r, model=NaNAt(model_for(r), {3, 7}), train_data=token_batches(), out_dir=tmp_path).fit()
    assert s["skipped_steps"] == 2 and s["status"] == "completed" and math.isfinite(s["final_train_loss"])


def test_user_model_returning_logits_and_callbacks(tmp_path):
    class Bigram(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(64, 64)

        def forward(self, x):
            return self.emb(x)

    seen = []

    class Record(Callback):
        def on_eval(self, state):
            seen.append(("eval", state.step))

        def on_checkpoint(self, state):
            seen.append(("ckpt", state.step))

    data = token_batches(2)
    s = Trainer(tiny_recipe(), model=Bigram(), train_data=data, val_data=data, out_dir=tmp_path,
                callbacks=[Record()]).fit()
    assert ("eval", 6) in seen and ("ckpt", 4) in seen and ("ckpt", 12) in seen
    vals = [json.loads(l)["val_loss"] for l in (tmp_path / "metrics.jsonl").read_text().splitlines() if "val_loss" in l]
    assert vals[1] < vals[0] and s["final_val_loss"] == vals[1]


def test_grad_accum_counts_tokens(tmp_path):
    r = tiny_recipe(grad_accum=3, steps=2, eval_every=100, ckpt_every=0)
    Trainer(r, train_data=token_batches(), out_dir=tmp_path).fit()
    rows = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows[1]["tokens"] == 2 * 3 * 64


def test_clip_knob_limits_the_update(tmp_path):
    """Adam is scale-invariant, but a clip far below eps shrinks the update: the knob acts."""
    def change(clip, sub):
        r = tiny_recipe(clip=clip, steps=1, eval_every=100, ckpt_every=0)
        torch.manual_seed(0)
        model = model_for(r)
        before = [p.detach().clone() for p in model.parameters()]
        Trainer(r, model=model, train_data=token_batches(), out_dir=tmp_path / sub).fit()
        return sum((p.detach() - b).abs().sum().item() for p, b in zip(model.parameters(), before))

    assert change(1e-12, "tiny") < 0.01 * change(0.0, "none")


# ----------------------------------------------------------------------------- the callback API


class Hooks(Callback):
    """Records which hook ran at which step; optionally stops or drops updates."""

    def __init__(self, stop_at=None, drop=()):
        self.calls, self.stop_at, self.drop = [], stop_at, set(drop)

    def __getattribute__(self, name):
        from windtunnel.callbacks import HOOKS

        if name in HOOKS:
            return lambda state: self.record(name, state)
        return super().__getattribute__(name)

    def record(self, name, state):
        self.calls.append((name, state.step))
        if name == "pre_optim_step" and state.step in self.drop:
            state.skip_update = True
        if name == "post_step" and state.step == self.stop_at:
            state.should_stop = True


def test_hooks_run_in_documented_order(tmp_path):
    hooks = Hooks()
    data = token_batches(2)
    Trainer(tiny_recipe(steps=4, eval_every=2, ckpt_every=4), train_data=data, val_data=data, out_dir=tmp_path,
            callbacks=[hooks]).fit()
    step = ["pre_step", "pre_optim_step"]
    # evaluation runs in post_step before user callbacks, the checkpoint after them
    assert [n for n, _ in hooks.calls] == ["pre_train", *step, "post_step", *step, "on_eval", "post_step",
                                           *step, "post_step", *step, "on_eval", "post_step", "on_checkpoint",
                                           "post_train"]
    assert [s for n, s in hooks.calls if n in ("pre_step", "post_step")] == [0, 1, 1, 2, 2, 3, 3, 4]


def test_should_stop_ends_run_with_checkpoint_and_resumes_exactly(tmp_path):
    full, part = tmp_path / "full", tmp_path / "part"
    Trainer(tiny_recipe(ckpt_every=5), train_data=token_batches(), out_dir=full).fit()
    stopped = Trainer(tiny_recipe(ckpt_every=5), train_data=token_batches(), out_dir=part,
                      callbacks=[Hooks(stop_at=7)]).fit()
    assert stopped["status"] == "stopped" and stopped["steps"] == 7
    assert sorted(p.name for p in (part / "checkpoints").iterdir()) == ["step_00000005", "step_00000007"]
    Trainer(tiny_recipe(ckpt_every=5), train_data=token_batches(), out_dir=part, resume=True).fit()
    assert losses(part) == losses(full)


def test_stop_without_periodic_checkpoints_writes_none(tmp_path):
    r = tiny_recipe(ckpt_every=0).with_overrides(["logging.log_every=5"])
    s = Trainer(r, train_data=token_batches(), out_dir=tmp_path, callbacks=[Hooks(stop_at=3)]).fit()
    assert s["status"] == "stopped" and not (tmp_path / "checkpoints").exists()
    assert [step for step, _ in losses(tmp_path)] == [3]  # the partial log window is written


def test_skip_update_drops_exactly_that_update(tmp_path):
    r = tiny_recipe(steps=3, eval_every=100, ckpt_every=0)
    params = {}
    for name, drop in [("all", ()), ("drop", (1,))]:
        torch.manual_seed(0)
        model = model_for(r)
        s = Trainer(r, model=model, train_data=token_batches(), out_dir=tmp_path / name,
                    callbacks=[Hooks(drop=drop)]).fit()
        params[name] = torch.cat([p.detach().flatten() for p in model.parameters()])
        assert s["skipped_steps"] == len(drop)
    assert not torch.equal(params["all"], params["drop"])
    assert losses(tmp_path / "all")[:2] == losses(tmp_path / "drop")[:2]  # same until the dropped update


class Counter(Callback):
    """Keeps a count across resumes through the checkpoint."""

    def __init__(self):
        self.count, self.loaded = 0, None

    def post_step(self, state):
        self.count += 1

    def state_dict(self):
        return {"count": self.count}

    def load_state_dict(self, saved):
        self.count = self.loaded = saved["count"]


def test_callback_state_is_checkpointed_and_restored(tmp_path, crash_at):
    with pytest.raises(KeyboardInterrupt):
        Trainer(tiny_recipe(), train_data=token_batches(), out_dir=tmp_path, callbacks=[Counter(), crash_at(6)]).fit()
    counter = Counter()
    Trainer(tiny_recipe(), train_data=token_batches(), out_dir=tmp_path, resume=True, callbacks=[counter]).fit()
    assert counter.loaded == 4 and counter.count == 12


def test_data_step_passes_over_skipped_data():
    from windtunnel import TrainState

    state = TrainState(trainer=None, data_skips=[2, 3, 7])
    assert [state.data_step(s) for s in range(7)] == [0, 1, 4, 5, 6, 8, 9]
