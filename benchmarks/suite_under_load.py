"""The whole test suite while CPU hogs keep every core busy: its wall time, and that it passes.

    uv run --frozen python benchmarks/suite_under_load.py            # one hog per core, the suite once
    uv run --frozen python benchmarks/suite_under_load.py --runs 2 --hogs 0   # a quiet machine, twice

Each hog is a Python process spinning at normal priority (like `stress-ng --cpu N`). Prints, per
run, the suite's closing line, its wall time and the load average; exits 1 if any run failed.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def spin() -> None:
    while True:
        pass


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hogs", type=int, default=os.cpu_count() or 2, help="spinning processes (default: cores)")
    parser.add_argument("--runs", type=int, default=1, help="how many times to run the suite")
    parser.add_argument("pytest_args", nargs="*", help="extra pytest arguments (after --)")
    args = parser.parse_args()
    hogs = [multiprocessing.Process(target=spin, daemon=True) for _ in range(args.hogs)]
    for hog in hogs:
        hog.start()
    failed = False
    try:
        for i in range(1, args.runs + 1):
            started = time.monotonic()
            proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args.pytest_args],
                                  cwd=ROOT, capture_output=True, text=True)
            wall = time.monotonic() - started
            closing = (proc.stdout.strip().splitlines() or ["(no output)"])[-1]
            load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
            print(f"run {i}: {closing} | wall {wall:.0f} s | {args.hogs} hogs | load average {load}", flush=True)
            if proc.returncode != 0:
                failed = True
                print(proc.stdout[-8000:], file=sys.stderr)
    finally:
        for hog in hogs:
            hog.terminate()
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
