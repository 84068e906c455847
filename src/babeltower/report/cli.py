"""CLI: ``babeltower report WORKDIR`` re-draws an experiment's report from results.json."""

from __future__ import annotations

from pathlib import Path

import typer


def report_command(
    workdir: Path = typer.Argument(..., help="an experiment's workdir (holds results.json)"),
) -> None:
    """Re-draw report.html, summary.md and the figures from an experiment's results.json."""
    from babeltower.report.study import write_report   # matplotlib: loaded only to draw
    from babeltower.results import read_results

    results = read_results(workdir / "results.json")
    typer.echo(write_report(results, workdir))
