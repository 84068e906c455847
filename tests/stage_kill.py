"""Kill a datatrove job part-way through a stage (the corpus build and pack resume tests)."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from procs import started


def kill_part_way(argv: list[str], env: dict, done: Path, sig: int, err_path: Path,
                  progress_prefix: str) -> tuple[int, int, list[str]]:
    """Run ``argv`` and send its process group ``sig`` as soon as the stage whose
    completion markers are in ``done`` has finished a task. Returns the exit code, the
    number of finished tasks and stderr without the job's progress lines."""
    with open(err_path, "w") as err, \
            started(argv, env=env, stdout=subprocess.DEVNULL, stderr=err) as proc:
        deadline = time.monotonic() + 60
        while not (done.is_dir() and any(done.iterdir())):
            assert proc.poll() is None, "the job ended before the stage"
            assert time.monotonic() < deadline
            time.sleep(0.002)
        os.killpg(proc.pid, sig)
        rc = proc.wait(timeout=30)
    lines = [x for x in err_path.read_text().splitlines() if not x.startswith(progress_prefix)]
    return rc, len(list(done.iterdir())), lines
