"""The node's log lines as a test reads them: each line of a ``dicomnode.*`` logger names its stage."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager

from dicomnode.log import STAGES

# the loggers whose levels dicomnode.log.setup_logging and the CLI set
_LOGGERS = ("", "dicomnode", "pynetdicom", "apscheduler", "pydicom", "highdicom", "alembic")


@contextmanager
def logging_kept() -> Iterator[None]:
    """The process's logging as it was, put back on exit: the root logger's handlers and the levels that
    :func:`dicomnode.log.setup_logging` and the CLI's quiet commands set (pynetdicom at CRITICAL, a handler on
    a captured stream that is closed after the test). A test that runs them in pytest's process must not leave
    them to the next: one that reads pynetdicom's records would find none."""
    root = logging.getLogger()
    handlers = root.handlers[:]
    levels = {name: logging.getLogger(name).level for name in _LOGGERS}
    try:
        yield
    finally:
        root.handlers[:] = handlers
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)

# dicomnode.log.setup_logging's format: "<date> <time> <LEVEL> <logger>: <message>[ key=value ...]"
_NODE_LINE = re.compile(r"^\S+ \S+ (?:DEBUG|INFO|WARNING|ERROR|CRITICAL) dicomnode(?:\.[\w.]+)?: ")
_STAGE = re.compile(r" stage=(\S+)")


def stageless(text: str) -> list[str]:
    """The node's lines in ``text`` (a process's log or standard error) without one of its stages."""
    return [line for line in text.splitlines()
            if _NODE_LINE.match(line) and ((found := _STAGE.findall(line)) == [] or found[-1] not in STAGES)]
