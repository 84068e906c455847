"""CLI commands of this concern, registered on the root app."""
import typer


def register(app: typer.Typer) -> None:
    pass
