"""Separate Python environments with nnsight, built on first use and cached.

nnsight is no dependency of the project and is checked where users run it, in
environments of its own: one with transformers 4.x (what a user on the 4.x line has; our
checkpoints must open there too) and one with the project's transformers 5. Each is a
venv under ``$BABELTOWER_CACHE/envs`` (default ``~/.cache/babeltower/envs``) with
nnsight (and transformers 4.x) installed from the package index; torch is NOT installed
again: a ``.pth`` file puts the project environment's site-packages after the venv's own,
so the venv's nnsight/transformers/tokenizers win and torch is the project's (the same
CPU wheel; saves ~1 GB and most of the build time). test_nnsight_env.py took 114 s with
both built from scratch (pip cache warm), 64 s with them cached (2026-11-30). They are
built before the tests (``make test-envs``; installing needs the package index, tests
use loopback only); a missing or failed environment makes the tests fail, never skip.
"""

from __future__ import annotations

import os
import shutil
import sys
import sysconfig
from pathlib import Path

NNSIGHT = "0.8.1"
TRANSFORMERS_4 = "4.57.6"
#: kind -> what the venv installs on top of the project's packages
KINDS = {"transformers4": [f"nnsight=={NNSIGHT}", f"transformers=={TRANSFORMERS_4}"],
         "project": [f"nnsight=={NNSIGHT}"]}


def _root() -> Path:
    base = os.environ.get("BABELTOWER_CACHE") or Path.home() / ".cache" / "babeltower"
    return Path(base) / "envs"


def env_python(kind: str, timeout: float = 600, build: bool = False) -> Path:
    """The python of the ``kind`` environment; ``build``: install it first if missing.

    Tests call this with ``build=False``: installing talks to the package index, and the
    tests themselves use the network on loopback only, so the environments are built
    before pytest runs (``make test`` -> ``make test-envs`` ->
    ``python tests/nnsight_env.py``), as the language toolchains are. A missing
    environment is an error, never a skip."""
    import torch

    name = f"nnsight-{NNSIGHT}-{kind}-torch-{torch.__version__}".replace("+", "-")
    final = _root() / name
    python = final / "bin" / "python"
    if (final / ".complete").exists():
        return python
    if not build:
        raise RuntimeError(f"the {kind} nnsight environment is not built ({final}): run "
                           "`make test-envs` (or `python tests/nnsight_env.py`) first")
    tmp = final.with_name(f".{name}.{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    from procs import run   # its process group is killed on a timeout

    made = run([sys.executable, "-m", "venv", str(tmp)], timeout=timeout)
    if made.returncode != 0:
        raise RuntimeError(f"python -m venv {tmp} failed:\n{made.stderr}")
    site = run([str(tmp / "bin" / "python"), "-c",
                "import sysconfig; print(sysconfig.get_paths()['purelib'])"], timeout=120)
    if site.returncode != 0:
        raise RuntimeError(f"the new venv's python failed:\n{site.stderr}")
    site = site.stdout.strip()
    Path(site, "project-packages.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    # the project's packages are visible to pip through the .pth: it keeps torch and
    # installs what differs into the venv (its "not uninstalling ... outside environment"
    # notes and dependency-conflict warnings concern the project's packages, not this venv)
    done = run([str(tmp / "bin" / "python"), "-m", "pip", "install", "-q",
                "--disable-pip-version-check", *KINDS[kind]], timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"building the {kind} nnsight environment failed:\n{done.stderr}")
    (tmp / ".complete").write_text(" ".join(KINDS[kind]) + "\n")
    # the venv's scripts name their own path; a rename keeps bin/python working (we call
    # the interpreter, not the scripts)
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    return python


if __name__ == "__main__":
    for kind in KINDS:
        print(f"nnsight environment {kind}: {env_python(kind, build=True)}")
