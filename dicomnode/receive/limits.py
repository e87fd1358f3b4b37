"""Bounds on what one instance may cost: its size on the wire, and its size once inflated (deflate).

- Each C-STORE dataset arrives into a temporary file (:mod:`dicomnode.receive.incoming`), never into
  memory. One larger than ``max_instance_mb`` is answered 0xA700 once it has arrived, and its file is
  removed.
- :class:`SizeGuard` counts the dataset bytes of each C-STORE as its P-DATA fragments arrive
  (``EVT_PDU_RECV``) and aborts the association (A-ABORT) as soon as they pass twice
  ``max_instance_mb``: a sender cannot make one refusal cost unbounded disk. The abort is audited.
- Inflation is bounded where a file is read (:mod:`dicomnode.store.part10`), for both transports.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from typing import Any

_COMMAND = 0x01  # PS3.8 E.2 message control header: bit 0 set for a command fragment
_LAST = 0x02  # bit 1 set for the last fragment of a command or dataset


class SizeGuard:
    """EVT_PDU_RECV handler: abort an association whose current dataset grows past ``limit_bytes``;
    ``on_refused(event, size)`` logs and audits the refusal."""

    def __init__(self, limit_bytes: int, on_refused: Callable[[Any, int], None]) -> None:
        self.limit_bytes = limit_bytes
        self.on_refused = on_refused
        self._received: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()

    def __call__(self, event: Any) -> None:
        items = getattr(event.pdu, "presentation_data_value_items", None)
        if not items:
            return
        assoc = event.assoc
        over = 0
        with self._lock:
            size = self._received.get(assoc, 0)
            if size < 0:
                return  # already refused
            for item in items:
                value = item.presentation_data_value
                if not value or value[0] & _COMMAND:
                    continue
                size += len(value) - 1
                over = max(over, size if size > self.limit_bytes else 0)
                if value[0] & _LAST:
                    size = 0
            self._received[assoc] = -1 if over else size
        if over:
            self.on_refused(event, over)  # logs and audits
            assoc.abort(block=False)
