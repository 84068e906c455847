"""Run every benchmark, one after the other (`make bench`).

Each benchmark measures babeltower against a named peer in the same run and prints the
ratio; see the docstring of each script for what is compared.

    .venv/bin/python bench/run_all.py [cli corpus train probes series eval sampler]
"""

import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).parent
BENCHES = ["cli", "sampler", "eval", "probes", "series", "train", "corpus"]


def main(argv: list[str]) -> int:
    chosen = argv or BENCHES
    unknown = [b for b in chosen if b not in BENCHES]
    if unknown:
        print(f"unknown benchmark(s): {', '.join(unknown)} (have: {', '.join(BENCHES)})",
              file=sys.stderr)
        return 2
    failed = []
    for name in chosen:
        print(f"\n=== bench/{name}.py ===", flush=True)
        t = time.time()
        rc = subprocess.call([sys.executable, str(HERE / f"{name}.py")])
        print(f"=== bench/{name}.py: exit {rc}, {time.time() - t:.0f} s ===", flush=True)
        if rc != 0:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
