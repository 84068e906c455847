"""CLI: ``babeltower experiment CONFIG`` runs (or resumes) the whole study."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def experiment_command(
    config: Path = typer.Argument(..., help="experiment YAML (configs/default.yaml, configs/paper-1.3b.yaml)"),
    set_: Optional[list[str]] = typer.Option(None, "--set", help="override a field: key.sub=value"),
    workdir: Optional[Path] = typer.Option(None, help="where steps, runs and the report go"),
) -> None:
    """Run the whole Babel Tower study (cached and resumable: run again to continue)."""
    # the pipeline imports torch: loaded here, not at CLI start-up (`babeltower --help`)
    from babeltower.experiment.config import ExperimentConfig
    from babeltower.experiment.pipeline import run_experiment

    overrides = list(set_ or [])   # parsed by babeltower.config.apply_overrides
    if workdir is not None:
        overrides.append(f"workdir={workdir}")
    run_experiment(ExperimentConfig.from_yaml(config, overrides))
