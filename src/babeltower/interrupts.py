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

Some code must not be interrupted at all: torch's import runs C++ initialisers that call
back into Python (``torch._C._c10d_init`` in ``torch/distributed/__init__.py``); a
KeyboardInterrupt raised in such a callback crosses a C++ boundary that cannot carry it,
and the process aborts (``terminate called after throwing an instance of
'pybind11::error_already_set'``, SIGABRT; measured: 1 of 15 SIGINTs 0.2-1 s into
``babeltower train``). So while a ``DEFERRED_IMPORTS`` package executes its import, the
handler only records the signal, and the KeyboardInterrupt is raised once the import is
done (``deferred``).
Standard library only: installed before anything heavy is imported.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import signal
import sys

_state = {"requested": False, "deferred": 0}

# top-level packages whose import must run to its end (see the module docstring)
DEFERRED_IMPORTS = frozenset({"torch"})


def _handler(signum, frame) -> None:
    _state["requested"] = True
    if _state["deferred"]:
        return              # raised when the deferred section ends
    raise KeyboardInterrupt


@contextlib.contextmanager
def deferred():
    """A section a SIGINT does not interrupt: recorded, then raised when it ends."""
    _state["deferred"] += 1
    try:
        yield
    finally:
        _state["deferred"] -= 1
    if not _state["deferred"]:
        raise_if_interrupted()


class _DeferredLoader(importlib.abc.Loader):
    """The real loader, its ``exec_module`` run as a deferred section."""

    def __init__(self, loader):
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        module.__loader__ = module.__spec__.loader = self._loader
        with deferred():
            self._loader.exec_module(module)

    def __getattr__(self, name):      # resource readers, get_source, ... of the real one
        return getattr(self._loader, name)


class _DeferImports(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name not in DEFERRED_IMPORTS:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _DeferredLoader(spec.loader)
                return spec
        return None


def install() -> None:
    """Record SIGINTs from now on (main thread only; a process started with SIGINT
    ignored keeps ignoring it, as it must), and defer them during torch's import."""
    _state["requested"] = False
    try:
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            signal.signal(signal.SIGINT, _handler)
    except ValueError:      # not the main thread: nothing to install
        return
    if not any(isinstance(f, _DeferImports) for f in sys.meta_path):
        sys.meta_path.insert(0, _DeferImports())


def requested() -> bool:
    """Whether a SIGINT reached this process since ``install``."""
    return _state["requested"]


def raise_if_interrupted() -> None:
    """Raise KeyboardInterrupt if a SIGINT was recorded (and possibly swallowed)."""
    if _state["requested"]:
        raise KeyboardInterrupt
