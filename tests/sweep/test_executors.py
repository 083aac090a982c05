import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from functools import partial

import psutil
import pytest
import yaml

from windtunnel.sweep import executors
from windtunnel.sweep.executors import (COMPLETED, FAILED, MISSING, RESUMABLE, prepare_run, run_local, run_slurm,
                                        run_state, slurm_command, visible_gpus)
from windtunnel.rundir import RunLock
from windtunnel.sweep.plan import ExecutorConfig, expand, load_sweep


@pytest.fixture
def runs(tmp_path):
    (tmp_path / "base.yaml").write_text(yaml.safe_dump({
        "model": {"d_model": 32, "n_layers": 1, "n_heads": 2}, "train": {"steps": 4}}))
    (tmp_path / "s.yaml").write_text(yaml.safe_dump({"base": "base.yaml",
                                                     "sweep": {"grid": {"optim.lr": [1e-3, 2e-3, 3e-3]}}}))
    return expand(load_sweep(tmp_path / "s.yaml"))


def fake_checkpoint(run_dir, step=2):
    ckpt = run_dir / "checkpoints" / f"step_{step:08d}"
    ckpt.mkdir(parents=True)
    (ckpt / "trainer_state.json").write_text(json.dumps({"step": step}))


def finish_command(run_dir, status="completed", rc=0):
    """A stand-in for `windtunnel train`: writes the summary a run would and exits with rc."""
    code = (f"import json, pathlib, sys; pathlib.Path({str(run_dir)!r}, 'summary.json').write_text("
            f"json.dumps({{'status': {status!r}}})); print('argv', sys.argv); sys.exit({rc})")
    return [sys.executable, "-c", code]


def test_run_state_and_prepare(tmp_path, runs):
    d = tmp_path / "r"
    assert run_state(d) == MISSING
    assert prepare_run(runs[0], d) is False and (d / "recipe.yaml").exists()
    (d / "summary.json").write_text(json.dumps({"status": "failed"}))
    (d / "metrics.jsonl").write_text('{"step": 1}\n')
    assert run_state(d) == FAILED
    assert prepare_run(runs[0], d) is False  # restart from scratch: stale files cleared
    assert not (d / "summary.json").exists() and not (d / "metrics.jsonl").exists()
    fake_checkpoint(d)
    (d / "recipe.yaml").write_text("resolved: by the trainer\n")
    (d / "summary.json").write_text(json.dumps({"status": "failed"}))  # halted, with a good checkpoint
    assert run_state(d) == RESUMABLE
    assert prepare_run(runs[0], d) is True
    assert (d / "recipe.yaml").read_text() == "resolved: by the trainer\n"  # the run's own recipe is kept
    (d / "summary.json").write_text(json.dumps({"status": "completed"}))
    assert run_state(d) == COMPLETED


def test_visible_gpus(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5, 7")
    assert visible_gpus(None) == ["3", "5", "7"] and visible_gpus(2) == ["3", "5"] and visible_gpus(0) == []


def test_local_one_run_per_gpu_and_a_crash_does_not_stop_the_sweep(tmp_path, runs, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,6")
    seen, lock = [], threading.Lock()
    real_execute = executors.execute

    def fake_command(run_dir, resume):
        return finish_command(run_dir, *(("failed", 1) if run_dir.name == "lr0.002" else ()))

    def spy(command, log_path, env=None, started=None):
        with lock:
            seen.append(env["CUDA_VISIBLE_DEVICES"])
        return real_execute(command, log_path, env, started)

    monkeypatch.setattr(executors, "local_command", fake_command)
    monkeypatch.setattr(executors, "execute", spy)
    todo = [(r, tmp_path / "sweep" / r.name) for r in runs]
    codes = run_local(todo, ExecutorConfig(), echo=lambda *_: None)
    assert codes == {"lr0.001": 0, "lr0.002": 1, "lr0.003": 0}
    assert sorted(set(seen)) == ["4", "6"] and len(seen) == 3
    assert [run_state(d) for _, d in todo] == [COMPLETED, FAILED, COMPLETED]
    assert "argv" in (todo[1][1] / "train.log").read_text()  # output captured per run


def test_slurm_command_launches_accelerate(tmp_path):
    cmd = slurm_command(tmp_path / "r", resume=True, processes=4)
    assert cmd[:7] == ["accelerate", "launch", "--num_processes", "4", "--num_machines", "1", "--multi_gpu"]
    assert cmd[7:] == ["-m", "windtunnel", "train", str(tmp_path / "r" / "recipe.yaml"), "--out",
                       str(tmp_path / "r"), "--resume"]


def test_slurm_through_submitit_debug_executor(tmp_path, runs, monkeypatch):
    commands = []

    def fake(run_dir, resume, processes):
        commands.append((run_dir.name, resume, processes))
        return finish_command(run_dir)

    monkeypatch.setattr(executors, "slurm_command", fake)
    sweep = tmp_path / "sweep"
    fake_checkpoint(sweep / runs[1].name)
    todo = [(r, sweep / r.name) for r in runs]
    cfg = ExecutorConfig(kind="slurm", cluster="debug", gpus_per_run=2, partition="gpu")
    run_slurm(todo, cfg, sweep, "test", echo=lambda *_: None)
    assert commands == [("lr0.001", False, 2), ("lr0.002", True, 2), ("lr0.003", False, 2)]
    assert all(run_state(d) == COMPLETED for _, d in todo)
    assert set(json.loads((sweep / "jobs.json").read_text())) == {r.name for r in runs}


def test_a_locked_run_is_skipped_not_started_twice(tmp_path, runs, monkeypatch):
    monkeypatch.setattr(executors, "local_command", lambda run_dir, resume: finish_command(run_dir))
    todo = [(r, tmp_path / r.name) for r in runs]
    (tmp_path / runs[1].name / "metrics.jsonl").parent.mkdir(parents=True)
    (tmp_path / runs[1].name / "metrics.jsonl").write_text('{"step": 1}\n')  # the live trainer's records
    with RunLock(tmp_path / runs[1].name):  # a trainer left running by a killed sweep
        codes = run_local(todo, ExecutorConfig(gpus=0), echo=lambda *_: None)
    assert codes == {"lr0.001": 0, "lr0.002": executors.BUSY_EXIT, "lr0.003": 0}
    assert run_state(todo[1][1]) == MISSING and (todo[1][1] / "metrics.jsonl").exists()  # untouched


def test_run_state_of_a_cut_summary(tmp_path):
    (tmp_path / "summary.json").write_text('{"status": "compl')
    assert run_state(tmp_path) == FAILED


def gone(pid):
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_trainer_dies_when_the_sweep_is_killed(tmp_path):
    """kill -9 of the sweep: its child (started as local_command starts the trainer) gets SIGTERM."""
    pid_file = tmp_path / "child.pid"
    sweep = textwrap.dedent(f"""
        import sys
        from pathlib import Path
        from windtunnel.sweep import executors
        guard = executors.local_command(Path({str(tmp_path)!r}), False)[:4]  # python -m ...child PID
        sleeper = "import os, sys, time; open(sys.argv[1], 'w').write(str(os.getpid())); time.sleep(300)"
        executors.execute(guard + [sys.executable, "-c", sleeper, {str(pid_file)!r}], {str(tmp_path / "log")!r})
    """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    parent = subprocess.Popen([sys.executable, "-c", sweep], env=env)
    try:
        for _ in range(600):
            if pid_file.exists() and pid_file.read_text():
                break
            time.sleep(0.05)
        child = int(pid_file.read_text())
        assert psutil.Process(child).ppid() == parent.pid  # exec'd in place: no extra process
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        for _ in range(600):
            if gone(child):
                break
            time.sleep(0.05)
        assert gone(child)
    finally:
        parent.kill()
        if pid_file.exists() and not gone(int(pid_file.read_text())):
            os.kill(int(pid_file.read_text()), signal.SIGKILL)


def test_child_refuses_when_the_sweep_is_already_gone():
    proc = subprocess.run([sys.executable, "-m", "windtunnel.sweep.child", "1", sys.executable, "-c", "print('ran')"],
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert proc.returncode == 1 and "ran" not in proc.stdout and "has exited" in proc.stderr


def test_interrupting_the_sweep_stops_its_trainers(tmp_path):
    """SIGINT to the sweep process alone (not its group): run_local stops the running trainer and
    starts no other, instead of waiting for it."""
    pid_file = tmp_path / "child.pid"
    # the handler is set explicitly: a runner started in the background without job control (nohup cmd &)
    # passes SIGINT down as ignored, and a process that starts with SIGINT ignored never sees Ctrl-C
    sweep = textwrap.dedent(f"""
        import signal, sys
        signal.signal(signal.SIGINT, signal.default_int_handler)
        from pathlib import Path
        from types import SimpleNamespace
        from windtunnel.sweep import executors
        from windtunnel.sweep.plan import ExecutorConfig
        sleeper = "import os, sys, time; open(sys.argv[1], 'a').write(str(os.getpid()) + ' '); time.sleep(300)"
        executors.local_command = lambda run_dir, resume: [sys.executable, "-c", sleeper, {str(pid_file)!r}]
        executors.prepare_run = lambda run, run_dir: run_dir.mkdir(parents=True, exist_ok=True) or False
        todo = [(SimpleNamespace(name=name), Path({str(tmp_path)!r}) / name) for name in ("a", "b")]
        executors.run_local(todo, ExecutorConfig(gpus=0), echo=lambda *_: None)
    """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    parent = subprocess.Popen([sys.executable, "-c", sweep], env=env, stderr=subprocess.PIPE)
    try:
        for _ in range(600):
            if pid_file.exists() and pid_file.read_text():
                break
            time.sleep(0.05)
        child = int(pid_file.read_text().split()[0])
        parent.send_signal(signal.SIGINT)
        assert parent.wait(timeout=60) != 0 and b"KeyboardInterrupt" in parent.stderr.read()
        for _ in range(600):
            if gone(child):
                break
            time.sleep(0.05)
        assert gone(child) and len(pid_file.read_text().split()) == 1  # run "b" never started
    finally:
        parent.kill()
        for pid in map(int, pid_file.read_text().split() if pid_file.exists() else []):
            if not gone(pid):
                os.kill(pid, signal.SIGKILL)


def test_a_trainer_registered_after_the_stop_is_terminated():
    """The race behind a hung sweep: SIGINT lands between a trainer's Popen and its registration."""
    trainers = executors.Trainers()
    trainers.stop()
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    try:
        trainers.started(proc)
        assert proc.wait(timeout=30) == -signal.SIGTERM
    finally:
        proc.kill()


def test_run_on_slots_runs_one_task_per_slot_and_keeps_the_order():
    active, peak, lock = [0], [0], threading.Lock()

    def task(i, slot, trainers):
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        time.sleep(0.05)
        with lock:
            active[0] -= 1
        return (i, slot)

    results = executors.run_on_slots([partial(task, i) for i in range(6)], ["0", "1"])
    assert [i for i, _ in results] == list(range(6)) and {s for _, s in results} == {"0", "1"}
    assert peak[0] == 2
