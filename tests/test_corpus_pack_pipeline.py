"""corpus pack on datatrove: byte-identical for 1 and 3 tasks and equal to an independent
packing (each document tokenized here with ``tokenizers`` directly), knowledge rows and
fact spans, SIGKILL / Ctrl-C in the tokenize stage then resume, bad input, and the Slurm
path's generated scripts run locally."""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import signal
import stat
import sys
from pathlib import Path

import numpy as np
import pytest

from babeltower.corpus.build import build_corpus
from babeltower.corpus.config import BuildConfig, EngineConfig, PackConfig, TokenizerConfig
from babeltower.corpus.engine import work_dir_of
from babeltower.corpus.knowledge import knowledge_source, write_knowledge
from babeltower.corpus.pack import pack_corpus, rank_slice
from babeltower.corpus.tokenizer import train_tokenizer
from babeltower.errors import BabelError

from tokenizer_fixtures import organic_python_php

SRC = str(Path(__file__).resolve().parents[1] / "src")
SPLITS = ("train", "validation", "test")
KCFG = dict(primary="python", languages=["php"], facts_per_class=4, exposures=3, n_answers=4,
            facts_per_document=3, seed=7, keys=["same"])


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, Path]:
    """A real corpus (organic Python and PHP + injected knowledge documents) and a
    byte-level BPE tokenizer trained on it."""
    root = tmp_path_factory.mktemp("packpipe")
    kd = write_knowledge(KCFG, root / "knowledge")
    corpus = build_corpus([str(organic_python_php(root / "src", 30, seed=3)),
                           str(knowledge_source(kd))], root / "corpus", BuildConfig(),
                          EngineConfig(tasks=1, workers=1), progress=False)
    tok = train_tokenizer(corpus, root / "tok", TokenizerConfig(vocab_size=320,
                          languages=["python", "php"]), progress=False)
    return corpus, tok


def _files(data: Path) -> dict[str, str]:
    return {p.relative_to(data).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(data.rglob("*")) if p.is_file() and p.name != "manifest.json"}


def _manifest(data: Path) -> dict:
    m = json.loads((data / "manifest.json").read_text())
    return {k: v for k, v in m.items() if k not in ("provenance", "engine")}


def _rows(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def _expected_shards(corpus: Path, tok_dir: Path, lang: str, split: str):
    """.bin bytes, .docs.npy table and paths rows of one split, computed here: one
    ``Tokenizer.encode`` per document (not the pack's batches), EOS after each."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tok_dir / "tokenizer.json"))
    eos = tok.token_to_id("<|endoftext|>")
    ids, docs, pos = [], [], 0
    rows = _rows(corpus / lang / f"{split}.jsonl")
    for r in rows:
        t = tok.encode(r["text"], add_special_tokens=False).ids
        ids.extend([*t, eos])
        docs.append((pos, len(t), len(r["text"].encode("utf-8"))))
        pos += len(t) + 1
    paths = [{k: r.get(k) for k in ("source", "path", "package", "sha256")} for r in rows]
    return (np.asarray(ids, dtype=np.uint16).tobytes(),
            np.asarray(docs, dtype=np.int64).reshape(-1, 3), paths)


def test_rank_slices_are_the_contiguous_floor_rule():
    for n in range(0, 40):
        for world in range(1, 8):
            seen = []
            for rank in range(world):
                lo, hi = rank_slice(n, rank, world)
                assert [i for i in range(n) if i * world // n == rank] == list(range(lo, hi))
                seen.extend(range(lo, hi))
            assert seen == list(range(n))


def test_pack_is_byte_identical_for_1_and_3_tasks_and_equals_direct_tokenization(built,
                                                                                 tmp_path):
    corpus, tok = built
    packs = {n: pack_corpus(corpus, tok, tmp_path / f"d{n}", PackConfig(batch_docs=4),
                            progress=False, engine=EngineConfig(tasks=n, workers=min(n, 2)))
             for n in (1, 3)}
    assert _files(packs[1]) == _files(packs[3])
    assert _manifest(packs[1]) == _manifest(packs[3])
    for n, data in packs.items():
        engine = json.loads((data / "manifest.json").read_text())["engine"]
        assert (engine["name"], engine["executor"], engine["tasks"]) == ("datatrove", "local", n)
        assert not work_dir_of(data, EngineConfig(), "datatrove-pack").exists()
    data = packs[3]
    m = json.loads((data / "manifest.json").read_text())
    assert sorted(m["languages"]) == ["php", "python"]
    n_splits = 0
    for lang in ("php", "python"):
        for split in SPLITS:
            if not (corpus / lang / f"{split}.jsonl").is_file():
                continue
            n_splits += 1
            bin_bytes, docs, paths = _expected_shards(corpus, tok, lang, split)
            assert (data / lang / f"{split}.bin").read_bytes() == bin_bytes, (lang, split)
            got = np.load(data / lang / f"{split}.docs.npy")
            assert got.dtype == np.int64 and np.array_equal(got, docs), (lang, split)
            assert _rows(data / lang / f"{split}.paths.jsonl") == paths
            assert m["languages"][lang][split]["documents"] == len(paths)
    assert n_splits >= 4   # held-out splits too, so slices cross split files


def test_knowledge_rows_and_fact_spans(built, tmp_path):
    """Every injected document of the corpus once, at its row of its split file, and
    each fact span's tokens decode to that fact's rendering (found here as the blank-line
    separated pieces of the text); equal for 1 and 3 tasks."""
    from tokenizers import Tokenizer

    corpus, tok_dir = built
    tok = Tokenizer.from_file(str(tok_dir / "tokenizer.json"))
    a = pack_corpus(corpus, tok_dir, tmp_path / "a", progress=False,
                    engine=EngineConfig(tasks=1, workers=1))
    b = pack_corpus(corpus, tok_dir, tmp_path / "b", progress=False,
                    engine=EngineConfig(tasks=3, workers=2))
    rows = _rows(a / "knowledge.jsonl")
    assert rows == _rows(b / "knowledge.jsonl")
    listed = _rows(corpus / json.loads((corpus / "manifest.json").read_text())
                   ["knowledge"]["documents_file"])
    assert len(rows) == len(listed) > 10
    assert sorted(r["path"] for r in rows) == sorted(d["path"] for d in listed)
    texts = {}
    for r in rows:
        split_rows = texts.setdefault((r["language"], r["split"]), _rows(
            corpus / r["language"] / f"{r['split']}.jsonl"))
        row = split_rows[r["doc"]]
        assert (row["path"], row["source"]) == (r["path"], r["source"])
        ids = tok.encode(row["text"], add_special_tokens=False).ids
        pieces = [p.strip() for p in row["text"].split("\n\n") if p.strip()]
        assert r["fact_spans"] is not None and len(r["fact_spans"]) == len(r["facts"])
        for (first, end), piece in zip(r["fact_spans"], pieces[-len(r["facts"]):]):
            assert 0 <= first < end <= len(ids)
            assert piece in tok.decode(ids[first:end]), (piece, r["path"])
    order = [(r["language"], SPLITS.index(r["split"]), r["doc"]) for r in rows]
    assert order == sorted(order)   # pack order: language, split, row


def _synthetic_corpus(root: Path, n_docs: int) -> Path:
    """A corpus dir in the built format, written here: one language, n_docs documents."""
    rng = random.Random(11)
    words = ["def", "return", "self", "value", "items", "for", "in", "if", "else", "print",
             "result", "index", "count", "name", "data", "(", ")", ":", "=", "+", ","]
    (root / "python").mkdir(parents=True)
    with open(root / "python" / "train.jsonl", "w", encoding="utf-8") as f:
        for i in range(n_docs):
            lines = [" ".join(rng.choice(words) for _ in range(rng.randint(3, 12)))
                     for _ in range(rng.randint(5, 30))]
            text = "\n".join(lines) + "\n"
            f.write(json.dumps({"text": text, "source": "synthetic", "path": f"m{i}.py",
                                "package": f"p{i % 50}",
                                "sha256": hashlib.sha256(text.encode()).hexdigest()}) + "\n")
    (root / "manifest.json").write_text(json.dumps({
        "format": "babeltower-corpus/1", "languages": {"python": {}}, "dropped": {}}))
    return root


def _pack_argv(corpus: Path, tok: Path, out: Path, tasks: int, workers: int) -> list[str]:
    return [sys.executable, "-m", "babeltower.cli", "corpus", "pack", "--corpus", str(corpus),
            "--tokenizer", str(tok), "--out", str(out), "--tasks", str(tasks),
            "--workers", str(workers)]


@pytest.fixture(scope="module")
def big(built, tmp_path_factory) -> tuple[Path, Path]:
    """A 3 MB synthetic corpus and its uninterrupted pack (1 task, in-process)."""
    root = tmp_path_factory.mktemp("bigpack")
    corpus = _synthetic_corpus(root / "corpus", 4000)
    return corpus, pack_corpus(corpus, built[1], root / "ref", progress=False,
                               engine=EngineConfig(tasks=1, workers=1))


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_kill_in_the_tokenize_stage_then_resume(built, big, tmp_path, sig):
    """SIGKILL (or Ctrl-C) the whole pack once some of its 12 tokenize tasks (~0.1 s
    each, one at a time) have finished; the rerun skips them (completion markers) and
    writes the uninterrupted pack's bytes."""
    from procs import run
    from stage_kill import kill_part_way

    _, tok = built
    corpus, ref = big
    out, tasks = tmp_path / "out", 12
    env = {**os.environ, "PYTHONPATH": SRC}
    done = work_dir_of(out, EngineConfig(), "datatrove-pack") / "logs" / "tokenize" / "completions"
    argv = _pack_argv(corpus, tok, out, tasks, workers=1)
    rc, finished, lines = kill_part_way(argv, env, done, sig, tmp_path / "err", "corpus pack: ")
    assert 1 <= finished < tasks, finished     # stopped part-way through the tokenize stage
    assert not out.exists()                    # no half-written data dir
    if sig == signal.SIGINT:
        assert rc == 130 and lines == ["babeltower: interrupted; run the same command to "
                                       "resume"], (rc, lines)
    rerun = run(argv, env=env, timeout=120)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert f"stage tokenize: {tasks} task(s), {finished} already done" in rerun.stderr
    assert not done.parent.parent.parent.exists()   # the work dir is gone
    assert _files(out) == _files(ref) and _manifest(out)["languages"] == \
        _manifest(ref)["languages"]


def test_bad_input_is_one_error_and_leaves_nothing(built, tmp_path):
    _, tok = built
    corpus = _synthetic_corpus(tmp_path / "corpus", 30)
    with open(corpus / "python" / "train.jsonl", "a", encoding="utf-8") as f:
        f.write("{not json\n")
    out = tmp_path / "out"
    with pytest.raises(BabelError, match=r"train.jsonl:31: malformed JSON"):
        pack_corpus(corpus, tok, out, progress=False, engine=EngineConfig(tasks=2, workers=2))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus"]   # no out, no work dir
    with pytest.raises(BabelError, match="already exists"):
        (tmp_path / "taken").mkdir()
        pack_corpus(corpus, tok, tmp_path / "taken", progress=False)


def _executable(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


def test_slurm_scripts_and_their_task_commands_pack_the_same_data(built, tmp_path,
                                                                  monkeypatch):
    """No scheduler: a stand-in sbatch records each submission; the recorded scripts are
    checked, then run stage by stage, array index by array index, with bash."""
    from procs import run

    corpus, tok = built
    fake, subs = tmp_path / "bin", tmp_path / "submitted"
    fake.mkdir()
    subs.mkdir()
    _executable(fake / "sbatch", f"""#!/bin/bash
n=$(ls {subs} | wc -l); n=$((n / 2 + 100))
cp "${{@: -1}}" {subs}/$n.sh; echo "$@" > {subs}/$n.args
echo "Submitted batch job $n"
""")
    _executable(fake / "scontrol", "#!/bin/bash\necho localhost\n")
    _executable(fake / "srun", '#!/bin/bash\nwhile [ "$1" != launch_pickled_pipeline ]; do '
                               'shift; done\nexec "$@"\n')
    monkeypatch.setenv("PATH", f"{fake}{os.pathsep}{os.environ['PATH']}")
    engine = EngineConfig.model_validate({
        "executor": "slurm", "tasks": 2,
        "slurm": {"partition": "cpu-test", "time": "00:10:00", "job_name": "bt-pack"}})
    out = tmp_path / "data"
    assert pack_corpus(corpus, tok, out, progress=False, engine=engine) == out.absolute()
    assert not out.exists()   # submitted, not packed
    jobs = {}
    for sh in sorted(subs.glob("*.sh")):
        text = sh.read_text()
        if "launch_pickled_pipeline" in text:
            name = re.search(r"#SBATCH --job-name=(\S+)", text).group(1)
            jobs[name] = (int(sh.stem), text, (subs / f"{sh.stem}.args").read_text().split())
    stages = ["bt-pack-tokenize", "bt-pack-merge"]
    assert set(stages) <= set(jobs), sorted(jobs)
    for stage, array in zip(stages, ("0-1", "0-0")):
        _, text, _ = jobs[stage]
        for line in ("#SBATCH --partition=cpu-test", "#SBATCH --time=00:10:00",
                     f"#SBATCH --array={array}"):
            assert line in text.splitlines(), (stage, line)
        assert re.search(r"srun .*launch_pickled_pipeline \S+\.data\.datatrove-pack/logs/"
                         + stage.rsplit("-", 1)[1] + r"/executor\.pik", text), text
    assert f"--dependency=afterok:{jobs[stages[0]][0]}" in jobs[stages[1]][2]
    env = {**os.environ, "PYTHONPATH": SRC, "SLURM_NODELIST": "localhost"}
    for stage in stages:
        _, text, _ = jobs[stage]
        hi = int(re.search(r"#SBATCH --array=0-(\d+)", text).group(1))
        for task in range(hi + 1):
            done = run(["bash", "-c", text], timeout=120,
                       env={**env, "SLURM_ARRAY_TASK_ID": str(task), "SLURM_JOB_ID": "1"})
            assert done.returncode == 0, (stage, task, done.stderr[-2000:])
    ref = pack_corpus(corpus, tok, tmp_path / "ref", progress=False,
                      engine=EngineConfig(tasks=1, workers=1))
    assert _files(out) == _files(ref)
    assert _manifest(out) == {**_manifest(ref), "corpus": _manifest(out)["corpus"]}
    assert json.loads((out / "manifest.json").read_text())["engine"]["executor"] == "slurm"


def test_cli_pack_config_and_engine_options(built, tmp_path, capsys):
    from babeltower.cli import main

    corpus, tok = built
    cfg = tmp_path / "pack.yaml"
    cfg.write_text("pack:\n  batch_docs: 2\nengine:\n  tasks: 2\n  workers: 1\n")
    out = tmp_path / "data"
    assert main(["corpus", "pack", "--corpus", str(corpus), "--tokenizer", str(tok),
                 "--out", str(out), "--config", str(cfg), "--tasks", "3"]) == 0
    m = json.loads((out / "manifest.json").read_text())
    assert m["config"] == {"batch_docs": 2}
    assert (m["engine"]["executor"], m["engine"]["tasks"]) == ("local", 3)  # option wins
    capsys.readouterr()
    cfg.write_text("pack:\n  workers: 2\n")   # PackConfig.workers is gone: the engine's
    assert main(["corpus", "pack", "--corpus", str(corpus), "--tokenizer", str(tok),
                 "--out", str(tmp_path / "d2"), "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "workers" in err, err
    assert not (tmp_path / "d2").exists()


def test_ray_on_a_loopback_only_network_packs_the_same_data(built, tmp_path):
    """The Ray executor's own local cluster (2 worker CPUs on 127.0.0.1) in a network
    namespace whose only interface is the loopback (as the build's Ray test); the whole
    process group is killed at the end; HOME is the test's own."""
    import ray  # noqa: F401  the [ray] extra: installed by make install, never skipped

    from procs import run

    corpus, tok = built
    (tmp_path / "home").mkdir()
    env = {**os.environ, "PYTHONPATH": SRC, "HOME": str(tmp_path / "home"),
           "RAY_USAGE_STATS_ENABLED": "0"}
    out = tmp_path / "ray"
    helper = Path(__file__).with_name("ray_loopback_pack.py")
    done = run(["unshare", "--map-root-user", "--net", sys.executable, str(helper),
                str(corpus), str(tok), str(out)], env=env, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "stage tokenize: 2 Ray task(s)" in done.stderr
    ref = pack_corpus(corpus, tok, tmp_path / "ref", progress=False,
                      engine=EngineConfig(tasks=1, workers=1))
    assert _files(out) == _files(ref) and _manifest(out) == _manifest(ref)
    assert json.loads((out / "manifest.json").read_text())["engine"]["executor"] == "ray"


def test_killed_after_the_last_rename_the_rerun_finishes(built, tmp_path):
    """Killed between the last stage renaming its output into place and datatrove marking
    that stage done: the output is whole and only the work dir is left. The same command
    then finishes (the output's manifest carries the job's fingerprint hash) - for the
    build and for the pack - while any other job still refuses the existing output."""
    corpus, tok = built
    src = Path(json.loads((corpus / "manifest.json").read_text())["sources"][0])
    engine = EngineConfig(tasks=1, workers=1)
    for out, again, other in (
            (tmp_path / "corpus",
             lambda o: build_corpus([src], o, BuildConfig(), engine, progress=False),
             lambda o: build_corpus([src], o, BuildConfig(seed=1), engine, progress=False)),
            (tmp_path / "data",
             lambda o: pack_corpus(corpus, tok, o, engine=engine, progress=False),
             lambda o: pack_corpus(corpus, tok, o, PackConfig(batch_docs=7), engine=engine,
                                   progress=False))):
        again(out)
        before = _files(out)
        kind = "datatrove" if out.name == "corpus" else "datatrove-pack"
        work = work_dir_of(out.absolute(), engine, kind)
        work.mkdir()                       # what the kill left next to the whole output
        assert again(out) == out.absolute() and _files(out) == before
        assert not work.exists()
        work.mkdir()
        with pytest.raises(BabelError, match="already exists"):
            other(out)
