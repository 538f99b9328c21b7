"""How long `make test` takes here: runs the suite as CI does and records its time with the machine it ran on.

    python bench/suite_time.py [--json results/tests/suite.json]

Runs `python -m pytest -q --durations=15` with CI=true (what `.ci/run` runs through `make test`), nothing else running,
and records the wall time, the pass/fail counts pytest printed, its 15 slowest tests, the cores and the provenance,
then regenerates the docs that show it (`bench/report.py`), so the record and docs/tests.md never disagree.
Exit status is pytest's, so a red suite is never recorded as a time.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from provenance import ROOT, provenance  # noqa: E402

from flashlm_core import atomic  # noqa: E402

COMMAND = [sys.executable, "-m", "pytest", "-q", "--durations=15"]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", default=str(ROOT / "results" / "tests" / "suite.json"))
    args = ap.parse_args()
    header = provenance(packages=("torch", "onnxruntime"))
    t0 = time.perf_counter()
    done = subprocess.run(COMMAND, cwd=ROOT, env={**os.environ, "CI": "true"}, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    sys.stdout.write(done.stdout[-3000:])
    if done.returncode != 0:
        raise SystemExit(f"the suite failed (exit {done.returncode}); nothing recorded")
    counts = {kind: int(n) for n, kind in re.findall(r"(\d+) (passed|failed|skipped|errors?|xfailed|xpassed)", done.stdout.splitlines()[-1])}
    slowest = [line.strip() for line in done.stdout.splitlines() if re.match(r"\s*\d+\.\d+s (call|setup|teardown)", line)]
    atomic.write_json(Path(args.json), {**header, "suite_command": "CI=true python -m pytest -q --durations=15", "cores": os.cpu_count(),
                                        "seconds": seconds, "counts": counts, "slowest": slowest})
    print(f"{seconds:.0f} s, {counts}")
    subprocess.run([sys.executable, str(ROOT / "bench" / "report.py")], cwd=ROOT, check=True)


if __name__ == "__main__":
    main()
