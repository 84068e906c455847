"""The CLI's error boundary under real failures: a real full (and read-only) disk, real
SIGINTs to real processes, and unexpected exceptions (one line + a traceback log).

The disk tests mount a small tmpfs, so they need root (CI runs as root); as root a
mount that fails is a test failure, not a skip.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from babeltower.checkpoints import list_checkpoints, verify_checkpoint
from babeltower.cli import main
from babeltower.train import TrainConfig
from procs import run as run_process, started
from test_corpus_build import make_tree, python_source
from test_probes_helpers import save_run
from train_fixtures import make_packed

ROOT = Path(__file__).resolve().parents[1]
TINY_TRAIN = dict(seq_len=32, micro_batch_size=8, log_interval=3, progress=False,
                  peak_flops=1e11, eval={"tokens_per_language": 256},
                  checkpoints={"log_spaced": False, "every": 2})


# ---- helpers ----

class Tmpfs:
    """A size-limited tmpfs at ``path``; ``leave_free(n)`` fills it with ballast until
    about ``n`` bytes are free, ``grow()`` removes the ballast."""

    def __init__(self, path: Path, size_mb: int):
        self.path = path
        path.mkdir(parents=True, exist_ok=True)
        done = run_process(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs",
                            str(path)], timeout=60)
        assert done.returncode == 0, done.stderr
        self.ballast = path / "ballast"

    def free(self) -> int:
        st = os.statvfs(self.path)
        return st.f_bavail * st.f_frsize

    def leave_free(self, n: int) -> None:
        with open(self.ballast, "ab") as f:
            f.write(b"\0" * max(0, self.free() - n))
        assert abs(self.free() - n) < 64 * 1024, (self.free(), n)

    def grow(self) -> None:
        self.ballast.unlink(missing_ok=True)

    def read_only(self) -> None:
        done = run_process(["mount", "-o", "remount,ro", str(self.path)], timeout=60)
        assert done.returncode == 0, done.stderr

    def umount(self) -> None:
        run_process(["umount", "-l", str(self.path)], timeout=60)


@pytest.fixture
def tmpfs(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (CI runs these as root)")
    mounted: list[Tmpfs] = []

    def make(name: str, size_mb: int) -> Tmpfs:
        fs = Tmpfs(tmp_path / name, size_mb)
        mounted.append(fs)
        return fs

    yield make
    for fs in mounted:
        fs.umount()


def _tree_digest(root: Path) -> str:
    """Names and bytes of every file under ``root`` (to show it was left untouched)."""
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode() + b"\0" + p.read_bytes())
    return h.hexdigest()


def _size(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def _messages(err: str) -> list[str]:
    """stderr without progress bars (tqdm redraws with \\r) and notes: what the user is told."""
    lines = [ln.rsplit("\r", 1)[-1].strip() for ln in err.splitlines()]
    return [ln for ln in lines if ln and not ln.startswith("babeltower: note:")
            and not ("it/s]" in ln or "s/it]" in ln)
            and not ln.startswith("corpus pack: stage ")]   # the pack's stage progress


def _one_line(capsys, rc: int, *needles: str) -> str:
    full = capsys.readouterr().err
    assert "Traceback" not in full, full
    lines = _messages(full)
    assert rc not in (0, None), full
    assert len(lines) == 1, full
    err = lines[0]
    for n in needles:
        assert n.lower() in err.lower(), err
    return err


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + str(ROOT / "tests"),
            "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false"}


def _train_config(tmp_path: Path, data: Path, out: Path, **kw) -> Path:
    cfg = {**TINY_TRAIN, "data": str(data), "out_dir": str(out), "max_steps": 2, **kw}
    path = tmp_path / f"{out.name}.yaml"
    TrainConfig.from_dict(cfg).to_yaml(path)
    return path


@pytest.fixture(scope="module")
def packed(tmp_path_factory) -> Path:
    return make_packed(tmp_path_factory.mktemp("packed"))


# ---- a real full disk ----

def test_train_on_a_full_disk_is_one_line_keeps_checkpoints_and_resumes(tmp_path, packed,
                                                                        tmpfs, capsys):
    fs = tmpfs("disk", 64)
    # a first run on the same disk tells how big one checkpoint is
    probe = _train_config(tmp_path, packed, fs.path / "probe", max_steps=1)
    assert main(["train", str(probe)]) == 0
    one = _size(fs.path / "probe" / "checkpoints" / "step-00000000")
    # room for step 0 and about half of step 2
    cfg = _train_config(tmp_path, packed, fs.path / "run")
    fs.leave_free(int(one * 1.5))
    capsys.readouterr()
    _one_line(capsys, main(["train", str(cfg)]), "no space left on device")
    ckdir = fs.path / "run" / "checkpoints"
    assert sorted(p.name for p in ckdir.iterdir()) == ["step-00000000"]  # no temp leftovers
    verify_checkpoint(ckdir / "step-00000000")
    # once there is room again the same command resumes and finishes
    fs.grow()
    assert main(["train", str(cfg)]) == 0
    assert [r.step for r in list_checkpoints(fs.path / "run")] == [0, 2]


@pytest.fixture(scope="module")
def corpus_and_tokenizer(tmp_path_factory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("corpus")
    make_tree(base / "src")
    assert main(["corpus", "build", "--source", str(base / "src"), "--out", str(base / "c"),
                 "--languages", "python,go", "--workers", "1"]) == 0
    assert main(["tokenizer", "train", "--corpus", str(base / "c"), "--out", str(base / "t"),
                 "--vocab-size", "350"]) == 0
    return base / "c", base / "t"


def test_corpus_pack_on_a_full_disk_leaves_the_earlier_output(corpus_and_tokenizer, tmpfs,
                                                              capsys):
    corpus, tok = corpus_and_tokenizer
    fs = tmpfs("disk", 16)
    out = fs.path / "packed"
    argv = ["corpus", "pack", "--corpus", str(corpus), "--tokenizer", str(tok), "--out",
            str(out), "--workers", "1"]
    assert main(argv) == 0
    before = _tree_digest(out)
    fs.leave_free(_size(out) // 2)   # not enough for a second copy next to the first
    capsys.readouterr()
    _one_line(capsys, main([*argv, "--overwrite"]), "no space left on device")
    assert _tree_digest(out) == before                                 # earlier output intact
    assert sorted(p.name for p in fs.path.iterdir()) == ["ballast", "packed"]  # no temp dir
    # a read-only disk is one line too
    fs.grow()
    fs.read_only()
    _one_line(capsys, main([*argv, "--overwrite"]), "read-only file system")
    assert _tree_digest(out) == before


def test_probe_lens_on_a_full_disk_leaves_the_earlier_output(tmp_path, tmpfs, capsys):
    run = save_run(tmp_path, "llama", steps=(0,))
    fs = tmpfs("disk", 16)
    out = fs.path / "lens"
    argv = ["probe", "lens", str(run), "--new", "php", "--out", str(out)]
    assert main(argv) == 0
    before = _tree_digest(out)
    fs.leave_free(8192)
    capsys.readouterr()
    _one_line(capsys, main([*argv, "--overwrite"]), "no space left on device")
    assert _tree_digest(out) == before
    # nothing half-written: besides the earlier output only the series runner's resume
    # state (<out>.partial, finished checkpoints' rows) may stay, so a rerun resumes
    assert sorted(p.name for p in fs.path.iterdir()) in (["ballast", "lens"],
                                                          ["ballast", "lens", "lens.partial"])


# ---- real SIGINTs to real processes ----
#
# At fixed moments after start (while the CLI, torch or the data load, and while it
# works) and right as the first checkpoint lands: exit 130, one line, no traceback,
# nothing half-written. The child's SIGINT is the default one even though it is started
# here with SIGINT ignored, as under `setsid nohup make test &` (procs.started resets
# it); its whole process group is killed when the test ends, whatever happened.

SIGINT_AFTER = [0.2, 0.5, 1.0, 2.0, 4.0]
RESUME = "babeltower: interrupted; run the same command to resume"
START_AGAIN = ("babeltower: interrupted; no partial output is kept, run the same command to "
               "start again")


def _interrupt(argv: list[str], at: float | None = None, ready=None,
               timeout: float = 300) -> tuple[int, str]:
    """Run ``babeltower argv`` and send its process group SIGINT (a terminal's Ctrl-C)
    ``at`` seconds after start, or as soon as ``ready(proc)``; its exit code and stderr."""
    cmd = [sys.executable, "-m", "babeltower.cli", *argv]
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)   # inherited unless reset
    try:
        start = time.monotonic()
        with started(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                     text=True) as proc:
            signal.signal(signal.SIGINT, old)
            old = None
            while not (ready(proc) if ready else time.monotonic() - start >= at):
                assert proc.poll() is None, f"finished before the SIGINT: {proc.communicate()}"
                assert time.monotonic() - start < timeout, "the command never got going"
                time.sleep(0.005)
            assert proc.poll() is None, "finished before the SIGINT: use a bigger input"
            os.killpg(proc.pid, signal.SIGINT)
            _, err = proc.communicate(timeout=timeout)
            return proc.returncode, err.strip()
    finally:
        if old is not None:
            signal.signal(signal.SIGINT, old)


def _interrupt_at(argv: list[str], at: float) -> tuple[int, str]:
    """``_interrupt`` at ``at`` seconds; tried again (3 tries) only when the SIGINT landed
    in the interpreter's own start-up, before the first line of babeltower ran (a
    traceback of runpy/importlib frames only: ~50 ms idle, 0.2 s and more on a loaded
    machine), which no program can answer for."""
    for _ in range(3):
        rc, err = _interrupt(argv, at=at)
        if not (rc != 130 and "Traceback" in err and "babeltower" not in err):
            break
    return rc, err


def _assert_interrupted(rc: int, err: str, line: str) -> None:
    assert rc == 130, err
    assert "Traceback" not in err, err
    assert _messages(err) == [line], err


def _no_temporaries(root: Path) -> None:
    """No dot-named temporaries (atomic writes' and atomic_dir's) anywhere under root."""
    if root.exists():
        assert not [p for p in root.rglob(".*")], list(root.rglob(".*"))


def _run_is_whole(out: Path) -> None:
    """What an interrupted run left is whole: complete checkpoints, parseable files."""
    import json

    _no_temporaries(out)
    for r in list_checkpoints(out) if (out / "checkpoints").exists() else []:
        verify_checkpoint(r.path)
    for name in ("run.json",):
        if (out / name).exists():
            json.loads((out / name).read_text())
    if (out / "config.yaml").exists():
        TrainConfig.from_yaml(out / "config.yaml")
    if (out / "metrics.jsonl").exists():
        for line in (out / "metrics.jsonl").read_text().splitlines():
            json.loads(line)


def _long_train(tmp_path: Path, packed: Path, out: Path) -> Path:
    # runs until interrupted (4000 steps is minutes), never holds more than 2 checkpoints
    return _train_config(tmp_path, packed, out, max_steps=4000,
                         checkpoints={"log_spaced": False, "every": 2, "keep_last": 2})


@pytest.mark.parametrize("at", SIGINT_AFTER)
def test_sigint_to_train_at_any_moment_is_130_and_one_line(tmp_path, packed, at):
    out = tmp_path / "run"
    rc, err = _interrupt_at(["train", str(_long_train(tmp_path, packed, out))], at=at)
    _assert_interrupted(rc, err, RESUME)
    _run_is_whole(out)


def test_sigint_to_train_as_the_first_checkpoint_lands(tmp_path, packed):
    out = tmp_path / "run"
    first = out / "checkpoints" / "step-00000000"
    rc, err = _interrupt(["train", str(_long_train(tmp_path, packed, out))],
                         ready=lambda proc: first.exists())
    _assert_interrupted(rc, err, RESUME)
    _run_is_whole(out)


def _children(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return []


@pytest.fixture(scope="module")
def big_source(tmp_path_factory) -> Path:
    """12000 Python files: a `corpus build` of them runs ~13 s on an idle 2-core machine
    (3000 ran 4-5 s, and a SIGINT at 4 s once landed in the finished process's
    interpreter shutdown on a faster CI machine), so every SIGINT below lands mid-build."""
    import random

    src = tmp_path_factory.mktemp("big") / "src"
    rng = random.Random(0)
    for i in range(12000):
        p = src / f"pkg{i % 40}" / f"m{i}.py"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(python_source(rng))
    return src


def _build_argv(src: Path, out: Path) -> list[str]:
    return ["corpus", "build", "--source", str(src), "--out", str(out), "--workers", "2"]


def _build_messages(err: str) -> list[str]:
    return [x for x in _messages(err) if not x.startswith("corpus build: ")]   # its progress


def _only_the_work_dir(root: Path, out: Path) -> None:
    """An interrupted build leaves no corpus and no temporaries - only its work dir (the
    completion markers it resumes from), if it got that far."""
    assert not out.exists()
    work = out.parent / f".{out.name}.datatrove"
    stray = [p for p in root.rglob(".*") if p != work and work not in p.parents]
    assert not stray, stray


@pytest.fixture(scope="module")
def big_corpus(big_source, tmp_path_factory) -> Path:
    """The uninterrupted build of ``big_source``, for the resumed builds to equal."""
    out = tmp_path_factory.mktemp("bigref") / "corpus"
    assert main(_build_argv(big_source, out)) == 0
    return out


def _resumes_to(argv: list[str], reference: Path) -> None:
    import pandas as pd

    from test_corpus_build import read_outputs

    rerun = run_process([sys.executable, "-m", "babeltower.cli", *argv], timeout=300,
                        env=_env())
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    out = Path(argv[argv.index("--out") + 1])
    assert read_outputs(out) == read_outputs(reference)
    pd.testing.assert_frame_equal(pd.read_parquet(out / "ledger.parquet"),
                                  pd.read_parquet(reference / "ledger.parquet"))
    assert not (out.parent / f".{out.name}.datatrove").exists()


@pytest.mark.parametrize("at", SIGINT_AFTER)
def test_sigint_to_corpus_build_at_any_moment_is_130_and_resumes(tmp_path, big_source,
                                                                 big_corpus, at):
    out = tmp_path / "corpus"
    argv = _build_argv(big_source, out)
    rc, err = _interrupt_at(argv, at=at)
    assert rc == 130 and "Traceback" not in err, err
    assert _build_messages(err) == [RESUME], err
    _only_the_work_dir(tmp_path, out)
    if at == SIGINT_AFTER[-1]:   # mid-scan: the rerun resumes to the uninterrupted corpus
        _resumes_to(argv, big_corpus)


def test_sigint_to_corpus_build_with_its_scan_workers_up(tmp_path, big_source, big_corpus):
    out = tmp_path / "corpus"
    seen: list[float] = []

    def pool_up(proc) -> bool:   # the scan pool's two workers have been up for 0.3 s
        if not seen and len(_children(proc.pid)) >= 2:
            seen.append(time.monotonic())
        return bool(seen) and time.monotonic() - seen[0] > 0.3

    argv = _build_argv(big_source, out)
    rc, err = _interrupt(argv, ready=pool_up)
    assert rc == 130 and "Traceback" not in err, err
    assert _build_messages(err) == [RESUME], err
    _only_the_work_dir(tmp_path, out)
    _resumes_to(argv, big_corpus)


# ---- unexpected errors ----

def test_unexpected_error_is_one_line_with_a_traceback_log(tmp_path, capsys, monkeypatch):
    import babeltower.corpus.stats as stats

    def broken(path):
        raise ZeroDivisionError("a bug deep in the library")

    monkeypatch.setattr(stats, "print_stats", broken)
    monkeypatch.setenv("BABELTOWER_LOG_DIR", str(tmp_path / "logs"))
    capsys.readouterr()
    rc = main(["corpus", "stats", str(tmp_path)])
    err = _one_line(capsys, rc, "internal error", "ZeroDivisionError", "a bug deep")
    assert rc == 1
    (log,) = (tmp_path / "logs").iterdir()
    assert str(log) in err
    text = log.read_text()
    assert "Traceback" in text and "def broken" not in text and "in broken" in text
    # --debug prints the traceback instead (anywhere on the command line)
    rc = main(["corpus", "stats", str(tmp_path), "--debug"])
    err = capsys.readouterr().err
    assert rc == 1 and "Traceback" in err and "ZeroDivisionError" in err
    assert len(list((tmp_path / "logs").iterdir())) == 1


def test_library_errors_from_a_full_disk_are_recognised():
    """The exceptions a real full disk raised (measured on a tmpfs) map to one line."""
    import errno

    from babeltower.errors import environment_error

    def chained(outer: Exception, inner: Exception) -> Exception:
        try:
            try:
                raise inner
            except Exception:
                raise outer
        except Exception as e:
            return e

    cases = {
        "no space left on device": [
            OSError(errno.ENOSPC, "No space left on device", "/x/y"),
            RuntimeError("Error while serializing: I/O error: No space left on device "
                         "(os error 28)"),
            chained(RuntimeError("[enforce fail at inline_container.cc:672] . unexpected "
                                 "pos 576 vs 534"),
                    RuntimeError("basic_ios::clear: iostream error")),
            chained(ValueError("while saving"), OSError(errno.ENOSPC, "No space")),
        ],
        "permission denied": [PermissionError(errno.EACCES, "Permission denied", "/etc/x"),
                              RuntimeError("failed: Permission denied (os error 13)")],
        "read-only file system": [OSError(errno.EROFS, "Read-only file system")],
    }
    for message, excs in cases.items():
        for e in excs:
            got = environment_error(e)
            assert got is not None and message in str(got), (e, got)
    for e in (ValueError("bad value"), RuntimeError("shape mismatch (os error 99)"),
              KeyError("x"), OSError(errno.ENOENT, "No such file")):
        assert environment_error(e) is None, e


# ---- bad files through the CLI ----

def _bad_files(base: Path) -> dict[str, Path]:
    base.mkdir(parents=True, exist_ok=True)
    files = {"binary": base / "binary.yaml", "latin1": base / "latin1.yaml",
             "directory": base / "dir.yaml", "empty": base / "empty.yaml"}
    files["binary"].write_bytes(bytes(range(256)) * 4)
    files["latin1"].write_bytes("name: crème\n".encode("latin-1"))
    files["directory"].mkdir()
    files["empty"].write_bytes(b"")
    return files


def test_binary_config_to_train_is_one_line_in_a_subprocess(tmp_path):
    files = _bad_files(tmp_path)
    proc = run_process([sys.executable, "-m", "babeltower.cli", "train", str(files["binary"])],
                       env=_env(), timeout=600)
    assert proc.returncode == 2, proc.stderr
    assert _messages(proc.stderr) == [f"babeltower: error: train config {files['binary']} is a "
                                      "binary file; expected UTF-8 text"], proc.stderr


@pytest.mark.parametrize("argv, what, directory", [
    (["train", "{}"], "train config", "is a directory"),
    (["experiment", "{}", "--workdir", "{out}"], "experiment config", "is a directory"),
    (["corpus", "build", "--source", "{out}", "--config", "{}", "--out", "{out}"], "config",
     "is a directory"),
    (["stages", "detect", "--runs", "{}"], "metrics file", "is a directory"),
    (["optimize", "--runs", "{}", "--primary", "python", "--out", "{out}"], "metrics file",
     "is a directory"),
    # a directory is a valid input there (a pass@k output dir), so it is looked into
    (["eval", "transfer", "--primary-only", "{}", "--new-only", "{}", "--out", "{out}"],
     "pass@k results", "no pass@k results"),
])
def test_binary_non_utf8_and_directory_inputs_are_one_line(tmp_path, capsys, argv, what,
                                                           directory):
    files = _bad_files(tmp_path / "in")
    expect = {"binary": "is a binary file", "latin1": "is not UTF-8 text",
              "directory": directory}
    for kind, needle in expect.items():
        args = [a.format(files[kind], out=tmp_path / "out") for a in argv]
        capsys.readouterr()
        rc = main(args)
        err = _one_line(capsys, rc, needle)
        assert what in err or kind == "directory", err
        assert rc == 2, err
    assert not (tmp_path / "out").exists()
