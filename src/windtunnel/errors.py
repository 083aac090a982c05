"""Expected failures, and the one error boundary every command runs inside.

An expected failure (a bad recipe key or flag, data that cannot feed the recipe, a file system that
refuses a write, a missing package, a dataset that cannot be reached) ends a command with exit code 2
and one line on stderr naming the key, file or path and the reason. Anything else is a bug and keeps
its traceback. `--debug` or WINDTUNNEL_DEBUG=1 prints the traceback of expected failures too.
This module must not import torch (the recipe loader and the sweep planner use it).
"""
from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130
DEBUG_ENV = "WINDTUNNEL_DEBUG"

# Import names whose absence the user fixes with pip, and the command that fixes it.
INSTALL_HINTS = {"deepspeed": 'pip install "windtunnel[deepspeed]"', "pyarrow": "pip install pyarrow"}


class RecipeError(ValueError):
    """A bad recipe, flag or input file: the message is one line naming the file and key path."""


class DataError(RecipeError):
    """The data cannot feed the recipe (too little, unreachable, malformed): names the data key or file."""


def debug_requested(env: dict | None = None) -> bool:
    value = (os.environ if env is None else env).get(DEBUG_ENV, "")
    return value.strip().lower() not in ("", "0", "false", "no")


def describe(exc: BaseException) -> str | None:
    """The one-line message for an expected failure, or None when `exc` looks like a bug."""
    if isinstance(exc, RecipeError):
        return one_line(str(exc))
    if isinstance(exc, OSError):
        return os_error_line(exc)
    if isinstance(exc, UnicodeDecodeError):
        return f"input is not UTF-8 text ({exc.reason} at byte {exc.start})"
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":  # torch's, by name: no import
        return f"out of memory ({one_line(str(exc))[:200]}); lower train.batch_size or train.seq_len " \
               f"(raise train.grad_accum to keep the batch)"
    if isinstance(exc, ModuleNotFoundError) and exc.name and exc.name.split(".")[0] != "windtunnel":
        root = exc.name.split(".")[0]
        return f"missing package {root!r} ({INSTALL_HINTS.get(root, f'pip install {root}')})"
    return None


def os_error_line(exc: OSError) -> str:
    """'<reason in words>: <path>' (e.g. 'no space left on device: runs/x'), else the message."""
    if not (isinstance(exc.errno, int) and exc.errno > 0):
        return one_line(str(exc)) or type(exc).__name__
    reason = os.strerror(exc.errno).lower()
    if exc.filename is None:
        return reason
    where = f"{exc.filename} -> {exc.filename2}" if exc.filename2 is not None else str(exc.filename)
    return f"{reason}: {where}"


def one_line(text: str) -> str:
    """The first non-empty line (messages of third-party errors can span many)."""
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


def run_command(command: Callable[[], int], prog: str = "windtunnel", debug: bool | None = None) -> int:
    """Run one command: expected failures -> one line on stderr and exit 2; bugs keep their traceback."""
    debug = debug_requested() if debug is None else debug
    try:
        return command()
    except KeyboardInterrupt:
        if debug:
            traceback.print_exc()
        print(f"{prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:  # noqa: BLE001 - re-raised below unless it is an expected failure
        line = describe(exc)
        if line is None:
            raise
        if debug:
            traceback.print_exc()
        print(f"{prog}: error: {line}", file=sys.stderr)
        return EXIT_BAD_INPUT


def check_writable(target: str | Path, flag: str, directory: bool = True) -> None:
    """Refuse, before any work, an output path that cannot be created (file in the way, read-only).

    `directory`: the target is a folder to create (a run or sweep directory); else a file to write.
    A place the OS refuses for other reasons (/sys, quotas) is still reported by the boundary.
    """
    path = Path(target).expanduser()
    if directory and path.exists() and not path.is_dir():
        raise RecipeError(f"{flag}: {target} exists and is not a directory")
    if not directory and path.is_dir():
        raise RecipeError(f"{flag}: {target} is a directory, expected a file name")
    if not directory and not path.parent.is_dir():
        raise RecipeError(f"{flag}: {target}: folder {path.parent} does not exist")
    parent = path if directory else path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise RecipeError(f"{flag}: {target}: {parent} is not a directory")
    if _read_only(parent):
        raise RecipeError(f"{flag}: read-only file system: {target}")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise RecipeError(f"{flag}: permission denied: {target} ({parent} is not writable)")


def _read_only(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False
