"""CLI: babeltower eval ..."""
import typer

app = typer.Typer(help="Evaluate per language: loss/bpb, cloze, pass@k.", no_args_is_help=True)
