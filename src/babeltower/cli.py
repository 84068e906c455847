"""The ``babeltower`` command: a thin typer layer over the library.

Each concern owns its sub-command module (``babeltower/<concern>/cli.py``); this file
only assembles them and turns user-facing failures into one line and an exit code.
"""

from __future__ import annotations

import os
import sys

# Machines here are shared: OpenMP spin-waiting collapses throughput when another
# process is busy (measured 8.5k -> 0.8k tokens/s); passive waiting keeps ~4.7k.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import typer  # noqa: E402

from babeltower.errors import BabelError  # noqa: E402

app = typer.Typer(
    name="babeltower",
    help="How a code LM acquires a new programming language (Babel Tower, arXiv 2412.07298).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _register() -> None:
    from babeltower.analysis.cli import app as stages_app
    from babeltower.corpus.cli import app as corpus_app, tokenizer_app
    from babeltower.evaluate.cli import app as eval_app
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
    register_report(app)


_register()


def main(argv: list[str] | None = None) -> int:
    """Entry point: BabelError -> one line on stderr and exit 2; Ctrl-C -> exit 130."""
    try:
        app(args=argv, standalone_mode=False)
    except BabelError as e:
        print(f"babeltower: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("babeltower: interrupted (finished steps are kept; run again to resume)",
              file=sys.stderr)
        return 130
    except SystemExit as e:  # typer/click exit codes (e.g. --help)
        return int(e.code or 0) if isinstance(e.code, int) or e.code is None else 1
    except Exception as e:
        # click usage errors (typer vendors its own click) carry their own message
        if hasattr(e, "show") and hasattr(e, "exit_code"):
            e.show()
            return int(e.exit_code)
        if type(e).__name__ == "Abort":
            print("babeltower: aborted", file=sys.stderr)
            return 130
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
