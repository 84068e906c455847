"""``RUN/metrics.jsonl`` (+ TensorBoard if asked for and installed), written by rank 0.

One JSON object per line: ``{"kind": "train", ...}`` every ``log_interval`` steps and
``{"kind": "eval", ...}`` at every evaluation. On resume the lines logged after the
checkpoint we resume from are dropped (that stretch is trained again).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from babeltower.io import atomic_write_text


class MetricsLog:
    """Append-only metrics of one run; a no-op on ranks other than 0 (``enabled=False``)."""

    def __init__(self, run_dir: Path, enabled: bool, tensorboard: bool, resume_step: int | None):
        self.enabled = enabled
        self.path = run_dir / "metrics.jsonl"
        self.tb = None
        if not enabled:
            return
        if resume_step is not None and self.path.exists():
            # drop what was logged after the checkpoint we resume from (it is redone)
            keep = [ln for ln in self.path.read_text().splitlines()
                    if ln.strip() and _line_step(ln) <= resume_step]
            atomic_write_text(self.path, "".join(ln + "\n" for ln in keep))
        elif resume_step is None:
            self.path.unlink(missing_ok=True)
        self.f = open(self.path, "a")
        if tensorboard:
            try:
                # optional dependency: only imported when asked for
                from torch.utils.tensorboard import SummaryWriter
                self.tb = SummaryWriter(str(run_dir / "tensorboard"))
            except ImportError:
                print("babeltower: tensorboard is not installed; logging to metrics.jsonl only",
                      file=sys.stderr)

    def log(self, rec: dict) -> None:
        if not self.enabled:
            return
        self.f.write(json.dumps(rec) + "\n")
        self.f.flush()
        if self.tb is not None:
            step = rec["step"]
            for k, v in rec.items():
                if isinstance(v, (int, float)) and k != "step":
                    self.tb.add_scalar(f"{rec['kind']}/{k}", v, step)
                elif isinstance(v, dict):
                    for kk, vv in v.items():
                        self.tb.add_scalar(f"{rec['kind']}/{k}/{kk}", vv, step)

    def close(self) -> None:
        if self.enabled:
            self.f.close()
            if self.tb is not None:
                self.tb.close()


def _line_step(line: str) -> int:
    try:
        return int(json.loads(line).get("step", 0))
    except (json.JSONDecodeError, TypeError, ValueError):
        return 1 << 62
