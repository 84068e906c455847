"""Run untrusted (model-generated) code: one process tree per call, contained.

What one ``run_sandboxed`` call does, and why:

* **Own directory.** A fresh temp directory is the working directory, ``HOME`` and
  ``TMPDIR``; it is removed afterwards (unless ``keep_dir``).
* **Own session / process group.** ``setsid`` in the child; on timeout the whole group
  is killed (``killpg(SIGKILL)``), and every process left in the sandbox's pids cgroup
  too (a process may ``setsid`` itself out of the group; it cannot leave the cgroup).
* **Unprivileged uid.** When we are root, the program runs as a per-sandbox uid/gid
  that exists nowhere else (a random id in ``[2**20, 2**30)``, no supplementary groups).
  So it cannot write outside its own directory (or the private ``/tmp``), and
  ``RLIMIT_NPROC`` - which counts processes *per user* - applies to this sandbox alone
  instead of to every process of root. Not root: the program keeps our uid and
  ``RLIMIT_NPROC`` is set to our current task count + ``max_processes`` (it counts all our
  processes, so parallel sandboxes share that headroom); isolation reports which.
* **Process count.** A pids cgroup (v1 ``/sys/fs/cgroup/pids`` or v2) with
  ``pids.max = max_processes`` when writable; ``RLIMIT_NPROC`` as a second fence.
* **Memory.** A memory cgroup limit when writable, plus ``RLIMIT_AS`` (address space)
  unless the caller passes ``address_space=False`` - runtimes that reserve large virtual
  ranges up front (the JVM, V8/node, Go) cannot start under a small ``RLIMIT_AS``;
  for them the cgroup (and their own heap flags, see ``execute.py``) is the limit.
* **CPU time, file size, open files, core dumps** via ``setrlimit``.
* **Wall time.** ``timeout`` seconds, then the group and the cgroup are killed.
* **No network.** A new network namespace (``unshare(CLONE_NEWNET)`` through libc; Python
  3.11 has no ``os.unshare``): only a down loopback, so ``connect`` to any address fails
  at once with ``ENETUNREACH``. As root directly; otherwise inside a new user namespace
  that maps our uid onto itself (unprivileged user namespaces, on by default in most
  distributions). When it fails the result says ``isolation["network"] == "host"`` -
  plainly, not silently.
* **Private /tmp.** In the same call a new mount namespace gets fresh tmpfs mounts on
  ``/tmp``, ``/var/tmp`` and ``/dev/shm`` (the sandbox directory is bind-mounted back at
  its own path), so writes to ``/tmp`` vanish with the sandbox.
* **Scrubbed environment** (``PATH``, ``HOME``, ``TMPDIR``, ``LANG`` + what the caller
  passes), **stdin closed** (``/dev/null``), **output capped** (``max_output_bytes`` per
  stream; the rest is drained and dropped, so a chatty program cannot fill our memory).

Status of a result: ``pass`` (exit 0), ``fail`` (non-zero exit), ``timeout``,
``memory`` (an out-of-memory signature or an OOM kill), ``crash`` (killed by a signal),
plus ``compile_error`` and ``missing_toolchain`` which ``execute.py`` sets.

The child-side setup runs in ``preexec_fn`` (after fork, before exec). It only makes
system calls (no imports, no locks), which keeps it safe with a thread pool around it.
"""

from __future__ import annotations

import atexit
import ctypes
import ctypes.util
import errno
import os
import queue
import secrets
import selectors
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

STATUSES = ("pass", "fail", "timeout", "compile_error", "crash", "memory", "missing_toolchain")

_CLONE_NEWNS = 0x00020000
_CLONE_NEWUSER = 0x10000000
_CLONE_NEWNET = 0x40000000
_MS_BIND = 4096
_MS_REC = 16384
_MS_PRIVATE = 1 << 18
_MS_NOSUID = 2
_MS_NODEV = 4

_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
_unshare = _libc.unshare
_unshare.argtypes = [ctypes.c_int]
_mount = _libc.mount
_mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                   ctypes.c_char_p]

# Substrings of stderr that mean "ran out of memory" for the runtimes we execute.
MEMORY_SIGNATURES = (
    "MemoryError", "std::bad_alloc", "java.lang.OutOfMemoryError", "out of memory",
    "Out of memory", "memory allocation of", "Allowed memory size",
    "JavaScript heap out of memory", "Cannot allocate memory", "failed to reserve",
    "cannot allocate memory",
)


@dataclass
class Limits:
    """Resource limits of one sandboxed run (all per run, not per process)."""

    timeout: float = 10.0                   # wall-clock seconds
    cpu_seconds: int | None = None          # RLIMIT_CPU; default: ceil(timeout) + 1
    memory_bytes: int = 2 << 30             # RLIMIT_AS and the memory cgroup limit
    address_space: bool = True              # apply RLIMIT_AS (off for JVM/node/go)
    max_processes: int = 64                 # pids cgroup / RLIMIT_NPROC
    file_size_bytes: int = 64 << 20         # RLIMIT_FSIZE (largest file it may write)
    open_files: int = 256                   # RLIMIT_NOFILE
    max_output_bytes: int = 64 << 10        # kept per stream (stdout, stderr)
    tmpfs_bytes: int = 64 << 20             # size of the private /tmp


@dataclass
class SandboxResult:
    status: str                  # one of STATUSES
    exit_code: int | None        # None when killed by a signal
    signal: int | None           # the signal that ended it (e.g. 9 after a timeout)
    stdout: str
    stderr: str
    wall_time: float
    truncated: bool = False      # output went over max_output_bytes
    isolation: dict = field(default_factory=dict)  # what was actually in force
    command: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.status == "pass"

    def to_dict(self) -> dict:
        return asdict(self)


# --------------------------------------------------------------------------- cgroups
def _cgroup_roots() -> dict[str, Path]:
    """Writable cgroup roots for 'pids' and 'memory' (v1 controllers, or a v2 tree)."""
    roots: dict[str, Path] = {}
    base = Path("/sys/fs/cgroup")
    if (base / "cgroup.controllers").exists():  # cgroup v2 (unified)
        ctrl = (base / "cgroup.controllers").read_text().split()
        for c in ("pids", "memory"):
            if c in ctrl and os.access(base, os.W_OK):
                roots[c] = base
        return roots
    for c in ("pids", "memory"):
        p = base / c
        if p.is_dir() and os.access(p, os.W_OK):
            roots[c] = p
    return roots


class _Cgroups:
    """One cgroup per sandbox and controller: create, set limits, kill all, remove."""

    def __init__(self, name: str, limits: Limits):
        self.dirs: dict[str, Path] = {}
        self.v2 = Path("/sys/fs/cgroup/cgroup.controllers").exists()
        try:
            roots = _cgroup_roots()
        except OSError:
            roots = {}
        for ctrl, root in roots.items():
            d = (root / "babeltower" / name) if not self.v2 else (root / f"babeltower-{name}")
            try:
                d.mkdir(parents=True, exist_ok=True)
                if ctrl == "pids":
                    (d / "pids.max").write_text(str(limits.max_processes))
                elif self.v2:
                    (d / "memory.max").write_text(str(limits.memory_bytes))
                else:
                    (d / "memory.limit_in_bytes").write_text(str(limits.memory_bytes))
                    try:  # no swapping around the limit
                        (d / "memory.memsw.limit_in_bytes").write_text(str(limits.memory_bytes))
                    except OSError:
                        pass
                self.dirs[ctrl] = d
            except OSError:
                self._remove(d)
            if self.v2:
                break  # v2: one directory holds both controllers
        if self.v2 and self.dirs:
            d = next(iter(self.dirs.values()))
            self.dirs = {"pids": d, "memory": d}
        # paths the child writes its pid into (encoded now: no allocation after fork)
        self.procs_files = [str(d / "cgroup.procs").encode()
                            for d in dict.fromkeys(self.dirs.values())]

    def pids(self) -> list[int]:
        out: set[int] = set()
        for d in set(self.dirs.values()):
            try:
                out.update(int(x) for x in (d / "cgroup.procs").read_text().split())
            except OSError:
                pass
        return sorted(out)

    def kill_all(self) -> None:
        for _ in range(50):
            pids = self.pids()
            if not pids:
                return
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            time.sleep(0.02)

    def oom_killed(self) -> bool:
        d = self.dirs.get("memory")
        if d is None:
            return False
        try:
            if self.v2:
                ev = (d / "memory.events").read_text()
                return any(line.split()[0] in ("oom_kill",) and int(line.split()[1]) > 0
                           for line in ev.splitlines())
            oc = (d / "memory.oom_control").read_text()
            for line in oc.splitlines():
                k, _, v = line.partition(" ")
                if k == "oom_kill" and int(v) > 0:
                    return True
            return int((d / "memory.failcnt").read_text()) > 0
        except (OSError, ValueError):
            return False

    @staticmethod
    def _remove(d: Path) -> None:
        try:
            d.rmdir()
        except OSError:
            pass

    def close(self) -> None:
        """Kill what is left now; remove the (empty) cgroup directories in the background."""
        self.kill_all()
        dirs = list(set(self.dirs.values()))

        def remove() -> None:
            for d in dirs:
                for _ in range(50):
                    try:
                        d.rmdir()
                        break
                    except FileNotFoundError:
                        break
                    except OSError:
                        time.sleep(0.02)

        defer_cleanup(remove)


# --------------------------------------------------------------------------- cleanup
# Removing directories (a cgroup's rmdir waits for the kernel; a sandbox dir may hold a
# Go build cache) is not on the critical path of a run: a daemon thread does it, and
# whatever is still queued runs at interpreter exit.
_cleanup_q: "queue.Queue" = None  # type: ignore[assignment]
_cleanup_lock = threading.Lock()


def _cleanup_worker() -> None:
    while True:
        fn = _cleanup_q.get()
        try:
            fn()
        except Exception:  # cleanup must never take the host down
            pass
        finally:
            _cleanup_q.task_done()


def _drain_cleanup() -> None:
    if _cleanup_q is None:
        return
    while True:
        try:
            fn = _cleanup_q.get_nowait()
        except queue.Empty:
            return
        try:
            fn()
        except Exception:
            pass


def defer_cleanup(fn) -> None:
    """Run ``fn`` soon in a background thread (and at exit at the latest)."""
    global _cleanup_q
    with _cleanup_lock:
        if _cleanup_q is None:
            _cleanup_q = queue.Queue()
            threading.Thread(target=_cleanup_worker, name="babeltower-sandbox-cleanup",
                             daemon=True).start()
            atexit.register(_drain_cleanup)
    _cleanup_q.put(fn)


def remove_dir_later(path: str | os.PathLike) -> None:
    defer_cleanup(lambda: shutil.rmtree(path, ignore_errors=True))


# --------------------------------------------------------------------------- child setup
def _make_preexec(limits: Limits, uid: int | None, workdir: bytes, procs_files: list[bytes],
                  want_netns: bool, want_private_tmp: bool, status_fd: int,
                  userns: bool = False, nproc: int | None = None):
    """The function run in the child between fork and exec (system calls only).

    It reports what it achieved by writing one byte per fence to ``status_fd``
    (n = network namespace, t = private tmp), so the parent can say what was in force.
    """
    import resource

    cpu = limits.cpu_seconds or int(limits.timeout) + 1
    rl = [
        (resource.RLIMIT_CPU, (cpu, cpu + 1)),
        (resource.RLIMIT_FSIZE, (limits.file_size_bytes, limits.file_size_bytes)),
        (resource.RLIMIT_NOFILE, (limits.open_files, limits.open_files)),
        (resource.RLIMIT_CORE, (0, 0)),
    ]
    if limits.address_space:
        rl.append((resource.RLIMIT_AS, (limits.memory_bytes, limits.memory_bytes)))
    if uid is not None:  # per-user count; exact for our own unique uid
        rl.append((resource.RLIMIT_NPROC, (limits.max_processes, limits.max_processes)))
    elif nproc is not None:  # shared uid: what the caller runs now + the sandbox's allowance
        rl.append((resource.RLIMIT_NPROC, (nproc, nproc)))
    # not root: a user namespace (mapping our own uid/gid onto themselves) is what lets an
    # unprivileged caller create the network and mount namespaces
    user_flag = _CLONE_NEWUSER if userns else 0
    uid_map = f"{os.getuid()} {os.getuid()} 1".encode()
    gid_map = f"{os.getgid()} {os.getgid()} 1".encode()
    tmpfs_opts = f"size={limits.tmpfs_bytes},mode=1777".encode()
    tmp_mounts = [b"/tmp", b"/var/tmp", b"/dev/shm"]

    def preexec() -> None:
        os.setsid()
        pid_bytes = str(os.getpid()).encode()
        for pf in procs_files:  # join the cgroups before anything can fork
            try:
                fd = os.open(pf, os.O_WRONLY)
                os.write(fd, pid_bytes)
                os.close(fd)
            except OSError:
                pass
        flags = (_CLONE_NEWNET if want_netns else 0) | (_CLONE_NEWNS if want_private_tmp else 0)
        ok = flags != 0 and _unshare(flags | user_flag) == 0
        if ok and user_flag:
            for path, data in ((b"/proc/self/setgroups", b"deny"),
                               (b"/proc/self/uid_map", uid_map),
                               (b"/proc/self/gid_map", gid_map)):
                try:
                    fd = os.open(path, os.O_WRONLY)
                    os.write(fd, data)
                    os.close(fd)
                except OSError:
                    pass
        if not ok and want_netns and want_private_tmp:
            ok_net = _unshare(_CLONE_NEWNET | user_flag) == 0
            if ok_net:
                os.write(status_fd, b"n")
        elif ok:
            if want_netns:
                os.write(status_fd, b"n")
            if want_private_tmp:
                # stop our mounts from propagating back to the host, then cover the
                # shared temp dirs with fresh tmpfs and bind our own directory back in
                if _mount(b"none", b"/", None, _MS_REC | _MS_PRIVATE, None) == 0:
                    covered = True
                    for m in tmp_mounts:
                        if os.path.isdir(m):
                            if _mount(b"tmpfs", m, b"tmpfs", _MS_NOSUID | _MS_NODEV,
                                      tmpfs_opts) != 0:
                                covered = False
                    # cwd still refers to the original (now hidden) directory
                    os.makedirs(workdir, exist_ok=True)
                    if _mount(b".", workdir, None, _MS_BIND, None) == 0 and covered:
                        os.write(status_fd, b"t")
                    os.chdir(workdir)
        for res, lim in rl:
            try:
                resource.setrlimit(res, lim)
            except (ValueError, OSError):
                pass
        if uid is not None:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
        os.close(status_fd)

    return preexec


def _tasks_of_uid(uid: int) -> int:
    """Tasks (threads count for RLIMIT_NPROC) currently owned by ``uid``."""
    n = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            st = os.stat(f"/proc/{pid}")
            if st.st_uid == uid:
                n += len(os.listdir(f"/proc/{pid}/task"))
        except OSError:
            pass
    return n


def _pump(proc, deadline: float, cap: int, out: list, err: list, trunc: list) -> bool:
    """Read stdout/stderr (first ``cap`` bytes each, the rest drained) until both close
    and the program has ended, or the deadline passes. True = timed out."""
    sel = selectors.DefaultSelector()
    sinks = {proc.stdout.fileno(): [out, 0], proc.stderr.fileno(): [err, 0]}
    for fd in sinks:
        sel.register(fd, selectors.EVENT_READ)
    try:
        while sinks:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return True
            events = sel.select(min(remaining, 0.25))
            if not events and proc.poll() is not None:
                break  # it ended but something it started still holds the pipes
            for key, _ in events:
                data = os.read(key.fd, 65536)
                if not data:
                    sel.unregister(key.fd)
                    del sinks[key.fd]
                    continue
                sink = sinks[key.fd]
                if sink[1] < cap:
                    sink[0].append(data[: cap - sink[1]])
                sink[1] += len(data)
                if sink[1] > cap and not trunc:
                    trunc.append(True)
    finally:
        sel.close()
    # pipes closed: normally the program is exiting right now
    while proc.poll() is None:
        if time.monotonic() >= deadline:
            return True
        time.sleep(0.001)
    return False


def _classify(returncode: int, timed_out: bool, stderr: str, oom: bool) -> tuple[str, int | None, int | None]:
    if timed_out:
        return "timeout", None, signal.SIGKILL
    if returncode < 0:
        sig = -returncode
        if oom or any(s in stderr for s in MEMORY_SIGNATURES):
            return "memory", None, sig
        if sig == signal.SIGXCPU:
            return "timeout", None, sig
        if sig == signal.SIGABRT and "Assertion" in stderr:
            return "fail", None, sig  # C/C++ assert(): a failed test, not a crash
        return "crash", None, sig
    if returncode == 0:
        return "pass", 0, None
    if oom or any(s in stderr for s in MEMORY_SIGNATURES):
        return "memory", returncode, None
    # a shell or runtime reporting a signal death as 128+n
    return "fail", returncode, None


def sandbox_root() -> Path:
    """Where sandbox directories are made: $BABELTOWER_SANDBOX_DIR or the system temp dir."""
    root = os.environ.get("BABELTOWER_SANDBOX_DIR") or tempfile.gettempdir()
    return Path(root)


def new_sandbox_dir(prefix: str = "bt-sbx-") -> Path:
    d = Path(tempfile.mkdtemp(prefix=prefix, dir=sandbox_root()))
    os.chmod(d, 0o755)
    return d


def default_env(workdir: Path, extra: dict | None = None) -> dict[str, str]:
    """The scrubbed environment: nothing from the host except a plain PATH."""
    path = os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin")
    env = {
        "PATH": path,
        "HOME": str(workdir),
        "TMPDIR": str(workdir),
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
    }
    if extra:
        env.update({k: str(v) for k, v in extra.items()})
    return env


def run_sandboxed(cmd: list[str], workdir: str | os.PathLike | None = None,
                  limits: Limits | None = None, env: dict | None = None,
                  unprivileged: bool = True, network: bool = False,
                  private_tmp: bool = True, python_fork_server: bool = False) -> SandboxResult:
    """Run ``cmd`` contained (see the module docstring) and classify how it ended.

    ``workdir``: an existing directory to run in (its files are made the sandbox
    user's); None = a fresh one, removed afterwards. ``env`` adds to the scrubbed
    environment. ``unprivileged=False`` keeps our uid (used to run a compiler that lives
    in a root-only directory, e.g. rustup's ``~/.cargo``); every other fence stays.
    ``python_fork_server=True`` with ``cmd = [python, ..., script]``: the script runs in a
    child forked from a small Python server instead of a fresh interpreter, under the same
    fences (see ``zygote.py``); falls back to a normal start if the server is unavailable.
    """
    limits = limits or Limits()
    own_dir = workdir is None
    wd = new_sandbox_dir() if own_dir else Path(workdir)
    uid = None
    if unprivileged and os.geteuid() == 0:
        uid = (1 << 20) + secrets.randbelow((1 << 30) - (1 << 20))
        for root, dirs, files in os.walk(wd):
            for n in [root, *[os.path.join(root, x) for x in dirs + files]]:
                os.lchown(n, uid, uid)
    is_root = os.geteuid() == 0
    cg = _Cgroups(f"{os.getpid()}-{secrets.token_hex(6)}", limits) if is_root else None
    nproc = None
    if uid is None and not (cg and "pids" in cg.dirs):
        nproc = _tasks_of_uid(os.getuid()) + limits.max_processes
    r_fd, w_fd = os.pipe()
    preexec = _make_preexec(limits, uid, str(wd).encode(), cg.procs_files if cg else [],
                            want_netns=not network, want_private_tmp=private_tmp,
                            status_fd=w_fd, userns=not is_root, nproc=nproc)
    out_chunks: list[bytes] = []
    err_chunks: list[bytes] = []
    trunc: list[bool] = []
    t0 = time.monotonic()
    timed_out = False
    proc = None
    try:
        try:
            server = None
            if python_fork_server:
                from babeltower.evaluate import zygote

                server = zygote.get_server(cmd[0])
            if server is not None:
                req = {"workdir": str(wd), "env": default_env(wd, env),
                       "limits": asdict(limits), "uid": uid,
                       "procs_files": [p.decode() for p in (cg.procs_files if cg else [])],
                       "want_netns": not network, "want_private_tmp": private_tmp,
                       "userns": not is_root, "nproc": nproc,
                       "script": str(Path(wd) / cmd[-1]), "argv": [],
                       "server_path": server.src}
                try:
                    proc = zygote.ZygoteProcess(server, req, w_fd)
                except OSError:
                    server = None  # the server went away: start this one the usual way
            if server is None:
                proc = subprocess.Popen(
                    cmd, cwd=wd, env=default_env(wd, env), stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=preexec,
                    pass_fds=(w_fd,), close_fds=True)
        except OSError as e:
            os.close(w_fd)
            os.close(r_fd)
            return SandboxResult(
                status="crash" if e.errno != errno.ENOENT else "missing_toolchain",
                exit_code=None, signal=None, stdout="", stderr=f"cannot start {cmd[0]}: {e}",
                wall_time=time.monotonic() - t0, command=list(cmd))
        os.close(w_fd)
        # one loop in this thread reads both pipes (capped) until they close or the
        # deadline passes: no reader or timer threads, and no Popen.wait(timeout) polling
        # (which sleeps in steps and cost ~10 ms per run)
        timed_out = _pump(proc, t0 + limits.timeout, limits.max_output_bytes,
                          out_chunks, err_chunks, trunc)
        wall = time.monotonic() - t0
        # kill the whole tree: the group, then anything that escaped it but not the cgroup
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except OSError:
            pass
        if cg:
            cg.kill_all()
        proc.wait()
        proc.stdout.close()
        proc.stderr.close()
        with os.fdopen(r_fd, "rb") as f:
            fences = f.read().decode(errors="replace")
        oom = cg.oom_killed() if cg else False
        stdout = b"".join(out_chunks).decode("utf-8", "replace")
        stderr = b"".join(err_chunks).decode("utf-8", "replace")
        status, code, sig = _classify(proc.returncode, timed_out, stderr, oom)
        isolation = {
            "network": "none (own network namespace)" if "n" in fences else "host",
            "filesystem": ("own uid; private /tmp" if uid is not None and "t" in fences
                           else "own uid" if uid is not None else
                           "private /tmp, same uid" if "t" in fences else "same uid as caller"),
            "processes": ("pids cgroup" if cg and "pids" in cg.dirs else
                          "RLIMIT_NPROC (own uid)" if uid is not None else
                          "RLIMIT_NPROC (shared with the caller's uid)" if nproc else
                          "not limited"),
            "memory": ", ".join(x for x in (
                "memory cgroup" if cg and "memory" in cg.dirs else "",
                "RLIMIT_AS" if limits.address_space else "") if x) or "not limited",
            "uid": uid if uid is not None else os.geteuid(),
            "runner": "fork server (no exec)" if server is not None else "exec",
        }
        return SandboxResult(status=status, exit_code=code, signal=sig, stdout=stdout,
                             stderr=stderr, wall_time=wall, truncated=bool(trunc),
                             isolation=isolation, command=list(cmd))
    finally:
        if proc is not None and proc.poll() is None:  # interrupted (e.g. Ctrl-C): kill it
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except OSError:
                pass
        if cg:
            cg.close()
        if own_dir:
            remove_dir_later(wd)
