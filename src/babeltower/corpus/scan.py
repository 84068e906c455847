"""The per-file work of the build's scan stage: read, detect the language, decode, the
drop reasons, the MinHash signature; and the records' text spill and keys."""

from __future__ import annotations

import os
import re
import zlib
from pathlib import Path

import numpy as np

from babeltower.corpus.config import BuildConfig
from babeltower.corpus.filters import decode_utf8, is_binary
from babeltower.corpus.sources import InputItem
from babeltower.errors import BabelError
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


def record_key(rec: dict) -> tuple:
    return (rec["source_index"], rec["path"], -1 if rec.get("row") is None else rec["row"])


def record_id(rec: dict) -> str:
    row = "" if rec.get("row") is None else f"#{rec['row']}"
    return f"{rec['source']}:{rec['path']}{row}"
