"""tokenizer train + corpus pack + prepare_data + stats: round trips and read-back."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

from babeltower.corpus.build import build_corpus
from babeltower.corpus.config import (BuildConfig, EngineConfig, PackConfig, SplitConfig,
                                      TokenizerConfig)
from babeltower.corpus.corpusdir import CorpusDir
from babeltower.corpus.pack import encode_documents, pack_corpus
from babeltower.corpus.prepare import prepare_data
from babeltower.corpus.shards import SPLITS, TokenShards
from babeltower.corpus.stats import corpus_stats, render_stats
from babeltower.corpus.tokenizer import train_tokenizer
from babeltower.errors import BabelError

from test_corpus_build import go_source, python_source


def _tree(root: Path) -> Path:
    rng = random.Random(5)
    for pkg in range(6):
        for i in range(3):
            p = root / f"p{pkg}" / f"m{i}.py"
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(python_source(rng, 6))
        (root / f"p{pkg}" / "x.go").write_text(go_source(rng))
    # non-ASCII text must survive the byte-level round trip
    (root / "p0" / "unicode.py").write_text(
        "# -*- coding: utf-8 -*-\nGREETING = 'héllo wörld ✓ 你好 🎉'\n\n\ndef greet(name):\n"
        "    return f'{GREETING}, {name}!'\n")
    return root


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("tok")
    src = _tree(base / "src")
    return build_corpus([src], base / "corpus",
                        BuildConfig(split=SplitConfig(validation=0.2, test=0.2)),
                        progress=False)


@pytest.fixture(scope="module")
def tokenizer(corpus, tmp_path_factory) -> Path:
    return train_tokenizer(corpus, tmp_path_factory.mktemp("t") / "tok",
                           TokenizerConfig(vocab_size=400), progress=False)


def test_tokenizer_round_trip_and_autotokenizer(corpus, tokenizer):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tokenizer))
    assert tok.eos_token == "<|endoftext|>" and tok.pad_token == "<|pad|>"
    assert tok.eos_token_id != tok.pad_token_id
    assert len(tok) == 400
    c = CorpusDir(corpus)
    texts = [r["text"] for lang in c.languages for s in SPLITS for r in c.read(lang, s)]
    assert any("你好" in t for t in texts)
    for t in texts:
        ids = tok(t, add_special_tokens=False)["input_ids"]
        assert tok.decode(ids) == t  # lossless, whitespace included
    # merges were learned from code: a keyword is a single token
    assert len(tok("return", add_special_tokens=False)["input_ids"]) == 1


def test_tokenizer_is_deterministic(corpus, tokenizer, tmp_path):
    again = train_tokenizer(corpus, tmp_path / "tok2", TokenizerConfig(vocab_size=400),
                            progress=False)
    assert (again / "tokenizer.json").read_bytes() == (tokenizer / "tokenizer.json").read_bytes()


def test_tokenizer_sample_is_language_balanced(corpus, tmp_path):
    out = train_tokenizer(corpus, tmp_path / "t", TokenizerConfig(vocab_size=300,
                                                                  sample_mb_per_language=0.001),
                          progress=False)
    sample = json.loads((out / "babeltower_tokenizer.json").read_text())["sample"]
    assert set(sample) == {"python", "go"}
    c = CorpusDir(corpus)
    for lang, info in sample.items():  # each language stops at the first doc past 1 kB
        docs = [len(r["text"].encode()) for r in c.read(lang, "train")]
        assert 1_000 <= info["bytes"] < 1_000 + max(docs)
        assert info["documents"] < len(docs)


@pytest.mark.parametrize("tasks", [1, 3])
def test_pack_reads_back_equal_to_retokenization(corpus, tokenizer, tmp_path, tasks):
    data = pack_corpus(corpus, tokenizer, tmp_path / "data", PackConfig(batch_docs=3),
                       progress=False, engine=EngineConfig(tasks=tasks, workers=min(tasks, 2)))
    shards = TokenShards(data)
    shards.verify()
    c = CorpusDir(corpus)
    assert shards.languages == c.languages
    assert shards.dtype == np.uint16 and shards.vocab_size == 400
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(str(shards.tokenizer_dir)).eos_token_id == shards.eos_id
    for lang in c.languages:
        for split in SPLITS:
            rows = c.read(lang, split)
            sp = shards.split(lang, split)
            assert sp.docs.shape == (len(rows), 3)
            expected = encode_documents([r["text"] for r in rows], tokenizer)
            for i, (r, ids) in enumerate(zip(rows, expected)):
                assert np.array_equal(sp.document(i), ids)
                start, n, nbytes = sp.docs[i]
                assert sp.tokens[start + n] == shards.eos_id  # boundary kept
                assert nbytes == len(r["text"].encode())
            info = shards.manifest["languages"][lang][split]
            assert info["tokens"] == sum(len(x) for x in expected)
            assert info["tokens_with_eos"] == info["tokens"] + len(rows) == len(sp.tokens)


def test_pack_detects_corruption_and_bad_inputs(corpus, tokenizer, tmp_path):
    data = pack_corpus(corpus, tokenizer, tmp_path / "data", progress=False)
    shard = data / "python" / "train.bin"
    raw = bytearray(shard.read_bytes())
    raw[0] ^= 1
    shard.write_bytes(bytes(raw))
    with pytest.raises(BabelError, match="sha256"):
        TokenShards(data).verify()
    with pytest.raises(BabelError, match="not a tokenizer"):
        pack_corpus(corpus, tmp_path, tmp_path / "d2", progress=False)
    with pytest.raises(BabelError, match="not a built corpus"):
        pack_corpus(tmp_path, tokenizer, tmp_path / "d3", progress=False)
    assert not (tmp_path / "d2").exists() and not (tmp_path / "d3").exists()


def test_prepare_data_caches_each_step(tmp_path, monkeypatch):
    import babeltower.corpus.prepare as prep

    src = _tree(tmp_path / "src")
    kwargs = dict(languages=["python", "go"], vocab_size=320)
    data = prepare_data([src], tmp_path / "run", progress=False, **kwargs)
    shards = TokenShards(data)
    assert shards.languages == ["go", "python"] and shards.split("python").n_tokens > 1000
    calls = []
    for name in ("build_corpus", "train_tokenizer", "pack_corpus"):
        orig = getattr(prep, name)
        monkeypatch.setattr(prep, name, lambda *a, _o=orig, _n=name, **k: (calls.append(_n),
                                                                           _o(*a, **k))[1])
    assert prepare_data([src], tmp_path / "run", progress=False, **kwargs) == data
    assert calls == []  # everything was current
    prepare_data([src], tmp_path / "run", progress=False, languages=["python", "go"],
                 vocab_size=330)
    assert calls == ["train_tokenizer", "pack_corpus"]  # the corpus was kept
    assert TokenShards(data).vocab_size == 330
    # a data dir of the older format (no document identity) is repacked, nothing else
    man = json.loads((data / "manifest.json").read_text())
    (data / "manifest.json").write_text(json.dumps({**man, "format": "babeltower-data/1"}))
    prepare_data([src], tmp_path / "run", progress=False, languages=["python", "go"],
                 vocab_size=330)
    assert calls == ["train_tokenizer", "pack_corpus", "pack_corpus"]
    assert TokenShards(data).manifest["format"] == "babeltower-data/2"


def test_stats_on_corpus_and_packed_dirs(corpus, tokenizer, tmp_path):
    data = pack_corpus(corpus, tokenizer, tmp_path / "data", progress=False)
    m = json.loads((corpus / "manifest.json").read_text())
    cs = corpus_stats(corpus)
    row = cs.set_index("language").loc["python"]
    assert row["train_files"] == m["languages"]["python"]["splits"]["train"]["files"]
    ds = corpus_stats(data)
    drow = ds.set_index("language").loc["python"]
    assert drow["train_tokens"] == TokenShards(data).split("python", "train").n_tokens
    assert drow["train_bytes"] == row["train_bytes"]
    from rich.console import Console

    console = Console(width=200, record=True)
    console.print(render_stats(ds))
    text = console.export_text()
    assert "python" in text and f"{drow['train_tokens']:,}" in text


def test_prepare_data_resumes_after_an_interrupted_pack(tmp_path, monkeypatch):
    import babeltower.corpus.prepare as prep
    from babeltower.corpus import shards as shards_mod

    src = _tree(tmp_path / "src")
    orig_add = shards_mod.ShardWriter.add
    n = {"calls": 0}

    def flaky_add(self, ids, n_bytes, *args, **kwargs):
        n["calls"] += 1
        if n["calls"] == 5:
            raise KeyboardInterrupt  # Ctrl-C in the middle of packing
        return orig_add(self, ids, n_bytes, *args, **kwargs)

    monkeypatch.setattr(shards_mod.ShardWriter, "add", flaky_add)
    in_process = EngineConfig(tasks=1, workers=1)   # the monkeypatch reaches the one task
    with pytest.raises(KeyboardInterrupt):
        prepare_data([src], tmp_path / "run", vocab_size=300, progress=False,
                     engine=in_process)
    run = tmp_path / "run"
    assert (run / "corpus" / "manifest.json").is_file() and (run / "tokenizer").is_dir()
    # no half data dir; the pack's work dir stays for the rerun to resume
    assert sorted(p.name for p in run.iterdir()) == [".data.datatrove-pack", "corpus",
                                                     "tokenizer"]
    monkeypatch.setattr(shards_mod.ShardWriter, "add", orig_add)
    calls = []
    for name in ("build_corpus", "train_tokenizer", "pack_corpus"):
        orig = getattr(prep, name)
        monkeypatch.setattr(prep, name, lambda *a, _o=orig, _n=name, **k: (calls.append(_n),
                                                                           _o(*a, **k))[1])
    data = prepare_data([src], run, vocab_size=300, progress=False, engine=in_process)
    assert calls == ["pack_corpus"]
    assert sorted(p.name for p in run.iterdir()) == ["corpus", "data", "tokenizer"]
    TokenShards(data).verify()
