"""Ctrl-C that cannot be lost.

Python turns SIGINT into ``KeyboardInterrupt`` wherever the main thread happens to be.
Third-party import machinery sometimes swallows it: measured here, a SIGINT 0.5 s after
``babeltower train`` started landed inside transformers' lazy import of accelerate ->
numpy.dtypes; transformers caught the failure and re-raised it as a ModuleNotFoundError
(exit 1, "internal error"), or the interrupt vanished and training went on for minutes.
So the CLI's handler also RECORDS the signal: the error boundary (``babeltower.cli``)
answers any failure after a recorded SIGINT as an interruption (exit 130, one line), and
the long loops (training steps, checkpoint series, corpus scans) call
``raise_if_interrupted`` so a swallowed interrupt still stops them at the next step.
Standard library only: installed before anything heavy is imported.
"""

from __future__ import annotations

import signal

_state = {"requested": False}


def _handler(signum, frame) -> None:
    _state["requested"] = True
    raise KeyboardInterrupt


def install() -> None:
    """Record SIGINTs from now on (main thread only; a process started with SIGINT
    ignored keeps ignoring it, as it must)."""
    _state["requested"] = False
    try:
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            signal.signal(signal.SIGINT, _handler)
    except ValueError:      # not the main thread: nothing to install
        pass


def requested() -> bool:
    """Whether a SIGINT reached this process since ``install``."""
    return _state["requested"]


def raise_if_interrupted() -> None:
    """Raise KeyboardInterrupt if a SIGINT was recorded (and possibly swallowed)."""
    if _state["requested"]:
        raise KeyboardInterrupt
