import json
import subprocess
import sys

import pytest
import torch

from windtunnel import Recipe, Trainer
from windtunnel.cli import main


def test_bad_recipe_exits_2_with_one_line(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text("train: {steps: 5}\nmodel: {n_layyers: 3}\n")
    assert main(["train", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "bad.yaml" in err and "model.n_layyers" in err and "model.n_layers" in err


def test_bad_override_exits_2(tmp_path, capsys):
    path = tmp_path / "r.yaml"
    path.write_text("train: {steps: 5}\n")
    assert main(["train", str(path), "--set", "train.seq_len=-4"]) == 2
    assert "train.seq_len: must be positive" in capsys.readouterr().err


def test_module_entry_point_help():
    out = subprocess.run([sys.executable, "-m", "windtunnel", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "train" in out.stdout and "export" in out.stdout


@pytest.mark.slow
def test_wandb_offline_without_key(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    r = Recipe.from_dict({"model": {"vocab_size": 32, "d_model": 16, "n_heads": 2, "n_layers": 1},
                          "train": {"steps": 2, "batch_size": 2, "seq_len": 8, "threads": 1},
                          "logging": {"wandb": True, "progress": False, "log_every": 1}})
    data = [torch.randint(0, 32, (2, 9)) for _ in range(2)]
    Trainer(r, train_data=data, out_dir=tmp_path).fit()
    assert list((tmp_path / "wandb").glob("offline-run-*")), "wandb should log offline into the run dir"
    assert json.loads((tmp_path / "summary.json").read_text())["status"] == "completed"
