"""A sweep's training subprocess dies with the sweep: `python -m windtunnel.sweep.child PARENT_PID CMD...`.

On Linux it asks the kernel for SIGTERM when its parent dies (prctl PR_SET_PDEATHSIG, which survives
the exec below and fires even when the parent is killed with -9), checks the parent is still the one
that started it (it may have died before the request), then execs CMD in its place. Without this a
trainer outlives a killed sweep and a rerun of the sweep starts a second trainer on the same run (the
run lock now refuses that second trainer, but the first would still train unwatched). On other systems
CMD runs as is. preexec_fn would do the same from the parent but is unsafe with the executor's threads.
"""
from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def die_with_parent(parent_pid: int) -> None:
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent_pid:  # the sweep is already gone
        sys.exit(f"windtunnel: the sweep (pid {parent_pid}) that started this run has exited")


def main(argv: list[str]) -> None:
    if len(argv) < 2 or not argv[0].isdigit():
        sys.exit("usage: python -m windtunnel.sweep.child PARENT_PID COMMAND [ARGS...]")
    die_with_parent(int(argv[0]))
    os.execvp(argv[1], argv[1:])


if __name__ == "__main__":
    main(sys.argv[1:])
