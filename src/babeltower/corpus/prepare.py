"""One call for the experiment: build -> tokenizer -> pack, cached and resumable.

``prepare_data(sources, out_root, languages)`` makes::

    out_root/corpus/     built corpus     (corpus build)
    out_root/tokenizer/  byte-level BPE   (tokenizer train)
    out_root/data/       packed shards    (corpus pack)   <- returned, read with TokenShards
    out_root/knowledge/  injected facts + queries (only with ``knowledge=``; see
                         ``babeltower.corpus.knowledge``): facts.json, source/

Each step is skipped when its output exists and was made with the same config from the
same inputs (recorded in its manifest); otherwise it is redone atomically. An interrupted
run leaves no half-written step, so running again resumes at the first unfinished step.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from babeltower.corpus.build import build_corpus
from babeltower.corpus.config import (BuildConfig, EngineConfig, PackConfig, TokenizerConfig,
                                      canonical_languages)
from babeltower.corpus.corpusdir import CorpusDir
from babeltower.corpus.knowledge import (KnowledgeConfig, check_answer_tokens,
                                         knowledge_fingerprint, knowledge_source,
                                         load_knowledge_config, write_knowledge)
from babeltower.corpus.pack import DATA_FORMAT, pack_corpus
from babeltower.corpus.tokenizer import TOKENIZER_META, train_tokenizer
from babeltower.errors import BabelError
from babeltower.io import sha256_file, sha256_json


@dataclass(frozen=True)
class PreparedData:
    """Where ``prepare_data`` puts each step's output under one root (module doc): the
    one place that knows the layout, so callers never rebuild paths from a data dir."""

    root: Path

    @classmethod
    def of_data_dir(cls, data_dir: str | os.PathLike) -> "PreparedData":
        """The layout a packed data dir (``prepare_data``'s return value) belongs to."""
        return cls(Path(data_dir).parent)

    @property
    def corpus(self) -> Path:
        return self.root / "corpus"

    @property
    def tokenizer(self) -> Path:
        return self.root / "tokenizer"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def knowledge(self) -> Path:
        return self.root / "knowledge"

    @property
    def facts_path(self) -> Path:
        return self.knowledge / "facts.json"


def _read_json(p: Path) -> dict | None:
    try:
        return json.loads(p.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _corpus_is_current(out: Path, cfg: BuildConfig, sources: list[str]) -> bool:
    m = _read_json(out / "manifest.json")
    want = cfg.model_dump(mode="json")
    return (bool(m) and m.get("config") == want and m.get("sources") == sources
            and m.get("knowledge", {}).get("sources", []) == knowledge_fingerprint(sources))


def _knowledge_is_current(out: Path, cfg: KnowledgeConfig) -> bool:
    m = _read_json(out / "facts.json")
    return bool(m) and m.get("config_sha256") == sha256_json(cfg.model_dump(mode="json"))


def _tokenizer_is_current(out: Path, cfg: TokenizerConfig, corpus_sha: str) -> bool:
    m = _read_json(out / TOKENIZER_META)
    return (bool(m) and (out / "tokenizer.json").is_file()
            and m.get("config") == cfg.model_dump(mode="json")
            and m.get("corpus_manifest_sha256") == corpus_sha)


def _data_is_current(out: Path, cfg: PackConfig, corpus_sha: str, tok_dir: Path) -> bool:
    m = _read_json(out / "manifest.json")
    if not m:
        return False
    tok_sha = sha256_file(tok_dir / "tokenizer.json")
    # an older format (no document identity / knowledge index) is repacked
    return (m.get("format") == DATA_FORMAT and m.get("config") == cfg.model_dump(mode="json")
            and m.get("corpus_manifest_sha256") == corpus_sha
            and m.get("tokenizer", {}).get("sha256", {}).get("tokenizer.json") == tok_sha)


def prepare_data(sources: Sequence[str | os.PathLike], out_root: str | os.PathLike,
                 languages: Sequence[str] | str | None = None, vocab_size: int = 4096,
                 sample_mb_per_language: float = 8.0, seed: int = 0,
                 build: BuildConfig | None = None, tokenizer: TokenizerConfig | None = None,
                 pack: PackConfig | None = None, progress: bool = True,
                 knowledge: KnowledgeConfig | dict | None = None,
                 engine: EngineConfig | None = None) -> Path:
    """build -> tokenizer -> pack into ``out_root``; returns the packed data dir.

    ``languages`` (and ``seed``) apply to the build and the tokenizer unless explicit
    ``build``/``tokenizer`` configs are given; ``vocab_size`` and
    ``sample_mb_per_language`` configure the tokenizer. ``knowledge``: inject synthetic
    facts (written to ``out_root/knowledge``, added as a source; every answer is checked
    to be one token of the trained tokenizer before packing - BabelError otherwise).
    ``engine``: where the build's and the pack's datatrove stages run (default: local,
    one task per core); the data is the same for any engine.
    """
    root = Path(out_root)
    sources = [str(s) for s in sources]
    if not sources:
        raise BabelError("prepare_data needs at least one source")
    langs = canonical_languages(languages)
    bcfg = build or BuildConfig(languages=langs, seed=seed)
    tcfg = tokenizer or TokenizerConfig(vocab_size=vocab_size, languages=langs,
                                        sample_mb_per_language=sample_mb_per_language, seed=seed)
    pcfg = pack or PackConfig()

    layout = PreparedData(root)
    corpus_dir, tok_dir, data_dir, kdir = (layout.corpus, layout.tokenizer, layout.data,
                                           layout.knowledge)
    if knowledge is not None:
        kcfg = load_knowledge_config(knowledge)
        if not _knowledge_is_current(kdir, kcfg):
            write_knowledge(kcfg, kdir, overwrite=True)
        sources.append(str(knowledge_source(kdir)))
    if not _corpus_is_current(corpus_dir, bcfg, sources):
        build_corpus(sources, corpus_dir, bcfg, engine, overwrite=True, progress=progress)
    corpus_sha = CorpusDir(corpus_dir).manifest_sha256
    if not _tokenizer_is_current(tok_dir, tcfg, corpus_sha):
        train_tokenizer(corpus_dir, tok_dir, tcfg, overwrite=True, progress=progress)
    if knowledge is not None:
        check_answer_tokens(tok_dir, kdir)
    if not _data_is_current(data_dir, pcfg, corpus_sha, tok_dir):
        pack_corpus(corpus_dir, tok_dir, data_dir, pcfg, overwrite=True, progress=progress,
                    engine=engine)
    return data_dir
