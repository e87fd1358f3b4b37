"""A process a test starts dies with the test run (tests/support/children.py), even when the run is killed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.net import holds_for, wait_for

REPO = Path(__file__).resolve().parents[2]

# The "test run": starts a sleeper (with or without the helper), says its pid, then waits to be killed.
# Both processes block until a signal ends them (signal.pause): no sleep of a guessed length.
RUN = """
import signal, subprocess, sys
from tests.support.children import dies_with_us
extra = dies_with_us() if sys.argv[1] == "armed" else {}
sleeper = subprocess.Popen([sys.executable, "-c", "import signal; signal.pause()"], **extra)
print(sleeper.pid, flush=True)
signal.pause()
"""


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state in ("Z", "X")  # a zombie has ended; its new parent reaps it when it will


def _sleeper_of_a_killed_run(mode: str) -> int:
    with subprocess.Popen([sys.executable, "-c", RUN, mode], cwd=REPO, stdout=subprocess.PIPE, text=True) as run:
        assert run.stdout is not None
        pid = int(run.stdout.readline())
        assert not _gone(pid)
        run.send_signal(signal.SIGKILL)  # as a CI timeout kills pytest: no finaliser runs
        run.wait(30)
    return pid


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_child_dies_when_the_run_that_started_it_is_killed() -> None:
    pid = _sleeper_of_a_killed_run("armed")
    wait_for(lambda: _gone(pid), timeout=30, msg="the child ended with its killed parent")


def test_without_the_helper_the_child_outlives_the_run() -> None:
    """The check above can fail: a plain child is orphaned, alive, when its parent is killed."""
    pid = _sleeper_of_a_killed_run("plain")
    try:
        assert holds_for(lambda: not _gone(pid), seconds=3)
    finally:
        os.kill(pid, signal.SIGKILL)
