"""Step 2 of the build, per file: read, detect the language, decode, filter with a drop
reason, hash (sha256, MinHash signature); on worker processes, kept texts spilled to disk."""

from __future__ import annotations

import hashlib
import multiprocessing as mp
import os
import re
import signal
import zlib
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from babeltower.corpus.config import BuildConfig
from babeltower.corpus.filters import content_filter_reason, decode_utf8, is_binary
from babeltower.corpus.knowledge import is_knowledge_source, iter_knowledge_inputs
from babeltower.corpus.sources import InputItem, iter_inputs, probe_source
from babeltower.errors import BabelError
from babeltower.interrupts import raise_if_interrupted
from babeltower.languages import canonical, detect_language



MINHASH_SCHEME = "affine32"



MINHASH_SEED = 1  # fixed: signatures from different tasks/machines must be comparable



_TOKEN_RE = re.compile(r"\w+|[^\w\s]")



def shingle_hashes(text: str, k: int) -> np.ndarray:
    """32-bit hashes of the distinct k-grams of code tokens (identifiers, numbers,
    single punctuation characters).

    Tokens are hashed once (crc32) and each k-gram's hash is a polynomial of its tokens'
    hashes, computed with numpy: 2x faster than hashing joined k-gram strings with sha1
    (datasketch's default), and the same for every process and machine.
    """
    toks = _TOKEN_RE.findall(text)
    token_hash = {t: zlib.crc32(t.encode("utf-8")) for t in set(toks)}  # tokens repeat
    th = np.fromiter(map(token_hash.__getitem__, toks), dtype=np.uint64, count=len(toks))
    n = max(len(th) - k + 1, 1)
    acc = np.zeros(n, dtype=np.uint64)
    for j in range(min(k, len(th))):
        acc = acc * np.uint64(1_000_003) + th[j:j + n]  # wraps mod 2**64 by design
    return np.unique((acc ^ (acc >> np.uint64(32))) & np.uint64(0xFFFFFFFF))



def minhash_signature(text: str, num_perm: int, shingle_size: int) -> np.ndarray:
    from datasketch import MinHash

    # the shingles are already hashed to 32 bits: datasketch's hash function is identity
    m = MinHash(num_perm=num_perm, seed=MINHASH_SEED, scheme=MINHASH_SCHEME, hashfunc=int)
    m.update_batch(shingle_hashes(text, shingle_size).tolist())
    return m.hashvalues.astype(np.uint64)



def item_language(item: InputItem, head: bytes | None) -> str | None:
    """Language of an input: a row's own field, else its name/shebang (``head``)."""
    if item.language is not None:
        try:
            return canonical(item.language)
        except BabelError:
            return None
    lang = detect_language(item.path, head)
    # .h is C by default; inside a C++ package it is C++
    if lang == "c" and item.lang_hint == "cpp":
        lang = "cpp"
    return lang



def measure_item(item: InputItem) -> tuple[int, bytes | None]:
    """Size in bytes and, where the name alone does not tell the language, the first
    256 bytes (for a shebang). Reads no more of an on-disk file than that."""
    size = item.size
    head = None
    if item.file is not None:
        try:
            size = os.path.getsize(item.file)
            if item.language is None and detect_language(item.path) is None:
                with open(item.file, "rb") as f:
                    head = f.read(256)
        except OSError as e:
            raise BabelError(f"cannot read {item.file}: {e.strerror or e}") from e
    elif item.data is not None:
        head = item.data[:256]
        size = len(item.data)
    elif item.text is not None:
        head = item.text[:256].encode("utf-8", "replace")
        size = len(item.text.encode("utf-8", "replace"))
    return int(size or 0), head



def item_text(item: InputItem) -> tuple[str | None, str | None]:
    """(text, None), or (None, drop reason) for binary or non-UTF-8 content."""
    text = item.text
    if text is None:
        data = item.data
        if data is None:
            try:
                with open(item.file, "rb") as f:
                    data = f.read()
            except OSError as e:
                raise BabelError(f"cannot read {item.file}: {e.strerror or e}") from e
        if is_binary(data):
            return None, "binary"
        text = decode_utf8(data)
        if text is None:
            return None, "undecodable"
    elif "\x00" in text[:8192]:
        return None, "binary"
    return text, None



def language_reason(lang: str | None, cfg: BuildConfig) -> str | None:
    if lang is None:
        return "unknown_language"
    if cfg.languages is not None and lang not in cfg.languages:
        return "excluded_language"
    return None



def scan_item(item: InputItem, cfg: BuildConfig, source_index: int = 0) -> dict:
    """Language, filters, hash and MinHash of one input. Never raises for bad content."""
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
    rec.update(status="kept", text=text,
               sha256=hashlib.sha256(text.encode("utf-8")).hexdigest())
    if cfg.dedup.near:
        rec["minhash"] = minhash_signature(text, cfg.dedup.num_perm, cfg.dedup.shingle_size)
    return rec


_WORKER_CFG: BuildConfig | None = None



def _init_worker(cfg_json: str) -> None:
    global _WORKER_CFG
    # Ctrl-C reaches the whole process group: the parent stops the pool and reports it
    # once; workers printing their own KeyboardInterrupt tracebacks would bury that line.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _WORKER_CFG = BuildConfig.model_validate_json(cfg_json)



def _scan_task(task: tuple[int, InputItem]) -> dict:
    return scan_item(task[1], _WORKER_CFG, task[0])



def _workers(n: int) -> int:
    return n if n > 0 else (os.cpu_count() or 1)



class TextSpill:
    """Kept texts on disk while the whole-corpus steps run, so memory holds only the
    per-file metadata and MinHash signatures (~1 kB per file), not the corpus."""

    def __init__(self, directory: str | os.PathLike):
        self.path = Path(directory) / "texts.bin"
        self._f = open(self.path, "w+b")
        self._end = 0

    def put(self, text: str) -> tuple[int, int]:
        data = text.encode("utf-8")
        self._f.seek(self._end)
        self._f.write(data)
        ref = (self._end, len(data))
        self._end += len(data)
        return ref

    def get(self, ref) -> str:
        offset, n = ref
        self._f.seek(int(offset))
        return self._f.read(int(n)).decode("utf-8")

    def close(self) -> None:
        self._f.close()



def record_text(rec: dict, spill: TextSpill | None) -> str:
    if rec.get("text") is not None:
        return rec["text"]
    if spill is None or rec.get("text_ref") is None:
        raise RuntimeError(f"text of {record_id(rec)} was not kept")
    return spill.get(rec["text_ref"])



def _spill(rec: dict, spill: TextSpill | None) -> dict:
    if spill is not None and rec.get("text") is not None:
        rec["text_ref"] = spill.put(rec.pop("text"))
    return rec



def scan_sources(sources: Sequence[str], cfg: BuildConfig, progress: bool = True,
                 spill: TextSpill | None = None) -> list[dict]:
    """Steps 1-2 for all inputs, on ``cfg.workers`` processes, in input order.
    With ``spill``, kept texts go to disk as they arrive (``record_text`` reads them)."""
    for s in sources:
        probe_source(str(s))  # a missing, unreadable or malformed source fails before any work

    def tasks() -> Iterable[tuple[int, InputItem]]:
        for si, s in enumerate(sources):
            if is_knowledge_source(s):
                continue  # scanned below, in this process
            for item in iter_inputs(str(s)):
                yield si, item

    from tqdm.auto import tqdm

    # disable=None: a bar on a terminal, silence in logs and pipes
    bar = tqdm(desc="scan files", unit=" files", disable=None if progress else True,
               mininterval=1.0)
    out: list[dict] = []
    n = _workers(cfg.workers)
    try:
        if n == 1:
            for si, item in tasks():
                raise_if_interrupted()
                out.append(_spill(scan_item(item, cfg, si), spill))
                bar.update()
        else:
            ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp.get_context()
            with ctx.Pool(n, initializer=_init_worker,
                          initargs=(cfg.model_dump_json(),)) as pool:
                for rec in pool.imap(_scan_task, tasks(), chunksize=16):
                    raise_if_interrupted()   # a swallowed Ctrl-C still stops the scan
                    out.append(_spill(rec, spill))
                    bar.update()
    finally:
        bar.close()
    # injected knowledge documents: filters and sha only (no MinHash: they are exempt
    # from near dedup, their repetition is the point)
    no_near = cfg.model_copy(update={"dedup": cfg.dedup.model_copy(update={"near": False})})
    for si, s in enumerate(sources):
        if is_knowledge_source(s):
            out.extend(_spill(scan_item(item, no_near, si), spill)
                       for item in iter_knowledge_inputs(s))
    return out


def record_key(rec: dict) -> tuple:
    return (rec["source_index"], rec["path"], -1 if rec.get("row") is None else rec["row"])


def record_id(rec: dict) -> str:
    row = "" if rec.get("row") is None else f"#{rec['row']}"
    return f"{rec['source']}:{rec['path']}{row}"
