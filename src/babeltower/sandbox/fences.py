"""The fences one sandboxed process is put behind: namespaces, mounts, rlimits, uid,
no capabilities, a seccomp filter.

The bottom of the execution stack (cli -> passk -> execute -> sandbox -> zygote -> fences):
``sandbox.run_sandboxed`` (a fresh ``exec``) and ``zygote`` (a forked Python child that
never ``exec``s) both build the child-side setup here with ``make_preexec`` and run it
between fork and the program.

What the child does, in order, and why:

1. ``setsid`` and join the sandbox's cgroups (before anything can fork).
2. One ``unshare``: a **network** namespace (only a down loopback: no traffic at all), a
   **mount** namespace, an **IPC** namespace (SysV and POSIX IPC objects die with the run
   and no sample sees another's) and a **PID** namespace - as root directly, not root
   inside a new **user** namespace mapping our uid onto itself. The child forks a tiny init
   of our own (``_namespace_init``), which forks the program, so every process of the
   program is inside it, ``setsid`` or not; the child itself waits outside and ends as the
   program did. When the program's process ends, the init exits, and the kernel kills every
   process left in the namespace; the init also dies with the outer process
   (``PR_SET_PDEATHSIG``, e.g. on a timeout's kill) and the parent kills it once more when
   the run ends. (The program is PID 2, not a PID 1 that ignores default-action signals;
   it is inside the namespace because a process may not start threads in a namespace
   other than its own.)
3. Mounts, all private to that namespace (``_mount_fences``):

   * **every host mount read-only** (a bind remount of each mount point listed in
     ``/proc/self/mountinfo``): no world-writable host path (``/run/lock``, ``/var/tmp``,
     a PHP session dir, ...) can be written, whatever it is called - nothing is listed by
     hand;
   * **an own /proc** (read-only) of the PID namespace: the host's processes, their
     command lines and (same uid) environments are not listed;
   * **one size-limited tmpfs** (``Limits.write_bytes``) holds everything the program may
     write: ``/tmp``, ``/var/tmp`` and ``/dev/shm`` are directories of it, and the program's
     own directory is an overlay whose upper (written) layer lives in it too - so the total
     bytes a program writes are capped and vanish with it (a disk fill ends in ``ENOSPC``;
     the waiter outside reports ``D`` when the tmpfs is full);
   * for a compiler (``writable_workdir=True``) the directory is instead bound back
     read-write (the compiled program must persist for the run step); each file is capped
     by ``RLIMIT_FSIZE`` and the parent watches the directory's total;
   * **toolchain binds**: a toolchain in a directory the sandbox uid may not enter
     (rustup under ``/root``) is bind-mounted read-only at a path under the private
     ``/tmp`` - the compiler runs as the sandbox uid, nothing on the host changes.

4. rlimits (CPU, file size, open files, no core dumps, process count; memory:
   ``RLIMIT_DATA`` - and ``RLIMIT_AS`` where the runtime allows - unless a memory cgroup
   holds the process, whose OOM kill the parent can see).
5. drop every capability: the bounding and ambient sets (while ``CAP_SETPCAP`` is still
   held), then - as root after switching to the per-sandbox uid/gid with no supplementary
   groups - the effective, permitted and inheritable sets, checked with ``capget``. The
   fork server's child never ``exec``s, so without this it would keep every capability
   its user namespace gave it (issue 21: it remounted the host writable).
6. ``no_new_privs`` and the **seccomp filter** (``SECCOMP_RULES``): no mount, umount,
   unshare, setns, pivot_root, keyctl, bpf, perf_event_open, ptrace, io_uring, clone with a
   namespace flag, TIOCSTI/TIOCLINUX, and no unix socket (a pathname socket - the D-Bus
   bus, an ssh agent, the fork server's own - is reachable through a read-only mount, and
   a filter cannot read the path; ``socketpair`` of stream sockets stays).

Fail closed: when a fence cannot be set up the child writes ``!`` and what is missing and
exits before anything runs; the parent refuses the run (``fail_closed=False`` - the
caller's ``unsafe`` - goes on with what held). It reports each fence that held by writing
one byte to ``status_fd`` (``FENCE_LETTERS``; ``p<pid>.`` = own PID namespace whose init
has host pid ``<pid>``), so the parent can say what was in force rather than assume it.

The preexec function only makes system calls (no imports, no locks): safe with threads;
the seccomp program, capability structures and mount list are made before the fork.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import functools
import os
import resource
import signal
from dataclasses import dataclass

_CLONE_NEWNS = 0x00020000
_CLONE_NEWCGROUP = 0x02000000
_CLONE_NEWUTS = 0x04000000
_CLONE_NEWIPC = 0x08000000
_CLONE_NEWPID = 0x20000000
_CLONE_NEWUSER = 0x10000000
_CLONE_NEWNET = 0x40000000
_CLONE_NEWTIME = 0x00000080
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
_PR_SET_SECCOMP = 22
_PR_CAPBSET_DROP = 24
_PR_SET_NO_NEW_PRIVS = 38
_PR_CAP_AMBIENT = 47
_PR_CAP_AMBIENT_CLEAR_ALL = 4
_SECCOMP_MODE_FILTER = 2
_capset = _libc.capset
_capset.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
_capget = _libc.capget
_capget.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
_LINUX_CAPABILITY_VERSION_3 = 0x20080522
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
    memory_bytes: int = 2 << 30             # RLIMIT_DATA, RLIMIT_AS, the memory cgroup
    address_space: bool = True              # apply RLIMIT_AS (off for JVM/node/go)
    heap_bytes: int | None = None           # the runtime's own heap cap, when one is set
    max_processes: int = 64                 # pids cgroup / RLIMIT_NPROC
    file_size_bytes: int = 64 << 20         # RLIMIT_FSIZE (largest file it may write)
    open_files: int = 256                   # RLIMIT_NOFILE
    max_output_bytes: int = 64 << 10        # kept per stream (stdout, stderr)
    write_bytes: int = 64 << 20             # all it may write: own dir + /tmp + /dev/shm


# --------------------------------------------------------------------------- seccomp
# The system calls a sandboxed process may not make, each with why. The filter is built
# once per process by libseccomp (Debian/Ubuntu/Fedora: libseccomp2, which apt and systemd
# depend on) through ctypes - it resolves syscall numbers per architecture and adds the
# architecture and x32 checks - and exported as raw BPF, so the child only makes two
# prctl calls to install it. Denied calls fail with EPERM (clone3 with ENOSYS, so libc
# falls back to clone, whose flags the filter can see).
_NAMESPACE_FLAGS = (_CLONE_NEWNS, _CLONE_NEWCGROUP, _CLONE_NEWUTS, _CLONE_NEWIPC,
                    _CLONE_NEWPID, _CLONE_NEWUSER, _CLONE_NEWNET, _CLONE_NEWTIME)
_AF_UNIX = 1
_SOCK_DGRAM = 2
_TIOCSTI = 0x5412
_TIOCLINUX = 0x541C
_SCMP_ACT_ALLOW = 0x7FFF0000
_SCMP_CMP_EQ = 4
_SCMP_CMP_MASKED_EQ = 7

# (syscall, errno, [(argument index, mask, value), ...] all of which must match, why)
SECCOMP_RULES: list[tuple[str, int, list[tuple[int, int, int]], str]] = [
    *[(name, errno.EPERM, [], why) for name, why in (
        ("mount", "remount the read-only host writable, unmount the private /tmp"),
        ("umount2", "uncover what the private mounts hide"),
        ("pivot_root", "change the root"),
        ("chroot", "change the root"),
        ("fsopen", "the new mount API"), ("fsconfig", "the new mount API"),
        ("fsmount", "the new mount API"), ("fspick", "the new mount API"),
        ("move_mount", "the new mount API"), ("open_tree", "the new mount API"),
        ("mount_setattr", "the new mount API"),
        ("unshare", "new namespaces (a user namespace brings back every capability)"),
        ("setns", "enter another namespace"),
        ("keyctl", "the kernel keyrings are shared with the host user"),
        ("add_key", "the kernel keyrings"), ("request_key", "the kernel keyrings"),
        ("bpf", "kernel BPF programs"),
        ("perf_event_open", "performance counters / kernel addresses"),
        ("ptrace", "tracing other processes"),
        ("process_vm_readv", "reading other processes' memory"),
        ("process_vm_writev", "writing other processes' memory"),
        ("userfaultfd", "a primitive of kernel exploits"),
        ("io_uring_setup", "io_uring runs system calls the filter never sees"),
        ("io_uring_enter", "io_uring"), ("io_uring_register", "io_uring"),
        ("open_by_handle_at", "opening files by handle, past path permissions"),
        ("name_to_handle_at", "file handles"),
        ("kexec_load", "privileged"), ("kexec_file_load", "privileged"),
        ("init_module", "privileged"), ("finit_module", "privileged"),
        ("delete_module", "privileged"), ("swapon", "privileged"), ("swapoff", "privileged"),
        ("acct", "privileged"), ("quotactl", "privileged"), ("reboot", "privileged"),
        ("syslog", "the kernel log"), ("vhangup", "terminals"),
    )],
    # clone with any namespace flag (clone3 hides its flags in memory: ENOSYS, libc
    # then uses clone)
    *[("clone", errno.EPERM, [(0, flag, flag)], "a new namespace through clone")
      for flag in _NAMESPACE_FLAGS],
    ("clone3", errno.ENOSYS, [], "its flags are not visible to the filter"),
    # faking keyboard input on a terminal (the kernel reads only 32 bits of the request)
    ("ioctl", errno.EPERM, [(1, 0xFFFFFFFF, _TIOCSTI)], "TIOCSTI: type into a terminal"),
    ("ioctl", errno.EPERM, [(1, 0xFFFFFFFF, _TIOCLINUX)], "TIOCLINUX: the console"),
    # pathname unix sockets are reachable through a read-only mount (the D-Bus system
    # bus, /run/user/UID/bus, an ssh agent, the fork server's socket) and a path cannot
    # be checked by a filter: no AF_UNIX socket may be made. socketpair stays (pipes,
    # asyncio); a datagram pair could still send to a path: stream/seqpacket pairs only
    ("socket", errno.EPERM, [(0, 0xFFFFFFFF, _AF_UNIX)], "unix sockets reach host services"),
    ("socketpair", errno.EPERM, [(0, 0xFFFFFFFF, _AF_UNIX), (1, 0xF, _SOCK_DGRAM)],
     "a datagram pair can send to a socket path"),
]


class _ScmpArgCmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int), ("datum_a", ctypes.c_uint64),
                ("datum_b", ctypes.c_uint64)]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def build_seccomp_program(rules=None) -> bytes:
    """The BPF program (raw ``sock_filter`` array) of ``rules`` (default ``SECCOMP_RULES``)
    for this architecture. OSError when libseccomp is not installed or refuses a rule."""
    path = ctypes.util.find_library("seccomp") or "libseccomp.so.2"
    try:
        lib = ctypes.CDLL(path, use_errno=True)
    except OSError as e:
        raise OSError(f"libseccomp not found ({e}; Debian/Ubuntu: apt install libseccomp2)") from e
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int,
                                           ctypes.c_uint, ctypes.POINTER(_ScmpArgCmp)]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_export_bpf.argtypes = [ctypes.c_void_p, ctypes.c_int]
    lib.seccomp_release.argtypes = [ctypes.c_void_p]
    ctx = lib.seccomp_init(_SCMP_ACT_ALLOW)
    if not ctx:
        raise OSError("libseccomp: seccomp_init failed")
    try:
        for name, err, cmps, _why in (SECCOMP_RULES if rules is None else rules):
            nr = lib.seccomp_syscall_resolve_name(name.encode())
            if nr < 0:
                continue  # not a system call on this architecture
            arr = (_ScmpArgCmp * max(1, len(cmps)))(
                *[_ScmpArgCmp(arg, _SCMP_CMP_MASKED_EQ, mask, value)
                  for arg, mask, value in cmps])
            rc = lib.seccomp_rule_add_array(ctx, 0x00050000 | err, nr, len(cmps), arr)
            if rc != 0:
                raise OSError(f"libseccomp: cannot add the rule for {name} ({-rc})")
        r, w = os.pipe()
        try:
            rc = lib.seccomp_export_bpf(ctx, w)
            os.close(w)
            w = -1
            chunks = []
            while chunk := os.read(r, 1 << 16):
                chunks.append(chunk)
        finally:
            os.close(r)
            if w >= 0:
                os.close(w)
        if rc != 0:
            raise OSError(f"libseccomp: cannot export the filter ({-rc})")
        return b"".join(chunks)
    finally:
        lib.seccomp_release(ctx)


@functools.lru_cache(maxsize=1)
def _default_program() -> tuple[bytes | None, str]:
    try:
        return build_seccomp_program(), ""
    except OSError as e:
        return None, str(e)


def seccomp_unavailable() -> str:
    """Why the sandbox's seccomp filter cannot be built here ('' when it can)."""
    return _default_program()[1]


def seccomp_installer(program: bytes):
    """A function installing ``program`` in the calling process (``no_new_privs`` first,
    which also lets an unprivileged process install a filter). Returns True if both held.
    The buffers are made now, so the returned function only makes system calls."""
    buf = ctypes.create_string_buffer(program, len(program))
    prog = _SockFprog(len(program) // 8, ctypes.addressof(buf))

    def install() -> bool:
        _keep = buf  # noqa: F841 (the filter's memory must live until prctl has read it)
        if _prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            return False
        return _prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.addressof(prog), 0, 0) == 0

    return install


# --------------------------------------------------------------------------- capabilities
class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


def _last_cap() -> int:
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 63


def capability_dropper():
    """A function dropping every capability of the calling process (bounding set, ambient,
    then effective/permitted/inheritable) and checking none is left: the fork server's
    child never ``exec``s, so inside its user namespace it would keep them all. Call the
    first part (``drop_bounding``) while still privileged, ``drop_rest`` after any
    ``setuid``. Both only make system calls."""
    last = _last_cap()
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    zero = (_CapData * 2)()
    got = (_CapData * 2)()

    def drop_bounding() -> None:
        for cap in range(last + 1):
            _prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0)
        _prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)

    def drop_rest() -> bool:
        if _capset(ctypes.addressof(header), ctypes.addressof(zero)) != 0:
            return False
        header.version = _LINUX_CAPABILITY_VERSION_3
        if _capget(ctypes.addressof(header), ctypes.addressof(got)) != 0:
            return False
        return all(d.effective == d.permitted == d.inheritable == 0 for d in got)

    return drop_bounding, drop_rest


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


def _rlimits(limits: Limits, uid: int | None, nproc: int | None,
             memory_cgroup: bool = False) -> list:
    cpu = limits.cpu_seconds or int(limits.timeout) + 1
    rl = [
        (resource.RLIMIT_CPU, (cpu, cpu + 1)),
        (resource.RLIMIT_FSIZE, (limits.file_size_bytes, limits.file_size_bytes)),
        (resource.RLIMIT_NOFILE, (limits.open_files, limits.open_files)),
        (resource.RLIMIT_CORE, (0, 0)),
    ]
    if memory_cgroup:
        # the cgroup limits what is really used and its OOM kill is seen by the sandbox;
        # an rlimit would refuse an allocation inside the program, unseen
        return rl
    # RLIMIT_DATA counts what is mapped writable and private (heap, anonymous mmap) and
    # not what is only reserved (PROT_NONE): it bounds the JVM, V8 and Go too, which
    # reserve large ranges at start and so cannot run under RLIMIT_AS
    rl.append((resource.RLIMIT_DATA, (limits.memory_bytes, limits.memory_bytes)))
    if limits.address_space:
        rl.append((resource.RLIMIT_AS, (limits.memory_bytes, limits.memory_bytes)))
    if uid is not None:  # per-user count; exact for our own unique uid
        rl.append((resource.RLIMIT_NPROC, (limits.max_processes, limits.max_processes)))
    elif nproc is not None:  # shared uid: what the caller runs now + the sandbox's allowance
        rl.append((resource.RLIMIT_NPROC, (nproc, nproc)))
    return rl


def _close_all_but(*keep: int) -> None:
    low = 0
    for fd in sorted(keep):
        os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, 1 << 16)


def _mirror_program_end(init_pid: int, status_r: int, status_fd: int,
                        scratch_bytes: int) -> None:
    """Outside the PID namespace: wait for its init, then end exactly as the program did
    (exit code, or the same signal), so the caller sees the program's own status. Before
    that, report ``D`` when the private tmpfs (``scratch_bytes``) is full: the sandbox's
    own observation that the program ran out of room, not the program's word."""
    try:
        _close_all_but(status_r, status_fd)  # the output pipes and Popen's error pipe too
        os.waitpid(init_pid, 0)
        raw = os.read(status_r, 16)
        status = int(raw) if raw else -1
        if scratch_bytes:
            try:
                st = os.statvfs(_SCRATCH)
                total, free = st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize
                if total <= scratch_bytes + (1 << 20) and free < (1 << 20):
                    os.write(status_fd, b"D")
            except OSError:
                pass
        os.close(status_fd)
        if status < 0 or os.WIFSIGNALED(status):
            sig = os.WTERMSIG(status) if status >= 0 else signal.SIGKILL
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # no core of this copy
            if sig not in (signal.SIGKILL, signal.SIGSTOP):  # those cannot be caught anyway
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


def _enter_pid_namespace(status_fd: int, scratch_bytes: int) -> bool:
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
        _mirror_program_end(init_pid, status_r, status_fd, scratch_bytes)
    os.close(status_r)
    try:
        program_pid = os.fork()
    except OSError:
        os._exit(255)
    if program_pid != 0:
        _namespace_init(program_pid, status_w)
    os.close(status_w)
    return True


def _errno_name() -> bytes:
    e = ctypes.get_errno()
    return errno.errorcode.get(e, str(e)).encode()


# fence letters the child writes to status_fd (see the module docstring)
FENCE_LETTERS = {"u": "user namespace", "n": "network namespace", "m": "mount namespace",
                 "i": "IPC namespace", "p": "PID namespace", "r": "read-only host",
                 "P": "own /proc", "t": "private /tmp", "c": "capped writes",
                 "b": "toolchain binds", "l": "rlimits", "k": "no capabilities",
                 "s": "seccomp filter + no_new_privs",
                 "D": "write area full"}  # an observation, not a fence


def _mount_fences(mounts, write_bytes: int, workdir: bytes, writable_workdir: bool,
                  bind_pairs, status_fd: int, refuse) -> None:
    """In the new mount namespace: / private, the host read-only, an own /proc, the
    private capped /tmp, toolchain binds - each reported; ``refuse`` (None: go on) when
    one cannot be made."""
    def missing(what: bytes) -> None:
        if refuse is not None:
            refuse(what)

    os.write(status_fd, b"m")
    # stop our mounts from propagating back to the host
    if _mount(b"none", b"/", None, _MS_REC | _MS_PRIVATE, None) != 0:
        missing(b"mounts: cannot make / private: " + _errno_name())
        return
    if _remount_read_only(mounts):
        os.write(status_fd, b"r")
    else:
        missing(b"read-only host: a bind remount failed")
    # a /proc of the PID namespace: the host's processes (their command lines, the
    # environments of the same uid) are not listed
    if _mount(b"proc", b"/proc", b"proc", _MS_NOSUID | _MS_NODEV | _MS_NOEXEC | _MS_RDONLY,
              None) == 0:
        os.write(status_fd, b"P")
    else:
        missing(b"own /proc: mount failed with " + _errno_name())
    private, capped = _mount_private_tmp(write_bytes, workdir, writable_workdir)
    if private:
        os.write(status_fd, b"t")
    else:
        missing(b"private /tmp: tmpfs mount failed")
    if capped:
        os.write(status_fd, b"c")
    if bind_pairs:
        if _bind_toolchains(bind_pairs):
            os.write(status_fd, b"b")
        else:
            missing(b"toolchain bind failed")


# long: the parent-side preparation and the child-side closure belong together - everything
# the child uses must be made before the fork, and the closure is the fences in their order
def make_preexec(limits: Limits, uid: int | None, workdir: bytes, procs_files: list[bytes],
                 want_netns: bool, want_private_tmp: bool, status_fd: int,
                 userns: bool = False, nproc: int | None = None,
                 writable_workdir: bool = False,
                 binds: list[tuple[str, str]] | None = None, fail_closed: bool = True,
                 memory_cgroup: bool = False):
    """The function run in the child between fork and exec (see the module docstring).

    ``binds``: (host directory, path inside) pairs, read-only, inside must be under
    ``TOOLCHAIN_MOUNT_ROOT``. ``fail_closed``: when a fence cannot be set up the child
    writes ``!`` and what is missing to ``status_fd`` and exits without running anything
    (the caller refuses the run); False (``unsafe``) goes on with the fences that held.
    ``memory_cgroup``: the caller put the child in a memory cgroup: no memory rlimits.
    Everything is computed here, in the parent, so the child only makes system calls.
    OSError when the seccomp filter cannot be built and ``fail_closed``.
    """
    rl = _rlimits(limits, uid, nproc, memory_cgroup)
    # not root: a user namespace (mapping our own uid/gid onto themselves) is what lets an
    # unprivileged caller create the other namespaces
    user_flag = _CLONE_NEWUSER if userns else 0
    id_maps = ((b"/proc/self/setgroups", b"deny"),
               (b"/proc/self/uid_map", f"{os.getuid()} {os.getuid()} 1".encode()),
               (b"/proc/self/gid_map", f"{os.getgid()} {os.getgid()} 1".encode()))
    mounts = host_mounts() if want_private_tmp else []
    bind_pairs = [(os.fsencode(s), os.fsencode(d)) for s, d in (binds or [])]
    program, why_not = _default_program()
    if program is None and fail_closed:
        raise OSError(f"seccomp filter: {why_not}")
    install_filter = seccomp_installer(program) if program is not None else None
    drop_bounding, drop_rest = capability_dropper()
    full = (user_flag | _CLONE_NEWPID | _CLONE_NEWIPC | (_CLONE_NEWNET if want_netns else 0)
            | (_CLONE_NEWNS if want_private_tmp else 0))
    # unsafe: the largest set that holds, in this order
    fallbacks = (full, full & ~_CLONE_NEWNS, user_flag | _CLONE_NEWPID | _CLONE_NEWIPC,
                 user_flag | _CLONE_NEWPID)
    scratch = limits.write_bytes if want_private_tmp else 0

    def refuse(what: bytes) -> None:
        os.write(status_fd, b"!" + what)
        os._exit(126)

    def preexec() -> None:
        os.setsid()
        pid_bytes = str(os.getpid()).encode()
        for pf in procs_files:  # join the cgroups before anything can fork
            _write_file(pf, pid_bytes)
        flags = 0
        for cand in fallbacks if not fail_closed else (full,):
            if _unshare(cand) == 0:
                flags = cand
                break
        if flags == 0 and fail_closed:
            refuse(b"namespaces: unshare(" + (b"user, " if userns else b"")
                   + b"network, mount, IPC, PID) failed with " + _errno_name()
                   + (b" (unprivileged user namespaces disabled?)" if userns else b""))
        if flags & _CLONE_NEWUSER:
            for path, data in id_maps:
                if not _write_file(path, data) and fail_closed:
                    refuse(b"user namespace: cannot write " + path)
            os.write(status_fd, b"u")
        if flags & _CLONE_NEWNET:
            os.write(status_fd, b"n")
        if flags & _CLONE_NEWIPC:
            os.write(status_fd, b"i")
        if flags & _CLONE_NEWPID and not _enter_pid_namespace(status_fd, scratch):
            # outside it the program could start no thread: fail plainly instead
            refuse(b"PID namespace: cannot fork its init")
        if flags & _CLONE_NEWNS:
            _mount_fences(mounts, limits.write_bytes, workdir, writable_workdir, bind_pairs,
                          status_fd, refuse if fail_closed else None)
        ok = True
        for res, lim in rl:
            try:
                resource.setrlimit(res, lim)
            except (ValueError, OSError):
                ok = False
        if ok:
            os.write(status_fd, b"l")
        elif fail_closed:
            refuse(b"rlimits: setrlimit failed")
        drop_bounding()  # needs CAP_SETPCAP: before setuid
        if uid is not None:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
        if drop_rest():
            os.write(status_fd, b"k")
        elif fail_closed:
            refuse(b"capabilities: cannot drop them all")
        if install_filter is not None and install_filter():
            os.write(status_fd, b"s")
        elif fail_closed:
            refuse(b"seccomp filter: prctl failed with " + _errno_name())
        os.close(status_fd)

    return preexec
