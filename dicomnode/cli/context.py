"""What every command shares: the settings (read on first use), the operator, the one-sentence failure."""

from __future__ import annotations

import datetime as dt
import getpass
import os
from dataclasses import dataclass

import typer
from pydantic import ValidationError

from dicomnode.log import setup_logging
from dicomnode.settings import Settings


class Failure(Exception):
    """A command failed: its message is the one sentence shown, ``code`` the exit status."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class Invocation:
    """The root options of one command line. The settings are read when a command first asks for them,
    so that ``--help`` works whatever the configuration says.

    Parameters
    ----------
    config
        The ``--config`` file, or None for ``$DICOMNODE_CONFIG`` (or no file).
    own_logging
        Whether logging is set up at the settings' level once they are read (False: the command set it up).
    """

    config: str | None = None
    own_logging: bool = True
    loaded: Settings | None = None


def first_error(exc: ValidationError) -> str:
    """The first of a pydantic validation error's complaints, as ``where: what``."""
    error = exc.errors(include_url=False, include_input=False)[0]
    where = ".".join(str(p) for p in error.get("loc", ()))
    more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return f"{where + ': ' if where else ''}{error['msg']}{more}"


def settings(ctx: typer.Context) -> Settings:
    """The settings of this command line, read once; logging is set up at their level when they are read.

    Raises
    ------
    Failure
        Exit status 2: the configuration file is missing or a setting is not valid.
    """
    invocation = ctx.ensure_object(Invocation)
    if invocation.loaded is None:
        try:
            invocation.loaded = Settings.load(invocation.config)
        except FileNotFoundError as exc:
            raise Failure(f"configuration error: {exc}", code=2) from None
        except ValidationError as exc:
            raise Failure(f"configuration error: {first_error(exc)}", code=2) from None
        if invocation.own_logging:
            setup_logging(invocation.loaded.log_level)
    return invocation.loaded


def operator() -> str:
    """The operating-system user running the command: the actor of what it audits."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid {os.getuid()}"


def timestamp(value: str) -> dt.datetime:
    """An ISO date/time from the command line; UTC unless it names its zone."""
    parsed = dt.datetime.fromisoformat(value)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)
