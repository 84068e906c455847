"""Inputs of ``corpus build``: directories, zip/tar archives, JSONL/Parquet rows, hub ids.

Each source is turned into a deterministic stream of ``InputItem``s (one per input file
or row) - the unit the manifest accounts for. Reading the bytes of on-disk files is
left to the worker processes; archive members and rows are read here, because archives
are sequential and rows come from ``datasets``.

Row sources have The Stack / StarCoderData shape: a ``content`` column, a language
column (``lang`` or ``language``; else the language is detected from the path), and
optionally ``max_stars_repo_path``/``path``, ``max_stars_repo_name``/``repo_name``/``repo``
(used for grouping) and ``max_stars_repo_licenses``/``license``. A dataset on a hub is
passed as ``hf:ORG/NAME`` or ``hf:ORG/NAME:DATA_DIR`` (read with
``datasets.load_dataset(name, data_dir=..., streaming=True)``).

A directory written by ``corpus fetch`` has a ``sources.json``: its files inherit the
package, version, license and language of the entry whose ``root`` contains them.
"""

from __future__ import annotations

import hashlib
import json
import os
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from babeltower.errors import BabelError

SKIP_DIRS = {".git", ".hg", ".svn", "__pycache__", ".mypy_cache", ".pytest_cache"}
ROW_SUFFIXES = (".jsonl", ".json", ".jsonl.gz", ".json.gz", ".parquet")
ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")


@dataclass
class InputItem:
    source: str                 # the source as the user named it
    path: str                   # path inside the source (a row's own path field, or "")
    package: str | None = None  # package / crate / module the file belongs to
    license: str | None = None
    version: str | None = None
    group: str | None = None    # repository, where known (splits never cut a group)
    language: str | None = None   # language named by a row field (authoritative)
    lang_hint: str | None = None  # language of a fetched package (settles .h: C or C++)
    row: int | None = None        # row index, for row sources
    file: str | None = None     # on-disk file a worker reads
    data: bytes | None = None   # bytes already read (archive member)
    text: str | None = None     # text already decoded (row)
    size: int | None = None


def shard_of(item: InputItem, num_shards: int) -> int:
    """Stable shard of an input: the same file lands in the same shard on any machine."""
    if num_shards == 1:
        return 0
    key = f"{item.source}\0{item.path}\0{item.row}".encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "big") % num_shards


def _suffix_in(name: str, suffixes) -> bool:
    return name.lower().endswith(suffixes)


def source_kind(source: str) -> str:
    if source.startswith("hf:"):
        return "hub"
    p = Path(source)
    if not p.exists():
        raise BabelError(f"source not found: {source}")
    if p.is_dir():
        return "dir"
    if _suffix_in(p.name, ROW_SUFFIXES):
        return "rows"
    if _suffix_in(p.name, ARCHIVE_SUFFIXES):
        return "archive"
    raise BabelError(f"source {source} is neither a directory, an archive "
                     f"({', '.join(ARCHIVE_SUFFIXES)}) nor rows ({', '.join(ROW_SUFFIXES)})")


def probe_source(source: str) -> str:
    """Fail early, with one clear line, on a source that cannot be read; return its kind."""
    kind = source_kind(source)
    if kind == "archive":
        try:
            if _suffix_in(source, (".zip",)):
                with zipfile.ZipFile(source) as zf:
                    zf.infolist()
            else:
                with tarfile.open(source) as tf:
                    tf.getmembers()
        except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError) as e:
            raise BabelError(f"cannot read archive {source}: {e}") from e
    elif kind == "rows":
        ds = _load_rows(source, hub=False)
        _check_columns(ds, source)
    return kind


def _check_columns(ds, source: str) -> None:
    cols = getattr(ds, "column_names", None)
    if cols is not None and "content" not in cols:
        raise BabelError(f"rows in {source} have no 'content' column (columns: {', '.join(cols)})")


def iter_inputs(source: str) -> Iterator[InputItem]:
    kind = source_kind(str(source))
    if kind == "dir":
        yield from _iter_dir(str(source))
    elif kind == "archive":
        yield from _iter_archive(str(source))
    else:
        yield from _iter_rows(str(source), hub=(kind == "hub"))


def _package_of(rel: str, default: str) -> str:
    parts = rel.split("/")
    return parts[0] if len(parts) > 1 else default


def _load_fetch_index(root: Path) -> list[dict]:
    idx = root / "sources.json"
    if not idx.exists():
        return []
    try:
        entries = json.loads(idx.read_text())["sources"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise BabelError(f"corrupt {idx}: {e}") from e
    # longest root first, so the most specific entry wins
    return sorted((e for e in entries if e.get("root")), key=lambda e: -len(e["root"]))


def _iter_dir(source: str) -> Iterator[InputItem]:
    root = Path(source)
    index = _load_fetch_index(root)
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS)
        for name in sorted(filenames):
            full = Path(dirpath) / name
            rel = full.relative_to(root).as_posix()
            if not index and rel == "sources.json":
                continue
            if index and rel == "sources.json":
                continue
            if not full.is_file():
                continue  # a dangling link, a FIFO, a socket or a device: no file to read
            item = InputItem(source=source, path=rel, file=str(full),
                             package=_package_of(rel, root.name))
            for e in index:
                if rel.startswith(e["root"].rstrip("/") + "/"):
                    item.package = e.get("package") or item.package
                    item.license = e.get("license")
                    item.version = e.get("version")
                    item.lang_hint = e.get("language")
                    break
            yield item


def _iter_archive(source: str) -> Iterator[InputItem]:
    name = Path(source).name
    stem = name.split(".")[0]
    try:
        if _suffix_in(name, (".zip",)):
            with zipfile.ZipFile(source) as zf:
                for info in sorted(zf.infolist(), key=lambda i: i.filename):
                    if info.is_dir():
                        continue
                    rel = info.filename
                    yield InputItem(source=source, path=rel, package=_package_of(rel, stem),
                                    data=zf.read(info), size=info.file_size)
        else:
            with tarfile.open(source) as tf:
                members = sorted((m for m in tf.getmembers() if m.isfile()),
                                 key=lambda m: m.name)
                for m in members:
                    f = tf.extractfile(m)
                    data = f.read() if f is not None else b""
                    rel = m.name.lstrip("./")
                    yield InputItem(source=source, path=rel, package=_package_of(rel, stem),
                                    data=data, size=m.size)
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError) as e:
        raise BabelError(f"cannot read archive {source}: {e}") from e


_PATH_KEYS = ("max_stars_repo_path", "path", "file_path")
_REPO_KEYS = ("max_stars_repo_name", "repo_name", "repo", "repository")
_LICENSE_KEYS = ("max_stars_repo_licenses", "license", "licenses")
_LANG_KEYS = ("lang", "language")


def _first(row: dict, keys) -> object:
    for k in keys:
        v = row.get(k)
        if v not in (None, "", []):
            return v
    return None


def _root_cause(e: BaseException) -> str:
    """The first specific message in the cause chain: datasets wraps the parser's
    useful one ("JSON parse error: ... in row 1") in a generic generation error."""
    seen = set()
    chain = []
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        chain.append(e)
        e = e.__cause__ or e.__context__
    for exc in chain:
        text = str(exc).strip()
        if text and not text.startswith("An error occurred while generating"):
            return text.splitlines()[0]
    return type(chain[-1]).__name__


def _load_rows(source: str, hub: bool):
    import logging

    import datasets

    datasets.disable_progress_bars()
    ds_logger = datasets.utils.logging.get_logger("datasets")
    level = ds_logger.level
    ds_logger.setLevel(logging.CRITICAL)  # its ERROR log would be a second line of output
    try:
        if hub:  # hf:ORG/NAME or hf:ORG/NAME:DATA_DIR (e.g. hf:bigcode/the-stack:data/php)
            name, _, data_dir = source[3:].partition(":")
            return datasets.load_dataset(name, data_dir=data_dir or None, split="train",
                                         streaming=True)
        builder = "parquet" if source.lower().endswith(".parquet") else "json"
        return datasets.load_dataset(builder, data_files=[str(Path(source).resolve())],
                                     split="train")
    except Exception as e:  # datasets raises many types for a broken file; all are bad input
        raise BabelError(f"cannot read rows from {source}: {_root_cause(e)}") from e
    finally:
        ds_logger.setLevel(level)


def _iter_rows(source: str, hub: bool) -> Iterator[InputItem]:
    ds = _load_rows(source, hub)
    _check_columns(ds, source)
    for i, row in enumerate(ds):
        content = row.get("content")
        if not isinstance(content, str):
            raise BabelError(f"row {i} of {source}: 'content' is missing or not a string")
        path = _first(row, _PATH_KEYS)
        repo = _first(row, _REPO_KEYS)
        lic = _first(row, _LICENSE_KEYS)
        if isinstance(lic, list):
            lic = " OR ".join(map(str, lic))
        lang = _first(row, _LANG_KEYS)
        yield InputItem(source=source, path=str(path) if path else "", row=i,
                        package=str(repo) if repo else None, group=str(repo) if repo else None,
                        license=str(lic) if lic else None,
                        language=str(lang) if lang else None, text=content)
