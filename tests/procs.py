"""Starting processes from tests so that none outlives its test or fills the disk.

Every process a test starts goes through ``started`` (or ``run``): it gets its own
process group (``start_new_session``), its SIGINT is the default one even when the test
run itself was started with SIGINT ignored (``setsid nohup make test &``, many CI
runners: an ignored disposition is inherited), and when the test ends - passed, failed
or timed out - the whole group is killed with SIGKILL and reaped. A test can therefore
never leave a ``babeltower train`` writing checkpoints after it gave up.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from typing import Iterator


def _default_sigint() -> None:   # runs in the child between fork and exec
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL ``proc``'s whole process group (it leads one) and reap ``proc``."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(Exception):
        proc.communicate(timeout=30)   # reap; closes any pipes


@contextlib.contextmanager
def started(argv: list[str], **kwargs) -> Iterator[subprocess.Popen]:
    """``Popen(argv, **kwargs)`` in a new session with default SIGINT; its group is killed
    on leaving the block, whatever happened in it."""
    proc = subprocess.Popen(argv, start_new_session=True, preexec_fn=_default_sigint,
                            **kwargs)
    try:
        yield proc
    finally:
        kill_group(proc)


def run(argv: list[str], *, timeout: float, **kwargs) -> subprocess.CompletedProcess:
    """``subprocess.run`` with ``capture_output`` and ``text``, whose process group is
    killed when it finishes or times out (``TimeoutExpired`` still raised)."""
    kwargs.setdefault("stdout", subprocess.PIPE)
    kwargs.setdefault("stderr", subprocess.PIPE)
    kwargs.setdefault("text", True)
    with started(argv, **kwargs) as proc:
        out, err = proc.communicate(timeout=timeout)
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)
