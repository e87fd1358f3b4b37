"""Soak: SIGKILL the whole node twenty times (or --kills N) across receiving, job running, result
building and sending, against a real Orthanc; print the seed and the figures.

    python bench/soak.py [--kills 20] [--seed N]

Figures: kills (by phase), acknowledged instances, lost, result sets (each delivered once, counted as
deliveries at the PACS) and the C-STOREs repeated because a kill cut them short.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path

from tests.support.peers import Orthanc
from tests.support.soak import Soak


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**31)
    print(f"soak seed {seed} (rerun with --seed {seed})", flush=True)
    folder = Path(tempfile.mkdtemp(prefix="dicomnode-soak-"))
    pacs = Orthanc(folder / "orthanc", receive_delay=0.3).start()
    started = time.monotonic()
    try:
        figures = Soak(folder, pacs, seed).run(args.kills, log=lambda line: print(line, flush=True))
    finally:
        pacs.stop()
    print(figures.line())
    print(f"{time.monotonic() - started:.0f} s; work folder {folder}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
