"""CLI: ``babeltower experiment CONFIG`` and ``babeltower report WORKDIR``."""

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
    from babeltower.experiment import ExperimentConfig, run_experiment

    overrides = list(set_ or [])   # parsed by babeltower.config.apply_overrides
    if workdir is not None:
        overrides.append(f"workdir={workdir}")
    cfg = ExperimentConfig.from_yaml(config, overrides)
    run_experiment(cfg)


def report_command(
    workdir: Path = typer.Argument(..., help="an experiment's workdir (holds results.json)"),
) -> None:
    """Re-draw report.html, summary.md and the figures from an experiment's results.json."""
    from babeltower.experiment.report import write_report

    from babeltower.io import read_json

    results = read_json(workdir / "results.json", "experiment results (run `babeltower experiment` first)")
    typer.echo(write_report(results, workdir))


def register(app: typer.Typer) -> None:
    app.command("experiment")(experiment_command)
    app.command("report")(report_command)
