"""Cached, resumable experiment steps.

Each step has a name and a *key* (the part of the config that determines its output).
A finished step writes ``WORKDIR/steps/<name>.json`` = {key hash, result, provenance};
running the experiment again skips every step whose record matches its key, and re-runs
a step whose key changed. Long steps (training) resume on their own from their last
complete checkpoint, so an interrupted step loses at most one checkpoint interval.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable

from rich.console import Console

from babeltower.io import atomic_write_json, provenance, sha256_json


class StepCache:
    def __init__(self, workdir: Path, console: Console | None = None, total: int | None = None):
        self.root = Path(workdir) / "steps"
        self.root.mkdir(parents=True, exist_ok=True)
        self.console = console or Console(stderr=True)
        self.total = total
        self.count = 0
        self.timings: dict[str, float] = {}

    def _path(self, name: str) -> Path:
        return self.root / f"{name}.json"

    def cached(self, name: str, key: Any) -> Any | None:
        p = self._path(name)
        if not p.exists():
            return None
        try:
            rec = json.loads(p.read_text())
        except json.JSONDecodeError:
            return None
        return rec["result"] if rec.get("key_sha256") == sha256_json(key) else None

    def run(self, name: str, key: Any, fn: Callable[[], Any], what: str = "") -> Any:
        self.count += 1
        label = f"[{self.count}/{self.total}]" if self.total else f"[{self.count}]"
        hit = self.cached(name, key)
        if hit is not None:
            self.console.print(f"[dim]{label} {name}: done before, skipped[/dim]")
            return hit
        self.console.print(f"[bold cyan]{label} {name}[/bold cyan] {what}")
        t0 = time.time()
        result = fn()
        dt = time.time() - t0
        self.timings[name] = dt
        atomic_write_json(self._path(name), {
            "step": name, "key_sha256": sha256_json(key), "key": key, "seconds": dt,
            "result": result, "provenance": provenance()})
        self.console.print(f"[green]{label} {name}: finished in {dt:.0f} s[/green]")
        return result
