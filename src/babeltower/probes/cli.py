"""CLI: babeltower probe ... (thin: every command calls a library function)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(help="Probe checkpoint series: logit lens and LAPE neurons.", no_args_is_help=True)


@app.command("suites")
def suites_cmd(
    primary: Optional[str] = typer.Option(None, help="Primary language of one suite to show."),
    new: Optional[str] = typer.Option(None, help="New language of one suite to show."),
    suite_path: Optional[Path] = typer.Option(None, "--suite", help="User suite file or directory."),
    tokenizer: Optional[str] = typer.Option(None, help="Tokenizer dir (or model dir) to check the suite against."),
):
    """List probe suites, or show one suite and how it tokenizes."""
    from rich.console import Console
    from rich.table import Table

    from babeltower.probes.suite import available_suites, load_suite

    console = Console()
    if primary is None and new is None:
        for name in available_suites(suite_path):
            console.print(name)
        return
    from babeltower.errors import BabelError

    if primary is None or new is None:
        raise BabelError("give both --primary and --new (or neither to list suites)")
    suite = load_suite(primary, new, path=suite_path)
    table = Table(title=f"{suite.name}: {len(suite.pairs)} pairs, {suite.n_prompts()} prompts")
    for col in ("pair", "kind", suite.primary, suite.new, "prompts"):
        table.add_column(col)
    for p in suite.pairs:
        table.add_row(p.id, p.kind, p.primary.identifier, p.new.identifier,
                      f"{len(p.primary.prompts)}+{len(p.new.prompts)}")
    console.print(table)
    if tokenizer is not None:
        from babeltower.probes.lens import load_tokenizer

        checked = suite.check(load_tokenizer(tokenizer))
        for k, v in checked.summary().items():
            console.print(f"{k}: {v}")
        for d in checked.dropped:
            console.print(f"dropped {d.pair_id} [{d.side}] {d.prompt!r}: {d.reason}")
