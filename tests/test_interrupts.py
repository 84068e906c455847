"""A Ctrl-C cannot be lost: measured, a SIGINT 0.5 s into `babeltower train` landed in
transformers' lazy import of accelerate, which swallowed it (a RecursionError re-raised as
ModuleNotFoundError, exit 1 'internal error'; or training went on for minutes). The
handler records the signal; the error boundary and the long loops answer it."""

from __future__ import annotations

import os
import signal
import sys

import pytest

from babeltower import interrupts


@pytest.fixture
def recorded():
    old = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    interrupts.install()
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)
        interrupts.install()          # clears the record for the rest of the session
        signal.signal(signal.SIGINT, old)


def test_a_swallowed_sigint_is_still_recorded_and_raised_at_the_next_check(recorded):
    assert not interrupts.requested()
    try:
        os.kill(os.getpid(), signal.SIGINT)
        for _ in range(1000):
            pass
    except BaseException:      # a library's too-broad except: the interrupt is gone
        pass
    assert interrupts.requested()
    with pytest.raises(KeyboardInterrupt):
        interrupts.raise_if_interrupted()


def test_an_ignored_sigint_stays_ignored():
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        interrupts.install()
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, old)


def test_the_boundary_answers_an_error_after_a_sigint_as_an_interruption(recorded, monkeypatch,
                                                                         capsys, tmp_path):
    """The failure mode measured above, in process: the command's SIGINT turns into a
    ModuleNotFoundError on its way up; the boundary says 'interrupted', exit 130 - and
    the same error without a SIGINT is still an internal error (exit 1)."""
    import typer
    import typer.main

    import babeltower.cli as cli

    def command(swallow: bool = typer.Option(True, "--swallow/--plain")):
        if swallow:
            try:
                os.kill(os.getpid(), signal.SIGINT)
                for _ in range(1000):
                    pass
            except KeyboardInterrupt:
                pass
        raise ModuleNotFoundError("Could not import module 'LlamaConfig'")

    app = typer.Typer()
    app.command()(command)
    monkeypatch.setattr(cli, "root_command", lambda: typer.main.get_command(app))
    monkeypatch.setenv("BABELTOWER_CACHE", str(tmp_path))   # the crash log goes here
    rc = cli.main(["--swallow"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 130 and len(err) == 1 and err[0].startswith("babeltower: interrupted"), (rc, err)
    interrupts.install()
    rc = cli.main(["--plain"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1 and "internal error" in err[0], (rc, err)


def test_a_sigint_inside_a_deferred_section_is_raised_when_it_ends(recorded):
    """A SIGINT inside ``deferred`` lets the section finish, then raises."""
    done = []
    with pytest.raises(KeyboardInterrupt):
        with interrupts.deferred():
            os.kill(os.getpid(), signal.SIGINT)
            for _ in range(1000):
                pass
            done.append(True)
    assert done == [True] and interrupts.requested()


def test_a_sigint_during_a_deferred_import_lets_the_import_finish(tmp_path):
    """torch's import must not be interrupted (a KeyboardInterrupt inside its C++
    initialisers aborts the process: measured, SIGABRT, 'terminate called after throwing
    an instance of pybind11::error_already_set'). A stand-in package whose import sends
    itself SIGINT mid-way: with the hook it finishes (its last line runs), then the
    interrupt is raised; not deferred, it stops at the signal."""
    from procs import run

    (tmp_path / "slowpkg").mkdir()
    (tmp_path / "slowpkg" / "__init__.py").write_text(
        "import os, signal\nos.kill(os.getpid(), signal.SIGINT)\n"
        "for _ in range(10000):\n    pass\nimport builtins\nbuiltins.FINISHED = True\n")
    probe = ("import builtins, sys\nfrom babeltower import interrupts\n"
             "interrupts.DEFERRED_IMPORTS = frozenset(sys.argv[1:])\ninterrupts.install()\n"
             "try:\n    import slowpkg\nexcept KeyboardInterrupt:\n"
             "    print('interrupted', getattr(builtins, 'FINISHED', False))\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), *sys.path])}
    deferred = run([sys.executable, "-c", probe, "slowpkg"], env=env, timeout=60)
    plain = run([sys.executable, "-c", probe], env=env, timeout=60)
    assert deferred.stdout.strip() == "interrupted True", deferred.stderr[-1000:]
    assert plain.stdout.strip() == "interrupted False", plain.stderr[-1000:]
    assert "torch" in interrupts.DEFERRED_IMPORTS
