"""The files the node ships beside its code: Alembic's migration scripts and the example configuration.

A wheel carries them inside the package, under ``dicomnode/_data/`` (pyproject's
``[tool.hatch.build.targets.wheel.force-include]`` maps them there); a checkout, installed editable or
run in place, has them at the top level, in ``alembic/`` and ``config/``. The package copy wins when
both exist.
"""

from __future__ import annotations

from pathlib import Path

_PACKAGE_DATA = Path(__file__).resolve().parent / "_data"
_CHECKOUT = Path(__file__).resolve().parent.parent


def _located(in_package: str, in_checkout: str) -> Path:
    """``_data/in_package`` when the wheel put it there, else ``in_checkout`` in the source tree.

    The checkout is recognised by its ``pyproject.toml``: beside an installed package lies
    site-packages, whose ``alembic`` is the library, not the scripts. When neither copy exists the
    package path comes back, and the caller's "not found" names where a wheel puts the file.
    """
    packaged = _PACKAGE_DATA / in_package
    if packaged.exists() or not (_CHECKOUT / "pyproject.toml").is_file():
        return packaged
    return _CHECKOUT / in_checkout


def alembic_dir() -> Path:
    """The folder with Alembic's ``env.py``, ``script.py.mako`` and ``versions/``."""
    return _located("alembic", "alembic")


def example_config() -> Path:
    """``dicomnode.example.toml``: every setting, commented (what ``dicomnode init`` writes)."""
    return _located("dicomnode.example.toml", "config/dicomnode.example.toml")
