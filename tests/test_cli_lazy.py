"""The CLI starts light: `import babeltower.cli`, `babeltower --help` and each
`babeltower X --help` load none of torch, scipy, transformers, numpy, pandas or
matplotlib (checked in a fresh
interpreter through sys.modules), and the registry's help lines are the commands' own."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from babeltower.cli import COMMANDS, load_command
from procs import run

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "scipy", "transformers", "numpy", "pandas", "matplotlib")


def _loaded_after(code: str) -> list[str]:
    """Which HEAVY modules a fresh interpreter holds after running ``code``."""
    probe = (f"import sys\n{code}\n"
             f"print('MODULES', __import__('json').dumps("
             f"[m for m in {HEAVY!r} if m in sys.modules]))")
    env = {"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin"}
    done = run([sys.executable, "-c", probe], env=env, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    (line,) = [ln for ln in done.stdout.splitlines() if ln.startswith("MODULES ")]
    return json.loads(line.removeprefix("MODULES "))


def _help(argv: list[str]) -> str:
    return ("from babeltower.cli import main\n"
            "import contextlib, io\n"
            "with contextlib.redirect_stdout(io.StringIO()) as out:\n"
            f"    rc = main({argv!r})\n"
            "assert rc == 0 and 'Usage' in out.getvalue(), (rc, out.getvalue())")


def test_import_of_the_cli_loads_nothing_heavy():
    assert _loaded_after("import babeltower.cli") == []


def test_top_level_help_loads_nothing_heavy():
    assert _loaded_after(_help(["--help"])) == []


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_each_command_help_loads_nothing_heavy(command):
    assert _loaded_after(_help([command, "--help"])) == []


def test_the_sandbox_and_pass_at_k_load_no_scipy_torch_or_transformers():
    """CI reruns the sandbox suites as an unprivileged user with only numpy, pydantic and
    tqdm staged: the sandbox and pass@k's scoring must import nothing heavier."""
    loaded = _loaded_after("import babeltower.sandbox.execute, babeltower.sandbox.run, "
                           "babeltower.sandbox.zygote, babeltower.evaluate.passk")
    assert not {"torch", "scipy", "transformers", "pandas", "matplotlib"} & set(loaded), loaded


def test_the_probe_itself_sees_heavy_imports():
    """The check above can fail: a command that does import torch is seen."""
    assert "torch" in _loaded_after("import babeltower.train.loop")


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_registry_help_line_is_the_commands_own(command):
    """`babeltower --help` shows COMMANDS' lines without importing; they must not drift
    from the docstrings / typer help that `babeltower X --help` shows."""
    loaded = load_command(command)
    assert loaded.name == command
    own = " ".join((loaded.help or "").split("\n\n")[0].split())
    assert own == COMMANDS[command][1]
