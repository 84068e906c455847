"""Corpus: collect, filter, deduplicate, split, tokenize and pack multilingual code.

The pipeline, each step a library function with a CLI twin::

    fetch_corpus(out, languages, max_mb_per_language)       # babeltower corpus fetch
    build_corpus(sources, out, BuildConfig(...))            # babeltower corpus build
    build_corpus(sources, out, cfg, EngineConfig(executor="slurm", tasks=64))  # --executor
    train_tokenizer(corpus_dir, out, TokenizerConfig(...))  # babeltower tokenizer train
    pack_corpus(corpus_dir, tokenizer_dir, out)             # babeltower corpus pack
    corpus_stats(path) / print_stats(path)                  # babeltower corpus stats
    prepare_data(sources, out_root, languages, vocab_size)  # build -> tokenizer -> pack

Imports are lazy so that ``import babeltower.corpus.shards`` stays light.
"""

from __future__ import annotations

__all__ = ["fetch_corpus", "build_corpus", "train_tokenizer", "pack_corpus",
           "corpus_stats", "print_stats", "prepare_data", "BuildConfig", "EngineConfig",
           "TokenizerConfig", "PackConfig", "CorpusDir", "TokenShards"]

_WHERE = {
    "fetch_corpus": "babeltower.corpus.fetch",
    "build_corpus": "babeltower.corpus.build",
    "train_tokenizer": "babeltower.corpus.tokenizer",
    "pack_corpus": "babeltower.corpus.pack",
    "corpus_stats": "babeltower.corpus.stats",
    "print_stats": "babeltower.corpus.stats",
    "prepare_data": "babeltower.corpus.prepare",
    "BuildConfig": "babeltower.corpus.config",
    "EngineConfig": "babeltower.corpus.config",
    "TokenizerConfig": "babeltower.corpus.config",
    "PackConfig": "babeltower.corpus.config",
    "CorpusDir": "babeltower.corpus.corpusdir",
    "TokenShards": "babeltower.corpus.shards",
}


def __getattr__(name: str):
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'babeltower.corpus' has no attribute {name!r}")
