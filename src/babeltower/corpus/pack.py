"""``corpus pack``: tokenize every language/split of a built corpus into token shards.

Writes the layout documented in ``babeltower.corpus.shards`` (``TokenShards`` reads it),
copies the tokenizer into ``DATA/tokenizer`` and records in ``DATA/manifest.json`` the
counts and sha256 of every shard, the tokenizer, the corpus manifest's sha256 and a
summary of the corpus (inputs and drops by reason per language), so ``corpus stats``
shows the whole story from a packed directory alone.

Tokenization runs in worker processes (one tokenizer each, batches of documents);
documents keep their order, so a pack is deterministic for any number of workers.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import shutil
import signal
from pathlib import Path
from typing import Iterator

import numpy as np

from babeltower.corpus.config import PackConfig
from babeltower.corpus.corpusdir import CorpusDir
from babeltower.corpus.shards import SPLITS, ShardWriter, dtype_for_vocab, write_manifest
from babeltower.corpus.tokenizer import load_tokenizer_meta
from babeltower.errors import BabelError
from babeltower.io import atomic_dir, provenance, sha256_file

DATA_FORMAT = "babeltower-data/1"

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


def _batches(corpus: CorpusDir, lang: str, split: str, size: int) -> Iterator[list[str]]:
    batch: list[str] = []
    for row in corpus.iter(lang, split):
        batch.append(row["text"])
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def encode_documents(texts: list[str], tokenizer_dir: str | os.PathLike) -> list[np.ndarray]:
    """Token ids of each text, exactly as ``pack`` computes them (no special tokens)."""
    _init_tokenizer(str(Path(tokenizer_dir) / "tokenizer.json"), worker=False)
    return _encode(texts)


def _pack_split(corpus, lang: str, split: str, tmp: Path, dtype, eos_id: int, pool,
                batch_docs: int, bar) -> dict:
    """Tokenize one language's split into shards under ``tmp``; returns its summary."""
    writer = ShardWriter(tmp / lang / split, dtype, eos_id)
    batches = _batches(corpus, lang, split, batch_docs)
    # keep the texts of the batches in flight to count their bytes
    pending: list[list[str]] = []

    def tee(it):
        for b in it:
            pending.append(b)
            yield b

    encoded = pool.imap(_encode, tee(batches)) if pool is not None else map(_encode, tee(batches))
    for ids_batch in encoded:
        texts = pending.pop(0)
        for text, ids in zip(texts, ids_batch):
            n_bytes = len(text.encode("utf-8"))
            writer.add(ids, n_bytes)
            bar.update(n_bytes)
    return writer.close()


def _data_manifest(corpus, tok_dir: Path, tok_copy: Path, meta: dict, cfg: PackConfig,
                   langs: list[str], languages_info: dict, dtype, eos_id: int,
                   vocab_size: int) -> dict:
    return {
        "format": DATA_FORMAT,
        "languages": languages_info,
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
        with atomic_dir(out, overwrite=overwrite) as tmp:
            languages_info = {lang: {split: _pack_split(corpus, lang, split, tmp, dtype, eos_id,
                                                        pool, cfg.batch_docs, bar)
                                     for split in SPLITS if corpus.path(lang, split).is_file()}
                              for lang in langs}
            tok_copy = tmp / "tokenizer"
            shutil.copytree(tok_dir, tok_copy)
            write_manifest(tmp, _data_manifest(corpus, tok_dir, tok_copy, meta, cfg, langs,
                                               languages_info, dtype, eos_id, vocab_size))
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
