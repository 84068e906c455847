"""Helpers of the sandbox and execution tests: toolchains, world-writable paths, a listener.

* ``require_toolchain(lang)``: a missing toolchain is a test FAILURE under CI (``CI=true``,
  where ``scripts/install-toolchains.sh`` must have installed it) and a visible skip
  elsewhere - never a silent pass.
* ``world_writable_dirs()``: every world-writable directory of the host, found by walking
  the file system (``/proc`` and ``/sys`` excepted: kernel interfaces, not storage) - the
  hostile tests write to each, so nothing is listed by hand.
* ``loopback_listener()``: a TCP listener the test itself opens on 127.0.0.1 (never a
  non-loopback address), to check a sandboxed program cannot reach it.
"""

from __future__ import annotations

import contextlib
import functools
import os
import socket
import stat

import pytest

from babeltower.evaluate.execute import check_toolchains

IN_CI = os.environ.get("CI", "").lower() in ("true", "1")
HAVE = check_toolchains()


def require_toolchain(language: str) -> None:
    if HAVE[language]:
        return
    msg = f"{language} toolchain not installed (scripts/install-toolchains.sh)"
    if IN_CI:
        pytest.fail(f"CI: {msg}")
    pytest.skip(msg)


@functools.lru_cache(maxsize=1)
def world_writable_dirs() -> tuple[str, ...]:
    """Every directory any user may create files in, on every mounted file system."""
    found: list[str] = []
    stack = ["/"]
    while stack:
        d = stack.pop()
        try:
            entries = os.scandir(d)
        except OSError:
            continue
        with entries:
            for e in entries:
                try:
                    if not e.is_dir(follow_symlinks=False) or e.path in ("/proc", "/sys"):
                        continue
                    if e.stat(follow_symlinks=False).st_mode & stat.S_IWOTH:
                        found.append(e.path)
                    stack.append(e.path)
                except OSError:
                    pass
    return tuple(sorted(found))


@contextlib.contextmanager
def loopback_listener():
    """(port, accepted()) of a listening socket on 127.0.0.1; accepted() lists connections."""
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    srv.setblocking(False)

    def accepted() -> list:
        got = []
        while True:
            try:
                conn, addr = srv.accept()
            except BlockingIOError:
                return got
            got.append(addr)
            conn.close()

    try:
        yield srv.getsockname()[1], accepted
    finally:
        srv.close()
