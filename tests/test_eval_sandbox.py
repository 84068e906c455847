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

from babeltower.evaluate.sandbox import Limits, new_sandbox_dir, run_sandboxed
from procs import run as run_process
from sandbox_fixtures import loopback_listener, world_writable_dirs

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


def test_huge_allocation_reports_memory():
    r = py("x = bytearray(10 * 1024**3)\nprint(len(x))")
    assert r.status == "memory", (r.status, r.stderr[-300:])
    host_still_works()


def test_memory_cgroup_kill_reports_memory_without_rlimit_as():
    lim = Limits(timeout=10, memory_bytes=256 << 20, address_space=False, max_processes=32)
    if not ROOT:  # no cgroup without root: the result must say memory is not limited
        r = py("print(1)", limits=lim)
        assert r.isolation["memory"] == "not limited"
        return
    # touch pages so the cgroup, not the address-space limit, has to stop it
    r = py("b = []\nwhile True: b.append(bytearray(16 << 20))", limits=lim)
    assert r.status == "memory", (r.status, r.signal, r.stderr[-300:])
    assert r.isolation["memory"].startswith("memory cgroup")


def test_write_outside_its_directory_is_refused(tmp_path):
    targets = ["/etc/babeltower-pwned", "/usr/local/babeltower-pwned", str(tmp_path / "out")]
    if ROOT:
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
