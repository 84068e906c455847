"""CLI: ``babeltower report WORKDIR`` re-draws an experiment's report from results.json."""

from __future__ import annotations

from pathlib import Path

import typer

from babeltower.results import read_results
from babeltower.report.study import write_report


def report_command(
    workdir: Path = typer.Argument(..., help="an experiment's workdir (holds results.json)"),
) -> None:
    """Re-draw report.html, summary.md and the figures from an experiment's results.json."""
    results = read_results(workdir / "results.json")
    typer.echo(write_report(results, workdir))


def register(app: typer.Typer) -> None:
    app.command("report")(report_command)
