"""The ``dicomnode`` command line run in the test's own process, as its console script runs it
(:func:`dicomnode.cli.main.main`): the same exit status, standard output and standard error as
``python -m dicomnode ...`` would give, without starting an interpreter for each command.

In-process, so that the code a command runs is the code the test process holds (a mutation test's mutant
too: mutmut maps tests to the functions called in pytest's own process), and so that a CLI test costs
milliseconds, not an interpreter start. What the command changes for the whole process (the environment,
the working directory, the umask, the root logger's handlers and the levels ``setup_logging`` sets) is put
back as it was. The console script itself (``python -m dicomnode``, the ``dicomnode`` entry point) keeps
its own tests in a real process (``test_cli.py::test_the_console_script_runs_a_command``).
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from pathlib import Path

from dicomnode.cli.main import main
from tests.support.logs import logging_kept
from tests.support.peers import REPO


@contextmanager
def _as_a_process(env: Mapping[str, str], cwd: Path) -> Iterator[None]:
    environment, directory = dict(os.environ), os.getcwd()
    umask = os.umask(0o022)
    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)
    try:
        with logging_kept():
            yield
    finally:
        os.chdir(directory)
        os.environ.clear()
        os.environ.update(environment)
        os.umask(umask)


def run_cli(args: list[str] | tuple[str, ...], env: Mapping[str, str] | None = None,
            cwd: Path = REPO, stdin: str = "") -> subprocess.CompletedProcess[str]:
    """``dicomnode ARGS`` with ``env`` as its whole environment (default: this process's), from ``cwd``,
    reading ``stdin`` (a pipe, not a terminal)."""
    out, err = _stream(), _stream()
    with _as_a_process(dict(os.environ) if env is None else env, cwd), redirect_stdout(out), redirect_stderr(err), \
            _stdin(stdin):
        code = main(list(args))
    return subprocess.CompletedProcess(["dicomnode", *args], code, _text(out), _text(err))


@contextmanager
def _stdin(text: str) -> Iterator[None]:
    saved, sys.stdin = sys.stdin, io.StringIO(text)
    try:
        yield
    finally:
        sys.stdin = saved


def _stream() -> io.TextIOWrapper:
    """A text stream with its ``buffer``, as ``sys.stdout`` has (``audit export`` writes bytes to it)."""
    return io.TextIOWrapper(io.BytesIO(), encoding="utf-8", write_through=True)


def _text(stream: io.TextIOWrapper) -> str:
    """What ``subprocess.run(..., text=True)`` reads: decoded, with universal newlines."""
    stream.flush()
    assert isinstance(stream.buffer, io.BytesIO)
    return stream.buffer.getvalue().decode("utf-8").replace("\r\n", "\n").replace("\r", "\n")
