"""Packed token shards: the on-disk contract between the corpus and everything after it.

Layout of a packed data directory (``babeltower corpus pack``)::

    DATA/
      manifest.json                 # languages, splits, counts, sha256 of every file, provenance
      tokenizer/                    # copy of the tokenizer (AutoTokenizer.from_pretrained works)
      <lang>/<split>.bin            # all documents' token ids, concatenated, each followed by EOS
      <lang>/<split>.docs.npy       # int64 (n_docs, 3): token_start, n_tokens (w/o EOS), utf8_bytes
      <lang>/<split>.paths.jsonl    # one line per document, in .docs.npy order:
                                    #   {"source", "path", "package", "sha256"} (format /2)
      knowledge.jsonl               # one line per injected knowledge document (format /2)

``.bin`` holds ``uint16`` when the vocabulary fits, else ``uint32`` (manifest ``dtype``).
Document boundaries are kept, so evaluation can score whole documents and compute
bits-per-byte, and samplers can pack across documents with EOS separators.

Document identity (``babeltower-data/2``; a ``/1`` directory has neither file and stays
readable: it just knows no document identity and no knowledge documents):

* ``<lang>/<split>.paths.jsonl``: where each document came from (the built corpus's
  ``source``, ``path``, ``package`` and text ``sha256``), line i = row i of ``.docs.npy``.
* ``knowledge.jsonl``: every injected knowledge document of the corpus (its
  ``knowledge.jsonl``: ``path``, ``language``, ``class``, ``target``, ``facts``, ``split``,
  ``sha256``, ``source``) plus ``doc``, its row in ``<language>/<split>.docs.npy``, and
  ``fact_spans``: per fact (same order as ``facts``) ``[first, end)`` token offsets
  within the document of that fact's rendering (null when the document could not be
  split into one rendering per fact; see ``corpus/pack.py:fact_char_spans``). Written
  (possibly empty) by every ``/2`` pack; the manifest's ``knowledge`` entry gives its
  sha256 and counts.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from babeltower.errors import BabelError
from babeltower.io import atomic_write_bytes, sha256_file

SPLITS = ("train", "validation", "test")
PATH_KEYS = ("source", "path", "package", "sha256")   # a line of <split>.paths.jsonl
KNOWLEDGE_INDEX = "knowledge.jsonl"


def dtype_for_vocab(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= np.iinfo(np.uint16).max + 1 else np.dtype(np.uint32)


class ShardWriter:
    """Append tokenized documents for one (language, split); ``close()`` writes both files."""

    def __init__(self, path_prefix: str | Path, dtype: np.dtype, eos_id: int,
                 record_paths: bool = False):
        self.prefix = Path(path_prefix)
        self.prefix.parent.mkdir(parents=True, exist_ok=True)
        self.dtype = np.dtype(dtype)
        self.eos_id = eos_id
        self._bin = open(self.prefix.with_suffix(".bin"), "wb")
        # record_paths: every add() names its document and close() writes .paths.jsonl
        self._paths = open(self.prefix.with_suffix(".paths.jsonl"), "w", encoding="utf-8") \
            if record_paths else None
        self._docs: list[tuple[int, int, int]] = []
        self._pos = 0

    def add(self, token_ids, n_bytes: int, identity: dict | None = None) -> int:
        """Append one document; returns its row in ``.docs.npy``. ``identity`` (source,
        path, package, sha256) is required when the writer records paths."""
        ids = np.asarray(token_ids, dtype=np.int64)
        if ids.size and (ids.min() < 0 or ids.max() > np.iinfo(self.dtype).max):
            raise BabelError(f"token id out of range for {self.dtype} in {self.prefix}")
        if self._paths is not None:
            if identity is None:
                raise BabelError(f"{self.prefix}: document {len(self._docs)} has no identity")
            self._paths.write(json.dumps({k: identity.get(k) for k in PATH_KEYS},
                                         ensure_ascii=False) + "\n")
        self._bin.write(np.append(ids, self.eos_id).astype(self.dtype).tobytes())
        self._docs.append((self._pos, int(ids.size), int(n_bytes)))
        self._pos += int(ids.size) + 1
        return len(self._docs) - 1

    def discard(self) -> None:
        """Close the files without finishing them (a failed or interrupted writer); a
        close that fails (its buffer cannot be flushed to a full disk) is ignored."""
        for f in (self._bin, self._paths):
            if f is not None:
                with contextlib.suppress(OSError):
                    f.close()

    def close(self) -> dict:
        self._bin.close()
        docs = np.asarray(self._docs, dtype=np.int64).reshape(-1, 3)
        np.save(self.prefix.with_suffix(".docs.npy"), docs)
        bin_path = self.prefix.with_suffix(".bin")
        files = [bin_path, self.prefix.with_suffix(".docs.npy")]
        if self._paths is not None:
            self._paths.close()
            files.append(self.prefix.with_suffix(".paths.jsonl"))
        return {
            "documents": int(docs.shape[0]),
            "tokens": int(docs[:, 1].sum()) if docs.size else 0,
            "tokens_with_eos": self._pos,
            "bytes": int(docs[:, 2].sum()) if docs.size else 0,
            "sha256": {p.name: sha256_file(p) for p in files},
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
        self._knowledge: list[dict] | None = None

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
        k = self.manifest.get("knowledge")
        if k:
            p = self.root / k["documents_file"]
            if not p.exists() or sha256_file(p) != k["sha256"]:
                raise BabelError(f"knowledge index {p} is missing or does not match its sha256")

    # ---- document identity (format /2) ----------------------------------------------
    def token_sha256(self, language: str, split: str) -> dict[str, str] | None:
        """sha256 of the token files of one split (``.bin`` and ``.docs.npy`` only): what
        a sampler's stream depends on, the same for a /1 and a /2 pack of one corpus."""
        info = self.manifest["languages"][language][split].get("sha256")
        if info is None:
            return None
        return {k: v for k, v in info.items() if k.endswith((".bin", ".docs.npy"))}

    def document_identities(self, language: str, split: str = "train") -> list[dict]:
        """One dict (source, path, package, sha256) per document, in ``.docs.npy`` order."""
        self.split(language, split)   # the language/split exist
        p = self.root / language / f"{split}.paths.jsonl"
        if not p.is_file():
            raise BabelError(f"{self.root} records no document paths for {language}/{split} "
                             f"(packed as {self.manifest.get('format', 'babeltower-data/1')}); "
                             "repack it with `babeltower corpus pack`")
        with open(p, encoding="utf-8") as f:
            return [json.loads(line) for line in f]

    @property
    def has_knowledge_index(self) -> bool:
        return bool(self.manifest.get("knowledge"))

    def knowledge_documents(self, language: str | None = None,
                            split: str | None = None) -> list[dict]:
        """The injected knowledge documents (lines of ``knowledge.jsonl``, see the module
        docstring), optionally of one language / split. BabelError for a directory packed
        before the index existed: which documents are facts is then unknown."""
        if not self.has_knowledge_index:
            raise BabelError(f"{self.root} does not record which documents are injected "
                             f"knowledge (packed as "
                             f"{self.manifest.get('format', 'babeltower-data/1')}); repack "
                             "it with `babeltower corpus pack` (or rerun prepare)")
        if self._knowledge is None:
            p = self.root / self.manifest["knowledge"]["documents_file"]
            try:
                with open(p, encoding="utf-8") as f:
                    self._knowledge = [json.loads(line) for line in f]
            except (OSError, json.JSONDecodeError) as e:
                raise BabelError(f"cannot read the knowledge index {p}: {e}") from None
        return [d for d in self._knowledge
                if (language is None or d["language"] == language)
                and (split is None or d["split"] == split)]


def write_manifest(root: Path, manifest: dict) -> None:
    atomic_write_bytes(root / "manifest.json", (json.dumps(manifest, indent=2) + "\n").encode())
