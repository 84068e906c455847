"""The sandbox contains hostile programs and reports what happened; the host carries on."""

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest

from babeltower.evaluate.sandbox import Limits, run_sandboxed

PY = "/usr/bin/python3" if Path("/usr/bin/python3").exists() else sys.executable
FAST = Limits(timeout=2.0, memory_bytes=512 << 20, max_processes=32, max_output_bytes=4096)
ROOT = os.geteuid() == 0


def py(src: str, limits: Limits = FAST, **kw):
    return run_sandboxed([PY, "-c", src], limits=limits, **kw)


def host_still_works():
    out = subprocess.run([PY, "-c", "print(6*7)"], capture_output=True, text=True, timeout=20)
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


def test_fork_bomb_is_contained():
    # children that escape the process group via setsid are still in the pids cgroup
    src = ("import os\n"
           "while True:\n"
           "    try:\n"
           "        if os.fork() == 0: os.setsid()\n"
           "    except OSError: pass\n")
    r = py(src)
    assert r.status == "timeout"
    assert r.isolation["processes"] in ("pids cgroup", "RLIMIT_NPROC (own uid)",
                                        "RLIMIT_NPROC (shared with the caller's uid)")
    # nothing of it is left running (zombies, already dead, wait for init to reap them)
    uid = r.isolation["uid"]
    if uid != os.geteuid():
        left = [p for p in os.listdir("/proc") if p.isdigit() and _uid_of(p) == uid]
        assert left == []
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
    if not ROOT:
        # no uid to switch to: the result must say so rather than claim containment
        r = py("print(1)")
        assert "same uid" in r.isolation["filesystem"]
        return
    for target in ("/etc/babeltower-pwned", "/usr/local/babeltower-pwned",
                   str(Path.home() / "babeltower-pwned")):
        r = py(f"open({target!r}, 'w').write('pwned')")
        assert r.status == "fail" and "Permission denied" in r.stderr, (target, r.stderr)
        assert not Path(target).exists()
    # the host's /tmp is not even visible: a private tmpfs covers it
    target = tmp_path / "outside.txt"
    r = py(f"open({str(target)!r}, 'w').write('pwned')")
    assert r.status == "fail" and not target.exists()
    # its own directory is writable, and /tmp is private (nothing reaches the host /tmp)
    r = py("open('own.txt','w').write('ok'); open('/tmp/bt-sandbox-leak','w').write('x');"
           "print(open('own.txt').read())")
    assert r.status == "pass" and r.stdout.strip() == "ok"
    assert r.isolation["filesystem"] == "own uid; private /tmp"
    assert not Path("/tmp/bt-sandbox-leak").exists()


def test_outbound_socket_fails_immediately_with_enetunreach():
    src = ("import socket, time\n"
           "s = socket.socket(); s.settimeout(5); t = time.time()\n"
           "try:\n"
           "    s.connect(('10.255.255.1', 9))\n"
           "    print('CONNECTED')\n"
           "except OSError as e:\n"
           "    print(e.errno, round(time.time() - t, 3))\n")
    r = py(src)
    assert r.isolation["network"].startswith("none"), r.isolation
    code, secs = r.stdout.split()
    assert int(code) == errno.ENETUNREACH
    assert float(secs) < 0.5
    host_still_works()


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


def test_signal_death_is_a_crash():
    r = py("import os, signal; os.kill(os.getpid(), signal.SIGSEGV)")
    assert r.status == "crash" and r.signal == 11


def test_missing_executable_is_missing_toolchain():
    r = run_sandboxed(["/nonexistent/babel-compiler", "x"], limits=FAST)
    assert r.status == "missing_toolchain"
