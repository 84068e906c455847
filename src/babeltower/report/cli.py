"""CLI: ``babeltower experiment CONFIG`` and ``babeltower report WORKDIR``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from babeltower.errors import BabelError


def experiment_command(
    config: Path = typer.Argument(..., help="experiment YAML (configs/default.yaml, configs/paper-1.3b.yaml)"),
    set_: Optional[list[str]] = typer.Option(None, "--set", help="override a field: key.sub=value"),
    workdir: Optional[Path] = typer.Option(None, help="where steps, runs and the report go"),
) -> None:
    """Run the whole Babel Tower study (cached and resumable: run again to continue)."""
    from babeltower.experiment import ExperimentConfig, run_experiment

    overrides = {}
    for item in set_ or []:
        if "=" not in item:
            raise BabelError(f"--set expects key=value, got {item!r}")
        k, v = item.split("=", 1)
        overrides[k.strip()] = v
    if workdir is not None:
        overrides["workdir"] = str(workdir)
    cfg = ExperimentConfig.from_yaml(config, overrides)
    run_experiment(cfg)


def report_command(
    workdir: Path = typer.Argument(..., help="an experiment's workdir (holds results.json)"),
) -> None:
    """Re-draw report.html and its figures from an experiment's results.json."""
    from babeltower.experiment.report import write_report

    res = workdir / "results.json"
    if not res.exists():
        raise BabelError(f"no results.json in {workdir} (run `babeltower experiment` first)")
    try:
        results = json.loads(res.read_text())
    except json.JSONDecodeError as e:
        raise BabelError(f"corrupt {res}: {e.msg}") from e
    typer.echo(write_report(results, workdir))


def register(app: typer.Typer) -> None:
    app.command("experiment")(experiment_command)
    app.command("report")(report_command)
