"""One walker for raw text inputs (``eval loss --text``, ``probe neurons --text``).

It returns the files kept, per language, and the files dropped counted by reason, so a
command can say "kept 286 of 783 files" instead of silently skipping the rest.

When the user names a language for a directory (``cpp=/usr/include/c++/12``), files that
are plausibly that language's headers are taken as it rather than dropped: a ``.h`` file
(C's extension by default) and an extension-less text file (the C++ standard headers:
``vector``, ``iostream``) are taken as C or C++ when the named language is C or C++. A
file named explicitly (not found by walking a directory) is always taken as the language
given for it. Other languages get no such widening: an extension-less ``README`` under
``python=DIR`` is not Python.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from babeltower.errors import BabelError
from babeltower.languages import canonical, detect_language

# languages whose headers may carry C's ``.h`` or no extension at all
_HEADER_LANGUAGES = {"c", "cpp"}
_HEAD_BYTES = 4096


@dataclass
class TextFiles:
    """The files a walk kept (``kept[lang]``, in path order) and the dropped ones by reason."""

    kept: dict[str, list[Path]] = field(default_factory=dict)
    dropped: Counter = field(default_factory=Counter)

    @property
    def n_kept(self) -> int:
        return sum(len(v) for v in self.kept.values())

    @property
    def n_seen(self) -> int:
        return self.n_kept + sum(self.dropped.values())

    def summary(self) -> str:
        """One line: ``kept N of M files (lang: n, ...); dropped: reason=count, ...``."""
        langs = ", ".join(f"{lang}: {len(fs)}" for lang, fs in sorted(self.kept.items()))
        line = f"kept {self.n_kept} of {self.n_seen} text files ({langs or 'none'})"
        if self.dropped:
            line += "; dropped: " + ", ".join(f"{why}={n}" for why, n in
                                              sorted(self.dropped.items()))
        return line

    def record(self) -> dict:
        """For provenance: counts, not the (possibly thousands of) paths."""
        return {"kept": {lang: len(fs) for lang, fs in sorted(self.kept.items())},
                "seen": self.n_seen, "dropped": dict(sorted(self.dropped.items()))}


def _language(path: Path, named: str | None, explicit: bool) -> tuple[str | None, str]:
    """(language, "") or (None, reason) from the file's head alone (its first bytes)."""
    try:
        with path.open("rb") as fh:
            head = fh.read(_HEAD_BYTES)
    except OSError:
        return None, "unreadable"
    if not head:
        return None, "empty"
    if b"\0" in head:
        return None, "binary"
    if explicit and named is not None:
        return named, ""
    lang = detect_language(str(path), head)
    if named is None:
        return (lang, "") if lang is not None else (None, "unknown type")
    if lang == named:
        return named, ""
    if named in _HEADER_LANGUAGES and (path.suffix.lower() == ".h" or
                                       (path.suffix == "" and lang is None)):
        return named, ""
    if lang is None:
        return None, "unknown type"
    return None, "other language"


def _is_utf8(path: Path) -> bool:
    try:
        path.read_bytes().decode("utf-8")
    except (OSError, UnicodeDecodeError):
        return False
    return True


def walk_text(inputs: Iterable[tuple[str | None, str | os.PathLike]],
              languages: Iterable[str] | None = None) -> TextFiles:
    """Walk ``(language or None, file or directory)`` inputs.

    A ``None`` language means "detect from name/shebang". ``languages`` restricts what is
    kept (others are dropped as "not requested"). A missing path is a BabelError.
    """
    wanted = {canonical(x) for x in languages} if languages else None
    out = TextFiles()
    for named, raw in inputs:
        named = canonical(named) if named else None
        p = Path(raw)
        if not p.exists():
            raise BabelError(f"text path not found: {p}")
        explicit = not p.is_dir()
        files = [p] if explicit else sorted(f for f in p.rglob("*") if f.is_file())
        for f in files:
            lang, why = _language(f, named, explicit)
            if lang is not None and wanted is not None and lang not in wanted:
                lang, why = None, "not requested"
            # the readers decode strictly: a kept file that is not UTF-8 is dropped and
            # counted; only kept files are read whole (a tree is mostly other files)
            if lang is not None and not _is_utf8(f):
                lang, why = None, "not UTF-8"
            if lang is None:
                out.dropped[why] += 1
            else:
                out.kept.setdefault(lang, []).append(f)
    return out


def parse_text_args(values: Iterable[str | os.PathLike]) -> list[tuple[str | None, str]]:
    """``LANG=PATH`` or ``PATH`` strings -> ``(language or None, path)``; a LANG must be known."""
    out = []
    for v in values:
        s = str(v)
        lang, sep, path = s.partition("=")
        if sep and lang and "/" not in lang and not Path(s).exists():
            out.append((canonical(lang.strip()), path))
        else:
            out.append((None, s))
    return out
