import json
import shutil

import pytest
import yaml

from windtunnel.cli import main as windtunnel_main


def main(argv: list[str]) -> int:
    return windtunnel_main(["sweep", *argv])


@pytest.fixture
def sweep_file(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(30):
        (corpus / f"d{i}.txt").write_text(" ".join(f"tok{(i * j) % 17}" for j in range(200)))
    base = {
        "model": {"d_model": 32, "n_layers": 1, "n_heads": 2},
        "data": {"source": "files", "paths": [str(corpus)], "val_fraction": 0.2,
                 "cache_dir": str(tmp_path / "cache")},
        "train": {"steps": 6, "batch_size": 2, "seq_len": 32, "eval_every": 3, "eval_batches": 1,
                  "ckpt_every": 3, "threads": 1},
        "logging": {"log_every": 2, "progress": False},
    }
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"base": "base.yaml", "out_dir": str(tmp_path / "out"),
                                    "sweep": {"grid": {"optim.lr": [1e-3, 2e-3]}},
                                    "executor": {"kind": "local", "gpus": 0}}))
    return path


def test_dry_run_prints_plan_and_writes_nothing(sweep_file, tmp_path, capsys):
    assert main([str(sweep_file), "--dry-run", "--gpu", "A100", "--mfu", "0.5"]) == 0
    out = capsys.readouterr().out
    assert "lr0.001" in out and "lr0.002" in out and "non-emb" in out and "GPU-h" in out
    assert "50% MFU of A100" in out
    assert not (tmp_path / "out").exists()


def test_bad_input_exits_2_with_one_line(sweep_file, capsys):
    assert main([str(sweep_file), "--dry-run", "--set", "train.stepz=3"]) == 2
    err = capsys.readouterr().err.strip()
    assert "unknown key train.stepz (did you mean train.steps?)" in err and "\n" not in err
    assert main([str(sweep_file), "--dry-run", "--only", "nope*"]) == 2


@pytest.mark.slow
def test_sweep_runs_skips_finished_and_resumes(sweep_file, tmp_path, capsys):
    out = tmp_path / "out"
    assert main([str(sweep_file)]) == 0
    plan = json.loads((out / "plan.json").read_text())
    for row in plan["runs"]:
        summary = json.loads((out / row["name"] / "summary.json").read_text())
        assert summary["status"] == "completed" and (out / row["name"] / "train.log").exists()
        # the planner's numbers are the trainer's numbers
        for key in ("params", "non_embedding_params", "active_params", "tokens", "flops"):
            assert summary[key] == pytest.approx(row[key]), key
    capsys.readouterr()
    assert main([str(sweep_file)]) == 0
    assert "2 of 2 runs already completed; 0 to run" in capsys.readouterr().out
    # a run killed after its last checkpoint (no summary) resumes; a failed run without one restarts
    (out / "lr0.001" / "summary.json").unlink()
    (out / "lr0.002" / "summary.json").write_text(json.dumps({"status": "failed"}))
    shutil.rmtree(out / "lr0.002" / "checkpoints")
    assert main([str(sweep_file), "--only", "lr0.001"]) == 0
    log = (out / "lr0.001" / "train.log").read_text()
    assert log.count("\n=== ") == 2 and log.count("--resume") == 1  # second attempt resumed
    assert json.loads((out / "lr0.001" / "summary.json").read_text())["status"] == "completed"
    assert json.loads((out / "lr0.002" / "summary.json").read_text())["status"] == "failed"  # not selected
    capsys.readouterr()
    assert main([str(sweep_file), "--status"]) == 0
    status = capsys.readouterr().out
    assert "lr0.001" in status and "completed" in status and "failed" in status


def test_changed_plan_refuses_to_mix_results(sweep_file, tmp_path, capsys):
    out = tmp_path / "out"
    (out / "lr0.001").mkdir(parents=True)
    (out / "lr0.001" / "summary.json").write_text(json.dumps({"status": "completed"}))
    (out / "lr0.002").mkdir()
    (out / "lr0.002" / "summary.json").write_text(json.dumps({"status": "completed"}))
    assert main([str(sweep_file)]) == 0  # writes plan.json; both runs "done"
    assert main([str(sweep_file), "--set", "train.seed=5"]) == 2
    assert "plans a different recipe for this run" in capsys.readouterr().err
