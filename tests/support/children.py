"""Processes a test starts die with the test run, even when pytest itself is killed (a CI timeout, a
developer's ^C twice): an orphaned node, Orthanc or storescp would keep its port, its spool and its CPU
and make the next run fail for a reason that is not its own. Linux's ``PR_SET_PDEATHSIG`` asks the kernel
to send the child SIGTERM when the thread that started it exits; tests start peers from pytest's main
thread (fixtures), whose end is the run's end."""

from __future__ import annotations

import ctypes
import os
import signal
from typing import Any

_PR_SET_PDEATHSIG = 1
_LIBC = ctypes.CDLL(None, use_errno=True)  # loaded here, in the parent: no dlopen between fork and exec


def dies_with_us() -> dict[str, Any]:
    """``subprocess.Popen`` keyword arguments that make the child die with this process."""
    parent = os.getpid()

    def arm() -> None:  # runs in the child, between fork and exec
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the parent died before the request was made: nobody would send it
            os._exit(1)

    return {"preexec_fn": arm}
