"""Containment for untrusted (model-generated) programs, compile step included.

* ``run.run_sandboxed(cmd, ...)`` -> ``SandboxResult``: one contained process tree
  (namespaces, a per-run uid as root or a user namespace without root, seccomp,
  cgroups or rlimits; ``SandboxUnavailable`` where it cannot isolate).
* ``fences``: the kernel fences set up in the child (``Limits``, seccomp, mounts).
* ``zygote``: the Python fork server that starts programs without an exec.
* ``execute.run_program(language, source, timeout=...)`` -> ``ExecResult``: compile and
  run one program of a language inside the sandbox.

Names are imported lazily, so ``import babeltower.sandbox`` stays cheap (the fork server
runs ``zygote.py`` as a script and must import only the standard library).
"""

from importlib import import_module

_EXPORTS = {
    "run_sandboxed": "run", "SandboxResult": "run", "SandboxUnavailable": "run",
    "isolation_line": "run", "Limits": "fences", "run_program": "execute",
    "ExecResult": "execute",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(import_module(f"babeltower.sandbox.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'babeltower.sandbox' has no attribute {name!r}")
