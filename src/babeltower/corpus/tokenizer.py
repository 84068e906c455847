"""``tokenizer train``: byte-level BPE (HF ``tokenizers``) on a language-balanced sample.

Each language contributes at most ``sample_mb_per_language`` MB of its *train* split
(documents in a seeded order), so a large primary language does not swamp the merges
of the others. Special tokens: ``<|endoftext|>`` (EOS, also the document separator in
packed shards) and ``<|pad|>``. The result is saved with
``PreTrainedTokenizerFast.save_pretrained`` so ``AutoTokenizer.from_pretrained(dir)``
works; ``babeltower_tokenizer.json`` records the config, the sample and provenance.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Iterator

from babeltower.corpus.config import TokenizerConfig
from babeltower.corpus.corpusdir import CorpusDir
from babeltower.errors import BabelError
from babeltower.io import atomic_dir, atomic_write_json, provenance

TOKENIZER_META = "babeltower_tokenizer.json"


def _sample(corpus: CorpusDir, lang: str, budget_bytes: int, seed: int) -> list[str]:
    docs = corpus.read(lang, "train")

    def rank(d: dict) -> bytes:
        return hashlib.blake2b(f"{seed}\0{d['sha256']}".encode(), digest_size=8).digest()

    out, used = [], 0
    for d in sorted(docs, key=rank):
        if used >= budget_bytes:
            break
        out.append(d["text"])
        used += len(d["text"].encode("utf-8"))
    return out


def train_tokenizer(corpus_dir: str | os.PathLike, out: str | os.PathLike,
                    config: TokenizerConfig | None = None, overwrite: bool = False,
                    progress: bool = True) -> Path:
    """Train the tokenizer on ``corpus_dir`` (a built corpus) and save it to ``out``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    cfg = config or TokenizerConfig()
    corpus = CorpusDir(corpus_dir)
    langs = cfg.languages or corpus.languages
    missing = [lang for lang in langs if lang not in corpus.languages]
    if missing:
        raise BabelError(f"corpus {corpus.root} has no {', '.join(missing)} "
                         f"(has: {', '.join(corpus.languages)})")
    budget = int(cfg.sample_mb_per_language * 1e6)
    texts: list[str] = []
    sample = {}
    for lang in langs:
        docs = _sample(corpus, lang, budget, cfg.seed)
        sample[lang] = {"documents": len(docs),
                        "bytes": sum(len(t.encode("utf-8")) for t in docs)}
        texts.extend(docs)
    if not texts:
        raise BabelError(f"no training text in {corpus.root} (empty train splits)")

    tok = Tokenizer(models.BPE())
    # no prefix space: code is whitespace-sensitive and documents start at column 0
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=cfg.vocab_size, min_frequency=cfg.min_frequency,
        special_tokens=[cfg.eos_token, cfg.pad_token],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=progress and sys.stderr.isatty())  # no bar residue in logs

    def batches() -> Iterator[list[str]]:
        for i in range(0, len(texts), 256):
            yield texts[i:i + 256]

    tok.train_from_iterator(batches(), trainer=trainer, length=len(texts))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=cfg.eos_token,
                                   pad_token=cfg.pad_token, bos_token=None, unk_token=None,
                                   model_max_length=int(1e9), clean_up_tokenization_spaces=False)
    with atomic_dir(out, overwrite=overwrite) as tmp:
        fast.save_pretrained(str(tmp))
        atomic_write_json(tmp / TOKENIZER_META, {
            "vocab_size": tok.get_vocab_size(), "eos_token": cfg.eos_token,
            "eos_id": tok.token_to_id(cfg.eos_token), "pad_token": cfg.pad_token,
            "pad_id": tok.token_to_id(cfg.pad_token), "sample": sample,
            "corpus": str(corpus.root), "corpus_manifest_sha256": corpus.manifest_sha256,
            "config": cfg.model_dump(mode="json"),
            "provenance": provenance(config=cfg, seed=cfg.seed,
                                     data_hashes={"corpus_manifest": corpus.manifest_sha256}),
        })
    return Path(out)


def load_tokenizer_meta(tokenizer_dir: str | os.PathLike) -> dict:
    p = Path(tokenizer_dir) / TOKENIZER_META
    if not (Path(tokenizer_dir) / "tokenizer.json").is_file():
        raise BabelError(f"not a tokenizer directory (no tokenizer.json): {tokenizer_dir}")
    if not p.is_file():
        return {}
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise BabelError(f"corrupt {p}: {e.msg}") from e
