"""`windtunnel fit`'s error boundary: bad input raises RecipeError (flags) or DataError (files, columns,
too few points) and ends as one line with exit 2; a ValueError from a bug keeps its traceback."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import windtunnel
from windtunnel.errors import DataError, RecipeError
from windtunnel.scaling import cli as fit_cli
from windtunnel.scaling import laws

from .conftest import grid_points, run_fit


@pytest.fixture
def files(tmp_path, monkeypatch):
    """grid.csv (a valid grid) and assorted bad inputs in one folder."""
    monkeypatch.delenv("WINDTUNNEL_DEBUG", raising=False)
    rows = "\n".join(",".join(map(str, r)) for r in zip(*grid_points()))
    (tmp_path / "grid.csv").write_text("N,D,loss\n" + rows + "\n")
    (tmp_path / "one.csv").write_text("N,D,loss\n1e8,2e9,3.1\n")
    (tmp_path / "noloss.csv").write_text("N,D,quality\n1e8,2e9,3.1\n")
    (tmp_path / "text.csv").write_text("N,D,loss\n1e8,2e9,3.1\n2e8,4e9,abc\n")
    (tmp_path / "zero_lr.csv").write_text("N,D,loss,lr\n1e8,2e9,3.1,1e-3\n1e8,2e9,3.0,0\n")
    (tmp_path / "mix" / "r1").mkdir(parents=True)
    (tmp_path / "mix" / "r1" / "summary.json").write_text('{"status": "completed",')
    return tmp_path


# (argv after `windtunnel fit`, the class raised, fragments of the one error line)
CASES = [
    (["{dir}/grid.csv", "--law", "hoffmann"], RecipeError, ["--law", "invalid choice", "hoffmann"]),
    (["{dir}/grid.csv", "--where", "N"], RecipeError, ["--where", "COL=VALUE", "'N'"]),
    (["{dir}/grid.csv", "--where", "N>big"], RecipeError, ["--where", "needs a number", "'big'"]),
    (["{dir}/grid.csv", "--where", "config=a"], RecipeError, ["grid.csv", "--where/--exclude column 'config'"]),
    (["{dir}/grid.csv", "--level", "2"], RecipeError, ["--level", "between 0 and 1", "2"]),
    (["{dir}/grid.csv", "--emit", "{dir}/t.yaml"], RecipeError, ["--emit needs a target"]),
    (["{dir}/grid.csv", "--target-params", "1e9"], RecipeError, ["--target-params and --target-tokens"]),
    (["{dir}/grid.csv", "--target-flops", "lots"], RecipeError, ["--target-flops", "not a number: 'lots'"]),
    (["{dir}/grid.csv", "--columns", "N=size"], RecipeError, ["grid.csv", "--columns N='size'", "no such column"]),
    (["{dir}/grid.csv", "--seed", "-1"], RecipeError, ["--seed", "must be >= 0", "-1"]),
    (["{dir}/grid.csv", "--law", "kaplan", "--tie-exponents"], RecipeError, ["--tie-exponents", "kaplan"]),
    (["{dir}/grid.csv", "--law", "envelope", "--target-params", "1e9", "--target-tokens", "2e10"], RecipeError,
     ["envelope", "--target-flops"]),
    (["{dir}/mix", "--law", "mixture", "--level", "2"], RecipeError, ["--level"]),
    (["{dir}/missing.csv"], DataError, ["missing.csv", "no such sweep directory or CSV file"]),
    (["{dir}/missing.csv", "--law", "critical-batch"], DataError, ["missing.csv", "no such CSV file"]),
    (["{dir}/one.csv"], DataError, ["chinchilla", "1 distinct (N, D) point(s)"]),
    (["{dir}/noloss.csv"], DataError, ["noloss.csv", "no loss column", "--columns loss=NAME"]),
    (["{dir}/text.csv"], DataError, ["text.csv", "line 3", "'loss'", "'abc'"]),
    (["{dir}/zero_lr.csv", "--law", "lr-bs"], DataError, ["lr: values must be positive", "got 0"]),
    (["{dir}/mix"], DataError, ["mix", "no completed run with summary.json found (1 skipped)"]),
    (["{dir}/mix", "--law", "mixture"], DataError, ["r1/summary.json", "not a JSON summary"]),
    (["{sweep}", "--law", "isoflop"], DataError, ["isoflop: 0 usable compute budgets"]),
    (["{sweep}", "--where", "size>1"], RecipeError, ["--where/--exclude", "'size'"]),
]


@pytest.mark.parametrize("args, error, fragments", CASES, ids=[" ".join(a.rsplit("/")[-1] for a in c[0]) for c in CASES])
def test_bad_input_is_one_line_exit_2(files, sweep_dir, capsys, args, error, fragments):
    argv = [a.format(dir=files, sweep=sweep_dir) for a in args] + ["--bootstrap", "0"]
    assert run_fit(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 1 and err.startswith("windtunnel fit: error:"), err
    for fragment in fragments:
        assert fragment in err, err
    with pytest.raises(error) as raised:  # flags are RecipeError, data DataError (its subclass)
        fit_cli.main(argv)
    assert isinstance(raised.value, DataError) == (error is DataError)


def test_debug_shows_the_traceback_of_bad_input(files, capsys):
    assert run_fit([str(files / "missing.csv"), "--debug"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and "DataError" in err and err.splitlines()[-1].startswith("windtunnel fit: error:")


def failing_on_call(monkeypatch, n: int) -> None:
    """laws.huber_fit works n - 1 times, then raises the ValueError a bug inside the fitter would."""
    original, calls = laws.huber_fit, []

    def huber_fit(*args, **kwargs):
        calls.append(1)
        if len(calls) >= n:
            raise ValueError("boom")
        return original(*args, **kwargs)

    monkeypatch.setattr(laws, "huber_fit", huber_fit)


# call 1: the fit itself; then the bootstrap refits (--bootstrap 3), or with --bootstrap 0 the
# leave-largest-out refit (call 2) and the leave-top-compute-out refit (call 3)
@pytest.mark.parametrize("call, bootstrap", [(1, "0"), (2, "3"), (2, "0"), (3, "0")],
                         ids=["fit", "bootstrap refit", "leave-largest-out", "leave-top-compute-out"])
def test_a_value_error_from_a_fitter_bug_is_not_swallowed(files, monkeypatch, capsys, call, bootstrap):
    failing_on_call(monkeypatch, call)
    with pytest.raises(ValueError, match="boom") as raised:
        run_fit([str(files / "grid.csv"), "--bootstrap", bootstrap])
    assert type(raised.value) is ValueError
    assert "error" not in capsys.readouterr().err  # nothing printed as if it were bad input


def test_a_singular_fit_is_refused_as_data(files, monkeypatch, capsys):
    """numpy's LinAlgError (a ValueError) from the fit itself: degenerate points, one line naming the law."""
    def singular(*args, **kwargs):
        raise np.linalg.LinAlgError("Singular matrix")

    monkeypatch.setattr(laws, "huber_fit", singular)
    assert run_fit([str(files / "grid.csv"), "--bootstrap", "0"]) == 2
    assert "chinchilla: the fit is singular on these 30 points (Singular matrix)" in capsys.readouterr().err


def test_exit_codes_through_a_real_process(files):
    env = {k: v for k, v in os.environ.items() if k != "WINDTUNNEL_DEBUG"}
    env["PYTHONPATH"] = str(Path(windtunnel.__file__).parents[1])

    def python(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, *args], cwd=files, env=env, capture_output=True, text=True)

    bad = python("-m", "windtunnel", "fit", "missing.csv")
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "missing.csv" in bad.stderr, bad.stderr
    bug = python("-c", "import windtunnel.cli as c, windtunnel.scaling.laws as laws\n"
                       "def boom(*a, **k): raise ValueError('boom')\n"
                       "laws.huber_fit = boom\n"
                       "raise SystemExit(c.main(['fit', 'grid.csv', '--bootstrap', '0']))")
    assert bug.returncode == 1 and "Traceback" in bug.stderr, bug.stderr
    assert bug.stderr.strip().splitlines()[-1] == "ValueError: boom"
