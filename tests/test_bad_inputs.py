"""Bad input through the real command line: exit 2, one line on stderr naming the key or path, no traceback.

Every case fails before a training step (tiny recipe, one thread), so the table stays cheap. The
cases include those of issue 11 (parts A and B); fault injection stands in for a full or read-only
disk, which a test cannot produce for real.
"""
import errno
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from windtunnel.cli import main

RECIPE = {
    "model": {"d_model": 16, "n_layers": 1, "n_heads": 2},
    "data": {"source": "files", "paths": ["corpus"], "val_fraction": 0.2, "cache_dir": "cache"},
    "train": {"steps": 1, "batch_size": 2, "seq_len": 16, "eval_batches": 1, "eval_every": 1, "threads": 1},
    "logging": {"progress": False, "log_every": 1},
}


@pytest.fixture
def work(tmp_path, monkeypatch):
    """A tmp folder holding r.yaml (a valid tiny recipe), a corpus, and assorted bad files."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("WINDTUNNEL_DEBUG", raising=False)
    (tmp_path / "corpus").mkdir()
    for i in range(6):
        (tmp_path / "corpus" / f"d{i}.txt").write_text(f"hello world number {i} " * 40)
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "bad.parquet").write_text("PAR1 but not really")
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{"text": oops}\n')
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(RECIPE))
    (tmp_path / "binary.yaml").write_bytes(bytes(range(256)) * 4)
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    (tmp_path / "afile").write_text("not a directory")
    sweep = {"base": "r.yaml", "out_dir": "sweep_out", "sweep": {"grid": {"optim.lr": [1e-3, 2e-3]}}}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(sweep))
    (tmp_path / "gpus.yaml").write_text(yaml.safe_dump({**sweep, "executor": {"gpus": -3}}))
    return tmp_path


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    code = main(argv)
    return code, capsys.readouterr().err.strip()


def assert_one_line(code: int, err: str, *fragments: str) -> None:
    assert code == 2, err
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    for fragment in fragments:
        assert fragment in err, f"{fragment!r} not in {err!r}"


# (argv after `windtunnel`, fragments the one error line must contain)
CASES = [
    # issue 11, part A: tracebacks before
    ("train r.yaml --set train.threads=-1", ["r.yaml", "train.threads", "-1"]),
    ("train r.yaml --set model.vocab_size=10", ["model.vocab_size", "10", "258"]),
    ("train r.yaml --set optim.lr=nan", ["r.yaml", "optim.lr", "finite", "nan"]),
    ("train r.yaml --set optim.eps=-1", ["optim.eps", "positive", "-1"]),
    ("train r.yaml --set model.init_std=-1", ["model.init_std", "positive"]),
    ("train r.yaml --set model.parameterization=mup --set model.mup.input_mult=0", ["model.mup.input_mult"]),
    ("train binary.yaml", ["binary.yaml", "not a YAML text file"]),
    ("train r.yaml --set data.paths=[empty.txt]", ["data.paths", "empty.txt", "train.seq_len+1 = 17"]),
    ("train r.yaml --set train.seq_len=100000", ["data.paths", "too few for one sequence", "100001"]),
    ("train r.yaml --set data.val_fraction=1", ["data.val_fraction", "no training data"]),
    ("train r.yaml --set data.max_documents=0", ["data.max_documents", "positive", "0"]),
    ("train r.yaml --set data.max_documents=-1", ["data.max_documents", "-1"]),
    ("train r.yaml --set data.source=hf --set data.dataset=nobody/nothing", ["data.dataset", "nobody/nothing"]),
    ("train r.yaml --out afile", ["--out", "afile", "not a directory"]),
    ("train r.yaml --out afile/run", ["--out", "afile", "not a directory"]),
    ("train r.yaml --out /sys/windtunnel-test/run", ["/sys"]),
    ("schedule r.yaml --png /sys/windtunnel-test.png", ["/sys"]),
    ("schedule r.yaml --png corpus", ["--png", "corpus", "is a directory"]),
    ("schedule r.yaml --png nodir/lr.png", ["--png", "nodir", "does not exist"]),
    ("schedule r.yaml --png lr.png --world-size 0", ["--world-size", "positive", "0"]),
    ("sweep s.yaml --out /sys/windtunnel-test", ["/sys"]),
    ("sweep s.yaml --out afile", ["--out", "afile", "not a directory"]),
    # issue 11, part B: silently accepted before
    ("train r.yaml --set model.ffn_hidden=0", ["model.ffn_hidden", "positive", "0"]),
    ("train r.yaml --set train.max_skips=-1", ["train.max_skips", ">= 0", "-1"]),
    ("train r.yaml --set schedule.warmup_steps=-5", ["schedule.warmup_steps", "-5"]),
    ("train r.yaml --set schedule.power.lr_max=-1", ["schedule.power.lr_max", "positive"]),
    ("train r.yaml --set optim.lr=.inf", ["optim.lr", "finite", "inf"]),
    ("sweep gpus.yaml --dry-run", ["gpus.yaml", "executor.gpus", "-3"]),
    ("sweep s.yaml --dry-run --gpus -3", ["--gpus", ">= 0", "-3"]),
    # more numbers, caught by the bounds table
    ("train r.yaml --set optim.lr=-.inf", ["optim.lr", "finite"]),
    ("train r.yaml --set model.rope_theta=nan", ["model.rope_theta", "finite"]),
    ("train r.yaml --set model.norm_eps=0", ["model.norm_eps", "positive"]),
    ("train r.yaml --set train.seed=-1", ["train.seed", ">= 0"]),
    ("train r.yaml --set optim.betas=[0.9,1.0]", ["optim.betas[1]", "[0, 1)"]),
    ("train r.yaml --set optim.weight_decay=-0.1", ["optim.weight_decay", ">= 0"]),
    ("train r.yaml --set schedule.power.a=.inf", ["schedule.power.a", "finite"]),
    ("train r.yaml --set model.moe.load_balance_coef=-1", ["model.moe.load_balance_coef", ">= 0"]),
    ("train r.yaml --set model.mtp.n_future=2 --set model.mtp.weights=[.nan]", ["model.mtp.weights[0]", "finite"]),
    ("train r.yaml --set train.seed=" + "9" * 400, ["train.seed", "64 bits", "400-digit"]),
    ("train r.yaml --set train.clip=-1", ["train.clip", ">= 0"]),
    ("train r.yaml --set model.n_kv_heads=0", ["model.n_kv_heads", "positive"]),
    ("train r.yaml --set logging.peak_tflops=-5", ["logging.peak_tflops", "positive"]),
    # cross-field rules moved into validation (muP, distributed, branches)
    ("train r.yaml --set model.parameterization=mup --set model.mup.attn_mult=-1", ["model.mup.attn_mult"]),
    ("train r.yaml --set model.mup.base_head_dim=-4", ["model.mup.base_head_dim"]),
    ("train r.yaml --set distributed.zero_stage=5", ["distributed.zero_stage", "[0, 3]"]),
    ("train r.yaml --set distributed.offload_optimizer=cpu", ["distributed.offload_optimizer", "deepspeed"]),
    ("train r.yaml --set distributed.strategy=deepspeed --set distributed.zero_stage=2 "
     "--set train.nan_policy=skip", ["train.nan_policy"]),
    ("train r.yaml --set schedule.name=cosine --set schedule.wsd.branches=[64]", ["schedule.wsd.branches", "wsd"]),
    ("train r.yaml --set train.steps=null --set train.tokens=1000 --set schedule.wsd.branches=[5000]",
     ["schedule.wsd.branches", "train.tokens=1000"]),
    # data and tokenizer
    ("train r.yaml --set model.max_seq_len=8", ["model.max_seq_len", "train.seq_len=16"]),
    ("train r.yaml --set data.cache_dir=afile", ["data.cache_dir", "afile", "not a directory"]),
    ("train r.yaml --set data.paths=[bad.parquet]", ["bad.parquet", "not a readable Parquet file"]),
    ("train r.yaml --set data.paths=[bad.jsonl]", ["bad.jsonl:2", "invalid JSON"]),
    ("train r.yaml --set data.paths=[missing/*.txt]", ["data.paths", "missing/*.txt", "matches no file"]),
    ("train r.yaml --set tokenizer.kind=hf --set tokenizer.path=nobody/no-tokenizer", ["tokenizer.path"]),
    ("train r.yaml --set tokenizer.kind=bpe --set tokenizer.vocab_size=100", ["tokenizer.vocab_size", "258"]),
    # recipe files and flags
    ("train missing.yaml", ["missing.yaml", "cannot read recipe"]),
    ("train list.yaml", ["list.yaml", "must be a mapping"]),
    ("train r.yaml --set train.stepz=3", ["unknown key train.stepz", "train.steps"]),
    ("train r.yaml --set train.steps", ["--set", "key.path=value"]),
    ("sweep binary.yaml --dry-run", ["binary.yaml", "not a YAML text file"]),
    ("sweep s.yaml --dry-run --mfu nan", ["--mfu", "nan"]),
    ("export norun exported", ["norun"]),
    ("export norun afile", ["afile", "not a directory"]),
    # the scaling-law fitter (more cases: tests/scaling/test_fit_errors.py)
    ("fit nothing.csv", ["nothing.csv", "no such sweep directory or CSV file"]),
    ("fit corpus", ["corpus", "no completed run with summary.json"]),
    ("fit corpus --level 2", ["--level", "between 0 and 1"]),
    ("fit r.yaml", ["r.yaml", "no N column", "--columns N=NAME"]),
]


@pytest.mark.parametrize("argv, fragments", CASES, ids=[c[0].replace(" ", "_")[:60] for c in CASES])
def test_bad_input_is_one_line_exit_2(work, capsys, argv, fragments):
    code, err = run_cli(shlex.split(argv), capsys)
    assert_one_line(code, err, *fragments)


def test_model_vocab_smaller_than_a_trained_tokenizer(work, capsys):
    code, err = run_cli(["train", "r.yaml", "--set", "tokenizer.kind=bpe", "--set", "tokenizer.vocab_size=300",
                         "--set", "model.vocab_size=258"], capsys)
    assert_one_line(code, err, "model.vocab_size: 258 is smaller than the tokenizer's vocabulary")
    assert not (work / "runs").exists()  # refused before the run directory was made


def test_missing_package_names_it(work, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now fails as if not installed
    code, err = run_cli(["schedule", "r.yaml", "--png", "lr.png"], capsys)
    assert_one_line(code, err, "missing package 'matplotlib'", "pip install matplotlib")


def _fail_under(monkeypatch, root: Path, method: str, err: int, with_name: bool) -> None:
    """Make Path.<method> raise OSError(err) for paths under `root` (a full or read-only disk)."""
    original = getattr(Path, method)

    def faulty(self, *args, **kwargs):
        if str(self.absolute()).startswith(str(root)):
            raise OSError(err, os.strerror(err), *([str(self)] if with_name else []))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Path, method, faulty)


def test_read_only_run_directory(work, capsys, monkeypatch):
    _fail_under(monkeypatch, work / "ro", "mkdir", errno.EROFS, with_name=True)
    code, err = run_cli(["train", "r.yaml", "--out", "ro/run"], capsys)
    assert_one_line(code, err, "read-only file system: ro/run")


def test_full_disk_names_the_run_directory(work, capsys, monkeypatch):
    _fail_under(monkeypatch, work / "full", "write_text", errno.ENOSPC, with_name=False)
    code, err = run_cli(["train", "r.yaml", "--out", "full"], capsys)
    assert_one_line(code, err, "no space left on device: full")


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into a read-only folder")
def test_folder_without_write_permission(work, capsys):
    (work / "locked").mkdir(mode=0o500)
    code, err = run_cli(["train", "r.yaml", "--out", "locked/run"], capsys)
    assert_one_line(code, err, "--out: permission denied: locked/run")


def test_read_only_target_refused_before_any_work(work, capsys, monkeypatch):
    monkeypatch.setattr("windtunnel.errors._read_only", lambda path: True)
    code, err = run_cli(["sweep", "s.yaml", "--out", "new_sweep"], capsys)
    assert_one_line(code, err, "--out: read-only file system: new_sweep")
    assert not (work / "new_sweep").exists()


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("run")
    (root / "corpus").mkdir()
    for i in range(8):  # several documents: the held-out split is chosen by a hash of each path
        (root / "corpus" / f"{i}.txt").write_text("some text to learn from " * 60)
    recipe = {**RECIPE, "data": {**RECIPE["data"], "paths": [str(root / "corpus")],
                                 "cache_dir": str(root / "cache")}}
    (root / "r.yaml").write_text(yaml.safe_dump(recipe))
    assert main(["train", str(root / "r.yaml"), "--out", str(root / "run")]) == 0
    return root / "run"


def test_export_into_a_place_it_cannot_write(trained_run, tmp_path, capsys):
    capsys.readouterr()
    code, err = run_cli(["export", str(trained_run), "/sys/windtunnel-test-export"], capsys)
    assert_one_line(code, err, "/sys")
    (tmp_path / "file").write_text("x")
    code, err = run_cli(["export", str(trained_run), str(tmp_path / "file")], capsys)
    assert_one_line(code, err, "out_dir", "not a directory")


def test_existing_run_without_resume_is_refused(trained_run, capsys):
    capsys.readouterr()
    code, err = run_cli(["train", str(trained_run / "recipe.yaml"), "--out", str(trained_run)], capsys)
    assert_one_line(code, err, str(trained_run), "--resume")


# ----------------------------------------------------------------------------- bugs and --debug


def test_a_real_bug_keeps_its_traceback(work, monkeypatch):
    monkeypatch.setattr("windtunnel.schedules.plot_schedule", lambda *a: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        main(["schedule", "r.yaml", "--png", "lr.png"])


@pytest.mark.parametrize("argv, env, key", [
    (["train", "r.yaml", "--set", "optim.lr=nan", "--debug"], {}, "optim.lr"),
    (["train", "r.yaml", "--set", "optim.lr=nan"], {"WINDTUNNEL_DEBUG": "1"}, "optim.lr"),
    (["--debug", "sweep", "gpus.yaml", "--dry-run"], {}, "executor.gpus"),  # delegated subcommand
])
def test_debug_shows_the_traceback_of_expected_errors(work, capsys, monkeypatch, argv, env, key):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    code, err = run_cli(argv, capsys)
    assert code == 2 and "Traceback" in err and "RecipeError" in err
    assert err.splitlines()[-1].startswith("windtunnel") and key in err.splitlines()[-1]


def _subprocess(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    import windtunnel

    environment = {k: v for k, v in os.environ.items() if k != "WINDTUNNEL_DEBUG"}
    environment.update(PYTHONPATH=str(Path(windtunnel.__file__).parents[1]), **env)
    return subprocess.run([sys.executable, *args], cwd=cwd, env=environment, capture_output=True, text=True)


def test_exit_codes_through_a_real_process(work):
    bad = _subprocess(["-m", "windtunnel", "sweep", "gpus.yaml", "--dry-run"], work)
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.strip().splitlines() == [bad.stderr.strip()] and "executor.gpus" in bad.stderr
    bug = _subprocess(["-c", "import windtunnel.sweep.cli as s, windtunnel.cli as c;"
                             "s.load_sweep = lambda *a: {}['boom']; raise SystemExit(c.main(['sweep', 's.yaml']))"], work)
    assert bug.returncode == 1 and "Traceback" in bug.stderr and "KeyError: 'boom'" in bug.stderr
    debug = _subprocess(["-m", "windtunnel", "sweep", "gpus.yaml", "--dry-run"], work, WINDTUNNEL_DEBUG="1")
    assert debug.returncode == 2 and "Traceback" in debug.stderr
