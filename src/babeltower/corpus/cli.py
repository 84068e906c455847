"""CLI: babeltower corpus ... / babeltower tokenizer ..."""
import typer

app = typer.Typer(help="Build multilingual code corpora.", no_args_is_help=True)
tokenizer_app = typer.Typer(help="Train the byte-level BPE tokenizer.", no_args_is_help=True)
