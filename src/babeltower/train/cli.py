"""CLI: ``babeltower train CONFIG.yaml [--set key=value ...] [--force]``.

Also runs under ``torchrun --nproc_per_node=N -m babeltower.train CONFIG.yaml``.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from babeltower.options import output_dir


def train_command(
    config: Path = typer.Argument(..., help="TrainConfig YAML (see configs/train-*.yaml)."),
    set_: Optional[List[str]] = typer.Option(
        None, "--set", help="Override a field: key=value or section.key=value (YAML value)."),
    force: bool = typer.Option(
        False, "--force", help="Resume even if the config differs from the saved run's."),
    out_dir: Optional[Path] = typer.Option(None, "--out-dir", "-o", callback=output_dir,
                                           help="Run directory."),
) -> None:
    """Train (or resume) a model on a packed corpus and a mixture; writes checkpoints."""
    from babeltower.train.config import TrainConfig
    from babeltower.train.loop import train

    overrides = list(set_ or [])
    if out_dir is not None:
        overrides.append(f"out_dir={out_dir}")
    cfg = TrainConfig.from_yaml(config, overrides)
    run_dir = train(cfg, force=force)
    import os
    if int(os.environ.get("RANK", "0")) == 0:
        typer.echo(str(run_dir))
