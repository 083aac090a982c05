import errno

import pytest

from windtunnel.errors import DataError, RecipeError, check_writable, describe, run_command


@pytest.mark.parametrize("exc, line", [
    (RecipeError("r.yaml: optim.lr: must be finite, got nan\n(detail)"), "r.yaml: optim.lr: must be finite, got nan"),
    (DataError("data.dataset: cannot load 'x'"), "data.dataset: cannot load 'x'"),
    (OSError(errno.ENOSPC, "No space left on device"), "no space left on device"),
    (OSError(errno.EROFS, "Read-only file system", "runs/x"), "read-only file system: runs/x"),
    (OSError(errno.EXDEV, "Invalid cross-device link", "a", None, "b"), "invalid cross-device link: a -> b"),
    (FileNotFoundError("run/: no model.safetensors to export"), "run/: no model.safetensors to export"),
    (ConnectionError("Couldn't reach 'x' on the Hub"), "Couldn't reach 'x' on the Hub"),
    (UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte"), "input is not UTF-8 text (invalid start byte at byte 0)"),
    (ModuleNotFoundError("No module named 'deepspeed'", name="deepspeed"), "missing package 'deepspeed' (pip install \"windtunnel[deepspeed]\")"),
])
def test_expected_failures_are_one_line(exc, line):
    assert describe(exc) == line


def test_out_of_memory_suggests_a_smaller_batch():
    torch = pytest.importorskip("torch")
    line = describe(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB\nmore"))
    assert line.startswith("out of memory (CUDA out of memory. Tried to allocate 2.00 GiB)") and "train.batch_size" in line


@pytest.mark.parametrize("exc", [ValueError("x"), KeyError("k"), ZeroDivisionError(),
                                 ModuleNotFoundError("No module named 'windtunnel.nope'", name="windtunnel.nope"),
                                 ImportError("cannot import name 'f' from 'transformers'", name="transformers")])
def test_bugs_are_not_described(exc):
    assert describe(exc) is None


def test_run_command_exit_codes(capsys):
    assert run_command(lambda: 0) == 0
    assert run_command(lambda: 1) == 1

    def bad():
        raise RecipeError("k: bad")

    assert run_command(bad, prog="windtunnel x", debug=False) == 2
    assert capsys.readouterr().err == "windtunnel x: error: k: bad\n"

    def interrupted():
        raise KeyboardInterrupt

    assert run_command(interrupted, debug=False) == 130
    with pytest.raises(KeyError):
        run_command(lambda: {}["missing"])


def test_check_writable(tmp_path):
    (tmp_path / "f").write_text("x")
    check_writable(tmp_path / "new" / "run", "--out")  # nothing is created
    assert not (tmp_path / "new").exists()
    with pytest.raises(RecipeError, match="--out: .*f exists and is not a directory"):
        check_writable(tmp_path / "f", "--out")
    with pytest.raises(RecipeError, match="--png: .* is a directory"):
        check_writable(tmp_path, "--png", directory=False)
    with pytest.raises(RecipeError, match="--png: .*: folder .*nodir does not exist"):
        check_writable(tmp_path / "nodir" / "lr.png", "--png", directory=False)
