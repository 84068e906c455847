"""Benchmark: CLI start-up - `babeltower --help` against `python -c pass`.

Peer: the interpreter itself (`python -c pass`), the floor any Python CLI starts from.
Also `babeltower eval --help` (a group's help imports that group's module, no torch)
and `python -c "import torch"` (what start-up cost before the CLI was lazy: every
command module was imported, and with them torch, scipy and transformers). Each is run
`--repeats` times in alternation, as fresh processes; medians of wall time (the target
for `--help` is < 0.5 s on 2 cores).

    .venv/bin/python bench/cli.py [--repeats 15]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def wall(argv: list[str]) -> tuple[float, float]:
    """Wall and CPU (user + system) seconds of one fresh run of ``argv``."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(SRC), *filter(None, [os.environ.get("PYTHONPATH")])])}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    done = subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          timeout=300)
    elapsed = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed: {done.stderr.decode()[-500:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return elapsed, cpu


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=15)
    args = ap.parse_args()
    py = sys.executable
    cases = {
        "python -c pass": [py, "-c", "pass"],
        "babeltower --help": [py, "-m", "babeltower.cli", "--help"],
        "babeltower eval --help": [py, "-m", "babeltower.cli", "eval", "--help"],
        "python -c 'import torch'": [py, "-c", "import torch"],
    }
    for argv in cases.values():   # warm the page cache and .pyc files
        wall(argv)
    times: dict[str, list[float]] = {k: [] for k in cases}
    cpus: dict[str, list[float]] = {k: [] for k in cases}
    for _ in range(args.repeats):
        for name, argv in cases.items():
            w, c = wall(argv)
            times[name].append(w)
            cpus[name].append(c)
    floor = statistics.median(times["python -c pass"])
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}, "
          f"{args.repeats} runs each: median wall (min-max), median CPU (user+sys)")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"  {name:26s} wall {med:6.3f} s ({min(ts):.3f}-{max(ts):.3f}) "
              f"{med - floor:+.3f} s over python -c pass;  CPU "
              f"{statistics.median(cpus[name]):.3f} s")
    helped = statistics.median(times["babeltower --help"])
    print(f"babeltower --help: {helped:.3f} s median, target < 0.5 s: "
          f"{'met' if helped < 0.5 else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
