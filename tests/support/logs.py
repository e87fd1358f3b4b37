"""The node's log lines as a test reads them: each line of a ``dicomnode.*`` logger names its stage."""

from __future__ import annotations

import re

from dicomnode.log import STAGES

# dicomnode.log.setup_logging's format: "<date> <time> <LEVEL> <logger>: <message>[ key=value ...]"
_NODE_LINE = re.compile(r"^\S+ \S+ (?:DEBUG|INFO|WARNING|ERROR|CRITICAL) dicomnode(?:\.[\w.]+)?: ")
_STAGE = re.compile(r" stage=(\S+)")


def stageless(text: str) -> list[str]:
    """The node's lines in ``text`` (a process's log or standard error) without one of its stages."""
    return [line for line in text.splitlines()
            if _NODE_LINE.match(line) and ((found := _STAGE.findall(line)) == [] or found[-1] not in STAGES)]
