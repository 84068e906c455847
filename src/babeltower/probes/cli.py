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


def _revisions(revisions: Optional[str]):
    return [r.strip() for r in revisions.split(",") if r.strip()] if revisions else None


@app.command("lens")
def lens_cmd(
    source: str = typer.Argument(..., help="Run dir, HF model dir, dir of model dirs, .gguf, or hub:ORG/NAME."),
    primary: str = typer.Option("python", help="Primary language."),
    new: str = typer.Option(..., help="New language (suite <primary>-<new>)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output directory."),
    suite_path: Optional[Path] = typer.Option(None, "--suite", help="User suite file or directory."),
    revisions: Optional[str] = typer.Option(None, help="Comma-separated hub revisions."),
    batch_size: int = typer.Option(16, min=1),
    padding_side: str = typer.Option("left", help="left | right (results are the same)."),
    plot: bool = typer.Option(True, help="Write heatmaps (PNG) next to the tables."),
    overwrite: bool = typer.Option(False, help="Recompute and replace existing results."),
):
    """Logit lens: per checkpoint and layer, does the model prefer the primary or the new identifier?"""
    from rich.console import Console

    from babeltower.probes.lens import run_lens, summarize_lens
    from babeltower.probes.plots import lens_heatmap

    df = run_lens(source, suite_path, primary=primary, new=new, revisions=_revisions(revisions),
                  out=out, batch_size=batch_size, padding_side=padding_side, overwrite=overwrite)
    if plot:
        for measure in ("logp_diff", "prefers_new", "top1_new"):
            lens_heatmap(df, out / f"heatmap_{measure}.png", measure=measure)
    console = Console()
    console.print(summarize_lens(df).to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    console.print(f"wrote {out}/lens.parquet, lens.csv, summary.csv, provenance.json")
