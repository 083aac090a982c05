import json
import math
from pathlib import Path

import pytest
import torch

from windtunnel import Recipe, Trainer
from windtunnel.branches import Branch, branch_schedule, plan_branches
from windtunnel.recipe import RecipeError
from windtunnel.schedules import Schedule

# 4 sequences x 16 tokens = 64 tokens per step; 24 steps; branches at 8 and 16 steps (decay 2 / 4 steps).
BATCH_TOKENS = 64


def recipe(branches=(), steps=24, **over):
    raw = {
        "model": {"vocab_size": 64, "d_model": 32, "n_heads": 2, "n_layers": 1},
        "schedule": {"name": "wsd", "warmup_steps": 2, "wsd": {"decay_frac": 0.25, "decay_shape": "linear",
                                                                "branches": list(branches)}},
        "train": {"steps": steps, "batch_size": 4, "seq_len": 16, "eval_every": 100, "ckpt_every": 0,
                  "threads": 1},
        "logging": {"log_every": 1, "progress": False},
    }
    for k, v in over.items():
        raw[k].update(v)
    return Recipe.from_dict(raw)


def batches(n=24):
    g = torch.Generator().manual_seed(0)
    return [torch.randint(0, 64, (4, 17), generator=g) for _ in range(n)]


def rows(run_dir):
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def main_losses(run_dir):
    return [(r["step"], r["loss"]) for r in rows(run_dir) if "loss" in r and "branch_tokens" not in r]


def fit(r, out, **kw):
    return Trainer(r, train_data=batches(), val_data=batches(2), out_dir=out, **kw).fit()


def test_plan_branches_steps_and_errors():
    sched = Schedule.from_recipe(recipe([8 * BATCH_TOKENS, 16 * BATCH_TOKENS]))
    assert plan_branches(sched, BATCH_TOKENS) == [Branch(512, 6, 8), Branch(1024, 12, 16)]
    for bad, warmup, msg in [(24, 2, "not before the end"), (1, 0, "no decay step"), (4, 5, "inside the warmup")]:
        r = recipe([bad * BATCH_TOKENS], schedule={"warmup_steps": warmup})
        with pytest.raises(RecipeError, match=msg):
            plan_branches(Schedule.from_recipe(r), BATCH_TOKENS)
    with pytest.raises(RecipeError, match="schedule.name=wsd"):  # recipe validation refuses it first
        plan_branches(Schedule.from_recipe(recipe([512], schedule={"name": "cosine"})), BATCH_TOKENS)


def test_branch_schedule_keeps_warmup_and_decays_to_its_own_end():
    main = Schedule.from_recipe(recipe())
    b = branch_schedule(main, Branch(512, 6, 8))
    assert [b(s) for s in range(6)] == [main(s) for s in range(6)]  # same warmup and stable phase
    assert b(6) < main.peak_lr and b(7) == pytest.approx(0.0)  # linear decay reaches 0 at the last step


def test_branches_record_points_and_leave_main_run_bit_identical(tmp_path):
    plain = fit(recipe(), tmp_path / "plain")
    branched = fit(recipe([8 * BATCH_TOKENS, 16 * BATCH_TOKENS]), tmp_path / "branched")
    assert main_losses(tmp_path / "branched") == main_losses(tmp_path / "plain")  # exact floats
    assert branched["final_val_loss"] == plain["final_val_loss"]
    assert plain["branches"] == []
    points = branched["branches"]
    assert [(p["tokens"], p["step"]) for p in points] == [(512, 8), (1024, 16)]
    per_token = branched["flops_per_token"]
    for p in points:
        assert 0 < p["val_loss"] < 10 and p["flops"] == pytest.approx(per_token * p["tokens"])
    assert json.loads((tmp_path / "branched" / "summary.json").read_text())["branches"] == points
    # the branch's own LR profile: decays monotonically over its decay steps, from below the peak
    lrs = [r["lr"] for r in rows(tmp_path / "branched") if r.get("branch_tokens") == 1024 and "lr" in r]
    assert len(lrs) == 4 and all(a > b for a, b in zip(lrs, lrs[1:])) and lrs[0] < 3e-3
    finals = [r for r in rows(tmp_path / "branched") if "branch_tokens" in r and "val_loss" in r]
    assert [r["val_loss"] for r in finals] == [p["val_loss"] for p in points]
    assert not (tmp_path / "branched" / ".branch_snapshot").exists()


def test_decayed_branch_differs_from_stable_main_at_same_step(tmp_path):
    fit(recipe([16 * BATCH_TOKENS]), tmp_path)
    main = dict(main_losses(tmp_path))
    branch = {r["step"]: r["loss"] for r in rows(tmp_path) if r.get("branch_tokens") == 1024 and "loss" in r}
    assert branch[13] == main[13]  # the first decay step uses the same weights and batch ...
    assert branch[16] != main[16]  # ... then the lower LR changes the trajectory


def test_branches_survive_kill_and_resume(tmp_path, crash_at):
    r = recipe([8 * BATCH_TOKENS, 16 * BATCH_TOKENS], train={"ckpt_every": 10})
    full = fit(r, tmp_path / "full")
    with pytest.raises(KeyboardInterrupt):
        fit(r, tmp_path / "part", callbacks=[crash_at(14)])  # after branch 1, before branch 2
    resumed = fit(r, tmp_path / "part", resume=True)
    assert resumed["branches"] == full["branches"]
    assert main_losses(tmp_path / "part") == main_losses(tmp_path / "full")


def test_branch_steps_honour_nan_policy_skip(tmp_path):
    """The branch's update goes through the trainer's optimizer_step: a NaN loss there is skipped too."""
    from dataclasses import replace

    from windtunnel.models import build_model

    class NaNOnCall(torch.nn.Module):
        def __init__(self, model, bad_call):
            super().__init__()
            self.model, self.bad_call, self.calls = model, bad_call, 0

        def forward(self, input_ids, targets=None):
            self.calls += 1
            out = self.model(input_ids, targets)
            return {**out, "loss": out["loss"] * float("nan")} if self.calls == self.bad_call else out

    r = recipe([8 * BATCH_TOKENS], train={"nan_policy": "skip"})
    model = NaNOnCall(build_model(replace(r.model, max_seq_len=16)), bad_call=7)  # the branch's first step
    s = fit(r, tmp_path, model=model)
    assert s["branches"][0]["val_loss"] is not None and 0 < s["branches"][0]["val_loss"] < 10
    branch_rows = [row for row in rows(tmp_path) if row.get("branch_tokens") == 512 and "loss" in row]
    assert math.isnan(branch_rows[0]["loss"]) and math.isfinite(branch_rows[1]["loss"])
    assert s["skipped_steps"] == 0  # the main run's steps were all taken


def test_impossible_branch_is_refused_before_the_run_dir_is_touched(tmp_path):
    r = recipe([30 * BATCH_TOKENS])  # past the end of a 24-step run: only known once steps are resolved
    with pytest.raises(RecipeError, match="schedule.wsd.branches"):
        Trainer(r, train_data=[torch.randint(0, 64, (4, 17))], out_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists()
