"""Run untrusted (model-generated) code: one process tree per call, contained.

What one ``run_sandboxed`` call does, and why:

* **Own directory.** A fresh temp directory is the working directory, ``HOME`` and
  ``TMPDIR``; it is removed afterwards (unless ``keep_dir``).
* **Own session / process group.** ``setsid`` in the child; on timeout the whole group
  is killed (``killpg(SIGKILL)``), and every process left in the sandbox's pids cgroup
  too. Everything the program starts is in its own PID namespace (``fences.py``), whose
  init is killed when the run ends (timeout or not) - the kernel then kills every process
  in it - and the run returns only once they are gone.
* **Unprivileged uid.** When we are root, the program runs as a per-sandbox uid/gid
  that exists nowhere else (a random id in ``[2**20, 2**30)``, no supplementary groups).
  So it cannot write outside its own directory (or the private ``/tmp``), and
  ``RLIMIT_NPROC`` - which counts processes *per user* - applies to this sandbox alone
  instead of to every process of root. Not root: the program keeps our uid and
  ``RLIMIT_NPROC`` is set to our current task count + ``max_processes`` (it counts all our
  processes, so parallel sandboxes share that headroom); isolation reports which.
* **No capabilities, no_new_privs, a seccomp filter** (``fences.py``): on both runners
  and for compilers.
* **Process count.** A pids cgroup (v1 ``/sys/fs/cgroup/pids`` or v2) with
  ``pids.max = max_processes`` when writable; ``RLIMIT_NPROC`` as a second fence.
* **Memory.** A memory cgroup limit when writable (root); otherwise ``RLIMIT_DATA`` for
  every runtime (it counts committed, not reserved, memory: the JVM, V8 and Go run under
  it) plus ``RLIMIT_AS`` where ``address_space`` (not for JVM/node/Go), and the runtimes'
  own caps (``-Xmx``, ``--max-old-space-size``, PHP ``memory_limit``, ``GOMEMLIMIT``).
* **CPU time, file size, open files, core dumps** via ``setrlimit``.
* **Wall time.** ``timeout`` seconds, then the group and the cgroup are killed.
* **Namespaces.** Network (only a down loopback: ``connect`` fails at once with
  ``ENETUNREACH``), mount, IPC and PID - as root directly, otherwise inside a new user
  namespace that maps our uid onto itself.
* **Private /tmp, read-only host, own /proc** (see ``fences.py``).
* **Scrubbed environment** (``PATH``, ``HOME``, ``TMPDIR``, ``LANG`` + what the caller
  passes), **stdin closed** (``/dev/null``), **output capped** (``max_output_bytes`` per
  stream; the rest is drained and dropped, so a chatty program cannot fill our memory).
* **Fail closed.** A layer that cannot be set up (no user namespaces, no libseccomp, ...)
  stops the run before anything starts: ``SandboxUnavailable`` (a ``BabelError``: one
  line) names it, unless the caller passes ``unsafe=True``; ``isolation`` then says what
  held and ``mode`` says UNSAFE.

Status of a result, from what the sandbox observed - never from the program's own text:
``pass`` (exit 0), ``fail`` (non-zero exit, or ``SIGABRT``: its own ``assert``/``abort``),
``timeout`` (the deadline, or ``SIGXCPU``), ``memory`` (the cgroup's OOM kill, or an
abnormal end after the peak resident memory reached ``MEMORY_PEAK_SHARE`` of the limit),
``disk`` (the private tmpfs full, ``SIGXFSZ``, or a compiler's directory over
``write_bytes``), ``crash`` (another signal), plus ``compile_error`` and
``missing_toolchain`` which ``execute.py`` sets. A program that prints "MemoryError" and
exits 1 is ``fail``.

The child-side setup runs in ``preexec_fn`` (after fork, before exec). It only makes
system calls (no imports, no locks), which keeps it safe with a thread pool around it.
"""

from __future__ import annotations

import atexit
import errno
import os
import queue
import re
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

from babeltower.errors import BabelError
from babeltower.sandbox import zygote
from babeltower.sandbox.fences import FENCE_LETTERS, Limits, make_preexec

__all__ = ["Limits", "SandboxResult", "SandboxUnavailable", "STATUSES", "run_sandboxed",
           "new_sandbox_dir", "remove_dir_later", "defer_cleanup", "default_env",
           "sandbox_root", "isolation_line"]

STATUSES = ("pass", "fail", "timeout", "compile_error", "crash", "memory", "disk",
            "missing_toolchain")



class SandboxUnavailable(BabelError):
    """A layer of isolation could not be set up here, so nothing was run."""

    @classmethod
    def because(cls, what: str) -> "SandboxUnavailable":
        return cls(f"sandbox: cannot isolate programs here ({what}); nothing was run "
                   "(--unsafe-no-sandbox / unsafe=True runs them without it)")


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

    def peak_bytes(self) -> int:
        """Most memory the sandbox's processes held at once (0 when not known)."""
        d = self.dirs.get("memory")
        names = ("memory.peak",) if self.v2 else ("memory.max_usage_in_bytes",)
        for name in names if d is not None else ():
            try:
                return int((d / name).read_text())
            except (OSError, ValueError):
                pass
        return 0

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


def _pump(proc, deadline: float, cap: int, out: list, err: list, trunc: list,
          watch=None) -> str | None:
    """Read stdout/stderr (first ``cap`` bytes each, the rest drained) until both close
    and the program has ended, or the deadline passes ('timeout'), or ``watch()`` - called
    at least every 0.1 s - says stop ('quota')."""
    sel = selectors.DefaultSelector()
    sinks = {proc.stdout.fileno(): [out, 0], proc.stderr.fileno(): [err, 0]}
    for fd in sinks:
        sel.register(fd, selectors.EVENT_READ)
    step = 0.1 if watch else 0.25
    next_watch = time.monotonic() + step
    try:
        while sinks:
            now = time.monotonic()
            remaining = deadline - now
            if remaining <= 0:
                return "timeout"
            if watch and now >= next_watch:
                if watch():
                    return "quota"
                next_watch = now + step
            events = sel.select(min(remaining, step))
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
            return "timeout"
        time.sleep(0.001)
    return "quota" if watch and watch() else None


def _disk_bytes(root: Path) -> int:
    """Bytes a directory tree takes on disk (allocated blocks; links not followed)."""
    total = 0
    stack = [str(root)]
    while stack:
        try:
            with os.scandir(stack.pop()) as it:
                for e in it:
                    try:
                        st = e.stat(follow_symlinks=False)
                    except OSError:
                        continue
                    total += st.st_blocks * 512
                    if e.is_dir(follow_symlinks=False):
                        stack.append(e.path)
        except OSError:
            pass
    return total


# A program that ended abnormally (a signal, or a non-zero exit) after its resident memory
# reached this share of the limit (or of the runtime's own heap cap, ``Limits.heap_bytes``)
# ran out of memory: e.g. a C++ malloc loop gets NULL at RLIMIT_DATA and dies of SIGSEGV,
# a Python list of bytearrays raises MemoryError, Go's runtime exits 2. Half, because
# buffers grow by doubling: the last one that fitted holds at least about half the limit
# when the next is refused (g++ reading #include "/dev/zero").
MEMORY_PEAK_SHARE = 0.5


def _classify(returncode: int, timed_out: bool, oom: bool, peak_bytes: int, limits: Limits,
              out_of_room: bool) -> tuple[str, int | None, int | None]:
    """(status, exit code, signal) of a finished run, from what the sandbox observed -
    the exit status, the cgroup's OOM events, the peak resident memory, whether the
    write area filled up - never from the program's own output (a program printing
    "MemoryError" or "No space left on device" is judged by how it ended)."""
    if timed_out:
        return "timeout", None, signal.SIGKILL
    cap = min(limits.memory_bytes, limits.heap_bytes or limits.memory_bytes)
    near_limit = peak_bytes >= MEMORY_PEAK_SHARE * cap
    if returncode == 0:
        return "pass", 0, None
    sig = -returncode if returncode < 0 else None
    code = returncode if returncode > 0 else None
    if oom or near_limit:
        return "memory", code, sig
    if out_of_room or sig == signal.SIGXFSZ:
        return "disk", code, sig
    if sig == signal.SIGXCPU:
        return "timeout", None, sig
    if sig is None:
        return "fail", code, None
    if sig == signal.SIGABRT:
        return "fail", None, sig  # abort() of its own: assert(), std::terminate
    return "crash", None, sig


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


def _uid_for(workdir: Path, unprivileged: bool) -> int | None:
    """A fresh per-sandbox uid when root (the directory is made its own), else None."""
    if not (unprivileged and os.geteuid() == 0):
        return None
    uid = (1 << 20) + secrets.randbelow((1 << 30) - (1 << 20))
    for root, dirs, files in os.walk(workdir):
        for n in [root, *[os.path.join(root, x) for x in dirs + files]]:
            os.lchown(n, uid, uid)
    return uid


def _isolation(fences: str, uid: int | None, cg, nproc: int | None, limits: Limits,
               runner: str, unsafe: bool) -> dict:
    """What was actually in force, from the fences the child reported."""
    held = set(re.sub(r"p\d+\.", "p", fences))
    return {
        "network": "none (own network namespace)" if "n" in held else "host",
        "filesystem": ("own uid; private /tmp" if uid is not None and "t" in held
                       else "own uid" if uid is not None else
                       "private /tmp, same uid" if "t" in held else "same uid as caller"),
        "host_filesystem": "read-only" if "r" in held else "as the uid allows",
        "writes": (f"capped at {limits.write_bytes} bytes (own dir + /tmp)" if "c" in held
                   else f"own dir: per file {limits.file_size_bytes} bytes (RLIMIT_FSIZE), "
                        f"in total {limits.write_bytes} bytes (watched); /tmp capped"
                   if "t" in held else f"per file {limits.file_size_bytes} bytes (RLIMIT_FSIZE)"),
        "toolchain": "bound read-only" if "b" in held else "host path",
        "processes": ("pids cgroup" if cg and "pids" in cg.dirs else
                      "RLIMIT_NPROC (own uid)" if uid is not None else
                      "RLIMIT_NPROC (shared with the caller's uid)" if nproc else
                      "not limited"),
        "memory": ", ".join(x for x in (
            "memory cgroup" if cg and "memory" in cg.dirs else "",
            "RLIMIT_DATA" if "l" in held and not (cg and "memory" in cg.dirs) else "",
            "RLIMIT_AS" if limits.address_space and "l" in held
            and not (cg and "memory" in cg.dirs) else "") if x) or "not limited",
        # what reaches a descendant that left the process group (setsid)
        "process_tree": ("pids cgroup" if cg and "pids" in cg.dirs else
                         "own PID namespace" if "p" in held else "process group only"),
        "namespaces": ", ".join(name for letter, name in (
            ("u", "user"), ("n", "network"), ("m", "mount"), ("i", "IPC"), ("p", "PID"))
            if letter in held) or "none",
        "proc": "own (PID namespace)" if "P" in held else "host's",
        "capabilities": "none" if "k" in held else "NOT dropped",
        "syscall_filter": "seccomp + no_new_privs" if "s" in held else "none",
        "uid": uid if uid is not None else os.geteuid(),
        "runner": runner,
        "mode": "UNSAFE (missing layers allowed)" if unsafe else "fail closed",
        # every fence the child reported, by name
        "layers": [name for letter, name in FENCE_LETTERS.items()
                   if letter in held and letter != "D"],
    }


def isolation_line(iso: dict) -> str:
    """One line of what was in force (what ``eval run`` and pass@k print)."""
    if not iso:
        return "isolation: none (the program did not start)"
    parts = [f"network {iso.get('network', '?').split(' (')[0]}",
             f"host fs {iso.get('host_filesystem')}",
             "uid " + ("own per run" if "own uid" in str(iso.get("filesystem"))
                       else "the caller's"),
             f"namespaces {iso.get('namespaces')}", f"capabilities {iso.get('capabilities')}",
             f"syscalls {iso.get('syscall_filter')}", f"memory {iso.get('memory')}",
             f"processes {iso.get('processes')}", f"runner {iso.get('runner')}"]
    line = "isolation: " + "; ".join(parts)
    if str(iso.get("mode", "")).startswith("UNSAFE"):
        line += "; UNSAFE: --unsafe-no-sandbox"
    return line


class _ExecProcess(subprocess.Popen):
    """Popen that reaps with ``wait4``, keeping the child's peak resident memory."""

    max_rss_bytes = 0

    def poll(self):
        """The exit code once it has ended, without reaping it (``waitid(WNOWAIT)``)."""
        if self.returncode is None:
            try:
                ended = os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                ended = True
            if ended is not None:
                self.wait()
        return self.returncode

    def wait(self, timeout=None):
        if self.returncode is None:
            try:
                _, status, usage = os.wait4(self.pid, 0)
            except ChildProcessError:  # reaped elsewhere: nothing more to know
                self.returncode = -signal.SIGKILL
            else:
                self.max_rss_bytes = usage.ru_maxrss * 1024
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode


def _start(cmd: list[str], wd: Path, env: dict, request: dict, python_fork_server: bool,
           preexec, status_w: int):
    """(The program's process, how it was started): a fork-server child running a Python
    program when asked, else a fork-server child that exec's ``cmd`` (the server is small
    and cheap to fork), else - no server - an exec from this process."""
    if python_fork_server:
        server = zygote.get_server(cmd[0])
        if server is not None:
            req = {**request, "script": str(wd / cmd[-1]), "argv": [],
                   "server_path": server.src}
            try:
                return zygote.ZygoteProcess(server, req, status_w), "fork server (no exec)"
            except OSError:
                pass  # the server went away: start this one the usual way
    server = zygote.get_exec_server()
    if server is not None:
        try:
            return (zygote.ZygoteProcess(server, {**request, "exec": list(cmd)}, status_w),
                    "fork server + exec")
        except OSError:
            pass
    proc = _ExecProcess(cmd, cwd=wd, env=env, stdin=subprocess.DEVNULL,
                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=preexec,
                        pass_fds=(status_w,), close_fds=True)
    return proc, "exec"


def _kill_tree(proc, cg) -> None:
    """Kill the whole tree: the group, then anything that left it but not the cgroup."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except OSError:
        pass
    if cg:
        cg.kill_all()
    proc.wait()
    proc.stdout.close()
    proc.stderr.close()


def _proc_status(pid: int) -> dict[str, str] | None:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    return dict(line.split(":\t", 1) for line in text.splitlines() if ":\t" in line)


def _end_pid_namespace(fences: str, wait_s: float = 5.0) -> bool:
    """Kill the init of the run's PID namespace (``p<pid>.`` in ``fences``), so the kernel
    kills every process in it, and wait until it has. False when there was none."""
    m = re.search(r"p(\d+)\.", fences)
    if m is None:
        return False
    pid = int(m.group(1))
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        status = _proc_status(pid)
        # gone, or a zombie: its namespace is empty (init reaps all before it exits)
        if status is None or status.get("State", "").startswith("Z"):
            break
        if status.get("NSpid", "").split()[-1:] != ["1"]:
            break  # the pid is now someone else's: ours is long gone
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
        time.sleep(0.002)
    return True


# long: the one entry point every language goes through; its keyword list is the sandbox's
# documented surface and the body is set-up -> run -> classify, each already a helper
def run_sandboxed(cmd: list[str], workdir: str | os.PathLike | None = None,
                  limits: Limits | None = None, env: dict | None = None,
                  unprivileged: bool = True, network: bool = False,
                  private_tmp: bool = True, python_fork_server: bool = False,
                  writable_workdir: bool = False,
                  binds: list[tuple[str, str]] | None = None,
                  unsafe: bool = False) -> SandboxResult:
    """Run ``cmd`` contained (see the module docstring) and classify how it ended.

    ``workdir``: an existing directory to run in (its files are made the sandbox
    user's); None = a fresh one, removed afterwards. ``env`` adds to the scrubbed
    environment. ``unprivileged=False`` keeps our uid (every other fence stays).
    ``writable_workdir=True`` (compilers): what it writes to its directory stays there
    (each file capped by RLIMIT_FSIZE, the whole directory watched: over
    ``limits.write_bytes`` it is killed, status ``disk``; its ``TMPDIR`` is the capped
    private /tmp); otherwise the directory is a copy-on-write overlay and everything it
    writes is capped by ``limits.write_bytes`` and discarded.
    ``binds``: (host dir, path under ``fences.TOOLCHAIN_MOUNT_ROOT``) read-only binds, for
    a toolchain the sandbox uid could not otherwise enter.
    ``python_fork_server=True`` with ``cmd = [python, ..., script]``: the script runs in a
    child forked from a small Python server instead of a fresh interpreter, under the same
    fences (see ``zygote.py``); falls back to a normal start if the server is unavailable.
    ``unsafe=False`` (fail closed): if any layer of isolation (namespaces, read-only host,
    own /proc, private /tmp, rlimits, dropped capabilities, the seccomp filter) cannot be
    set up, nothing runs and ``SandboxUnavailable`` names what is missing; ``unsafe=True``
    runs with the layers that held (``isolation`` says which).
    """
    limits = limits or Limits()
    own_dir = workdir is None
    wd = new_sandbox_dir() if own_dir else Path(workdir)
    uid = _uid_for(wd, unprivileged)
    is_root = os.geteuid() == 0
    fence_args = dict(uid=uid, want_netns=not network, want_private_tmp=private_tmp,
                      userns=not is_root, writable_workdir=writable_workdir,
                      binds=[list(b) for b in binds or []], fail_closed=not unsafe)
    cg = _Cgroups(f"{os.getpid()}-{secrets.token_hex(6)}", limits) if is_root else None
    nproc = None
    if uid is None and not (cg and "pids" in cg.dirs):
        nproc = _tasks_of_uid(os.getuid()) + limits.max_processes
    procs_files = cg.procs_files if cg else []
    fence_args["nproc"] = nproc
    fence_args["memory_cgroup"] = bool(cg and "memory" in cg.dirs)
    r_fd, w_fd = os.pipe()
    try:
        preexec = make_preexec(limits, workdir=str(wd).encode(), procs_files=procs_files,
                               status_fd=w_fd, **fence_args)
    except OSError as e:  # no seccomp filter can be built here
        os.close(r_fd)
        os.close(w_fd)
        if cg:
            cg.close()
        if own_dir:
            remove_dir_later(wd)
        raise SandboxUnavailable.because(str(e)) from None
    run_env = default_env(wd, env)
    if writable_workdir and private_tmp:
        run_env["TMPDIR"] = "/tmp"  # a compiler's temporary files: in the capped tmpfs
    request = {"workdir": str(wd), "env": run_env, "limits": asdict(limits),
               "procs_files": [p.decode() for p in procs_files], **fence_args}
    watch = (lambda: _disk_bytes(wd) >= limits.write_bytes) if writable_workdir else None
    out_chunks: list[bytes] = []
    err_chunks: list[bytes] = []
    trunc: list[bool] = []
    t0 = time.monotonic()
    proc = None
    try:
        try:
            proc, runner = _start(cmd, wd, run_env, request, python_fork_server,
                                  preexec, w_fd)
        except OSError as e:
            os.close(r_fd)
            return SandboxResult(
                status="crash" if e.errno != errno.ENOENT else "missing_toolchain",
                exit_code=None, signal=None, stdout="", stderr=f"cannot start {cmd[0]}: {e}",
                wall_time=time.monotonic() - t0, command=list(cmd))
        finally:
            os.close(w_fd)
        # one loop in this thread reads both pipes (capped) until they close or the
        # deadline passes: no reader or timer threads, and no Popen.wait(timeout) polling
        # (which sleeps in steps and cost ~10 ms per run)
        stopped = _pump(proc, t0 + limits.timeout, limits.max_output_bytes,
                        out_chunks, err_chunks, trunc, watch)
        wall = time.monotonic() - t0
        _kill_tree(proc, cg)
        with os.fdopen(r_fd, "rb") as f:
            fences = f.read().decode(errors="replace")
        _end_pid_namespace(fences)
        fences, _, refused = fences.partition("!")
        if refused:
            raise SandboxUnavailable.because(refused)
        exec_failed = re.search(r"x(\d+)\.", fences)
        if exec_failed:  # the fork server's child could not exec the command
            err = int(exec_failed.group(1))
            return SandboxResult(
                status="missing_toolchain" if err == errno.ENOENT else "crash",
                exit_code=None, signal=None, stdout="",
                stderr=f"cannot start {cmd[0]}: [Errno {err}] {os.strerror(err)}",
                wall_time=wall, command=list(cmd))
        # the cgroup's peak when there is one: ru_maxrss of a child forked from a large
        # parent (a test runner that has loaded models) counts the parent's pages it
        # inherited before exec, and would call any crash 'memory'
        peak = cg.peak_bytes() if cg else proc.max_rss_bytes
        stdout = b"".join(out_chunks).decode("utf-8", "replace")
        stderr = b"".join(err_chunks).decode("utf-8", "replace")
        returncode = proc.returncode
        if stopped == "quota" and returncode == 0:
            returncode = -signal.SIGKILL  # killed by us for writing too much
        status, code, sig = _classify(returncode, stopped == "timeout",
                                      cg.oom_killed() if cg else False, peak, limits,
                                      out_of_room="D" in fences or stopped == "quota")
        if stopped == "quota":
            status = "disk"
        return SandboxResult(status=status, exit_code=code, signal=sig, stdout=stdout,
                             stderr=stderr, wall_time=wall, truncated=bool(trunc),
                             isolation=_isolation(fences, uid, cg, nproc, limits, runner,
                                                  unsafe),
                             command=list(cmd))
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
