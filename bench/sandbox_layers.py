"""What each layer of the sandbox costs per program: the system calls of one layer, timed
in a forked child, and whole runs of ``/bin/true`` and of a Python ``pass``.

Run: ``.venv/bin/python bench/sandbox_layers.py [--repeats 60]`` (as root: the root path,
namespaces without a user namespace; otherwise inside a user namespace, as the sandbox
does). Prints one JSON object: per layer the median and 90th percentile in milliseconds.

Layers timed (``fences.py`` does the same calls in the same order):

* ``unshare``: network + mount (what the sandbox had before issue 21), then + IPC, then
  + PID (the namespaces alone, no process in them yet);
* ``pid_namespace_forks``: the two forks that make the namespace's init and the program
  (from a small process here; from the caller's image on the exec path);
* ``own_proc``: mounting the PID namespace's /proc;
* ``capabilities``: dropping the bounding set and every capability (``capset``);
* ``seccomp``: ``no_new_privs`` + installing the filter (built once, before the fork);
* ``run_true`` / ``run_python``: whole ``run_sandboxed(["/bin/true"])`` and
  ``run_program("python", "pass")`` (fork server) calls, every layer included.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import statistics
import sys
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

NEWNS, NEWIPC, NEWPID, NEWUSER, NEWNET = 0x20000, 0x08000000, 0x20000000, 0x10000000, 0x40000000


def _in_child(step) -> float:
    """Milliseconds ``step()`` took in a fresh forked child (after its own setup)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            ms = step()
            os.write(w, repr(ms).encode())
        finally:
            os._exit(0)
    os.close(w)
    data = os.read(r, 64)
    os.close(r)
    os.waitpid(pid, 0)
    return float(data or "nan")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=60)
    args = ap.parse_args(argv)

    from babeltower.sandbox import fences
    from babeltower.sandbox.execute import run_program
    from babeltower.sandbox.run import Limits, run_sandboxed

    libc = ctypes.CDLL(None, use_errno=True)
    user = 0 if os.geteuid() == 0 else NEWUSER
    program = fences.build_seccomp_program()

    def timed(fn) -> float:
        t = time.perf_counter()
        fn()
        return (time.perf_counter() - t) * 1e3

    def unshare(flags):
        def step():
            return timed(lambda: libc.unshare(flags) == 0 or sys.exit(1))
        return step

    def pid_forks():
        libc.unshare(user | NEWPID)
        t = time.perf_counter()
        init = os.fork()
        if init == 0:
            prog = os.fork()
            if prog == 0:
                os._exit(0)
            os.waitpid(prog, 0)
            os._exit(0)
        os.waitpid(init, 0)
        return (time.perf_counter() - t) * 1e3

    def own_proc():
        libc.unshare(user | NEWNS | NEWPID)
        r, w = os.pipe()
        if os.fork() == 0:  # inside the PID namespace
            libc.mount(b"none", b"/", None, 16384 | (1 << 18), None)
            ms = timed(lambda: libc.mount(b"proc", b"/proc", b"proc", 1 | 2 | 4 | 8, None))
            os.write(w, repr(ms).encode())
            os._exit(0)
        os.close(w)
        ms = float(os.read(r, 64) or "nan")
        os.wait()
        return ms

    def capabilities():
        libc.unshare(user)
        drop_bounding, drop_rest = fences.capability_dropper()
        return timed(lambda: (drop_bounding(), drop_rest()))

    def seccomp():
        install = fences.seccomp_installer(program)
        return timed(install)

    steps = {
        "unshare_net_mount": unshare(user | NEWNET | NEWNS),
        "unshare_net_mount_ipc": unshare(user | NEWNET | NEWNS | NEWIPC),
        "unshare_net_mount_ipc_pid": unshare(user | NEWNET | NEWNS | NEWIPC | NEWPID),
        "pid_namespace_forks": pid_forks,
        "own_proc": own_proc,
        "capabilities": capabilities,
        "seccomp": seccomp,
    }
    out: dict = {"root_path": user == 0, "repeats": args.repeats, "cpu_count": os.cpu_count(),
                 "milliseconds": {}}
    limits = Limits(timeout=10)
    run_sandboxed(["/bin/true"], limits=limits)
    run_program("python", "pass")
    whole = {"run_true": lambda: run_sandboxed(["/bin/true"], limits=limits),
             "run_python": lambda: run_program("python", "pass")}
    for name in [*steps, *whole]:
        samples = []
        for _ in range(args.repeats):
            if name in steps:
                samples.append(_in_child(steps[name]))
            else:
                samples.append(timed(whole[name]))
        samples.sort()
        out["milliseconds"][name] = {
            "median": round(statistics.median(samples), 3),
            "p90": round(samples[int(0.9 * (len(samples) - 1))], 3)}
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
