"""Read-only view of a built corpus directory (the output of ``corpus build``)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterator

from babeltower.errors import BabelError
from babeltower.io import sha256_file

CORPUS_FORMAT = "babeltower-corpus/1"


class CorpusDir:
    """``root/manifest.json`` + ``root/<lang>/<split>.jsonl`` + ``root/ledger.parquet``."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        mf = self.root / "manifest.json"
        if not mf.is_file():
            raise BabelError(f"not a built corpus (no manifest.json): {self.root}")
        try:
            self.manifest = json.loads(mf.read_text())
        except json.JSONDecodeError as e:
            raise BabelError(f"corrupt corpus manifest {mf}: {e.msg}") from e
        if self.manifest.get("format") != CORPUS_FORMAT:
            raise BabelError(f"{self.root} is not a built corpus "
                             f"(format {self.manifest.get('format')!r})")
        self.manifest_sha256 = sha256_file(mf)

    @property
    def languages(self) -> list[str]:
        return sorted(lang for lang in self.manifest["languages"]
                      if (self.root / lang).is_dir())

    def path(self, lang: str, split: str) -> Path:
        return self.root / lang / f"{split}.jsonl"

    def iter(self, lang: str, split: str) -> Iterator[dict]:
        p = self.path(lang, split)
        if not p.is_file():
            raise BabelError(f"corpus {self.root} has no {lang}/{split}.jsonl")
        with open(p, encoding="utf-8") as f:
            for i, line in enumerate(f, 1):
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise BabelError(f"{p}:{i}: malformed JSON ({e.msg})") from e
                if not isinstance(row, dict) or not isinstance(row.get("text"), str):
                    raise BabelError(f"{p}:{i}: row has no 'text' string")
                yield row

    def read(self, lang: str, split: str) -> list[dict]:
        return list(self.iter(lang, split))

    def verify(self) -> None:
        """Check every file against the sha256 recorded in the manifest."""
        for rel, digest in self.manifest.get("files_sha256", {}).items():
            p = self.root / rel
            if not p.is_file() or sha256_file(p) != digest:
                raise BabelError(f"corpus file {p} is missing or does not match its sha256")
