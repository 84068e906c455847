"""The reference the datatrove build is held to: the in-process builder it replaced, kept
here in its simplest, serial form - one input after another through the per-file steps,
then the whole-corpus step with ``datasketch.MinHashLSH`` (``corpus.dedup``) instead of
the pipeline's band-distributed LSH stage, no ranks, no writers, no work dir.

On the default experiment's 32,289 inputs the old builder and the datatrove build (1 and
4 tasks) gave identical ledgers and bytes (scripts/corpus_engines_equal.py, before the
builder was retired); the tests compare against this serial form of it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from babeltower.corpus.config import BuildConfig
from babeltower.corpus.filters import content_filter_reason
from babeltower.corpus.finalize import finalize
from babeltower.corpus.knowledge import is_knowledge_source, iter_knowledge_inputs
from babeltower.corpus.scan import (item_language, item_text, language_reason, measure_item,
                                    minhash_signature)
from babeltower.corpus.sources import iter_inputs


def scan_item(item, cfg: BuildConfig, source_index: int, near: bool) -> dict:
    rec = {"source_index": source_index, "source": item.source, "path": item.path,
           "row": item.row, "package": item.package, "license": item.license,
           "version": item.version, "group": item.group, "language": None, "bytes": 0,
           "status": "dropped", "reason": None, "sha256": None}
    rec["bytes"], head = measure_item(item)
    lang = rec["language"] = item_language(item, head)
    reason = language_reason(lang, cfg)
    if reason is None and rec["bytes"] > cfg.filters.max_bytes:
        reason = "too_large"
    text = None
    if reason is None:
        text, reason = item_text(item)
    if reason is None:
        reason = content_filter_reason(text, cfg.filters)
    if reason is not None:
        rec["reason"] = reason
        return rec
    rec.update(status="kept", text=text, sha256=hashlib.sha256(text.encode()).hexdigest())
    if near:
        rec["minhash"] = minhash_signature(text, cfg.dedup.num_perm, cfg.dedup.shingle_size)
    return rec


def reference_build(sources, out, cfg: BuildConfig) -> Path:
    sources = [str(s) for s in sources]
    records = []
    for si, s in enumerate(sources):
        knowledge = is_knowledge_source(s)   # injected documents: exempt from near dedup
        for item in (iter_knowledge_inputs(s) if knowledge else iter_inputs(s)):
            records.append(scan_item(item, cfg, si, cfg.dedup.near and not knowledge))
    return finalize(records, cfg, sources, Path(out))
