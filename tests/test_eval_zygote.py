"""The Python fork server runs programs like a fresh interpreter would, under the same fences."""

import json
import os
import sys
from pathlib import Path

import pytest

from babeltower.sandbox.execute import run_program
from procs import run as run_process
from sandbox_fixtures import loopback_listener

PROGRAMS = {
    "argv_main": ("import sys; print(sys.argv, __name__)", "pass", "['main.py'] __main__"),
    "exit_code": ("import sys; sys.exit(3)", "fail", ""),
    "exit_message": ("import sys; sys.exit('bad thing')", "fail", ""),
    "exception": ("def f():\n    raise ValueError('x')\nf()", "fail", ""),
    "atexit_and_threads": (
        "import atexit, threading, time\natexit.register(lambda: print('bye'))\n"
        "threading.Thread(target=lambda: (time.sleep(0.1), print('thread'))).start()",
        "pass", "thread\nbye"),
    "stdin_closed": ("import sys; print(repr(sys.stdin.read()))", "pass", "''"),
    "env": ("import os; print(sorted(os.environ))", "pass",
            "['HOME', 'LANG', 'LC_ALL', 'PATH', 'TMPDIR']"),
    # PORT: a listener this test opens on 127.0.0.1 (see the test)
    "no_network": ("import socket, errno\ns = socket.socket()\ntry:\n"
                   "    s.connect(('127.0.0.1', PORT))\nexcept OSError as e:\n"
                   "    print(errno.errorcode[e.errno])", "pass", "ENETUNREACH"),
    "memory": ("b = []\nwhile True: b.append(bytearray(1 << 20))", "memory", ""),
}


@pytest.mark.parametrize("name", sorted(PROGRAMS))
def test_fork_server_matches_a_fresh_interpreter(name):
    src, status, stdout = PROGRAMS[name]
    with loopback_listener() as (port, accepted):
        src = src.replace("PORT", str(port))
        fresh = run_program("python", src, timeout=5, python_fork_server=False)
        forked = run_program("python", src, timeout=5, python_fork_server=True)
        assert accepted() == []
    assert forked.isolation["runner"] == "fork server (no exec)"
    assert fresh.isolation["runner"] == "fork server + exec"
    for r in (fresh, forked):
        assert r.status == status, (name, r.isolation["runner"], r.stderr[-300:])
        assert r.stdout.strip() == stdout
    assert forked.exit_code == fresh.exit_code
    # tracebacks and messages the same (modulo the temp dir name)
    norm = lambda s: "\n".join(l for l in s.splitlines() if "bt-sbx-" not in l)  # noqa: E731
    assert norm(forked.stderr) == norm(fresh.stderr)
    assert forked.isolation["network"] == fresh.isolation["network"]
    assert forked.isolation["filesystem"] == fresh.isolation["filesystem"]


def test_fork_server_contains_loops_and_fork_bombs():
    r = run_program("python", "while True: pass", timeout=1.5)
    assert r.status == "timeout" and r.isolation["runner"] == "fork server (no exec)"
    bomb = ("import os\nwhile True:\n    try:\n        if os.fork() == 0: os.setsid()\n"
            "    except OSError: pass\n")
    r = run_program("python", bomb, timeout=1.5, max_processes=16)
    assert r.status == "timeout"
    if os.geteuid() == 0:
        assert r.isolation["uid"] != 0
    ok = run_program("python", "print(6 * 7)")
    assert ok.stdout.strip() == "42"


def test_fork_server_does_not_put_our_source_tree_on_the_path():
    import babeltower

    src = str(Path(babeltower.__file__).resolve().parent.parent)
    r = run_program("python", "import sys, json; print(json.dumps(sys.path))")
    import json

    path = json.loads(r.stdout)
    assert r.isolation["runner"] == "fork server (no exec)"
    assert not [p for p in path if p.startswith(src)]
    assert path[0].split("/")[-1].startswith("bt-sbx-")  # the program's own directory first


def test_server_outlives_the_thread_that_started_it_and_restarts_if_killed():
    import threading

    from babeltower.sandbox import zygote

    if zygote._server is not None:
        zygote._server.close()
        zygote._server = None
    t = threading.Thread(target=lambda: run_program("python", "pass"))
    t.start()
    t.join()
    first = zygote._server
    assert first is not None and first.alive()  # a thread's exit must not kill it
    r = run_program("python", "print('again')")
    assert r.stdout.strip() == "again" and zygote._server is first
    first.proc.kill()
    first.proc.wait()
    r = run_program("python", "print('after kill')")
    assert r.status == "pass" and r.stdout.strip() == "after kill"
    assert zygote._server is not first and zygote._server.alive()


def test_fork_server_child_cannot_mount_unshare_setns_or_reach_the_server():
    """Issue 21's escape: a fork-server child kept every capability of its user namespace
    (it never exec's), remounted the host writable, unmounted /tmp and asked the server's
    own socket for a child without namespaces. Now: no capability, no_new_privs, the
    seccomp filter; the server's socket cannot even be made a connection to."""
    from babeltower.sandbox import zygote
    from sandbox_fixtures import ESCAPE_EXPECTED, escape_probe

    run_program("python", "pass")  # the server is up
    sock = zygote._server.path
    r = run_program("python", escape_probe([sock]), timeout=10)
    assert r.isolation["runner"] == "fork server (no exec)"
    assert r.status == "pass", r.stderr[-500:]
    seen = json.loads(r.stdout)
    for name, want in ESCAPE_EXPECTED.items():
        assert seen[name] == want, (name, seen[name])
    assert seen[f"connect {sock}"] in ("EPERM", "ENOENT")
    # the host is still read-only for it, whatever it tried
    target = Path.home() / f"bt-pwned-{os.getpid()}"
    r = run_program("python", f"open({str(target)!r}, 'w').write('x')")
    assert r.status == "fail" and not target.exists()


def test_fork_server_serves_only_the_process_that_started_it():
    """Another process of the same user that finds the socket gets no child."""
    import subprocess
    import sys

    from babeltower.sandbox import zygote

    run_program("python", "pass")
    req = ("import json, socket, sys\ns = socket.socket(socket.AF_UNIX)\n"
           f"s.connect({zygote._server.path!r})\n"
           "r, w = __import__('os').pipe()\ntry:\n"
           "    socket.send_fds(s, [json.dumps({'x': 1}).encode() + b'\\n'], [w, w, w])\n"
           "    s.settimeout(5)\n    print(repr(s.recv(100)))\n"
           "except (BrokenPipeError, ConnectionResetError):\n    print(repr(b''))\n")
    out = run_process([sys.executable, "-c", req], timeout=30)
    assert out.stdout.strip() == "b''", out   # closed without an answer
    assert run_program("python", "print(1)").stdout.strip() == "1"  # still serves us
