"""Packed token shards: the on-disk contract between the corpus and everything after it.

Layout of a packed data directory (``babeltower corpus pack``)::

    DATA/
      manifest.json                 # languages, splits, counts, sha256 of every file, provenance
      tokenizer/                    # copy of the tokenizer (AutoTokenizer.from_pretrained works)
      <lang>/<split>.bin            # all documents' token ids, concatenated, each followed by EOS
      <lang>/<split>.docs.npy       # int64 (n_docs, 3): token_start, n_tokens (w/o EOS), utf8_bytes

``.bin`` holds ``uint16`` when the vocabulary fits, else ``uint32`` (manifest ``dtype``).
Document boundaries are kept, so evaluation can score whole documents and compute
bits-per-byte, and samplers can pack across documents with EOS separators.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from babeltower.errors import BabelError
from babeltower.io import atomic_write_bytes, sha256_file

SPLITS = ("train", "validation", "test")


def dtype_for_vocab(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= np.iinfo(np.uint16).max + 1 else np.dtype(np.uint32)


class ShardWriter:
    """Append tokenized documents for one (language, split); ``close()`` writes both files."""

    def __init__(self, path_prefix: str | Path, dtype: np.dtype, eos_id: int):
        self.prefix = Path(path_prefix)
        self.prefix.parent.mkdir(parents=True, exist_ok=True)
        self.dtype = np.dtype(dtype)
        self.eos_id = eos_id
        self._bin = open(self.prefix.with_suffix(".bin"), "wb")
        self._docs: list[tuple[int, int, int]] = []
        self._pos = 0

    def add(self, token_ids, n_bytes: int) -> None:
        ids = np.asarray(token_ids, dtype=np.int64)
        if ids.size and (ids.min() < 0 or ids.max() > np.iinfo(self.dtype).max):
            raise BabelError(f"token id out of range for {self.dtype} in {self.prefix}")
        self._bin.write(np.append(ids, self.eos_id).astype(self.dtype).tobytes())
        self._docs.append((self._pos, int(ids.size), int(n_bytes)))
        self._pos += int(ids.size) + 1

    def close(self) -> dict:
        self._bin.close()
        docs = np.asarray(self._docs, dtype=np.int64).reshape(-1, 3)
        np.save(self.prefix.with_suffix(".docs.npy"), docs)
        bin_path = self.prefix.with_suffix(".bin")
        return {
            "documents": int(docs.shape[0]),
            "tokens": int(docs[:, 1].sum()) if docs.size else 0,
            "tokens_with_eos": self._pos,
            "bytes": int(docs[:, 2].sum()) if docs.size else 0,
            "sha256": {bin_path.name: sha256_file(bin_path),
                       self.prefix.with_suffix(".docs.npy").name:
                           sha256_file(self.prefix.with_suffix(".docs.npy"))},
        }


@dataclass(frozen=True)
class Split:
    language: str
    split: str
    tokens: np.ndarray   # memmap of all token ids incl. EOS separators
    docs: np.ndarray     # (n_docs, 3) token_start, n_tokens, utf8_bytes

    @property
    def n_tokens(self) -> int:
        return int(self.docs[:, 1].sum()) if self.docs.size else 0

    def document(self, i: int) -> np.ndarray:
        start, n, _ = self.docs[i]
        return self.tokens[start:start + n]


class TokenShards:
    """Read-only view of a packed data directory."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        mf = self.root / "manifest.json"
        if not mf.exists():
            raise BabelError(f"not a packed data directory (no manifest.json): {self.root}")
        try:
            self.manifest = json.loads(mf.read_text())
        except json.JSONDecodeError as e:
            raise BabelError(f"corrupt manifest {mf}: {e.msg}") from e
        self.dtype = np.dtype(self.manifest.get("dtype", "uint16"))
        self._cache: dict[tuple[str, str], Split] = {}

    @property
    def languages(self) -> list[str]:
        return sorted(self.manifest["languages"])

    @property
    def tokenizer_dir(self) -> Path:
        return self.root / "tokenizer"

    @property
    def eos_id(self) -> int:
        return int(self.manifest["eos_id"])

    @property
    def vocab_size(self) -> int:
        return int(self.manifest["vocab_size"])

    def has(self, language: str, split: str) -> bool:
        return split in self.manifest["languages"].get(language, {})

    def split(self, language: str, split: str = "train") -> Split:
        key = (language, split)
        if key not in self._cache:
            if language not in self.manifest["languages"]:
                raise BabelError(
                    f"language {language!r} is not in {self.root} (has: {', '.join(self.languages)})")
            if split not in self.manifest["languages"][language]:
                raise BabelError(f"{language} has no {split!r} split in {self.root}")
            prefix = self.root / language / split
            bin_path = prefix.with_suffix(".bin")
            docs = np.load(prefix.with_suffix(".docs.npy"))
            size = bin_path.stat().st_size // self.dtype.itemsize
            tokens = (np.memmap(bin_path, dtype=self.dtype, mode="r") if size
                      else np.zeros(0, dtype=self.dtype))
            self._cache[key] = Split(language, split, tokens, docs)
        return self._cache[key]

    def verify(self) -> None:
        """Check every file against the sha256 in the manifest (BabelError on mismatch)."""
        for lang, splits in self.manifest["languages"].items():
            for split, info in splits.items():
                for name, digest in info.get("sha256", {}).items():
                    p = self.root / lang / name
                    if not p.exists() or sha256_file(p) != digest:
                        raise BabelError(f"shard {p} is missing or does not match its sha256")


def write_manifest(root: Path, manifest: dict) -> None:
    atomic_write_bytes(root / "manifest.json", (json.dumps(manifest, indent=2) + "\n").encode())
