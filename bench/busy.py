"""CPU-bound busy loops beside a measurement, as a laptop running other work would (bounded: 10 minutes at most)."""
from __future__ import annotations

import subprocess
import sys
from contextlib import contextmanager

BUSY_LOOP = "import time\nend = time.time() + 600\nwhile time.time() < end:\n    pass\n"


@contextmanager
def busy_loops(n: int):
    """n busy-loop processes for the duration of the block; killed when it ends."""
    loops = [subprocess.Popen([sys.executable, "-c", BUSY_LOOP]) for _ in range(n)]
    try:
        yield loops
    finally:
        for p in loops:
            p.kill()
            p.wait()
