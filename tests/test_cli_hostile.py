"""Hostile command lines (issue 21): numeric options out of range, a FIFO or /dev/zero
where a file is expected, outputs that cannot be written, duplicate problem names. Each
is one line and exit 2, refused before any work - the cases are scripts/bad_inputs.py's
own (the table in docs/failures.md), run here through the CLI's entry point with a
60-second alarm, so a hang fails the test instead of hanging the suite."""

from __future__ import annotations

import importlib.util
import signal
from pathlib import Path

import pytest

from babeltower.cli import main
from test_probes_helpers import save_run

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("bad_inputs", ROOT / "scripts" / "bad_inputs.py")
bad_inputs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bad_inputs)

_PLACEHOLDER = {k: Path("/x") for k in ("fifo", "zero", "file", "tree", "dups", "long", "proc")}
LABELS = [what for what, _ in bad_inputs.hostile_cases(Path("/r"), Path("/o"), _PLACEHOLDER)]


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    base = tmp_path_factory.mktemp("hostile")
    run = save_run(base / "fixture", "llama", steps=(0,))
    cases = dict(bad_inputs.hostile_cases(run, base / "out", bad_inputs.make_hostile(base)))
    return base, cases


class _Hang(BaseException):
    pass


def _raise_hang(signum, frame):
    raise _Hang()


@pytest.mark.parametrize("what", LABELS)
def test_hostile_input_is_one_line_and_exit_2_before_any_work(hostile, capsys, what):
    base, cases = hostile
    capsys.readouterr()
    old = signal.signal(signal.SIGALRM, _raise_hang)
    signal.alarm(60)
    try:
        rc = main(cases[what])
    except _Hang:
        pytest.fail(f"{what}: no answer in 60 s")
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    assert not (base / "out").exists()   # refused before anything was written
    assert not Path("/proc/babeltower-out").exists()


def test_a_fifo_in_a_source_tree_is_skipped_next_to_real_files(tmp_path, capsys):
    import os

    from test_corpus_build import make_tree

    make_tree(tmp_path / "src")
    os.mkfifo(tmp_path / "src" / "pipe.py")
    signal.signal(signal.SIGALRM, _raise_hang)
    signal.alarm(120)
    try:
        rc = main(["corpus", "build", "--source", str(tmp_path / "src"), "--out",
                   str(tmp_path / "c"), "--languages", "python,go", "--workers", "1"])
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, signal.SIG_DFL)
    assert rc == 0, capsys.readouterr().err
    assert (tmp_path / "c" / "manifest.json").exists()


def test_interrupted_probe_lens_says_resume_and_resumes(tmp_path, capsys, monkeypatch):
    """`probe lens` keeps <out>.partial to resume from, so Ctrl-C says so (it said "no
    partial output is kept" while leaving <out>.partial behind)."""
    import babeltower.probes.lens as lens

    run = save_run(tmp_path, "llama", steps=(0, 8))
    out = tmp_path / "lens"
    argv = ["probe", "lens", str(run), "--new", "php", "--out", str(out), "--no-plot"]
    real = lens.run_lens

    def stop_after_first(*a, **k):
        def stop(name):
            raise KeyboardInterrupt
        return real(*a, **k, on_checkpoint=stop)

    monkeypatch.setattr(lens, "run_lens", stop_after_first)
    capsys.readouterr()
    assert main(argv) == 130
    err = capsys.readouterr().err.strip()
    assert err == "babeltower: interrupted; run the same command to resume", err
    assert (tmp_path / "lens.partial").exists() and not out.exists()
    monkeypatch.setattr(lens, "run_lens", real)
    assert main(argv) == 0
    assert (out / "lens.parquet").exists() and not (tmp_path / "lens.partial").exists()
