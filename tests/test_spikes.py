"""train.spike_policy (spikes.py): detection on an injected spike, and each policy's effect."""
import json
import math
from pathlib import Path

import pytest
import torch

from windtunnel import Callback, Recipe, Trainer
from windtunnel.recipe import RecipeError
from windtunnel.spikes import WARMUP, LossStats

SPIKE = 63  # a token only the spiking batch contains
SPIKE_AT = 12  # index of the spiking batch = the data of step 13 (steps counted from 1, as in the rows)


def spike_recipe(policy, **train):
    return Recipe.from_dict({
        "model": {"vocab_size": 64, "d_model": 32, "n_heads": 2, "n_layers": 1, "max_seq_len": 16},
        "train": {"steps": 20, "batch_size": 2, "seq_len": 16, "eval_every": 100, "ckpt_every": 6,
                  "threads": 1, "spike_policy": policy, **train},
        "schedule": {"name": "constant", "warmup_steps": 2},
        "logging": {"log_every": 3, "progress": False},
    })


def spiky_batches(n=22, spike_at=SPIKE_AT):
    g = torch.Generator().manual_seed(1)
    batches = [torch.randint(0, SPIKE, (2, 17), generator=g) for _ in range(n)]
    if spike_at is not None:
        batches[spike_at][0, 0] = SPIKE
    return batches


class SpikyModel(torch.nn.Module):
    """The real model; its loss is 30x on a batch holding the SPIKE token (an injected loss spike)."""

    def __init__(self, recipe):
        super().__init__()
        from windtunnel.models import build_model

        torch.manual_seed(0)
        self.model = build_model(recipe.model)

    def forward(self, input_ids, targets=None):
        out = self.model(input_ids, targets)
        scale = 1 + 29 * (input_ids == SPIKE).any()
        return {**out, "loss": out["loss"] * scale}


def train(recipe, out, data=None, **kw):
    return Trainer(recipe, model=SpikyModel(recipe), train_data=data or spiky_batches(), out_dir=out, **kw).fit()


def rows(run_dir):
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def losses(run_dir):
    return [(r["step"], r["loss"]) for r in rows(run_dir) if "loss" in r]


def events(run_dir):
    return [r for r in rows(run_dir) if r.get("event") == "loss_spike"]


class Inject(Callback):
    """Drops the update of step `drop`, or raises KeyboardInterrupt (a kill) after step `crash`."""

    def __init__(self, drop=None, crash=None):
        self.drop, self.crash = drop, crash

    def pre_optim_step(self, state):
        state.skip_update = state.step + 1 == self.drop

    def post_step(self, state):
        if state.step == self.crash:
            raise KeyboardInterrupt


def test_stats_flag_only_after_warmup_and_far_above_the_mean():
    stats = LossStats()
    for i in range(WARMUP):
        assert not stats.is_spike(100.0, 6.0)  # too early to tell
        stats.add(4.0 - 0.01 * i)
    assert not stats.is_spike(4.1, 6.0) and stats.is_spike(6.0, 6.0) and stats.is_spike(math.nan, 6.0)
    assert stats.z(5.0) < stats.z(6.0)


def test_log_policy_writes_one_event_and_leaves_training_alone(tmp_path):
    train(spike_recipe("off"), tmp_path / "off")
    s = train(spike_recipe("log"), tmp_path / "log")
    assert losses(tmp_path / "log") == losses(tmp_path / "off")
    [event] = events(tmp_path / "log")
    assert event["step"] == SPIKE_AT + 1 and event["action"] == "log"
    assert event["loss_z"] > 6 and event["spike_loss"] > 10 * event["loss_mean"]
    ratios = [r["update_grad_ratio"] for r in rows(tmp_path / "log") if "update_grad_ratio" in r]
    assert len(ratios) == 7 and all(r > 0 for r in ratios)  # every log step: 3, 6, ..., 18 and the last
    assert s["skipped_steps"] == 0 and not events(tmp_path / "off")


def test_threshold_knob_decides_what_is_a_spike(tmp_path):
    train(spike_recipe("log", spike_threshold=1e6), tmp_path)
    assert not events(tmp_path)


def test_skip_policy_drops_exactly_the_spike_update(tmp_path):
    train(spike_recipe("off"), tmp_path / "off")
    train(spike_recipe("off"), tmp_path / "dropped", callbacks=[Inject(drop=SPIKE_AT + 1)])
    s = train(spike_recipe("skip"), tmp_path / "skip")
    assert s["skipped_steps"] == 1 and events(tmp_path / "skip")[0]["action"] == "skip"
    assert losses(tmp_path / "skip") == losses(tmp_path / "dropped") != losses(tmp_path / "off")


def test_rewind_equals_a_run_that_never_saw_the_spike_data(tmp_path):
    s = train(spike_recipe("rewind"), tmp_path / "rewind")
    clean = spiky_batches(spike_at=None)
    del clean[SPIKE_AT]  # the same data with the spiking batch taken out
    train(spike_recipe("off"), tmp_path / "clean", data=clean)
    assert losses(tmp_path / "rewind") == losses(tmp_path / "clean")  # exact: same floats
    [event] = events(tmp_path / "rewind")
    assert (event["action"], event["step"], event["to_step"]) == ("rewind", SPIKE_AT + 1, 12)
    assert s["data_skips"] == [SPIKE_AT] and s["steps"] == 20


def test_rewind_window_knob_passes_over_more_data(tmp_path):
    s = train(spike_recipe("rewind", spike_window=3), tmp_path)
    assert s["data_skips"] == [SPIKE_AT, SPIKE_AT + 1, SPIKE_AT + 2]


@pytest.mark.parametrize("policy, crash_after", [("rewind", 19), ("rewind", 14), ("rewind", 9), ("skip", 14),
                                                 ("log", 14)])
def test_resumed_run_takes_the_same_decisions(tmp_path, policy, crash_after):
    """Killed and resumed from a checkpoint before the spike (it is met again), or after it (the decision
    comes from the checkpoint: rewind 19 resumes from step 18), the run equals the uninterrupted one."""
    full = train(spike_recipe(policy), tmp_path / "full")
    with pytest.raises(KeyboardInterrupt):
        train(spike_recipe(policy), tmp_path / "part", callbacks=[Inject(crash=crash_after)])
    resumed = train(spike_recipe(policy), tmp_path / "part", resume=True)
    assert losses(tmp_path / "part") == losses(tmp_path / "full")
    assert events(tmp_path / "part") == events(tmp_path / "full")
    assert resumed.get("data_skips") == full.get("data_skips")
    assert resumed["skipped_steps"] == full["skipped_steps"]


def test_rewinds_past_max_skips_halt(tmp_path):
    from windtunnel.trainer import TrainingHalted

    data = spiky_batches()
    for i in range(SPIKE_AT, len(data)):  # every batch from here on spikes
        data[i][0, 0] = SPIKE
    with pytest.raises(TrainingHalted, match="rewinds"):
        train(spike_recipe("rewind", max_skips=2), tmp_path, data=data)
    assert json.loads((tmp_path / "summary.json").read_text())["status"] == "failed"


@pytest.mark.parametrize("key, value, msg", [("spike_threshold", 0, "positive"), ("spike_window", 0, "spike_window: must be positive"),
                                             ("spike_policy", "retry", "spike_policy")])
def test_bad_spike_keys_are_one_line_errors(key, value, msg):
    with pytest.raises(RecipeError, match=msg):
        spike_recipe("log", **{key: value})
