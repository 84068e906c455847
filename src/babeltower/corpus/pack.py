"""``corpus pack``: tokenize every language/split of a built corpus into token shards.

Writes the layout documented in ``babeltower.corpus.shards`` (``TokenShards`` reads it),
copies the tokenizer into ``DATA/tokenizer`` and records in ``DATA/manifest.json`` the
counts and sha256 of every shard, the tokenizer, the corpus manifest's sha256 and a
summary of the corpus (inputs and drops by reason per language), so ``corpus stats``
shows the whole story from a packed directory alone.

Tokenization runs in worker processes (one tokenizer each, batches of documents);
documents keep their order, so a pack is deterministic for any number of workers.

Format ``babeltower-data/2`` adds document identity: ``<lang>/<split>.paths.jsonl`` and
``knowledge.jsonl``, the injected knowledge documents with their row in the shards and
the token span of each fact's rendering (``fact_char_spans``), so a sampler can leave
them out and exposures can be counted from what a run actually reads.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import shutil
import signal
from pathlib import Path
from typing import Iterator

import numpy as np

from babeltower.corpus.config import PackConfig
from babeltower.corpus.corpusdir import CorpusDir
from babeltower.corpus.shards import (KNOWLEDGE_INDEX, PATH_KEYS, SPLITS, ShardWriter,
                                      dtype_for_vocab, write_manifest)
from babeltower.corpus.tokenizer import load_tokenizer_meta
from babeltower.errors import BabelError
from babeltower.io import atomic_dir, provenance, sha256_file

DATA_FORMAT = "babeltower-data/2"   # /1 had no paths.jsonl / knowledge.jsonl (still readable)
# how a fact's rendering is found in an injected document (recorded in the manifest)
FACT_SPAN_RULE = ("an injected document is its header (optional) and one rendering per fact, "
                  "in the order of its facts, separated by blank lines; a fact's span is its "
                  "rendering without surrounding whitespace, in tokens: every token whose "
                  "characters overlap it")

_TOK = None


def _init_tokenizer(path: str, worker: bool = True) -> None:
    global _TOK
    if worker:
        os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one process = one core
        # Ctrl-C reaches the whole process group: the parent stops the pool and reports
        # it once, instead of every worker printing a KeyboardInterrupt traceback
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    from tokenizers import Tokenizer

    _TOK = Tokenizer.from_file(path)


def _encode(texts: list[str]) -> list[np.ndarray]:
    return [np.asarray(e.ids, dtype=np.int64)
            for e in _TOK.encode_batch(texts, add_special_tokens=False)]


def _batches(corpus: CorpusDir, lang: str, split: str, size: int) -> Iterator[list[dict]]:
    batch: list[dict] = []
    for row in corpus.iter(lang, split):
        batch.append(row)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def fact_char_spans(text: str, n_facts: int) -> list[tuple[int, int]] | None:
    """Character ``[start, end)`` of each fact's rendering in an injected document, or None.

    ``make_documents`` writes a document as ``header + "\\n".join(renderings)`` where the
    header (empty or ending in a blank line) and every rendering hold no blank line and
    every rendering ends with a newline, so the non-blank pieces between blank lines are
    the header (if any) and then one rendering per fact, in the order of ``facts``. Each
    span is stripped of surrounding whitespace. None when the pieces are not ``n_facts``
    (or ``n_facts`` + a header): the document is not of that shape.
    """
    spans: list[tuple[int, int]] = []
    pos = 0
    for piece in text.split("\n\n"):
        body = piece.strip()
        if body:
            start = pos + len(piece) - len(piece.lstrip())
            spans.append((start, start + len(body)))
        pos += len(piece) + 2
    if len(spans) == n_facts + 1:
        spans = spans[1:]
    return spans if len(spans) == n_facts and n_facts > 0 else None


def token_spans(offsets: list[tuple[int, int]], char_spans) -> list[list[int]]:
    """``[first, end)`` token indices of each character span: every token whose characters
    ``[a, b)`` overlap it."""
    starts = np.asarray([a for a, _ in offsets], dtype=np.int64)
    ends = np.asarray([b for _, b in offsets], dtype=np.int64)
    out = []
    for cs, ce in char_spans:
        hit = np.flatnonzero((starts < ce) & (ends > cs))
        if hit.size == 0:
            raise BabelError(f"no token covers characters [{cs}, {ce})")
        out.append([int(hit[0]), int(hit[-1]) + 1])
    return out


class _KnowledgeIndex:
    """Collects the knowledge index (``knowledge.jsonl`` of the data dir) while packing."""

    def __init__(self, corpus: CorpusDir, tokenizer):
        self.tok = tokenizer
        self.rows: list[dict] = []
        self.of: dict[tuple[str, str], dict] = {}
        k = corpus.manifest.get("knowledge")
        if k:
            with open(corpus.root / k["documents_file"], encoding="utf-8") as f:
                for line in f:
                    d = json.loads(line)
                    self.of[(str(d.get("source")), d["path"])] = d

    def add(self, lang: str, split: str, doc: int, row: dict, ids: np.ndarray) -> None:
        d = self.of.get((str(row.get("source")), row.get("path")))
        if d is None:
            return
        if d["language"] != lang or d["split"] != split or d["sha256"] != row.get("sha256"):
            raise BabelError(f"knowledge document {d['path']} is listed as {d['language']}/"
                             f"{d['split']} but packed in {lang}/{split} (or its text changed)")
        enc = self.tok.encode(row["text"], add_special_tokens=False)
        if list(enc.ids) != ids.tolist():
            raise BabelError(f"knowledge document {d['path']}: the tokenizer's ids differ "
                             "between pack workers and the main process")
        chars = fact_char_spans(row["text"], len(d["facts"]))
        self.rows.append({**d, "doc": int(doc),
                          "fact_spans": None if chars is None else token_spans(enc.offsets, chars)})

    def write(self, root: Path) -> dict:
        p = root / KNOWLEDGE_INDEX
        with open(p, "w", encoding="utf-8") as f:
            for r in self.rows:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
        missing = sum(1 for r in self.rows if r["fact_spans"] is None)
        by: dict[str, int] = {}
        for r in self.rows:
            by[f"{r['language']}/{r['split']}"] = by.get(f"{r['language']}/{r['split']}", 0) + 1
        return {"documents_file": KNOWLEDGE_INDEX, "documents": len(self.rows),
                "documents_by_language_split": dict(sorted(by.items())),
                "without_fact_spans": missing, "fact_span_rule": FACT_SPAN_RULE,
                "sha256": sha256_file(p)}


def encode_documents(texts: list[str], tokenizer_dir: str | os.PathLike) -> list[np.ndarray]:
    """Token ids of each text, exactly as ``pack`` computes them (no special tokens)."""
    _init_tokenizer(str(Path(tokenizer_dir) / "tokenizer.json"), worker=False)
    return _encode(texts)


def _pack_split(corpus, lang: str, split: str, tmp: Path, dtype, eos_id: int, pool,
                batch_docs: int, bar, knowledge: _KnowledgeIndex) -> dict:
    """Tokenize one language's split into shards under ``tmp``; returns its summary."""
    writer = ShardWriter(tmp / lang / split, dtype, eos_id, record_paths=True)
    batches = _batches(corpus, lang, split, batch_docs)
    # keep the rows of the batches in flight: bytes, identity, knowledge spans
    pending: list[list[dict]] = []

    def texts(it):
        for b in it:
            pending.append(b)
            yield [row["text"] for row in b]

    encoded = (pool.imap(_encode, texts(batches)) if pool is not None
               else map(_encode, texts(batches)))
    for ids_batch in encoded:
        rows = pending.pop(0)
        for row, ids in zip(rows, ids_batch):
            n_bytes = len(row["text"].encode("utf-8"))
            doc = writer.add(ids, n_bytes, identity={k: row.get(k) for k in PATH_KEYS})
            knowledge.add(lang, split, doc, row, ids)
            bar.update(n_bytes)
    return writer.close()


def _data_manifest(corpus, tok_dir: Path, tok_copy: Path, meta: dict, cfg: PackConfig,
                   langs: list[str], languages_info: dict, dtype, eos_id: int,
                   vocab_size: int, knowledge: dict) -> dict:
    return {
        "format": DATA_FORMAT,
        "languages": languages_info,
        "knowledge": knowledge,
        "dtype": dtype.name,
        "eos_id": int(eos_id),
        "vocab_size": int(vocab_size),
        "tokenizer": {"dir": "tokenizer", "source": str(tok_dir),
                      "sha256": {p.name: sha256_file(p) for p in sorted(tok_copy.iterdir())
                                 if p.is_file()},
                      "config": meta.get("config")},
        "corpus": str(corpus.root),
        "corpus_manifest_sha256": corpus.manifest_sha256,
        "corpus_summary": {lang: corpus.manifest["languages"].get(lang, {}) for lang in langs},
        "corpus_dropped": corpus.manifest.get("dropped", {}),
        "config": cfg.model_dump(mode="json"),
        "provenance": provenance(config=cfg, data_hashes={
            "corpus_manifest": corpus.manifest_sha256,
            "tokenizer.json": sha256_file(tok_dir / "tokenizer.json")}),
    }


def pack_corpus(corpus_dir: str | os.PathLike, tokenizer_dir: str | os.PathLike,
                out: str | os.PathLike, config: PackConfig | None = None,
                languages: list[str] | None = None, overwrite: bool = False,
                progress: bool = True) -> Path:
    """Tokenize ``corpus_dir`` with ``tokenizer_dir`` into a packed data directory ``out``."""
    cfg = config or PackConfig()
    corpus = CorpusDir(corpus_dir)
    tok_dir = Path(tokenizer_dir)
    meta = load_tokenizer_meta(tok_dir)
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tok_dir / "tokenizer.json"))
    eos_token = meta.get("eos_token", "<|endoftext|>")
    eos_id = tok.token_to_id(eos_token)
    if eos_id is None:
        raise BabelError(f"tokenizer {tok_dir} has no EOS token {eos_token!r}")
    vocab_size = tok.get_vocab_size()
    dtype = dtype_for_vocab(vocab_size)
    langs = languages or corpus.languages
    for lang in langs:
        if lang not in corpus.languages:
            raise BabelError(f"corpus {corpus.root} has no language {lang!r}")
    n_workers = cfg.workers if cfg.workers > 0 else (os.cpu_count() or 1)

    from tqdm.auto import tqdm

    total_bytes = sum(corpus.path(lang, s).stat().st_size for lang in langs for s in SPLITS
                      if corpus.path(lang, s).is_file())
    bar = tqdm(total=total_bytes, unit="B", unit_scale=True, desc="pack",
               disable=None if progress else True)
    ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp.get_context()
    pool = (ctx.Pool(n_workers, initializer=_init_tokenizer,
                     initargs=(str(tok_dir / "tokenizer.json"),)) if n_workers > 1 else None)
    if pool is None:
        _init_tokenizer(str(tok_dir / "tokenizer.json"), worker=False)
    try:
        knowledge = _KnowledgeIndex(corpus, tok)
        with atomic_dir(out, overwrite=overwrite) as tmp:
            languages_info = {lang: {split: _pack_split(corpus, lang, split, tmp, dtype, eos_id,
                                                        pool, cfg.batch_docs, bar, knowledge)
                                     for split in SPLITS if corpus.path(lang, split).is_file()}
                              for lang in langs}
            tok_copy = tmp / "tokenizer"
            shutil.copytree(tok_dir, tok_copy)
            write_manifest(tmp, _data_manifest(corpus, tok_dir, tok_copy, meta, cfg, langs,
                                               languages_info, dtype, eos_id, vocab_size,
                                               knowledge.write(tmp)))
    except BaseException:
        if pool is not None:  # Ctrl-C or an error: do not wait for queued batches
            pool.terminate()
            pool.join()
            pool = None
        raise
    finally:
        bar.close()
        if pool is not None:
            pool.close()
            pool.join()
    return Path(out)
