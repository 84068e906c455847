"""The ``babeltower`` command: a thin typer layer over the library.

Each concern owns its sub-command module (``babeltower/<concern>/cli.py``); this file
only assembles them and is the error boundary: whatever a command raises, the user
gets one line on stderr and an exit code, never a bare traceback.

Exit codes: 0 success; 2 bad input or environment (``BabelError``, a usage error, a
full disk, no permission); 130 interrupted (Ctrl-C); 141 the reader of stdout went away
(``| head``; nothing printed); 1 an unexpected error (a bug), whose traceback goes to a
log file named in the line (``--debug`` prints it instead).

Sub-commands are registered by name (``COMMANDS``) and imported only when run, so the
boundary is in force before torch & co. load: a Ctrl-C at any moment is exit 130 and
one line.
"""

from __future__ import annotations

import sys

from babeltower import interrupts

# before anything heavy loads: a SIGINT is recorded even where a library swallows it
interrupts.install()

# Commands that pick up where an interrupted run stopped when run again (checkpoints,
# *.partial.jsonl, cached steps); the others write their outputs only when complete.
RESUMABLE_COMMANDS = {"train", "experiment", "eval loss", "eval cloze", "eval pass-at-k",
                      "eval knowledge",
                      "probe lens", "probe neurons", "probe ablate", "corpus build",
                      "corpus pack"}


def _interrupted(path: str) -> int:
    if path in RESUMABLE_COMMANDS:
        print("babeltower: interrupted; run the same command to resume", file=sys.stderr)
    else:
        print("babeltower: interrupted; no partial output is kept, run the same command "
              "to start again", file=sys.stderr)
    # CPython (3.11) marks a KeyboardInterrupt that escaped an exec()/eval() of a string -
    # typing, dataclasses and namedtuple do those while modules load - as unhandled even
    # when it was caught, and then ends the process by SIGINT (exit -2) instead of
    # exiting 130: measured on 1 in 4 SIGINTs 0.15-0.3 s after start. Evaluating one
    # more string clears that mark.
    exec("")
    return 130


def _words(args: list[str]) -> str:
    """The command words of a raw command line, before any command is loaded."""
    words = [a for a in args if not a.startswith("-")][:2]
    two = " ".join(words)
    return two if two in RESUMABLE_COMMANDS else " ".join(words[:1])


try:  # the boundary holds from here: a Ctrl-C while the CLI loads is one line too
    import importlib
    import os
    from pathlib import Path

    import typer
    import typer.main
    from typer.core import TyperGroup
    from typer.exceptions import Abort, Exit, TyperException

    from babeltower.errors import BabelError, environment_error
except KeyboardInterrupt:
    raise SystemExit(_interrupted(_words(sys.argv[1:]))) from None

# Machines here are shared: OpenMP spin-waiting collapses throughput when another
# process is busy (measured 8.5k -> 0.8k tokens/s); passive waiting keeps ~4.7k.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

HELP = ("How a code LM acquires a new programming language (Babel Tower, arXiv 2412.07298). "
        "Add --debug anywhere to print tracebacks of unexpected errors.")

# Every sub-command as "module:object" (a typer app, or a command function) and the line
# `babeltower --help` shows for it. A command's module is imported only when that command
# runs (or shows its own --help), so start-up and `--help` load none of torch, scipy,
# transformers or numpy, and a Ctrl-C at any moment meets the error boundary in main().
# tests/test_cli_lazy.py checks each line against the command's own docstring.
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("babeltower.train.cli:train_command",
              "Train (or resume) a model on a packed corpus and a mixture; writes checkpoints."),
    "mixture": ("babeltower.mixture.cli:mixture_command",
                "Write a baseline mixture (natural / uniform / temperature-<tau> / UniMax) as "
                "YAML."),
    "optimize": ("babeltower.mixture.cli:optimize_command",
                 "Algorithm 1: down-sample each new language to its best CPT stage; write "
                 "YAML + JSON."),
    "experiment": ("babeltower.experiment.cli:experiment_command",
                   "Run the whole Babel Tower study (cached and resumable: run again to "
                   "continue)."),
    "report": ("babeltower.report.cli:report_command",
               "Re-draw report.html, summary.md and the figures from an experiment's "
               "results.json."),
    "corpus": ("babeltower.corpus.cli:app", "Build multilingual code corpora."),
    "tokenizer": ("babeltower.corpus.cli:tokenizer_app", "Train the byte-level BPE tokenizer."),
    "probe": ("babeltower.probes.cli:app",
              "Probe checkpoint series: logit lens and LAPE neurons."),
    "eval": ("babeltower.evaluate.cli:app",
             "Evaluate per language: loss/bpb, cloze, pass@k, knowledge transfer."),
    "stages": ("babeltower.mixture.cli:stages_app",
               "Stage test (docs/stages.md): detect stages, or compute its power."),
}

DEBUG_FLAG = "--debug"


def load_command(name: str):
    """The click command of ``COMMANDS[name]``, importing its module now."""
    module, _, attr = COMMANDS[name][0].partition(":")
    obj = getattr(importlib.import_module(module), attr)
    if isinstance(obj, typer.Typer):
        command = typer.main.get_group(obj)
    else:
        holder = typer.Typer(add_completion=False)
        holder.command(name)(obj)
        command = typer.main.get_command(holder)
    command.name = name
    return command


class LazyGroup(TyperGroup):
    """The top-level group: lists ``COMMANDS`` from their help lines and imports a
    command's module only when it is looked up to run (click's lazy-group pattern)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.loaded: dict[str, object] = {}
        self._listing = False

    def list_commands(self, ctx) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx, cmd_name: str):
        if cmd_name not in COMMANDS:
            return None
        if self._listing and cmd_name not in self.loaded:  # `babeltower --help`: no import
            return typer.core.TyperCommand(name=cmd_name, help=COMMANDS[cmd_name][1])
        if cmd_name not in self.loaded:
            self.loaded[cmd_name] = load_command(cmd_name)
        return self.loaded[cmd_name]

    def format_help(self, ctx, formatter) -> None:
        self._listing = True
        try:
            return super().format_help(ctx, formatter)
        finally:
            self._listing = False


def root_command() -> LazyGroup:
    """The ``babeltower`` command (nothing below it imported yet)."""
    return LazyGroup(name="babeltower", help=HELP, no_args_is_help=True)


def _command_path(root: LazyGroup, args: list[str]) -> str:
    """The sub-command words of ``args`` (e.g. ``"eval loss"``), for messages; it walks
    only the commands loaded so far (nothing is imported here)."""
    words, command = [], root
    for word in args:
        sub = (root.loaded.get(word) if command is root
               else getattr(command, "commands", {}).get(word))
        if command is root and word in COMMANDS:
            words.append(word)   # named, even if its module never loaded
        elif sub is not None:
            words.append(word)
        if sub is None:
            break
        command = sub
    return " ".join(words)


def crash_log_dir() -> Path:
    """Where tracebacks of unexpected errors go: $BABELTOWER_LOG_DIR, else
    ~/.cache/babeltower/logs."""
    return Path(os.environ.get("BABELTOWER_LOG_DIR")
                or Path.home() / ".cache" / "babeltower" / "logs")


def _write_crash_log(args: list[str]) -> Path | None:
    """The current exception's traceback in a new log file; None if none could be written."""
    import tempfile
    import time
    import traceback

    text = (f"command: babeltower {' '.join(args)}\n"
            f"time: {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}\n\n"
            + traceback.format_exc())
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    for folder in (crash_log_dir(), Path(tempfile.gettempdir())):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / f"babeltower-crash-{stamp}-{os.getpid()}.log"
            path.write_text(text)
            return path
        except OSError:
            continue
    return None


def _unexpected(e: BaseException, args: list[str], debug: bool) -> int:
    known = environment_error(e)
    if known is not None:
        print(f"babeltower: error: {known}", file=sys.stderr)
        return known.exit_code
    what = " ".join(f"{type(e).__name__}: {e}".split())[:300]
    if isinstance(e, MemoryError) or type(e).__name__ == "OutOfMemoryError":
        print(f"babeltower: error: out of memory ({what})", file=sys.stderr)
        return 1
    if debug:
        import traceback

        traceback.print_exc()
        return 1
    log = _write_crash_log(args)
    where = f"traceback in {log}" if log else "traceback could not be saved; rerun with --debug"
    print(f"babeltower: internal error: {what} ({where})", file=sys.stderr)
    return 1


def main(argv: list[str] | None = None) -> int:
    """Entry point and error boundary: returns the exit code (see the module docstring)."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = DEBUG_FLAG in args or os.environ.get("BABELTOWER_DEBUG") == "1"
    args = [a for a in args if a != DEBUG_FLAG]
    command = root_command()
    # make_context + invoke rather than command.main(): main() turns Ctrl-C into an exit
    # code that non-standalone mode returns instead of raising, which lost it before.
    try:
        with command.make_context("babeltower", args) as ctx:
            command.invoke(ctx)
    except KeyboardInterrupt:
        return _interrupted(_words(args))
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except Exception as e:
        if interrupts.requested():   # a SIGINT that surfaced as another error (interrupts)
            return _interrupted(_words(args))
        return _failed(e, command, args, debug)
    if interrupts.requested():       # swallowed on the way, and the command still finished
        return _interrupted(_words(args))
    return 0


def _failed(e: Exception, command, args: list[str], debug: bool) -> int:
    """The exit code (and one line) of a command that raised ``e`` (module doc)."""
    if isinstance(e, BabelError):
        print(f"babeltower: error: {e}", file=sys.stderr)
        return e.exit_code
    if isinstance(e, Exit):          # --help, ctx.exit(code)
        return int(e.exit_code)
    if isinstance(e, TyperException):  # a usage error: its message as one line
        if type(e).__name__ == "NoArgsIsHelpError":
            e.show()  # the help text itself
        else:
            hint = f"see 'babeltower {_command_path(command, args)} --help'".replace("  ", " ")
            print(f"babeltower: error: {' '.join(e.format_message().split())} ({hint})",
                  file=sys.stderr)
        return int(e.exit_code)
    if isinstance(e, Abort):
        return _interrupted(_words(args))
    if isinstance(e, BrokenPipeError) and _stdout_gone():
        return 141   # `babeltower ... | head`: the reader left; stop quietly, as SIGPIPE
    return _unexpected(e, args, debug)


def _stdout_gone() -> bool:
    """True when stdout is a pipe whose reader has gone; it is then pointed at /dev/null,
    so that the interpreter's last flush does not fail again."""
    try:
        sys.stdout.flush()
        return False
    except (BrokenPipeError, ValueError):
        pass
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass
    return True


if __name__ == "__main__":
    sys.exit(main())
