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

from babeltower.sandbox.execute import check_toolchains

IN_CI = os.environ.get("CI", "").lower() in ("true", "1")
# .ci/run's rerun as an unprivileged user: a toolchain installed only where root can reach
# it (rustup under /root) is missing for that user, and that is a skip, said
UNPRIVILEGED_CI = os.environ.get("BABELTOWER_CI_UNPRIVILEGED") == "1"
HAVE = check_toolchains()


def require_toolchain(language: str) -> None:
    if HAVE[language]:
        return
    msg = f"{language} toolchain not installed (scripts/install-toolchains.sh)"
    if IN_CI and not UNPRIVILEGED_CI:
        pytest.fail(f"CI: {msg}")
    pytest.skip(msg + (" for this unprivileged user" if UNPRIVILEGED_CI else ""))


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


# A Python program that tries what a contained process must not do and prints, as JSON,
# the errno name each attempt got ("ok" = it worked). ``SOCKETS``: unix socket paths to
# connect to (replaced before the run). Every call has arguments that would fail with
# another errno (EINVAL, EBADF, ENOTTY, ...) if the filter were not there, so EPERM means
# the filter (or missing capabilities) refused it.
ESCAPE_PROBE = r'''
import ctypes, errno, json, os, socket
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
# this architecture's system call numbers, from libseccomp (readable inside: the host is)
scmp = ctypes.CDLL("libseccomp.so.2")
scmp.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
NR = {n: scmp.seccomp_syscall_resolve_name(n.encode()) for n in (
    "mount", "umount2", "unshare", "setns", "pivot_root", "keyctl", "bpf", "perf_event_open",
    "ptrace", "io_uring_setup", "clone", "open_tree", "fsopen", "userfaultfd",
    "process_vm_readv", "chroot")}
out = {}
def call(name, *args):
    r = libc.syscall(ctypes.c_long(NR[name]), *[ctypes.c_long(a) for a in args])
    out[name] = "ok" if r >= 0 else errno.errorcode.get(ctypes.get_errno(), "?")
# MS_REMOUNT|MS_BIND of / (read-only host made writable): the escape of issue 21
r = libc.mount(None, b"/", None, ctypes.c_ulong(32 | 4096), None)
out["mount"] = "ok" if r == 0 else errno.errorcode[ctypes.get_errno()]
r = libc.umount2(b"/tmp", 2)
out["umount2"] = "ok" if r == 0 else errno.errorcode[ctypes.get_errno()]
call("unshare", 0x10000000)                       # a new user namespace
fd = os.open("/proc/self/ns/net", os.O_RDONLY)
call("setns", fd, 0)
call("pivot_root", 0, 0)
call("chroot", 0)
call("keyctl", 0, 0, 0, 0, 0)                      # KEYCTL_GET_KEYRING_ID
call("bpf", 0, 0, 0)
call("perf_event_open", 0, 0, -1, -1, 0)
call("ptrace", 0, 0, 0, 0)                         # PTRACE_TRACEME
call("io_uring_setup", 0, 0)
call("open_tree", -100, 0, 0)
call("fsopen", 0, 0)
call("userfaultfd", 0)
call("process_vm_readv", 1, 0, 0, 0, 0, 0)
call("clone", 0x10000000 | 0x200, 0, 0, 0, 0)      # NEWUSER|CLONE_FS: EINVAL unfiltered
r = libc.ioctl(0, ctypes.c_ulong(0x5412), ctypes.c_char_p(b"x"))  # TIOCSTI on stdin
out["ioctl_TIOCSTI"] = "ok" if r == 0 else errno.errorcode[ctypes.get_errno()]
for name, fam, typ in (("socket_unix", socket.AF_UNIX, socket.SOCK_STREAM),
                       ("socket_unix_dgram", socket.AF_UNIX, socket.SOCK_DGRAM)):
    try:
        socket.socket(fam, typ).close(); out[name] = "ok"
    except OSError as e:
        out[name] = errno.errorcode[e.errno]
for typ, name in ((socket.SOCK_DGRAM, "socketpair_dgram"), (socket.SOCK_STREAM, "socketpair_stream")):
    try:
        socket.socketpair(socket.AF_UNIX, typ); out[name] = "ok"
    except OSError as e:
        out[name] = errno.errorcode[e.errno]
for path in SOCKETS:
    try:
        s = socket.socket(socket.AF_UNIX); s.settimeout(2); s.connect(path); s.sendall(b"pwned")
        out["connect " + path] = "ok"
    except OSError as e:
        out["connect " + path] = errno.errorcode.get(e.errno, str(e))
status = dict(l.split(":", 1) for l in open("/proc/self/status").read().splitlines() if ":" in l)
for k in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb", "NoNewPrivs", "Seccomp"):
    out[k] = status[k].strip()
print(json.dumps(out))
'''

# what each attempt of ESCAPE_PROBE must get
ESCAPE_EXPECTED = {
    **{k: "EPERM" for k in ("mount", "umount2", "unshare", "setns", "pivot_root", "chroot",
                            "keyctl", "bpf", "perf_event_open", "ptrace", "io_uring_setup",
                            "open_tree", "fsopen", "userfaultfd", "process_vm_readv",
                            "clone", "ioctl_TIOCSTI", "socket_unix", "socket_unix_dgram",
                            "socketpair_dgram")},
    "socketpair_stream": "ok",   # pipes between its own processes stay possible
    **{k: "0000000000000000" for k in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")},
    "NoNewPrivs": "1", "Seccomp": "2",
}


def escape_probe(sockets=()) -> str:
    return ESCAPE_PROBE.replace("SOCKETS", repr(list(sockets)))


@contextlib.contextmanager
def unix_listener(path: str):
    """(received()) of a mode-0666 unix stream listener at ``path``: everything any
    connection sent to it (nothing must arrive from a sandbox)."""
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    os.chmod(path, 0o666)
    srv.listen(8)
    srv.setblocking(False)
    got: list[bytes] = []

    def received() -> list[bytes]:
        while True:
            try:
                conn, _ = srv.accept()
            except BlockingIOError:
                return got
            conn.settimeout(1)
            try:
                got.append(conn.recv(100) or b"(connected)")
            except OSError:
                got.append(b"(connected)")
            conn.close()

    try:
        yield received
    finally:
        srv.close()
        with contextlib.suppress(OSError):
            os.unlink(path)
