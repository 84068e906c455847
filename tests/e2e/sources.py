"""A small real multilingual source tree from code already on this machine.

Python from the CPython standard library, C++ from libstdc++'s headers (renamed to
.hpp: most have no extension), JavaScript from npm's own sources. Real code, no
network, a few hundred KB per language: enough for a tiny end-to-end run.
"""

from __future__ import annotations

import shutil
import sysconfig
from pathlib import Path

CPP_ROOT = Path("/usr/include/c++")
NPM_ROOTS = [Path("/usr/lib/node_modules/npm"), Path("/usr/local/lib/node_modules/npm")]


def _copy_limited(files, dest: Path, max_bytes: int, suffix: str | None = None) -> int:
    total = 0
    dest.mkdir(parents=True, exist_ok=True)
    for f in sorted(files):
        if not f.is_file() or f.stat().st_size > 200_000:
            continue
        name = f.name if suffix is None else f.name.replace(".", "_") + suffix
        # one directory per file: each file is its own split group, so even a small
        # tree has enough groups to fill the validation and test shares
        target = dest / f.stem.replace(".", "_") / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():
            continue
        shutil.copyfile(f, target)
        total += f.stat().st_size
        if total >= max_bytes:
            break
    return total


def make_source_tree(dest: Path, max_bytes_per_language: int = 400_000) -> dict[str, int]:
    """Fill ``dest/<package>/...`` with real code; returns bytes per language."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    got = {}
    py = [p for pkg in ("json", "email", "asyncio", "concurrent", "importlib", "logging")
          for p in (stdlib / pkg).rglob("*.py")]
    got["python"] = _copy_limited(py, dest / "cpython-stdlib", max_bytes_per_language)
    versions = sorted(CPP_ROOT.iterdir()) if CPP_ROOT.exists() else []
    if versions:
        hdr = [p for p in (versions[-1] / "bits").iterdir()]
        got["cpp"] = _copy_limited(hdr, dest / "libstdcxx", max_bytes_per_language, suffix=".hpp")
    for root in NPM_ROOTS:
        if root.exists():
            js = [p for p in root.rglob("*.js") if "test" not in p.parts]
            got["javascript"] = _copy_limited(js, dest / "npm", max_bytes_per_language)
            break
    return got
