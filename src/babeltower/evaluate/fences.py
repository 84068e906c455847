"""The fences one sandboxed process is put behind: limits, namespaces, mounts, rlimits, uid.

The bottom of the execution stack (cli -> passk -> execute -> sandbox -> zygote -> fences):
``sandbox.run_sandboxed`` (a fresh ``exec``) and ``zygote`` (a forked Python child) both
build the child-side setup here with ``make_preexec`` and run it between fork and exec.

What the child does, in order, and why:

1. ``setsid`` and join the sandbox's cgroups (before anything can fork).
2. ``unshare`` a network namespace (only a down loopback: no traffic at all) and a mount
   namespace (as root directly; not root inside a new user namespace mapping our uid).
   Not root, also a **PID namespace**: the child forks a tiny init of our own
   (``_namespace_init``), which forks the program, so every process of the program is
   inside it, ``setsid`` or not; the child itself waits outside and ends as the program
   did. When the program's process ends, the init exits, and the kernel kills every
   process left in the namespace; the init also dies with the outer process
   (``PR_SET_PDEATHSIG``, e.g. on a timeout's kill) and the parent kills it once more when
   the run ends. Without root there is no cgroup, and killing the process group misses a
   child that called ``setsid``: this is what reaches every descendant there. (The program
   is PID 2, not a PID 1 that ignores default-action signals; and it is inside the
   namespace because a process may not start threads in a namespace other than its own.)
3. Mounts, all private to that namespace:

   * **every host mount read-only** (a bind remount of each mount point listed in
     ``/proc/self/mountinfo``): no world-writable host path (``/run/lock``, ``/var/tmp``,
     a PHP session dir, ...) can be written, whatever it is called - nothing is listed by
     hand;
   * **one size-limited tmpfs** (``Limits.write_bytes``) holds everything the program may
     write: ``/tmp``, ``/var/tmp`` and ``/dev/shm`` are directories of it, and the program's
     own directory is an overlay whose upper (written) layer lives in it too - so the total
     bytes a program writes are capped and vanish with it (a disk fill ends in ``ENOSPC``);
   * for a compiler (``writable_workdir=True``) the directory is instead bound back
     read-write (the compiled program must persist for the run step); each file is still
     capped by ``RLIMIT_FSIZE``;
   * **toolchain binds**: a toolchain in a directory the sandbox uid may not enter
     (rustup under ``/root``) is bind-mounted read-only at a path under the private
     ``/tmp`` - the compiler runs as the sandbox uid, nothing on the host changes.

4. rlimits (CPU, file size, open files, no core dumps, address space, process count).
5. drop to the per-sandbox uid/gid with no supplementary groups (when root).

It reports each fence that held by writing one byte to ``status_fd`` (``n`` network,
``t`` private tmp, ``r`` host read-only, ``c`` writes capped, ``b`` toolchain binds, and
``p<pid>.`` own PID namespace whose init has host pid ``<pid>``), so the parent can say what
was in force rather than assume it (and kill that init).

The preexec function only makes system calls (no imports, no locks): safe with threads.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import resource
import signal
from dataclasses import dataclass

_CLONE_NEWNS = 0x00020000
_CLONE_NEWPID = 0x20000000
_CLONE_NEWUSER = 0x10000000
_CLONE_NEWNET = 0x40000000
_MS_RDONLY = 1
_MS_NOSUID = 2
_MS_NODEV = 4
_MS_NOEXEC = 8
_MS_REMOUNT = 32
_MS_NOATIME = 1024
_MS_NODIRATIME = 2048
_MS_BIND = 4096
_MS_REC = 16384
_MS_PRIVATE = 1 << 18
_MS_RELATIME = 1 << 21
_MS_STRICTATIME = 1 << 24
# per-mount flags a user namespace may not drop on a remount: kept as they are
_MOUNT_OPTION_FLAGS = {b"nosuid": _MS_NOSUID, b"nodev": _MS_NODEV, b"noexec": _MS_NOEXEC,
                       b"noatime": _MS_NOATIME, b"nodiratime": _MS_NODIRATIME,
                       b"relatime": _MS_RELATIME, b"strictatime": _MS_STRICTATIME}

_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
_unshare = _libc.unshare
_unshare.argtypes = [ctypes.c_int]
_prctl = _libc.prctl
_prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong,
                   ctypes.c_ulong]
_PR_SET_PDEATHSIG = 1
_mount = _libc.mount
_mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                   ctypes.c_char_p]

# the one private tmpfs, mounted over /tmp; its parts (names chosen not to clash with a
# sandbox directory, which is made by mkdtemp with a bt- prefix)
_SCRATCH = b"/tmp"
_SCRATCH_PARTS = {b"/var/tmp": b"/tmp/.bt-var-tmp", b"/dev/shm": b"/tmp/.bt-dev-shm"}
_OVERLAY_UPPER = b"/tmp/.bt-overlay/upper"
_OVERLAY_WORK = b"/tmp/.bt-overlay/work"
TOOLCHAIN_MOUNT_ROOT = "/tmp/.bt-toolchains"   # where toolchain binds appear inside


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
    write_bytes: int = 64 << 20             # all it may write: own dir + /tmp + /dev/shm


def host_mounts() -> list[tuple[bytes, int]]:
    """(mount point, flags to keep on a read-only remount) of every mount we can see."""
    out: list[tuple[bytes, int]] = []
    try:
        with open("/proc/self/mountinfo", "rb") as f:
            lines = f.read().splitlines()
    except OSError:
        return out
    for line in lines:
        fields = line.split(b" ")
        if len(fields) < 6:
            continue
        # octal escapes (\040 for a space) as the kernel writes them
        point = fields[4].decode("unicode_escape").encode("latin-1")
        flags = 0
        for opt in fields[5].split(b","):
            flags |= _MOUNT_OPTION_FLAGS.get(opt, 0)
        out.append((point, flags))
    return out


def _write_file(path: bytes, data: bytes) -> bool:
    try:
        fd = os.open(path, os.O_WRONLY)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        return True
    except OSError:
        return False


def _remount_read_only(mounts: list[tuple[bytes, int]]) -> bool:
    """Every host mount read-only in this namespace. True when all that exist are."""
    ok = True
    for point, keep in mounts:
        if _mount(None, point, None, _MS_REMOUNT | _MS_BIND | _MS_RDONLY | keep, None) != 0:
            if os.path.exists(point):  # a mount point shadowed or gone is not reachable
                ok = False
    return ok


def _mount_private_tmp(write_bytes: int, workdir: bytes, writable_workdir: bool) -> tuple[bool, bool]:
    """The one capped tmpfs, its parts, and the program's own directory on top.

    Returns (private tmp in place, writes capped). The caller's cwd is ``workdir``.
    """
    opts = f"size={write_bytes},mode=1777".encode()
    if _mount(b"tmpfs", _SCRATCH, b"tmpfs", _MS_NOSUID | _MS_NODEV, opts) != 0:
        return False, False
    private = True
    for target, part in _SCRATCH_PARTS.items():
        if os.path.isdir(target):
            os.mkdir(part, 0o1777)
            os.chmod(part, 0o1777)
            if _mount(part, target, None, _MS_BIND, None) != 0:
                private = False
    # cwd still refers to the real (maybe now hidden) directory
    os.makedirs(workdir, exist_ok=True)
    capped = False
    if writable_workdir:
        mounted = _mount(b".", workdir, None, _MS_BIND, None) == 0
        # a bind of a read-only mount is read-only: make this one writable again
        mounted = mounted and _mount(None, workdir, None, _MS_REMOUNT | _MS_BIND
                                     | _MS_NOSUID | _MS_NODEV, None) == 0
    else:
        os.makedirs(_OVERLAY_UPPER, 0o755)
        os.makedirs(_OVERLAY_WORK, 0o700)
        # the merged root takes the upper layer's owner and mode: make them the real dir's
        real = os.stat(b".")
        os.chown(_OVERLAY_UPPER, real.st_uid, real.st_gid)
        os.chmod(_OVERLAY_UPPER, real.st_mode & 0o7777)
        os.chmod(_OVERLAY_UPPER.rsplit(b"/", 1)[0], 0o700)  # the layers: not the program's
        # lowerdir "." = the real directory (relative paths resolve against our cwd)
        overlay = b"lowerdir=.,upperdir=" + _OVERLAY_UPPER + b",workdir=" + _OVERLAY_WORK
        mounted = _mount(b"overlay", workdir, b"overlay", _MS_NOSUID | _MS_NODEV, overlay) == 0
        capped = mounted
        if not mounted:  # no overlay here (old kernel): the plain directory, uncapped
            mounted = _mount(b".", workdir, None, _MS_BIND, None) == 0
    os.chdir(workdir)
    return private and mounted, capped


def _bind_toolchains(binds: list[tuple[bytes, bytes]]) -> bool:
    ok = True
    for src, dst in binds:
        os.makedirs(dst, 0o755, exist_ok=True)
        if (_mount(src, dst, None, _MS_BIND | _MS_REC, None) != 0
                or _mount(None, dst, None, _MS_REMOUNT | _MS_BIND | _MS_RDONLY | _MS_NOSUID
                          | _MS_NODEV, None) != 0):
            ok = False
    return ok


def _rlimits(limits: Limits, uid: int | None, nproc: int | None) -> list:
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
    return rl


def _close_all_but(keep: int) -> None:
    os.closerange(0, keep)
    os.closerange(keep + 1, 1 << 16)


def _mirror_program_end(init_pid: int, status_r: int) -> None:
    """Outside the PID namespace: wait for its init, then end exactly as the program did
    (exit code, or the same signal), so the caller sees the program's own status."""
    try:
        _close_all_but(status_r)  # the output pipes and Popen's error pipe included
        os.waitpid(init_pid, 0)
        raw = os.read(status_r, 16)
        status = int(raw) if raw else -1
        if status < 0 or os.WIFSIGNALED(status):
            sig = os.WTERMSIG(status) if status >= 0 else signal.SIGKILL
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # no core of this copy
            signal.signal(sig, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, [sig])
            os.kill(os.getpid(), sig)
            os._exit(128 + sig)
        os._exit(os.waitstatus_to_exitcode(status) & 0xFF)
    finally:
        os._exit(255)


def _namespace_init(program_pid: int, status_w: int) -> None:
    """PID 1 of the sandbox's PID namespace: reap every process that ends in it, and when
    the program's own process ends, report its raw wait status and exit - the kernel then
    kills whatever else is still running in the namespace (daemons, setsid'd children)."""
    try:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)  # killed with the outer process
        _close_all_but(status_w)
        while True:
            pid, status = os.waitpid(-1, 0)
            if pid == program_pid:
                os.write(status_w, str(status).encode())
                break
    finally:
        os._exit(0)


def _enter_pid_namespace(status_fd: int) -> bool:
    """After ``unshare(CLONE_NEWPID)``: the caller becomes a waiter outside (it never
    returns), its child the namespace's init, and the init's child - the only one that
    returns, True - goes on to become the program (threads need it inside the namespace).
    False (and nothing forked) when the processes cannot be made."""
    status_r, status_w = os.pipe()
    try:
        init_pid = os.fork()
    except OSError:
        os.close(status_r)
        os.close(status_w)
        return False
    if init_pid != 0:
        os.write(status_fd, b"p%d." % init_pid)
        os.close(status_w)
        _mirror_program_end(init_pid, status_r)
    os.close(status_r)
    try:
        program_pid = os.fork()
    except OSError:
        os._exit(255)
    if program_pid != 0:
        _namespace_init(program_pid, status_w)
    os.close(status_w)
    return True


def make_preexec(limits: Limits, uid: int | None, workdir: bytes, procs_files: list[bytes],
                 want_netns: bool, want_private_tmp: bool, status_fd: int,
                 userns: bool = False, nproc: int | None = None,
                 writable_workdir: bool = False,
                 binds: list[tuple[str, str]] | None = None):
    """The function run in the child between fork and exec (see the module docstring).

    ``binds``: (host directory, path inside) pairs, read-only, inside must be under
    ``TOOLCHAIN_MOUNT_ROOT``. Everything is computed here, in the parent, so the child
    only makes system calls.
    """
    rl = _rlimits(limits, uid, nproc)
    # not root: a user namespace (mapping our own uid/gid onto themselves) is what lets an
    # unprivileged caller create the network and mount namespaces
    user_flag = _CLONE_NEWUSER if userns else 0
    # not root: no cgroup to kill the tree by; a PID namespace does it (module docstring)
    pid_flag = _CLONE_NEWPID if userns else 0
    id_maps = ((b"/proc/self/setgroups", b"deny"),
               (b"/proc/self/uid_map", f"{os.getuid()} {os.getuid()} 1".encode()),
               (b"/proc/self/gid_map", f"{os.getgid()} {os.getgid()} 1".encode()))
    mounts = host_mounts() if want_private_tmp else []
    bind_pairs = [(os.fsencode(s), os.fsencode(d)) for s, d in (binds or [])]

    def preexec() -> None:
        os.setsid()
        pid_bytes = str(os.getpid()).encode()
        for pf in procs_files:  # join the cgroups before anything can fork
            _write_file(pf, pid_bytes)
        flags = (_CLONE_NEWNET if want_netns else 0) | (_CLONE_NEWNS if want_private_tmp else 0)
        ok = flags != 0 and _unshare(flags | user_flag | pid_flag) == 0
        pid_ns = ok and pid_flag != 0
        if ok and user_flag:
            for path, data in id_maps:
                _write_file(path, data)
        if not ok and want_netns and want_private_tmp:
            if _unshare(_CLONE_NEWNET | user_flag | pid_flag) == 0:
                os.write(status_fd, b"n")
                pid_ns = pid_flag != 0
        if not ok and not pid_ns and pid_flag:
            # no network/mount namespace here: still the PID namespace, if allowed
            pid_ns = _unshare(user_flag | pid_flag) == 0
            if pid_ns and user_flag:
                for path, data in id_maps:
                    _write_file(path, data)
        if pid_ns and not _enter_pid_namespace(status_fd):
            # outside it the program could start no thread: fail plainly instead
            os.write(2, b"sandbox: cannot start the processes of a PID namespace\n")
            os._exit(127)
        if ok:
            if want_netns:
                os.write(status_fd, b"n")
            # stop our mounts from propagating back to the host
            if want_private_tmp and _mount(b"none", b"/", None, _MS_REC | _MS_PRIVATE, None) == 0:
                if _remount_read_only(mounts):
                    os.write(status_fd, b"r")
                private, capped = _mount_private_tmp(limits.write_bytes, workdir,
                                                     writable_workdir)
                if private:
                    os.write(status_fd, b"t")
                if capped:
                    os.write(status_fd, b"c")
                if bind_pairs and _bind_toolchains(bind_pairs):
                    os.write(status_fd, b"b")
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
