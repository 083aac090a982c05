"""Two real processes on CPU (gloo; DeepSpeed with DS_ACCELERATOR=cpu) against one process with the same
global batch: DDP, ZeRO-2 + CPU optimizer offload, ZeRO-3, FSDP2 (native fully_shard on CPU).

Tolerances: losses within LOSS_TOL (absolute, on losses ~3.5 nats) and consolidated fp32 weights within
WEIGHT_TOL after 8 steps; measured differences are ~3e-7 (loss) and ~2.5e-6 (weights), from reduction order.
The muP recipe gives three param groups (LR multipliers 1 and 1/2, decay 0 / 0.1 / 0.2): matching losses
and weights show that set_lr reaches the real (DeepSpeed- or FSDP-wrapped) optimizer's groups.
"""
from __future__ import annotations

import json
import socket
import sys
from pathlib import Path

import pytest

from windtunnel.consolidate import FSDP_MODEL_DIR, load_weights

pytestmark = pytest.mark.slow

LOSS_TOL = 1e-4
WEIGHT_TOL = 1e-4
FINAL = "checkpoints/step_00000008"
ZERO2_OFFLOAD = ("distributed.strategy=deepspeed", "distributed.zero_stage=2", "distributed.offload_optimizer=cpu")


@pytest.fixture(scope="module")
def reference(launcher, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("reference")
    result = launcher.worker(out, nproc=1)
    result["weights"] = load_weights(out / FINAL)
    return result


def assert_matches(result: dict, out: Path, ref: dict) -> None:
    assert result["world"] == 2
    assert len(result["losses"]) == len(ref["losses"]) == 8
    assert max(abs(a - b) for a, b in zip(result["losses"], ref["losses"])) < LOSS_TOL
    assert max(abs(a - b) for a, b in zip(result["val_losses"], ref["val_losses"])) < LOSS_TOL
    weights = load_weights(out / FINAL)
    assert weights.keys() == ref["weights"].keys()  # plain names, whatever the strategy
    assert max((weights[k] - ref["weights"][k]).abs().max().item() for k in weights) < WEIGHT_TOL
    assert_groups(result["groups"], result["base_lr"], ref["groups"])


def assert_groups(groups: list[dict], base_lr: float, ref_groups: list[dict]) -> None:
    """The real optimizer keeps every group with its multiplier, and lr = base * lr_mult."""
    def key(g):
        return round(g["lr_mult"], 9), g["weight_decay"], g["eps"]

    assert sorted(map(key, groups)) == sorted(map(key, ref_groups))
    assert {g["lr_mult"] for g in groups} == {1.0, 0.5}
    for g in groups:
        assert g["lr"] == pytest.approx(base_lr * g["lr_mult"])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def accelerate_launch(launcher, config: str) -> list[str]:
    return [str(Path(sys.executable).with_name("accelerate")), "launch", "--config_file",
            str(launcher.root / "recipes/accelerate" / config), "--num_processes", "2", "--mixed_precision", "no",
            "--main_process_port", str(free_port())]


def kill_then_resume(launcher, out: Path, overrides: tuple[str, ...], first_launch=None) -> dict:
    """Hard-kill both ranks at step 6 (checkpoint at 4), then resume to step 8."""
    killed = launcher.worker(out, *overrides, prefix=first_launch, extra=("--die-at", "6"), check=False)
    assert killed.returncode != 0
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_00000004"]
    assert not (out / "summary.json").exists()
    return launcher.worker(out, *overrides, extra=("--resume",))


def test_zero2_cpu_offload_via_accelerate_config_survives_kill(launcher, reference, tmp_path):
    result = kill_then_resume(launcher, tmp_path, ZERO2_OFFLOAD,
                              first_launch=accelerate_launch(launcher, "deepspeed-zero2-offload.yaml"))
    assert result["optimizer"] == "DeepSpeedCPUAdam"
    assert (tmp_path / FINAL / "pytorch_model").is_dir()
    assert_matches(result, tmp_path, reference)


def test_zero3_with_selective_checkpointing(launcher, reference, tmp_path):
    result = launcher.worker(tmp_path, "distributed.strategy=deepspeed", "distributed.zero_stage=3",
                             "distributed.activation_checkpointing=selective")
    assert result["local_fraction"] < 0.75  # parameters really partitioned
    assert_matches(result, tmp_path, reference)


def test_fsdp2_with_full_checkpointing_survives_kill(launcher, reference, tmp_path):
    result = kill_then_resume(launcher, tmp_path, ("distributed.strategy=fsdp",
                                                   "distributed.activation_checkpointing=full"))
    assert result["local_fraction"] == pytest.approx(0.5, abs=0.01)  # every parameter sharded in two
    assert (tmp_path / FINAL / FSDP_MODEL_DIR).is_dir()
    assert_matches(result, tmp_path, reference)


def test_cli_ddp_on_builtin_data_matches_one_process(launcher, tmp_path):
    """`windtunnel train` under torchrun: the sampler gives each rank its share of the global batch."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text(json.dumps({
        "model": {"d_model": 32, "n_layers": 1, "n_heads": 2, "ffn_hidden": 64},
        "data": {"source": "stdlib", "max_documents": 40, "stdlib_tests": False, "cache_dir": str(tmp_path / "c")},
        "train": {"seq_len": 32, "steps": 6, "eval_every": 6, "eval_batches": 2, "threads": 1},
        "logging": {"log_every": 1, "progress": False}}))
    cli = ["-m", "windtunnel", "train", str(recipe)]
    launcher.run([sys.executable, *cli, "--out", str(tmp_path / "one"), "--set", "train.batch_size=4"])
    launcher.run([*launcher.torchrun(2), *cli, "--out", str(tmp_path / "two"), "--set", "train.batch_size=2"])
    one, two = (json.loads((tmp_path / run / "summary.json").read_text()) for run in ("one", "two"))
    assert one["batch_tokens"] == two["batch_tokens"] == 4 * 32
    assert abs(one["final_train_loss"] - two["final_train_loss"]) < LOSS_TOL
    w1, w2 = (load_weights(tmp_path / run / "checkpoints/step_00000006") for run in ("one", "two"))
    assert max((w1[k] - w2[k]).abs().max().item() for k in w1) < WEIGHT_TOL
