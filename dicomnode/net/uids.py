"""pynetdicom's UID conversions, cached.

pynetdicom turns every UID of a PDU, a primitive or a presentation context into a pydicom ``UID`` through
``pynetdicom.utils.set_uid``, which builds it up to three times and matches it against pydicom's regular
expressions each time. A DCMTK ``storescu`` proposes 128 presentation contexts: about 1,750 conversions per
association before its first C-STORE: about a third of the samples in which the node's threads held the
GIL, for associations of one instance each (``py-spy --gil``, 80 of them), where the node took 14-17
instances/s against Orthanc's 26 (a sender that opens an association per instance). With the cache, an
association cost 21-26 ms of CPU instead of 35.

:func:`install` puts a bounded LRU cache (:data:`CACHED` entries) in front of ``set_uid`` in the pynetdicom
modules that imported it (:data:`MODULES`). A value gives the same (immutable) ``UID`` object each time; an
invalid one raises as before, each time (an exception is not cached); a non-conformant one is logged once
while it stays in the cache instead of at each use. A ``UID`` that carries a private transfer syntax's
encoding (``UID.set_private_encoding``) is converted as before, never cached, so that it keeps it. A
peer that sends ever new UIDs only cycles the cache.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import logging
import threading
from collections.abc import Callable
from typing import Any

from pydicom.uid import UID
from pynetdicom import utils

from dicomnode.log import extra

log = logging.getLogger(__name__)

CACHED = 4096
MODULES = ("pynetdicom.pdu_items", "pynetdicom.pdu_primitives", "pynetdicom.presentation",
           "pynetdicom.dimse_primitives")
_PARAMETERS = ["value", "name", "allow_empty", "allow_none", "validate"]  # set_uid's, in pynetdicom 3.0

_lock = threading.Lock()
_installed: list[Callable[..., Any]] = []


def cached(original: Callable[..., UID | None]) -> Callable[..., UID | None]:
    """``original`` (``set_uid``) behind an LRU cache of :data:`CACHED` entries, for str and bytes values."""
    remember = functools.lru_cache(maxsize=CACHED)(original)

    def set_uid(value: str | bytes | UID | None, name: str, allow_empty: bool = True, allow_none: bool = True,
                validate: bool = True) -> UID | None:
        if isinstance(value, UID) and hasattr(value, "_PRIVATE_TS_ENCODING"):
            return original(value, name, allow_empty, allow_none, validate)
        if isinstance(value, str | bytes):
            # a UID and the equal str are one key: the same value, converted the same way
            return remember(value if type(value) in (str, bytes) else str(value), name, allow_empty, allow_none,
                            validate)
        return original(value, name, allow_empty, allow_none, validate)

    set_uid.cache_info = remember.cache_info  # type: ignore[attr-defined]
    return set_uid


def install() -> None:
    """Cache ``set_uid`` in :data:`MODULES` (idempotent, process-wide); leave pynetdicom as it is, with a
    warning, where its ``set_uid`` does not take the arguments this was written for."""
    with _lock:
        if _installed:
            return
        if list(inspect.signature(utils.set_uid).parameters) != _PARAMETERS:
            log.warning("pynetdicom's set_uid has changed: its UID conversions are not cached",
                        extra=extra(stage="serve"))
            _installed.append(utils.set_uid)
            return
        wrapper = cached(utils.set_uid)
        for name in MODULES:
            module = importlib.import_module(name)
            if getattr(module, "set_uid", None) is utils.set_uid:
                module.set_uid = wrapper  # type: ignore[attr-defined]
        _installed.append(wrapper)
