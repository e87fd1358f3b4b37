"""The test session's heap kept out of timed regions, as the node keeps its own start-up heap.

A full cyclic collection holds the GIL while it walks every tracked object: over a long test session's
heap that is more than a second on a busy machine, and a server running in the test's process (an SCP,
the admin app) stalls for all of it. The node freezes what its start-up built
(:func:`dicomnode.worker.settle_heap`); a test that times an in-process server does the same for the
session's heap while it measures, and hands it back after.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def steady_heap() -> Iterator[None]:
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()
