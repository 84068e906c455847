"""corpus build on datatrove: the same corpus as the serial reference builder
(tests/corpus_reference.py; 1 and 4 tasks, drop and group modes), planted near-duplicates
found across packages and sources, SIGKILL in the dedup stage then resume, Slurm's
generated scripts run locally, and Ray."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import stat
import sys
from pathlib import Path

import pandas as pd
import pytest

from babeltower.corpus.build import build_corpus
from babeltower.corpus.config import BuildConfig, DedupConfig, EngineConfig, SplitConfig
from babeltower.corpus.engine import work_dir_of

from corpus_reference import reference_build

from test_corpus_build import CFG, go_source, make_tree, python_source, read_outputs

SRC = str(Path(__file__).resolve().parents[1] / "src")


def _tweak(text: str, lines: list[int], tag: str = "") -> str:
    out = text.splitlines()
    for i in lines:
        out[i] = out[i] + f"  # tweak {i}{tag}"
    return "\n".join(out) + "\n"


def _replace(text: str, frac: float, rng: random.Random) -> str:
    out = text.splitlines()
    for i in rng.sample(range(len(out)), int(frac * len(out))):
        out[i] = f"    v_{rng.randrange(10**9)} = {rng.randrange(10**9)}"
    return "\n".join(out) + "\n"


def make_planted(root: Path, base_tree: dict) -> dict:
    """Known near-duplicate groups, across packages and across sources, an exact copy
    of a near duplicate, a half-rewritten file that is NOT a near duplicate, and
    distinct filler. Returns {group root path: [member paths]} per source-qualified id."""
    rng = random.Random(11)
    a = python_source(rng, n_funcs=30)
    b = go_source(rng) + go_source(rng)
    files = {
        "pkg_p/base.py": a,
        "pkg_q/copy1.py": _tweak(a, [4]),
        "pkg_r/copy2.py": _tweak(a, [9, 30]),
        "pkg_t/exact.py": _tweak(a, [4]),                 # exact copy of pkg_q/copy1.py
        "pkg_s/far.py": _replace(a, 0.6, rng),            # shares <half its 5-grams
        "pkg_q/base.go": b,
        "pkg_s/variant.go": _tweak(b, [3]).replace("# tweak", "// tweak"),
        # near duplicate of a file of the other source (make_tree's pkg_a/mod1.py)
        "pkg_u/mod1_variant.py": _tweak(base_tree["files"]["pkg_a/mod1.py"].decode(), [2]),
    }
    for i in range(12):
        files[f"fill_{i}/m.py"] = python_source(rng)
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return files


def _grams(text: str) -> set:
    toks = re.findall(r"\w+|[^\w\s]", text)
    return {tuple(toks[i:i + 5]) for i in range(len(toks) - 4)}


def _jaccard(x: str, y: str) -> float:
    gx, gy = _grams(x), _grams(y)
    return len(gx & gy) / len(gx | gy)


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    d = tmp_path_factory.mktemp("dtsrc")
    info = make_tree(d / "tree")
    planted = make_planted(d / "planted", info)
    return [str(d / "tree"), str(d / "planted")], info, planted


@pytest.fixture(scope="module")
def reference(sources, tmp_path_factory):
    """The serial reference builder's corpus of ``sources`` with the default test config."""
    srcs, _, _ = sources
    return reference_build(srcs, tmp_path_factory.mktemp("ref") / "ref", BuildConfig(**CFG))


def _ledger(out: Path) -> pd.DataFrame:
    return pd.read_parquet(out / "ledger.parquet")


def _same_corpus(a: Path, b: Path) -> None:
    assert read_outputs(a) == read_outputs(b)
    pd.testing.assert_frame_equal(_ledger(a), _ledger(b))
    ma, mb = (json.loads((x / "manifest.json").read_text()) for x in (a, b))
    differ = {k for k in set(ma) | set(mb) if ma.get(k) != mb.get(k)}
    # provenance has the build time; engine says datatrove, which executor and tasks
    assert differ <= {"provenance", "engine"}, differ
    assert "engine" not in ma and mb["engine"]["name"] == "datatrove"


@pytest.mark.parametrize("tasks", [1, 4])
def test_datatrove_local_build_equals_the_serial_reference(sources, reference, tmp_path, tasks):
    srcs, _, _ = sources
    cfg = BuildConfig(**CFG)
    out = build_corpus(srcs, tmp_path / "dt", cfg,
                       EngineConfig(executor="local", tasks=tasks, workers=2),
                       progress=False)
    _same_corpus(reference, out)
    assert not work_dir_of(out, EngineConfig()).exists()   # the work dir is gone


def test_planted_near_duplicates_across_packages_and_sources(sources, tmp_path):
    srcs, info, planted = sources
    tree, pl = srcs
    # the fixture is what it claims, measured on the 5-gram sets themselves
    assert _jaccard(planted["pkg_p/base.py"], planted["pkg_q/copy1.py"]) > 0.9
    assert _jaccard(planted["pkg_p/base.py"], planted["pkg_r/copy2.py"]) > 0.85
    assert _jaccard(planted["pkg_q/base.go"], planted["pkg_s/variant.go"]) > 0.85
    assert _jaccard(info["files"]["pkg_a/mod1.py"].decode(), planted["pkg_u/mod1_variant.py"]) > 0.9
    assert _jaccard(planted["pkg_p/base.py"], planted["pkg_s/far.py"]) < 0.5
    out = build_corpus(srcs, tmp_path / "dt", BuildConfig(**CFG),
                       EngineConfig(executor="local", tasks=4, workers=2),
                       progress=False)
    led = _ledger(out)
    row = {(r.source, r.path): r for r in led.itertuples()}
    expected = {  # member -> the file it duplicates (the first in source/path order)
        (pl, "pkg_q/copy1.py"): f"{pl}:pkg_p/base.py",
        (pl, "pkg_r/copy2.py"): f"{pl}:pkg_p/base.py",
        (pl, "pkg_s/variant.go"): f"{pl}:pkg_q/base.go",
        (pl, "pkg_u/mod1_variant.py"): f"{tree}:pkg_a/mod1.py",   # across sources
    }
    for key, root in expected.items():
        assert row[key].reason == "near_duplicate" and row[key].duplicate_of == root, key
    assert row[(pl, "pkg_t/exact.py")].reason == "exact_duplicate"
    assert row[(pl, "pkg_t/exact.py")].duplicate_of == f"{pl}:pkg_q/copy1.py"
    for kept in ("pkg_p/base.py", "pkg_q/base.go", "pkg_s/far.py"):
        assert row[(pl, kept)].status == "kept", kept
    assert not led[(led.source == pl) & led.path.str.startswith("fill_")].reason.notna().any()


def test_group_mode_keeps_clusters_in_one_split_as_the_reference_does(sources, tmp_path):
    """near_duplicates=group, split file by file: every planted cluster lands in one
    split, and the split of every file is the reference builder's."""
    srcs, _, _ = sources
    tree, pl = srcs
    cfg = BuildConfig(**CFG, seed=3, dedup=DedupConfig(near_duplicates="group"),
                      split=SplitConfig(validation=0.3, test=0.3, group_by="file"))
    ref = reference_build(srcs, tmp_path / "ref", cfg)
    out = build_corpus(srcs, tmp_path / "dt", cfg,
                       EngineConfig(executor="local", tasks=4, workers=2),
                       progress=False)
    _same_corpus(ref, out)
    clusters = ([(pl, "pkg_p/base.py"), (pl, "pkg_q/copy1.py"), (pl, "pkg_r/copy2.py")],
                [(pl, "pkg_q/base.go"), (pl, "pkg_s/variant.go")],
                [(tree, "pkg_a/mod1.py"), (pl, "pkg_u/mod1_variant.py")])

    def splits_of(led):
        return {(r.source, r.path): r.split for r in led.dropna(subset=["split"]).itertuples()}

    split = splits_of(_ledger(out))
    for cluster in clusters:
        assert len({split[m] for m in cluster}) == 1, cluster
    assert len(set(split.values())) == 3
    # without near dedup the same seed cuts a planted cluster: the link is what holds it
    unlinked = build_corpus(srcs, tmp_path / "unlinked",
                            cfg.model_copy(update={"dedup": DedupConfig(near=False)}),
                            progress=False)
    loose = splits_of(_ledger(unlinked))
    assert any(len({loose[m] for m in cluster}) > 1 for cluster in clusters)


def _many_near_duplicates(root: Path, n: int) -> None:
    """n variants of one file (one near-duplicate cluster: the LSH stage's heavy case,
    every pair of a bucket is confirmed) and n distinct files."""
    rng = random.Random(5)
    base = python_source(rng, n_funcs=20)
    for i in range(n):
        (root / f"v{i:04d}").mkdir(parents=True)
        (root / f"v{i:04d}" / "m.py").write_text(_tweak(base, [i % 60 + 3], f" v{i}"))
        (root / f"d{i:04d}").mkdir(parents=True)
        (root / f"d{i:04d}" / "m.py").write_text(python_source(rng, n_funcs=4))


def _build_argv(src: Path, out: Path, tasks: int, workers: int) -> list[str]:
    return [sys.executable, "-m", "babeltower.cli", "corpus", "build", "--source", str(src),
            "--out", str(out), "--languages", "python", "--executor", "local",
            "--tasks", str(tasks), "--workers", str(workers)]


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_kill_in_the_dedup_stage_then_resume(tmp_path, sig):
    """SIGKILL (or Ctrl-C) the whole build while its LSH stage is part done, its tasks on
    a pool of 2 workers; the rerun skips the finished tasks (completion markers) and
    writes the uninterrupted build's corpus. Ctrl-C is one line and exit 130."""
    from procs import run
    from stage_kill import kill_part_way

    src, out, tasks = tmp_path / "src", tmp_path / "out", 4
    _many_near_duplicates(src, 150)
    env = {**os.environ, "PYTHONPATH": SRC}
    done = work_dir_of(out, EngineConfig()) / "logs" / "lsh" / "completions"
    argv = _build_argv(src, out, tasks, workers=2)
    rc, finished, lines = kill_part_way(argv, env, done, sig, tmp_path / "err", "corpus build: ")
    assert 1 <= finished < tasks, finished        # stopped part-way through the LSH stage
    assert not out.exists()                       # no half-written corpus
    if sig == signal.SIGINT:
        assert rc == 130 and lines == ["babeltower: interrupted; run the same command to "
                                       "resume"], (rc, lines)
    rerun = run(argv, env=env, timeout=120)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert f"stage scan: {tasks} task(s), {tasks} already done" in rerun.stderr
    assert f"stage lsh: {tasks} task(s), {finished} already done" in rerun.stderr
    ref = reference_build([src], tmp_path / "ref", BuildConfig(languages=["python"]))
    _same_corpus(ref, out)
    m = json.loads((out / "manifest.json").read_text())
    assert m["dropped"]["near_duplicate"] == 149      # the planted cluster, one file kept


def _executable(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


def test_slurm_scripts_and_their_task_commands_build_the_same_corpus(sources, reference,
                                                                     tmp_path, monkeypatch):
    """No scheduler: a stand-in sbatch records each submission; the recorded scripts are
    checked, then run stage by stage, array index by array index, with bash."""
    from procs import run

    srcs, _, _ = sources
    fake = tmp_path / "bin"
    fake.mkdir()
    subs = tmp_path / "submitted"
    subs.mkdir()
    _executable(fake / "sbatch", f"""#!/bin/bash
n=$(ls {subs} | wc -l); n=$((n / 2 + 100))
cp "${{@: -1}}" {subs}/$n.sh; echo "$@" > {subs}/$n.args
echo "Submitted batch job $n"
""")
    _executable(fake / "scontrol", "#!/bin/bash\necho localhost\n")   # show hostnames
    _executable(fake / "srun", '#!/bin/bash\nwhile [ "$1" != launch_pickled_pipeline ]; do '
                               'shift; done\nexec "$@"\n')
    monkeypatch.setenv("PATH", f"{fake}{os.pathsep}{os.environ['PATH']}")
    cfg = BuildConfig(**CFG)
    engine = EngineConfig.model_validate({
        "executor": "slurm", "tasks": 2,
        "slurm": {"partition": "cpu-test", "time": "00:20:00", "cpus_per_task": 2,
                  "sbatch_args": {"account": "babel"}}})
    out = tmp_path / "dt"
    assert build_corpus(srcs, out, cfg, engine, progress=False) == out.absolute()
    assert not out.exists()   # submitted, not built
    jobs = {}
    for sh in sorted(subs.glob("*.sh")):
        text, args = sh.read_text(), (subs / f"{sh.stem}.args").read_text().split()
        if "launch_pickled_pipeline" not in text:
            assert "merge_stats" in text   # datatrove's stats summary job
            continue
        name = re.search(r"#SBATCH --job-name=(\S+)", text).group(1)
        jobs[name] = (int(sh.stem), text, args)
    stages = ["babeltower-corpus-scan", "babeltower-corpus-lsh", "babeltower-corpus-final"]
    assert set(stages) <= set(jobs)
    for i, (stage, array) in enumerate(zip(stages, ("0-1", "0-1", "0-0"))):
        job_id, text, args = jobs[stage]
        for line in ("#SBATCH --partition=cpu-test", "#SBATCH --time=00:20:00",
                     "#SBATCH --cpus-per-task=2", "#SBATCH --account=babel",
                     f"#SBATCH --array={array}"):
            assert line in text.splitlines(), (stage, line)
        assert f'source "{Path(sys.prefix) / "bin" / "activate"}"' in text
        assert re.search(r"srun .*launch_pickled_pipeline \S+/logs/" + stage.rsplit("-", 1)[1]
                         + r"/executor\.pik", text), text
        if i:   # each stage waits for the previous one to succeed
            assert f"--dependency=afterok:{jobs[stages[i - 1]][0]}" in args, args
    env = {**os.environ, "PYTHONPATH": SRC, "SLURM_NODELIST": "localhost"}
    for stage in stages:
        _, text, _ = jobs[stage]
        hi = int(re.search(r"#SBATCH --array=0-(\d+)", text).group(1))
        for task in range(hi + 1):
            done = run(["bash", "-c", text], timeout=120,
                       env={**env, "SLURM_ARRAY_TASK_ID": str(task), "SLURM_JOB_ID": "1"})
            assert done.returncode == 0, (stage, task, done.stderr[-2000:])
    _same_corpus(reference, out)


def _filters_yaml(tmp_path: Path) -> Path:
    """CFG's filters as the CLI's --config (max_bytes: the fixture's too_large file)."""
    p = tmp_path / "build.yaml"
    p.write_text(json.dumps({"filters": {"max_bytes": CFG["filters"].max_bytes}}))
    return p


def test_cli_executor_local_and_its_errors_are_one_line(sources, reference, tmp_path, capsys):
    from babeltower.cli import main

    srcs, _, _ = sources
    args = ["corpus", "build", "--source", srcs[0], "--source", srcs[1], "--languages",
            "python,go,javascript"]
    assert main([*args, "--out", str(tmp_path / "d"), "--executor", "local", "--tasks", "3",
                 "--workers", "2", "--config", str(_filters_yaml(tmp_path))]) == 0
    _same_corpus(reference, tmp_path / "d")
    assert json.loads((tmp_path / "d" / "manifest.json").read_text())["engine"]["tasks"] == 3
    capsys.readouterr()
    # a row that breaks the reader inside a task: one line, non-zero, no output
    bad = tmp_path / "rows.jsonl"
    bad.write_text('{"content": "x = 1\\n", "lang": "python"}\n{"content": 5, "lang": "python"}\n')
    for extra in (["--tasks", "2", "--workers", "2"], ["--tasks", "1"]):
        rc = main(["corpus", "build", "--source", str(bad), "--out", str(tmp_path / "e"),
                   "--executor", "local", *extra])
        lines = capsys.readouterr().err.strip().splitlines()
        err = [x for x in lines if not x.startswith("corpus build: ")]  # progress
        assert rc != 0 and len(err) == 1 and err[0].startswith("babeltower: error: row 1"), lines
        assert not (tmp_path / "e").exists()
    rc = main([*args, "--out", str(tmp_path / "g"), "--executor", "spark"])
    assert rc != 0 and len(capsys.readouterr().err.strip().splitlines()) == 1


def test_ray_on_a_loopback_only_network_builds_the_same_corpus(sources, reference, tmp_path):
    """The Ray executor's own local cluster (2 worker CPUs on 127.0.0.1) in a network
    namespace whose only interface is the loopback: Ray binds its servers to every
    interface it sees, so this is what keeps it to 127.0.0.1. The whole process group
    (Ray's head, raylet, workers) is killed at the end; HOME is the test's own (Ray writes
    its auth token there)."""
    import ray  # noqa: F401  the [ray] extra: installed by make install, never skipped

    from procs import run

    srcs, _, _ = sources
    cfg = BuildConfig(**CFG)
    (tmp_path / "home").mkdir()
    env = {**os.environ, "PYTHONPATH": SRC, "HOME": str(tmp_path / "home"),
           "RAY_USAGE_STATS_ENABLED": "0"}
    out = tmp_path / "ray"
    helper = Path(__file__).with_name("ray_loopback_build.py")
    done = run(["unshare", "--map-root-user", "--net", sys.executable, str(helper), str(out),
                cfg.model_dump_json(), *srcs], env=env, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "stage final: 1 Ray task(s)" in done.stderr
    _same_corpus(reference, out)
    assert json.loads((out / "manifest.json").read_text())["engine"]["executor"] == "ray"


@pytest.mark.parametrize("world_size", [1, 3, 16])
def test_lsh_stage_clusters_equal_datasketch_lsh(tmp_path, world_size):
    """On signatures with planted similar pairs at Jaccard estimates around the threshold
    (0.55-0.95 agreement) the edges of all ranks give the clusters of datasketch's
    MinHashLSH + confirmation (the builtin builder), whatever the number of ranks."""
    import numpy as np

    from babeltower.corpus.dedup import near_duplicate_clusters
    from babeltower.corpus.build import MinHashLSHEdges, atomic_npz, clusters_from_edges

    rng = np.random.default_rng(7)
    sigs = []
    for _ in range(60):
        base = rng.integers(0, 2**32, 128, dtype=np.uint64)
        sigs.append(base)
        for agree in rng.uniform(0.55, 0.95, size=rng.integers(0, 4)):
            s = base.copy()
            flip = rng.random(128) > agree
            s[flip] = rng.integers(0, 2**32, int(flip.sum()), dtype=np.uint64)
            sigs.append(s)
    order = rng.permutation(len(sigs))
    sigs = [sigs[i] for i in order]
    shas = [f"{i:064x}" for i in range(len(sigs))]
    # two scan ranks' signature files
    half = len(sigs) // 2
    for r, (lo, hi) in enumerate(((0, half), (half, len(sigs)))):
        atomic_npz(tmp_path / "sig" / f"{r:05d}.npz", sha=np.array(shas[lo:hi], dtype="S64"),
                    sig=np.array(sigs[lo:hi], dtype=np.uint64))
    cfg = BuildConfig()
    for rank in range(world_size):
        list(MinHashLSHEdges(cfg, str(tmp_path / "sig"), str(tmp_path / "edges"))
             .run(None, rank, world_size))
    edges = []
    for p in sorted((tmp_path / "edges").glob("*.npz")):
        with np.load(p) as z:
            edges.extend(zip(z["a"].tolist(), z["b"].tolist()))
    kept = [{"sha256": s} for s in shas]
    want = near_duplicate_clusters(sigs, cfg.dedup.threshold, cfg.dedup.num_perm)
    assert clusters_from_edges(kept, edges) == want
    assert 10 < sum(r != i for i, r in enumerate(want)) < len(sigs) - 60  # mixed outcomes
