"""What `eval run` and `eval pass-at-k` show of the sandbox: the isolation in force, the
program's output escaped, a one-line refusal where isolation cannot be set up (issue 21)."""

import json
import os
import subprocess
import sys

from procs import run as run_process

from babeltower.cli import main

# a host where no namespace can be made (see test_eval_sandbox.py): unshare and clone with
# a namespace flag fail with EPERM in the process tree of the command
WITHOUT_NAMESPACES = r'''
import errno, os, sys
from babeltower.sandbox import fences
rules = [("unshare", errno.EPERM, [], ""), ("clone3", errno.ENOSYS, [], "")]
rules += [("clone", errno.EPERM, [(0, f, f)], "") for f in (0x10000000, 0x40000000, 0x20000)]
assert fences.seccomp_installer(fences.build_seccomp_program(rules))()
sys.argv = ["babeltower", *sys.argv[1:]]
from babeltower.cli import main
sys.exit(main())
'''


def _cli_without_namespaces(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return run_process([sys.executable, "-c", WITHOUT_NAMESPACES, *args], timeout=120, env=env)


def test_eval_run_escapes_the_programs_output(tmp_path, capsys):
    """Clear screen, a fake status line, an OSC 52 clipboard write: shown, not acted on."""
    f = tmp_path / "prog.py"
    f.write_text("import sys\nsys.stdout.write('\\x1b[2J\\x1b[H\\rstatus: pass\\n'"
                 "'\\x1b]52;c;cHduZWQ=\\x07\\x9b31m')\nsys.exit(1)\n")
    assert main(["eval", "run", str(f)]) == 1
    out = capsys.readouterr().out
    assert not any(c in out for c in "\x1b\x07\r\x9b")
    assert "| \\x1b[2J\\x1b[H\\rstatus: pass" in out and "\\x1b]52;c;cHduZWQ=\\x07" in out
    assert out.splitlines()[0].startswith("status: fail")
    iso = out.splitlines()[1]
    assert iso.startswith("isolation: network none; host fs read-only")
    assert "capabilities none; syscalls seccomp + no_new_privs" in iso and "UNSAFE" not in iso


def test_eval_run_refuses_in_one_line_without_namespaces(tmp_path):
    mark = f"/tmp/bt-cli-refusal-{os.getpid()}"
    f = tmp_path / "prog.py"
    f.write_text(f"open({mark!r}, 'w').write('ran')\n")
    out = _cli_without_namespaces("eval", "run", str(f))
    assert out.returncode == 2, out
    err = out.stderr.strip().splitlines()
    assert len(err) == 1 and "sandbox: cannot isolate programs here" in err[0], out.stderr
    assert "--unsafe-no-sandbox" in err[0] and out.stdout == ""
    assert not os.path.exists(mark)
    try:
        out = _cli_without_namespaces("eval", "run", "--unsafe-no-sandbox", str(f))
        assert out.returncode == 0, out
        assert "UNSAFE" in out.stdout.splitlines()[1] and "namespaces none" in out.stdout
        assert open(mark).read() == "ran"
    finally:
        if os.path.exists(mark):
            os.unlink(mark)


def test_pass_at_k_refuses_and_records_the_isolation(tmp_path, capsys):
    out = _cli_without_namespaces("eval", "pass-at-k", "--problems", "humaneval",
                                  "--references", "--limit", "2", "--out",
                                  str(tmp_path / "refused"))
    assert out.returncode == 2 and "sandbox: cannot isolate" in out.stderr, out
    assert not (tmp_path / "refused" / "references" / "summary.json").exists()
    rc = main(["eval", "pass-at-k", "--problems", "humaneval", "--references", "--limit", "2",
               "--out", str(tmp_path / "ok")])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "references: isolation: network none; host fs read-only" in printed
    summary = json.loads((tmp_path / "ok" / "references" / "summary.json").read_text())
    ((line, count),) = summary["isolation"].items()
    assert count == 2 and "syscalls seccomp + no_new_privs" in line
    rows = [json.loads(x) for x in
            (tmp_path / "ok" / "references" / "samples.jsonl").read_text().splitlines()]
    assert all(r["isolation"] == line for r in rows)
