"""CLI: babeltower probe ..."""
import typer

app = typer.Typer(help="Probe checkpoint series: logit lens and LAPE neurons.", no_args_is_help=True)
