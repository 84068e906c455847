"""The ``babeltower`` command: a thin typer layer over the library.

Each concern owns its sub-command module (``babeltower/<concern>/cli.py``); this file
only assembles them and is the error boundary: whatever a command raises, the user
gets one line on stderr and an exit code, never a bare traceback.

Exit codes: 0 success; 2 bad input or environment (``BabelError``, a usage error, a
full disk, no permission); 130 interrupted (Ctrl-C); 1 an unexpected error (a bug),
whose traceback goes to a log file named in the line (``--debug`` prints it instead).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

# Machines here are shared: OpenMP spin-waiting collapses throughput when another
# process is busy (measured 8.5k -> 0.8k tokens/s); passive waiting keeps ~4.7k.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import typer  # noqa: E402
from typer.exceptions import Abort, Exit, TyperException  # noqa: E402

from babeltower.errors import BabelError, environment_error  # noqa: E402

app = typer.Typer(
    name="babeltower",
    help="How a code LM acquires a new programming language (Babel Tower, arXiv 2412.07298). "
         "Add --debug anywhere to print tracebacks of unexpected errors.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Commands that pick up where an interrupted run stopped when run again (checkpoints,
# *.partial.jsonl, cached steps); the others write their outputs only when complete.
RESUMABLE_COMMANDS = {"train", "experiment", "eval loss", "eval cloze", "eval pass-at-k"}
DEBUG_FLAG = "--debug"


def _register() -> None:
    from babeltower.analysis.cli import app as stages_app
    from babeltower.corpus.cli import app as corpus_app, tokenizer_app
    from babeltower.evaluate.cli import app as eval_app
    from babeltower.experiment.cli import register as register_experiment
    from babeltower.mixture.cli import register as register_mixture, stages_detect_command
    from babeltower.probes.cli import app as probe_app
    from babeltower.report.cli import register as register_report
    from babeltower.train.cli import register as register_train

    app.add_typer(corpus_app, name="corpus")
    app.add_typer(tokenizer_app, name="tokenizer")
    app.add_typer(probe_app, name="probe")
    app.add_typer(eval_app, name="eval")
    stages_app.command("detect")(stages_detect_command)
    app.add_typer(stages_app, name="stages")
    register_train(app)
    register_mixture(app)
    register_experiment(app)
    register_report(app)


_register()


def _command_path(command, args: list[str]) -> str:
    """The sub-command words of ``args`` (e.g. ``"eval loss"``), for messages."""
    words = []
    for word in args:
        sub = getattr(command, "commands", {}).get(word)
        if sub is None:
            break
        words.append(word)
        command = sub
    return " ".join(words)


def crash_log_dir() -> Path:
    """Where tracebacks of unexpected errors go: $BABELTOWER_LOG_DIR, else
    ~/.cache/babeltower/logs."""
    return Path(os.environ.get("BABELTOWER_LOG_DIR")
                or Path.home() / ".cache" / "babeltower" / "logs")


def _write_crash_log(args: list[str]) -> Path | None:
    """The current exception's traceback in a new log file; None if none could be written."""
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


def _interrupted(path: str) -> int:
    if path in RESUMABLE_COMMANDS:
        print("babeltower: interrupted; run the same command to resume", file=sys.stderr)
    else:
        print("babeltower: interrupted; no partial output is kept, run the same command "
              "to start again", file=sys.stderr)
    return 130


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
    command = typer.main.get_command(app)
    path = _command_path(command, args)
    # make_context + invoke rather than command.main(): main() turns Ctrl-C into an exit
    # code that non-standalone mode returns instead of raising, which lost it before.
    try:
        with command.make_context("babeltower", args) as ctx:
            command.invoke(ctx)
    except BabelError as e:
        print(f"babeltower: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        return _interrupted(path)
    except Exit as e:  # --help, ctx.exit(code)
        return int(e.exit_code)
    except TyperException as e:  # a usage error: its message as one line
        if type(e).__name__ == "NoArgsIsHelpError":
            e.show()  # the help text itself
        else:
            hint = f"see 'babeltower {path} --help'".replace("  ", " ")
            print(f"babeltower: error: {' '.join(e.format_message().split())} ({hint})",
                  file=sys.stderr)
        return int(e.exit_code)
    except Abort:
        return _interrupted(path)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except Exception as e:
        return _unexpected(e, args, debug)
    return 0


if __name__ == "__main__":
    sys.exit(main())
