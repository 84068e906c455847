"""Checks that the command modules attach to their options (typer callbacks), so a bad
value is refused at the option - one line, exit 2 - before any work starts.

Kept apart from ``babeltower.cli`` (which imports the command modules) and light: typer
and ``babeltower.io`` only.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import typer

from babeltower.errors import BabelError

MAX_TIMEOUT_S = 3600.0   # one program run; a larger value is a typo, not a plan


def output_file(value: Optional[Path]) -> Optional[Path]:
    """``--out FILE``: a file path that can be created (see io.check_output_path)."""
    return _output(value, directory=False)


def output_dir(value: Optional[Path]) -> Optional[Path]:
    """``--out DIR``: a directory path that can be created (see io.check_output_path)."""
    return _output(value, directory=True)


def _output(value: Optional[Path], directory: bool) -> Optional[Path]:
    if value is None:
        return None
    from babeltower.io import check_output_path

    try:
        return check_output_path(value, directory=directory)
    except BabelError as e:
        raise typer.BadParameter(str(e)) from None


def seconds(value: float) -> float:
    """A time limit: a finite number of seconds in (0, MAX_TIMEOUT_S]."""
    if not (math.isfinite(value) and 0 < value <= MAX_TIMEOUT_S):
        raise typer.BadParameter(f"expected seconds in (0, {MAX_TIMEOUT_S:g}], got {value:g}")
    return value


def solved_if(value: str) -> str:
    """``any``, or the share of samples that must pass: a number in (0, 1]."""
    if value == "any":
        return value
    try:
        share = float(value)
    except ValueError:
        share = math.nan
    if not (0 < share <= 1):
        raise typer.BadParameter(f"expected 'any' or a pass fraction in (0, 1], got {value!r}")
    return value
